"""What a sweep trains: ``SweepSpec`` (structures x widths x seeds x lrs, each a ``TrainConfig``)
and :func:`load_spec`, which reads a shipped preset or the user's YAML / TOML file
(:mod:`einsearch.search.presets`) and applies overrides.

Spec file format (YAML; TOML with the same keys)::

    description: free text (optional)
    task: regression
    structures: [dense, btt, "low_rank(0.5)", "(0.5|0.25|0.25|0.25|0.5|0.25|0)"]
    widths: [32, 64, 128]   # or per structure: {dense: [32, 64], btt: [64, 128, 256]}
    match_compute: true     # structures without widths of their own get dense's FLOPs/token
    max_width_factor: 8     # ... from widths up to 8 x dense's largest (default 8)
    seeds: [0, 1, 2]
    lrs: [0.003]            # several: each is trained (the analysis keeps the best);
                            # or per structure: {dense: [0.009], default: [0.018]}
    train:            # any other TrainConfig field
      steps: 400
      batch_size: 128
      log_points: 30  # log on ~30 log-spaced steps
      # base_width (muP): defaults to dense's smallest width

"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from einsearch._checks import check_int, check_non_negative_int, check_positive_float, check_positive_int

from .presets import preset_names, read_spec

__all__ = ["SweepSpec", "load_spec", "preset_names", "is_dense"]

# fields of a run that the spec sweeps over, so they may not be set inside ``train``
_AXES = {"task": "task", "structure": "structures", "width": "widths", "seed": "seeds",
         "lr": "lrs"}
_EXTRA_KEYS = {"description"}
#: the key of a per-structure ``lrs`` mapping that covers the structures it does not name
LRS_DEFAULT_KEY = "default"


def _train_config_cls():
    from .config import TrainConfig

    return TrainConfig


def is_dense(structure: str) -> bool:
    """Whether ``structure`` (a name or theta text) is dense; False for text that is no structure."""
    from einsearch import parse_structure

    try:
        return parse_structure(structure).is_dense
    except (ValueError, TypeError):
        return False


def train_fields() -> set[str]:
    """Names of the ``TrainConfig`` fields (a spec's ``train:`` keys, besides the sweep axes)."""
    return {f.name for f in dataclasses.fields(_train_config_cls())}


def sweep_axes() -> dict[str, str]:
    """TrainConfig fields a spec sweeps over, each with the spec key that sets it (``seed: seeds``)."""
    return dict(_AXES)


def _as_list(value: Any, name: str) -> list:
    if isinstance(value, (str, int, float)):
        return [value]
    if isinstance(value, (list, tuple)):
        return list(value)
    raise ValueError(f"{name} must be a list, got {type(value).__name__}: {value!r}")


@dataclass
class SweepSpec:
    """What to train: the product structures x widths x seeds x lrs, each a ``TrainConfig``.

    ``train`` holds every other ``TrainConfig`` field (steps, batch_size, ...). Unless
    ``include_dense`` is False, dense is added as the first structure when absent: every
    compute multiplier is measured against it.

    ``widths`` is one list for every structure, or a mapping structure -> its own list. With
    ``match_compute`` (off by default; the shipped presets turn it on) a structure without
    widths of its own gets, for each dense width, the width whose training FLOPs per token is
    closest in log to dense's (candidates up to ``max_width_factor`` x the largest dense width;
    :mod:`einsearch.search.costmodel`), so every structure covers dense's compute window.
    With one width list, ``match_compute`` and ``include_dense=False`` (dense not among the
    structures, e.g. ``einsearch explore``'s per-trial sweeps, whose dense runs are trained
    once elsewhere), the list is still dense's widths: every structure is matched against
    dense's FLOPs per token at them (:meth:`matched_widths`), though dense is not trained here.
    ``train.base_width`` (muP's reference width) defaults to dense's smallest width: the
    learning rate is tuned on, and transferred from, the smallest dense model.
    """

    task: str = "regression"
    structures: list[str] = field(default_factory=lambda: ["dense"])
    widths: Any = field(default_factory=lambda: [64])  # list[int] | dict[str, list[int]]
    seeds: list[int] = field(default_factory=lambda: [0])
    lrs: Any = field(default_factory=lambda: [3e-3])  # list[float] | dict[str, list[float]]
    train: dict[str, Any] = field(default_factory=dict)
    include_dense: bool = True
    description: str = ""
    match_compute: bool = False
    max_width_factor: float = 8.0
    task_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.task, str) or not self.task:
            raise ValueError(f"task must be a non-empty string, got {self.task!r}")
        self.structures = [str(s).strip() for s in _as_list(self.structures, "structures")]
        if not self.structures:
            raise ValueError("structures must not be empty")
        from einsearch import parse_structure

        # ValueError names the bad one
        configs = [parse_structure(s) for s in self.structures]
        if self.include_dense and not any(c.is_dense for c in configs):
            self.structures.insert(0, "dense")
        self.structures = list(dict.fromkeys(self.structures))
        if not isinstance(self.match_compute, bool):
            raise ValueError(f"match_compute must be true or false, got {self.match_compute!r}")
        factor = _positive_float(self.max_width_factor, "max_width_factor")
        if factor < 1:
            raise ValueError(f"max_width_factor: expected a number >= 1, got {factor!r}")
        self.max_width_factor = factor
        self.widths = self._parse_widths(self.widths)
        self.seeds = [_non_negative_int(s, "seeds") for s in _as_list(self.seeds, "seeds")]
        if not self.seeds:
            raise ValueError("seeds must not be empty")
        self.lrs = self._parse_lrs(self.lrs)
        if not isinstance(self.train, Mapping):
            raise ValueError(f"train must be a mapping of TrainConfig fields, got {self.train!r}")
        self.train = dict(self.train)
        if not isinstance(self.task_options, Mapping):
            raise ValueError(f"task_options must be a mapping of the task's keyword options, got "
                             f"{self.task_options!r}")
        self.task_options = dict(self.task_options)
        if "task_options" in self.train:
            raise ValueError("train.task_options: set 'task_options' at the top level of the spec instead")
        for key in self.train:
            if key in _AXES:
                raise ValueError(f"train.{key}: set '{_AXES[key]}' at the top level of the spec "
                                 "instead (it is swept over)")
        self._check_data()

    def _parse_widths(self, widths: Any) -> list[int] | dict[str, list[int]]:
        def one(values: Any, name: str) -> list[int]:
            out = [_positive_int(w, name) for w in _as_list(values, name)]
            if not out:
                raise ValueError(f"{name} must not be empty")
            return sorted(set(out))

        if not isinstance(widths, Mapping):
            return one(widths, "widths")
        parsed = {str(k).strip(): one(v, f"widths.{str(k).strip()}") for k, v in widths.items()}
        for key in parsed:
            if key not in self.structures:
                raise ValueError(f"widths: {key!r} is not one of the structures "
                                 f"{self.structures}")
        missing = [s for s in self.structures if s not in parsed]
        ref = self.reference_structure()
        if missing and not self.match_compute:
            raise ValueError(f"widths: no widths for structure(s) {missing}; give them, or set "
                             "match_compute: true to derive them from dense's")
        if missing and (ref is None or ref not in parsed):
            raise ValueError(f"widths: match_compute derives {missing}'s widths from dense's, "
                             f"but no widths are given for dense (structures {self.structures})")
        return parsed

    def _parse_lrs(self, lrs: Any) -> list[float] | dict[str, list[float]]:
        """One list for every structure, or a mapping structure -> list with an optional
        ``default`` for the structures it does not name (measured per structure, e.g. with
        ``--lr-check``, where muP's transfer is not exact)."""
        def one(values: Any, name: str) -> list[float]:
            out = [_positive_float(x, name) for x in _as_list(values, name)]
            if not out:
                raise ValueError(f"{name} must not be empty")
            return list(dict.fromkeys(out))

        if not isinstance(lrs, Mapping):
            return one(lrs, "lrs")
        parsed = {str(k).strip(): one(v, f"lrs.{str(k).strip()}") for k, v in lrs.items()}
        for key in parsed:
            if key != LRS_DEFAULT_KEY and key not in self.structures:
                raise ValueError(f"lrs: {key!r} is not one of the structures {self.structures} "
                                 f"(or {LRS_DEFAULT_KEY!r} for the others)")
        missing = [s for s in self.structures if s not in parsed]
        if missing and LRS_DEFAULT_KEY not in parsed:
            raise ValueError(f"lrs: no learning rates for structure(s) {missing}; name them or "
                             f"give a {LRS_DEFAULT_KEY!r} list")
        return parsed

    def lrs_for(self, structure: str) -> list[float]:
        """The learning rates ``structure`` is trained at."""
        if structure not in self.structures:
            raise ValueError(f"structure {structure!r} is not in this sweep: {self.structures}")
        if isinstance(self.lrs, list):
            return list(self.lrs)
        return list(self.lrs.get(structure, self.lrs.get(LRS_DEFAULT_KEY, [])))

    def reference_structure(self) -> str | None:
        """The structure that is dense (the reference of every multiplier), or None."""
        return next((s for s in self.structures if is_dense(s)), None)

    def _check_data(self) -> None:
        data = self.train.get("data")
        if data is None:
            return
        from .tasks import task_options

        try:
            takes_data = "data" in task_options(self.task)
        except ValueError:  # an unknown task: TrainConfig names it
            return
        if not takes_data:
            return
        what = ("a folder with train.bin and val.bin" if self.task == "tokens"
                else "a text file or a directory of text files")
        if not isinstance(data, (str, os.PathLike)) or not str(data):
            raise ValueError(f"--data / train.data: expected a path ({what}), got {data!r}")
        if not Path(str(data)).expanduser().exists():
            raise ValueError(f"--data / train.data: no such file or directory: {str(data)!r} "
                             f"(task {self.task!r} reads {what})")

    def settings(self) -> dict[str, Any]:
        """Every run's TrainConfig settings besides the swept axes: ``train`` and ``task_options``."""
        return {**self.train, **({"task_options": dict(self.task_options)} if self.task_options else {})}

    def widths_for(self, structure: str) -> list[int]:
        """The widths ``structure`` is trained at (given, or compute-matched to dense's)."""
        if structure not in self.structures:
            raise ValueError(f"structure {structure!r} is not in this sweep: {self.structures}")
        if isinstance(self.widths, list):
            if not self.match_compute or structure == self.reference_structure():
                return list(self.widths)
        elif structure in self.widths:
            return list(self.widths[structure])
        return sorted(set(self.matched_widths(structure)))

    def dense_widths(self) -> list[int]:
        """Dense's widths, the ones compute matching aims at: the reference structure's, or
        the one width list when dense is not among the structures."""
        if isinstance(self.widths, list):
            return list(self.widths)
        ref = self.reference_structure()
        if ref is None or ref not in self.widths:
            raise ValueError(f"widths: no widths are given for dense (structures "
                             f"{self.structures}, widths {self.widths})")
        return list(self.widths[ref])

    def matched_widths(self, structure: str) -> list[int]:
        """One width per dense width (in :meth:`dense_widths`' order): the candidate width of
        ``structure`` whose training FLOPs per token is closest in log to dense's at that width
        (:func:`einsearch.search.costmodel.match_width`; candidates up to ``max_width_factor`` x
        dense's largest width). Two dense widths may give the same width. Dense's own are its
        widths. Needs ``match_compute``."""
        if not self.match_compute:
            raise ValueError("matched_widths needs match_compute: true")
        if structure not in self.structures:
            raise ValueError(f"structure {structure!r} is not in this sweep: {self.structures}")
        dense = self.dense_widths()
        ref = self.reference_structure()
        if structure == ref:
            return dense
        from .costmodel import flops_per_token, match_width, width_candidates

        candidates = width_candidates(int(max(dense) * self.max_width_factor))
        if not candidates:
            return dense
        ref_name = ref if ref is not None else "dense"
        return [match_width(flops_per_token(self.task, ref_name, w, self.settings()),
                            lambda c: flops_per_token(self.task, structure, c, self.settings()),
                            candidates) for w in dense]

    def base_width(self) -> int:
        """muP's reference width: ``train.base_width`` if set, else dense's smallest width
        (also with ``match_compute`` when dense is not trained in this sweep; the smallest
        overall width when there is no dense and no matching)."""
        if "base_width" in self.train:
            return self.train["base_width"]
        ref = self.reference_structure()
        if ref is not None or (self.match_compute and isinstance(self.widths, list)):
            return min(self.dense_widths())
        return min(min(self.widths_for(s)) for s in self.structures)

    def check_buildable(self) -> None:
        """Build every (structure, width) the sweep trains, without training: a width the task
        or a structure cannot take raises ValueError naming both, before anything is written.

        Every width is counted on the meta device; each structure's smallest width is also
        built for real (where a width too small for a structure fails)."""
        from .config import TrainConfig
        from .costmodel import flops_per_token
        from .train import build_model

        fields = {f.name for f in dataclasses.fields(TrainConfig)}
        for s in self.structures:
            widths = self.widths_for(s)
            for w in widths:
                flops_per_token(self.task, s, w, self.settings())
            cfg = TrainConfig(task=self.task, structure=s, width=min(widths),
                              base_width=self.base_width(),
                              **{k: v for k, v in self.settings().items()
                                 if k in fields and k != "base_width"})
            try:
                build_model(cfg)
            except (ValueError, TypeError, RuntimeError) as err:
                raise ValueError(f"widths: structure {s!r} cannot be built at width "
                                 f"{min(widths)} on task {self.task!r}: {err}") from None

    def validate_train_keys(self) -> None:
        """Raise ValueError naming any ``train`` key that is not a TrainConfig field."""
        known = train_fields()
        for key in self.train:
            if key not in known:
                raise ValueError(f"unknown key train.{key!r}; TrainConfig fields are "
                                 f"{sorted(known - set(_AXES))}")

    def configs(self) -> list[Any]:
        """One ``TrainConfig`` per (structure, width, seed, lr), duplicates removed."""
        self.validate_train_keys()
        cls = _train_config_cls()
        out, seen = [], set()
        train = self.settings()
        train.setdefault("base_width", self.base_width())
        for s in self.structures:
            for w in self.widths_for(s):
                for seed in self.seeds:
                    for lr in self.lrs_for(s):
                        cfg = cls(task=self.task, structure=s, width=w, seed=seed, lr=lr,
                                  **train)
                        if cfg.run_id() not in seen:
                            seen.add(cfg.run_id())
                            out.append(cfg)
        return out

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if not d["description"]:
            d.pop("description")
        if d["include_dense"]:
            d.pop("include_dense")
        if not d["match_compute"]:
            d.pop("match_compute")
        if d["max_width_factor"] == 8.0:
            d.pop("max_width_factor")
        if not d["task_options"]:
            d.pop("task_options")
        return d


def _positive_int(v: Any, name: str) -> int:
    return check_positive_int(v, name, "SweepSpec")


def _int(v: Any, name: str) -> int:
    return check_int(v, name, "SweepSpec")


def _non_negative_int(v: Any, name: str) -> int:
    return check_non_negative_int(v, name, "SweepSpec")


def _positive_float(v: Any, name: str) -> float:
    return check_positive_float(v, name, "SweepSpec", coerce=True)  # YAML may give "3e-3"


# ------------------------------------------------------------------------------------------
# loading


def _keep_chosen(data: dict[str, Any], overrides: Mapping[str, Any]) -> None:
    """With ``structures`` overridden, the file's per-structure ``lrs`` / ``widths`` entries for
    structures left out are dropped (``--structures dense btt_moe`` on a preset that names more);
    a mapping given as an override itself is kept as it is, so its typos still fail."""
    chosen = {str(x).strip() for x in _as_list(overrides["structures"], "structures")}
    for key in ("lrs", "widths"):
        if isinstance(data.get(key), Mapping) and overrides.get(key) is None:
            data[key] = {k: v for k, v in data[key].items()
                         if str(k).strip() in chosen or (key == "lrs" and str(k).strip() == LRS_DEFAULT_KEY)}


def load_spec(preset_or_path: str | os.PathLike[str], **overrides: Any) -> SweepSpec:
    """Load a preset by name (``"demo"``) or a YAML / TOML spec file, then apply overrides.

    Overrides are SweepSpec fields (``structures=[...]``, ``widths=[...]``, ``task=...``) or
    TrainConfig fields (``steps=100``), which go into ``spec.train``; ``None`` values are
    ignored so a CLI can pass its optional arguments straight through. Unknown keys in the file
    or the overrides raise ``ValueError`` naming the key.
    """
    data, source, _ = read_spec(preset_or_path)
    spec_fields = {f.name for f in dataclasses.fields(SweepSpec)}
    for key in data:
        if key not in spec_fields | _EXTRA_KEYS:
            hint = " (did you mean to put it under 'train:'?)" if key in train_fields() else ""
            raise ValueError(f"{source}: unknown key {key!r}{hint}; allowed keys are "
                             f"{sorted(spec_fields)}")
    train = dict(data.get("train") or {})
    for key, value in overrides.items():
        if value is None:
            continue
        if key == "train":
            train.update(value)
        elif key in spec_fields:
            data[key] = value
        elif key in train_fields():
            if key in _AXES:
                data[_AXES[key]] = value
            else:
                train[key] = value
        else:
            raise ValueError(f"unknown override {key!r}; use a sweep key "
                             f"{sorted(spec_fields)} or a TrainConfig field")
    data["train"] = train
    if overrides.get("structures") is not None:
        _keep_chosen(data, overrides)
    try:
        spec = SweepSpec(**data)
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from None
    try:
        spec.configs()  # every key and value checked now, not an hour into the sweep
    except (ValueError, TypeError) as err:
        raise ValueError(f"{source}: {err}") from None
    return spec

