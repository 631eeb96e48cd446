"""Sweep driver: train every (structure x width x seed x lr), store each run, write the report.

A sweep is described by a :class:`SweepSpec`, usually loaded from a preset shipped with the
package (``einsearch/search/presets/*.yaml``: ``demo``, ``tiny``, ``charlm_small``) or from the user's
own YAML / TOML file with :func:`load_spec`. :func:`run_sweep` then

1. writes the resolved spec to ``out_dir/spec.yaml``;
2. opens ``out_dir/results.sqlite`` and skips every run already finished (or diverged) there,
   so a killed sweep restarted with the same command resumes where it stopped;
3. trains the remaining runs with an executor (:mod:`einsearch.search.executors`): in this
   process (``jobs=1``), in ``jobs`` worker processes ("spawn" context, one torch thread
   each) or as Ray tasks. Only this (parent) process writes to the store,
   one transaction per run, right after the run completes; a run whose trainer raises is logged
   and recorded as ``failed`` (retried by the next sweep) without stopping the others;
4. calls :func:`einsearch.report.write_report`.

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

``einsearch search --dry-run`` prints the run table without training; ``--lr-check`` trains
each structure at 1/3, 1 and 3 x the transferred lr (:mod:`einsearch.search.runplan`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from einsearch._checks import check_int, check_non_negative_int, check_positive_float, check_positive_int

from ._io import atomic_write_text, utc_now_iso
from .store import ResultStore, structure_meta

__all__ = ["SweepSpec", "SweepOutcome", "load_spec", "preset_names", "run_sweep", "search",
           "format_outcome"]

log = logging.getLogger(__name__)

# fields of a run that the spec sweeps over, so they may not be set inside ``train``
_AXES = {"task": "task", "structure": "structures", "width": "widths", "seed": "seeds",
         "lr": "lrs"}
_EXTRA_KEYS = {"description"}
#: the key of a per-structure ``lrs`` mapping that covers the structures it does not name
LRS_DEFAULT_KEY = "default"


def _train_config_cls():
    from .train import TrainConfig

    return TrainConfig


def _train_fields() -> set[str]:
    return {f.name for f in dataclasses.fields(_train_config_cls())}


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
    :mod:`einsearch.search.runplan`), so every structure covers dense's compute window.
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

    def __post_init__(self) -> None:
        if not isinstance(self.task, str) or not self.task:
            raise ValueError(f"task must be a non-empty string, got {self.task!r}")
        self.structures = [str(s).strip() for s in _as_list(self.structures, "structures")]
        if not self.structures:
            raise ValueError("structures must not be empty")
        from einsearch import parse_structure

        # ValueError names the bad one; MoE kinds are no point of the space (theta None)
        thetas = [parse_structure(s).theta for s in self.structures]
        dense = parse_structure("dense").theta
        if self.include_dense and dense not in thetas:
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
        from einsearch import resolve_structure

        dense = resolve_structure("dense")
        for s in self.structures:
            try:
                if resolve_structure(s) == dense:
                    return s
            except (ValueError, TypeError):
                continue
        return None

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
        if not isinstance(data, (str, os.PathLike)) or not str(data):
            raise ValueError(f"--data / train.data: expected a path to a text file or a "
                             f"directory, got {data!r}")
        if not Path(str(data)).expanduser().exists():
            raise ValueError(f"--data / train.data: no such file or directory: {str(data)!r} "
                             f"(task {self.task!r} reads a text file or a directory of text "
                             "files)")

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
        (:func:`einsearch.search.runplan.match_width`; candidates up to ``max_width_factor`` x
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
        from .runplan import flops_per_token, match_width, width_candidates

        candidates = width_candidates(int(max(dense) * self.max_width_factor))
        if not candidates:
            return dense
        ref_name = ref if ref is not None else "dense"
        return [match_width(flops_per_token(self.task, ref_name, w, self.train),
                            lambda c: flops_per_token(self.task, structure, c, self.train),
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
        from .runplan import flops_per_token
        from .train import TrainConfig, build_model

        fields = {f.name for f in dataclasses.fields(TrainConfig)}
        for s in self.structures:
            widths = self.widths_for(s)
            for w in widths:
                flops_per_token(self.task, s, w, self.train)
            cfg = TrainConfig(task=self.task, structure=s, width=min(widths),
                              base_width=self.base_width(),
                              **{k: v for k, v in self.train.items()
                                 if k in fields and k != "base_width"})
            try:
                build_model(cfg)
            except (ValueError, TypeError, RuntimeError) as err:
                raise ValueError(f"widths: structure {s!r} cannot be built at width "
                                 f"{min(widths)} on task {self.task!r}: {err}") from None

    def validate_train_keys(self) -> None:
        """Raise ValueError naming any ``train`` key that is not a TrainConfig field."""
        known = _train_fields()
        for key in self.train:
            if key not in known:
                raise ValueError(f"unknown key train.{key!r}; TrainConfig fields are "
                                 f"{sorted(known - set(_AXES))}")

    def configs(self) -> list[Any]:
        """One ``TrainConfig`` per (structure, width, seed, lr), duplicates removed."""
        self.validate_train_keys()
        cls = _train_config_cls()
        out, seen = [], set()
        train = dict(self.train)
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


def preset_names() -> list[str]:
    """Names of the presets shipped in ``einsearch/search/presets``."""
    from importlib.resources import files

    folder = files("einsearch.search").joinpath("presets")
    # explore_*.yaml are `einsearch explore` presets (einsearch.search.explore), not sweeps
    return sorted(p.name[:-5] for p in folder.iterdir()
                  if p.name.endswith(".yaml") and not p.name.startswith("explore_"))


def _read_preset(name: str) -> tuple[dict[str, Any], str]:
    from importlib.resources import files

    import yaml

    if name not in preset_names():
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(preset_names())} "
                         "(or give a path to a .yaml / .toml file)")
    text = files("einsearch.search").joinpath("presets", f"{name}.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text) or {}, f"preset {name!r}"


def _read_file(path: Path) -> tuple[dict[str, Any], str]:
    if not path.is_file():
        raise FileNotFoundError(f"no spec file at {path}")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".toml":
        import tomllib

        try:
            return tomllib.loads(text), str(path)
        except tomllib.TOMLDecodeError as err:
            raise ValueError(f"{path}: invalid TOML: {err}") from None
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: invalid YAML: {err}") from None
    return data or {}, str(path)


def load_spec(preset_or_path: str | os.PathLike[str], **overrides: Any) -> SweepSpec:
    """Load a preset by name (``"demo"``) or a YAML / TOML spec file, then apply overrides.

    Overrides are SweepSpec fields (``structures=[...]``, ``widths=[...]``, ``task=...``) or
    TrainConfig fields (``steps=100``), which go into ``spec.train``; ``None`` values are
    ignored so a CLI can pass its optional arguments straight through. Unknown keys in the file
    or the overrides raise ``ValueError`` naming the key.
    """
    text = os.fspath(preset_or_path)
    path = Path(text).expanduser()
    looks_like_file = (path.suffix.lower() in (".yaml", ".yml", ".toml") or os.sep in text
                       or path.exists())
    data, source = _read_file(path) if looks_like_file else _read_preset(text)
    if not isinstance(data, Mapping):
        raise ValueError(f"{source}: a spec must be a mapping of keys, got {type(data).__name__}")
    data = dict(data)
    spec_fields = {f.name for f in dataclasses.fields(SweepSpec)}
    for key in data:
        if key not in spec_fields | _EXTRA_KEYS:
            hint = (" (did you mean to put it under 'train:'?)"
                    if _safe_train_fields() and key in _safe_train_fields() else "")
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
        elif key in _train_fields():
            if key in _AXES:
                data[_AXES[key]] = value
            else:
                train[key] = value
        else:
            raise ValueError(f"unknown override {key!r}; use a sweep key "
                             f"{sorted(spec_fields)} or a TrainConfig field")
    data["train"] = train
    try:
        spec = SweepSpec(**data)
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from None
    try:
        spec.configs()  # every key and value checked now, not an hour into the sweep
    except ImportError:  # pragma: no cover - train module unavailable
        pass
    except (ValueError, TypeError) as err:
        raise ValueError(f"{source}: {err}") from None
    return spec


def search(preset: str | os.PathLike[str], out_dir: str | os.PathLike[str], *,
           task: str | None = None, structures: list[str] | None = None,
           widths: list[int] | None = None, jobs: int = 1, show_progress: bool = True,
           executor: str = "local", address: str | None = None,
           **train_overrides: Any) -> SweepOutcome:
    """``einsearch search``: load ``preset`` (name or file), apply overrides, run, report.

    ``executor`` is ``"local"`` (``jobs`` worker processes) or ``"ray"`` (on the cluster at
    ``address``, else a local one); see :mod:`einsearch.search.executors`.
    """
    from .executors import get_executor

    spec = load_spec(preset, task=task, structures=structures, widths=widths, **train_overrides)
    spec.check_buildable()  # every (structure, width) builds, before anything is written
    # a bad executor name or an unreachable Ray address fails here, before anything is written
    with get_executor(executor, jobs, address) as ex:
        return run_sweep(spec, out_dir, jobs=jobs, show_progress=show_progress, executor=ex)


def format_outcome(outcome: SweepOutcome) -> str:
    """Short human summary of a sweep for the command line."""
    lines = [f"{outcome.total} runs: {outcome.skipped} already done, {outcome.finished} finished, "
             f"{outcome.diverged} diverged, {outcome.failed} failed "
             f"({outcome.wall_time_s:.0f} s) -> {outcome.out_dir}"]
    for structure, width, err in outcome.failures:
        lines.append(f"  failed: {structure} width {width}: {err}")
    if outcome.report_error:
        lines.append(f"no report: {outcome.report_error}")
    elif outcome.summary is not None:
        lines.append(f"report: {Path(outcome.out_dir) / 'report.md'}")
        for row in outcome.summary["structures"]:
            m, ci = row["compute_multiplier"], row["compute_multiplier_ci"]
            mult = "n/a" if m is None else f"{m:.3g}x"
            if m is not None and ci is not None and ci[0] is not None and not row.get("is_dense"):
                mult += f" [{ci[0]:.3g}, {ci[1]:.3g}]"
            b = "n/a" if row["exponent"] is None else f"{row['exponent']:.3g}"
            lines.append(f"  {row['name']:<34} multiplier {mult:<22} exponent {b}")
    return "\n".join(lines)


def _safe_train_fields() -> set[str]:
    try:
        return _train_fields()
    except ImportError:  # pragma: no cover
        return set()


# ------------------------------------------------------------------------------------------
# running


@dataclass
class SweepOutcome:
    """What a sweep did. ``summary`` is the report's summary dict (None if it failed)."""

    out_dir: Path
    total: int
    skipped: int
    finished: int = 0
    diverged: int = 0
    failed: int = 0
    failures: list[tuple[str, int, str]] = field(default_factory=list)  # (structure, width, error)
    wall_time_s: float = 0.0
    summary: dict[str, Any] | None = None
    report_error: str | None = None

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.report_error is None


def _default_train():
    from .train import train

    return train


def _write_spec(spec: SweepSpec, out_dir: Path) -> None:
    import yaml

    from einsearch import __version__

    header = (f"# einsearch {__version__} sweep spec, resolved "
              f"{utc_now_iso()}.\n"
              f"# Rerun or resume with: einsearch search --preset {out_dir / 'spec.yaml'} "
              f"--out {out_dir}\n")
    body = yaml.safe_dump(spec.to_dict(), sort_keys=False, default_flow_style=None)
    atomic_write_text(out_dir / "spec.yaml", header + body)


def _cost_key(cfg: Any) -> tuple:
    """Largest runs first, so the last ones to finish are short (better packing over workers)."""
    return (-int(getattr(cfg, "width", 0)) * int(getattr(cfg, "steps", 1)), str(cfg.structure))


def run_sweep(spec: SweepSpec, out_dir: str | os.PathLike[str], jobs: int = 1,
              show_progress: bool = True, *, train_fn: Callable | None = None,
              report: bool = True, n_bootstrap: int = 200,
              executor: Any | None = None) -> SweepOutcome:
    """Run (or resume) ``spec`` into ``out_dir`` and write the report. See the module docstring.

    ``train_fn`` replaces ``einsearch.train.train`` (a module-level function, so that worker
    processes can import it); ``report=False`` skips the report. ``executor`` (an
    :class:`einsearch.search.executors.Executor`) trains the runs; default
    ``LocalExecutor(jobs)``. Whatever trains them, only this process writes the store.
    """
    from .executors import LocalExecutor

    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    own_executor = executor is None
    if executor is None:
        executor = LocalExecutor(jobs)
    t0 = time.perf_counter()
    configs = spec.configs()  # a bad spec fails here, before anything is written
    metas = {s: structure_meta(s) for s in spec.structures}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write_spec(spec, out)

    with ResultStore(out / "results.sqlite") as store:
        done = store.finished_run_ids()
        todo = sorted((c for c in configs if c.run_id() not in done), key=_cost_key)
        outcome = SweepOutcome(out_dir=out, total=len(configs), skipped=len(configs) - len(todo))
        if outcome.skipped:
            log.info("resuming: %d of %d runs already in %s", outcome.skipped, len(configs),
                     store.path)
        bar = _progress_bar(len(configs), outcome.skipped, show_progress)
        try:
            def record(cfg: Any, status: str, payload: Any, seconds: float) -> None:
                meta = metas[cfg.structure]
                if status == "ok":
                    store.record(payload, meta)
                    if payload.status == "diverged":
                        outcome.diverged += 1
                    else:
                        outcome.finished += 1
                    loss = payload.final_eval_loss
                    if loss is None and payload.points:
                        loss = payload.points[-1].train_loss
                    bar.set_postfix_str(f"{cfg.structure} w={cfg.width}: "
                                        f"{payload.status}, loss={_fmt_loss(loss)}")
                else:
                    store.record_failure(cfg, payload, meta, wall_time_s=seconds)
                    outcome.failed += 1
                    last = str(payload).strip().splitlines()[-1] if str(payload).strip() else ""
                    outcome.failures.append((cfg.structure, cfg.width, last))
                    log.error("run %s (structure %s, width %s) failed:\n%s", cfg.run_id(),
                              cfg.structure, cfg.width, payload)
                    bar.set_postfix_str(f"{cfg.structure} w={cfg.width}: FAILED")
                bar.update(1)

            def progress(cfg: Any, step: int, loss: float) -> None:
                bar.set_postfix_str(f"{cfg.structure} w={cfg.width} step {step}: "
                                    f"loss={_fmt_loss(loss)}")

            for res in executor.run(todo, train_fn, progress):
                record(res.config, res.status, res.payload, res.seconds)
        finally:
            bar.close()
            if own_executor:
                executor.close()
    outcome.wall_time_s = time.perf_counter() - t0
    if report:
        from .report import write_report

        try:
            outcome.summary = write_report(out, task=spec.task, n_bootstrap=n_bootstrap)
        except (ValueError, FileNotFoundError) as err:
            outcome.report_error = str(err)
            log.error("no report: %s", err)
    return outcome


def _fmt_loss(x: Any) -> str:
    return "n/a" if x is None or not math.isfinite(float(x)) else f"{float(x):.4g}"


class _NoBar:
    def update(self, n: int = 1) -> None: ...
    def set_postfix_str(self, s: str) -> None: ...
    def close(self) -> None: ...


def _progress_bar(total: int, initial: int, show: bool):
    if not show:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="run", desc="sweep", file=sys.stderr,
                dynamic_ncols=True)
