"""What ``einsearch explore`` trains per trial (``ExploreSpec``) and how the search runs; see
:mod:`einsearch.search.explore`."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..presets import EXPLORE, explore_preset_names, read_spec
from ..spec import SweepSpec, is_dense

__all__ = ["ExploreSpec", "load_explore_spec", "explore_preset_names", "DENSE", "OBJECTIVES",
           "DEGENERATE_RULES", "DEFAULT_REFERENCES"]

OBJECTIVES = ("multiplier", "multiplier+params")
DEGENERATE_RULES = ("prune", "score")
DEFAULT_REFERENCES = ("monarch", "low_rank", "kronecker", "tensor_train", "btt")
#: the structure name of dense's reference runs (and of any trial theta that is dense)
DENSE = "dense"


@dataclass
class ExploreSpec:
    """What one trial trains (``task``, ``widths`` x ``seeds`` x ``lrs`` with ``train``
    settings, as in a sweep spec) and how the search runs. See the module docstring."""

    task: str = "regression"
    widths: list[int] = field(default_factory=lambda: [16, 32])
    seeds: list[int] = field(default_factory=lambda: [0])
    lrs: list[float] = field(default_factory=lambda: [3e-3])
    train: dict[str, Any] = field(default_factory=dict)
    match_compute: bool = True
    references: list[str] = field(default_factory=lambda: list(DEFAULT_REFERENCES))
    grid: int = 8
    degenerate: str = "prune"
    min_widths: int = 2
    loss: str = "eval"
    n_bootstrap: int = 100
    sampler_seed: int = 0
    n_startup_trials: int = 10
    description: str = ""

    def __post_init__(self) -> None:
        from einsearch import resolve_structure

        if not isinstance(self.match_compute, bool):
            raise ValueError(f"match_compute must be true or false, got {self.match_compute!r}")
        # the sweep part is validated exactly as a sweep would validate it
        sweep = SweepSpec(task=self.task, structures=[DENSE], widths=self.widths,
                          seeds=self.seeds, lrs=self.lrs, train=self.train,
                          match_compute=self.match_compute)
        self.widths, self.seeds, self.lrs, self.train = (sorted(set(sweep.widths)), sweep.seeds,
                                                         sweep.lrs, sweep.train)
        if not isinstance(self.references, (list, tuple)):
            raise ValueError(f"references must be a list of structure names, got "
                             f"{self.references!r}")
        self.references = [str(r).strip() for r in self.references]
        for r in self.references:
            resolve_structure(r)  # ValueError names it
            if is_dense(r):
                raise ValueError("references: dense is the baseline of every multiplier, not "
                                 "a reference trial; leave it out")
        _int_in("grid", self.grid, 1, 1000)
        bad = [k for k in range(self.grid + 1) if float(f"{k / self.grid:.6g}") != k / self.grid]
        if bad:
            raise ValueError(f"grid: exponents k/{self.grid} must be exact in 6 significant "
                             f"digits (theta text), {bad[0]}/{self.grid} is not; use a grid "
                             "such as 4, 8, 10, 16, 20 or 100")
        if self.degenerate not in DEGENERATE_RULES:
            raise ValueError(f"degenerate must be one of {DEGENERATE_RULES}, got "
                             f"{self.degenerate!r}")
        _int_in("min_widths", self.min_widths, 1, len(self.widths))
        if self.loss not in ("eval", "train"):
            raise ValueError(f"loss must be 'eval' or 'train', got {self.loss!r}")
        _int_in("n_bootstrap", self.n_bootstrap, 0, 100_000)
        _int_in("sampler_seed", self.sampler_seed, 0, 2**32 - 1)
        _int_in("n_startup_trials", self.n_startup_trials, 0, 100_000)

    def sweep(self, structures: Sequence[str]) -> SweepSpec:
        """The SweepSpec that trains ``structures`` (dense not added): ``widths`` are dense's,
        matched per structure with ``match_compute``; its ``base_width`` (dense's smallest
        width, or ``train.base_width``) is the same for every structure, so equal configs give
        equal run ids."""
        return SweepSpec(task=self.task, structures=list(structures), widths=list(self.widths),
                         seeds=self.seeds, lrs=self.lrs, train=self.train, include_dense=False,
                         match_compute=self.match_compute)

    def widths_for(self, structure: str) -> list[int]:
        """The width ``structure`` trains at for each of dense's ``widths`` (same order; two
        dense widths may give the same width): compute-matched, or dense's widths."""
        if not self.match_compute:
            return list(self.widths)
        cache = self.__dict__.setdefault("_matched", {})  # not a field: not in to_dict
        if structure not in cache:
            cache[structure] = self.sweep([structure]).matched_widths(structure)
        return list(cache[structure])

    def configs(self, structures: Sequence[str], step: int | None = None) -> list:
        """The TrainConfigs of ``structures``: all of them, or with ``step`` = i only each
        structure's runs at its width for dense's i-th width (the pruning steps)."""
        cfgs = self.sweep(structures).configs()
        if step is None:
            return cfgs
        _int_in("step", step, 0, len(self.widths) - 1)
        keep = {s: self.widths_for(s)[step] for s in dict.fromkeys(c.structure for c in cfgs)}
        return [c for c in cfgs if c.width == keep[c.structure]]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _int_in(name: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")
    return value


def load_explore_spec(preset_or_path: str | os.PathLike[str],
                      train_overrides: Mapping[str, Any] | None = None) -> tuple[ExploreSpec, str]:
    """(spec, name): a shipped preset (``tiny`` or ``explore_tiny``) or a YAML / TOML file, with
    ``train_overrides`` (TrainConfig fields, e.g. ``precision``) set in its ``train`` section.
    ``name`` (the preset name or the file's stem) names the Optuna study."""
    data, source, name = read_spec(preset_or_path, EXPLORE)
    known = {f.name for f in dataclasses.fields(ExploreSpec)}
    for key in data:
        if key not in known:
            raise ValueError(f"{source}: unknown key {key!r}; allowed keys are {sorted(known)}")
    if train_overrides:
        data["train"] = {**(data.get("train") or {}), **train_overrides}
    try:
        spec = ExploreSpec(**data)
        spec.configs([DENSE])  # every train key and value checked now
    except (ValueError, TypeError) as err:
        raise ValueError(f"{source}: {err}") from None
    return spec, name
