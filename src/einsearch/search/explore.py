"""``einsearch explore``: search the whole theta space with Optuna (docs/design.md section 9).

Parametrisation. A trial samples five numbers on a grid of step 1/``grid`` (default 1/8, so
equivalent thetas collide instead of differing in the 7th digit): ``in_1, in_2`` in [0, 1]
are sorted (a <= b) and give (alpha, beta, gamma) = (a, b - a, 1 - b), uniform on the input
simplex; ``out_1, out_2`` give (delta, epsilon, phi) the same way; ``rho`` in [0, 1]. Every
valid theta is reachable. Each theta is folded to its canonical form (``Theta.canonical()``)
and keyed by the canonical text, which is also the ``structure`` of its training runs:

* a canonical theta already scored by a finished trial is not trained again: the trial
  reuses that result (user attr ``duplicate_of``); its runs are in the results store anyway;
* a degenerate theta (rho > min(alpha, epsilon): extra rank that adds cost and no
  expressivity) is flagged (user attr ``degenerate``) and, with ``degenerate: prune``
  (default), pruned without training: the same theta with rho = min(alpha, epsilon) expresses
  the same maps for less compute, so it can never be the best; ``degenerate: score`` trains
  and scores it like any other;
* the canonical dense theta scores exactly 1 (it is the reference).

Objective. The compute multiplier over dense (maximised) of the theta on a small fixed sweep
(the preset's widths x seeds x lrs x train settings), estimated by :func:`score_structure`
(the pipeline's estimator, :mod:`einsearch.search.analysis`). Dense's reference runs are
trained once per study, before the first trial, and reused from the results store
``DIR/results.sqlite`` like every other run. The preset's ``widths`` are dense's; with
``match_compute: true`` (the default) a trial's theta trains, for each dense width, at the
width whose training FLOPs per token is closest to dense's there (the sweep's rule,
:meth:`einsearch.search.sweep.SweepSpec.matched_widths`), so its frontier covers dense's
compute window; ``false`` trains it at dense's widths. Every run (dense's and the trials')
uses muP's ``base_width`` = dense's smallest width unless ``train.base_width`` is set.
``--objective multiplier+params`` adds a second objective, the parameter count relative to
dense at dense's largest width, the theta taken at its width matched to it (at equal compute
with ``match_compute``, else at equal width; minimised), for a Pareto front; multi-objective
studies cannot prune (Optuna has no multi-objective pruner), so every trial there trains all
its widths.

Pruning over compute. Trials run in batches of the executor's concurrency; the runs of a batch
are trained width by width in dense's width order, smallest first (step i: each theta at its
width matched to dense's i-th). After each step but the last, every trial of the batch reports
its multiplier on the runs so far (``trial.report``, step = dense width index: dense's widths up
to the i-th against the theta's matched ones) and a ``MedianPruner`` stops trials that are below
the median of earlier trials at that step.

Resuming. The study lives in an Optuna storage (``sqlite:///DIR/explore.db`` by default,
any Optuna storage URL with ``storage=``; the study name is fixed per preset, so several
drivers can share one study). A driver killed at any moment leaves its trials RUNNING; the
next driver on the same host marks them FAIL (their process is gone) and enqueues a retry of
each; trials of a driver on another host are failed and retried once their heartbeat is stale.
The retried trial trains nothing that finished: every finished run is in the results store.
``trials`` is the total number of finished (complete or pruned) trials the study should hold.

Outputs: ``DIR/explore.json`` (every trial) written atomically after every batch, and at the
end ``DIR/explore.md`` with ``explore_objective.png`` and ``explore_taxonomy.png``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import socket
import sys
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._io import atomic_write_bytes

__all__ = ["ExploreSpec", "ExploreOutcome", "load_explore_spec", "explore_preset_names",
           "explore", "score_structure", "theta_from_params", "params_from_theta", "named_as",
           "OBJECTIVES", "DEGENERATE_RULES"]

log = logging.getLogger(__name__)

OBJECTIVES = ("multiplier", "multiplier+params")
DEGENERATE_RULES = ("prune", "score")
DEFAULT_REFERENCES = ("monarch", "low_rank", "kronecker", "tensor_train", "btt")
DENSE = "dense"
PARAM_NAMES = ("in_1", "in_2", "out_1", "out_2", "rho")
STUDY_FILE = "explore.db"
JSON_NAME = "explore.json"
REPORT_NAME = "explore.md"
PLOT_NAMES = ("explore_objective.png", "explore_taxonomy.png")
PREFIX = "explore_"
HEARTBEAT_S = 30
GRACE_S = 120


# ------------------------------------------------------------------------------------------
# spec


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

        from .sweep import SweepSpec

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
            theta = resolve_structure(r)  # ValueError names it
            if str(theta.canonical()) == _DENSE_TEXT:
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

    def sweep(self, structures: Sequence[str]):
        """The SweepSpec that trains ``structures`` (dense not added): ``widths`` are dense's,
        matched per structure with ``match_compute``; ``base_width`` = dense's smallest width
        (or ``train.base_width``) for every structure, so equal configs give equal run ids."""
        from .sweep import SweepSpec

        train = {"base_width": min(self.widths), **self.train}
        return SweepSpec(task=self.task, structures=list(structures), widths=list(self.widths),
                         seeds=self.seeds, lrs=self.lrs, train=train, include_dense=False,
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


_DENSE_TEXT = "(1|0|0|1|0|0|0)"


def _int_in(name: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")
    return value


def explore_preset_names() -> list[str]:
    """Explore presets shipped with the package (``presets/explore_*.yaml``), without prefix."""
    from importlib.resources import files

    folder = files("einsearch.search").joinpath("presets")
    return sorted(p.name[len(PREFIX):-5] for p in folder.iterdir()
                  if p.name.startswith(PREFIX) and p.name.endswith(".yaml"))


def load_explore_spec(preset_or_path: str | os.PathLike[str]) -> tuple[ExploreSpec, str]:
    """(spec, name): a shipped preset (``tiny`` or ``explore_tiny``) or a YAML / TOML file.
    ``name`` (the preset name or the file's stem) names the Optuna study."""
    from importlib.resources import files

    import yaml

    from .sweep import _read_file

    text = os.fspath(preset_or_path)
    path = Path(text).expanduser()
    if path.suffix.lower() in (".yaml", ".yml", ".toml") or os.sep in text or path.exists():
        data, source = _read_file(path)
        name = path.stem
    else:
        name = text[len(PREFIX):] if text.startswith(PREFIX) else text
        if name not in explore_preset_names():
            raise ValueError(f"unknown explore preset {text!r}; known: "
                             f"{', '.join(explore_preset_names())} (or a path to a .yaml file)")
        raw = files("einsearch.search").joinpath("presets", f"{PREFIX}{name}.yaml")
        data, source = yaml.safe_load(raw.read_text(encoding="utf-8")) or {}, f"preset {name!r}"
    if not isinstance(data, Mapping):
        raise ValueError(f"{source}: an explore spec must be a mapping, got "
                         f"{type(data).__name__}")
    known = {f.name for f in dataclasses.fields(ExploreSpec)}
    for key in data:
        if key not in known:
            raise ValueError(f"{source}: unknown key {key!r}; allowed keys are {sorted(known)}")
    try:
        spec = ExploreSpec(**data)
        spec.configs([DENSE])  # every train key and value checked now
    except (ValueError, TypeError) as err:
        raise ValueError(f"{source}: {err}") from None
    return spec, name


# ------------------------------------------------------------------------------------------
# the space


def theta_from_params(params: Mapping[str, float], grid: int = 8):
    """The Theta of a trial's five numbers, snapped to multiples of 1/``grid`` (see module)."""
    from einsearch import Theta

    k = {n: int(round(float(params[n]) * grid)) for n in PARAM_NAMES}
    for n, v in k.items():
        if not 0 <= v <= grid:
            raise ValueError(f"trial parameter {n} = {params[n]!r} is outside [0, 1]")
    a, b = sorted((k["in_1"], k["in_2"]))
    c, d = sorted((k["out_1"], k["out_2"]))
    return Theta(a / grid, (b - a) / grid, (grid - b) / grid, c / grid, (d - c) / grid,
                 (grid - d) / grid, k["rho"] / grid)


def params_from_theta(theta) -> dict[str, float]:
    """Five numbers that map back to ``theta`` (the inverse of :func:`theta_from_params`)."""
    return {"in_1": theta.alpha, "in_2": theta.alpha + theta.beta, "out_1": theta.delta,
            "out_2": theta.delta + theta.epsilon, "rho": theta.rho}


_FAMILIES = (("dense", "dense"), ("low_rank", "low_rank"), ("tensor_train", "kronecker"),
             ("btt", "monarch"), ("low_rank_btt", None))


def named_as(theta) -> str | None:
    """The named structure a theta is (``"btt(0.125)"``, ``"monarch"``), or None if none.

    Two thetas are the same structure when their canonical forms agree; a family with a rank
    parameter matches any rho (its rho=0 member by its own name: kronecker, monarch)."""
    from einsearch import NAMED_STRUCTURES
    from einsearch.theta import _format_number

    canon = theta.canonical().as_tuple()
    for family, at_zero in _FAMILIES:
        ref = NAMED_STRUCTURES[family]() if family == "dense" else NAMED_STRUCTURES[family](0.0)
        for t in (ref, ref.swapped()):
            head = dataclasses.replace(t, rho=canon[6]).canonical().as_tuple()
            if all(abs(x - y) < 1e-9 for x, y in zip(head, canon)):
                if family == "dense":
                    return "dense" if canon[6] == 0 else None
                if canon[6] == 0 and at_zero:
                    return at_zero
                return f"{family}({_format_number(canon[6])})"
    return None


# ------------------------------------------------------------------------------------------
# scoring: the ONE place that turns training runs into an objective value


def score_structure(store: Any, structure: str, *, task: str | None = None,
                    max_width: int | None = None, n_bootstrap: int = 0, min_widths: int = 2,
                    loss: str = "eval", seed: int = 0,
                    structure_max_width: int | None = None
                    ) -> tuple[float, tuple[float, float] | None]:
    """(compute multiplier over dense, 95 % interval or None) of ``structure``'s runs in
    ``store`` against the store's ``dense`` runs, with the pipeline's estimator
    (:func:`einsearch.search.analysis.analyze`: seed-averaged frontiers, laws in a common
    window, headline multiplier at the lowest loss both reach; the interval needs >= 3 seeds).
    Only dense's runs of width <= ``max_width`` and ``structure``'s of width <=
    ``structure_max_width`` (default ``max_width``; its compute-matched width with
    ``match_compute``) count (the pruning steps). NaN when the estimator gives no multiplier
    (too few points or no common loss range: its notes say why)."""
    from .analysis import Curve, analyze, curves_from_store

    if structure == DENSE:
        return 1.0, (1.0, 1.0)
    if structure_max_width is None:
        structure_max_width = max_width
    limit = {DENSE: max_width, structure: structure_max_width}

    def kept(c: Curve) -> bool:
        if c.structure not in limit:
            return False
        bound = limit[c.structure]
        return bound is None or c.width <= bound

    curves = [c for c in curves_from_store(store, task, loss) if kept(c)]
    if not any(c.structure == structure for c in curves) or not any(
            c.structure == DENSE for c in curves):
        return math.nan, None
    res = analyze(curves, dense=DENSE, n_bootstrap=n_bootstrap, min_widths=min_widths, seed=seed)
    row = res[structure]
    if row.compute_multiplier is None or not math.isfinite(row.compute_multiplier):
        log.info("no multiplier for %s: %s", structure, "; ".join(row.notes))
        return math.nan, None
    ci = row.compute_multiplier_ci
    return float(row.compute_multiplier), (None if ci is None else (float(ci[0]), float(ci[1])))


def _params_ratio(store: Any, structure: str, width: int, task: str,
                  structure_width: int | None = None) -> float:
    """Parameters of ``structure``'s model at ``structure_width`` (default ``width``) over
    dense's at ``width`` (second objective)."""
    def params(name: str, w: int) -> float:
        rows = [r for r in store.runs(task=task, structure=name) if r.width == w and r.params]
        return float(rows[0].params) if rows else math.nan

    if structure == DENSE:
        return 1.0
    return params(structure, width if structure_width is None else structure_width) / params(
        DENSE, width)


# ------------------------------------------------------------------------------------------
# storage and study


def _open_storage(url: str):
    import optuna

    retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)
    try:
        if retry is not None:  # optuna >= 4.9
            storage = optuna.storages.RDBStorage(
                url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                heartbeat_stale_trial_callback=retry(max_retry=3))
        else:
            storage = optuna.storages.RDBStorage(
                url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                failed_trial_callback=optuna.storages.RetryFailedTrialCallback(max_retry=3))
        storage.get_all_studies()  # really connect now
    except Exception as err:  # noqa: BLE001 - any driver / URL / permission error
        raise ValueError(f"cannot open the Optuna storage {_redact(url)!r}: "
                         f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                         ) from None
    return storage


def _redact(url: str) -> str:
    """The URL without a password (it goes into logs and explore.json)."""
    if "://" in url and "@" in url.split("://", 1)[1]:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}"
    return url


def _study_name(name: str, objective: str) -> str:
    return f"einsearch-explore-{name}" + ("" if objective == "multiplier" else "-pareto")


def _driver_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _requeue(study, t) -> None:
    attrs = {"retry_of": t.number}
    if "structure" in t.user_attrs:
        attrs["structure"] = t.user_attrs["structure"]
    study.enqueue_trial(dict(t.params), user_attrs=attrs)


def _recover_dead_trials(study, storage) -> int:
    """FAIL + requeue RUNNING trials whose driver process on this host is gone; stale trials
    of other hosts are handled by the storage heartbeat. Returns how many were recovered."""
    import optuna
    from optuna.trial import TrialState

    host = socket.gethostname()
    n = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        driver = t.user_attrs.get("driver", "")
        h, _, pid = driver.rpartition(":")
        if h == host and pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            if storage.set_trial_state_values(t._trial_id, TrialState.FAIL):
                _requeue(study, t)
                n += 1
    optuna.storages.fail_stale_trials(study)
    return n


class _Heartbeat:
    """Records a heartbeat for the driver's running trials every HEARTBEAT_S seconds."""

    def __init__(self, storage):
        self.storage, self.trial_ids = storage, set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(HEARTBEAT_S / 2):
            for tid in list(self.trial_ids):
                try:
                    self.storage.record_heartbeat(tid)
                except Exception:  # noqa: BLE001 - a missed beat is not fatal
                    log.debug("heartbeat for trial %s failed", tid, exc_info=True)

    def stop(self) -> None:
        self._stop.set()


# ------------------------------------------------------------------------------------------
# the loop


@dataclass
class ExploreOutcome:
    out_dir: Path
    study_name: str
    storage: str
    trials_run: int = 0        # trials asked by this driver
    trials_total: int = 0      # finished (complete or pruned) trials in the study
    runs_trained: int = 0
    runs_failed: int = 0
    wall_time_s: float = 0.0
    stopped_by: str = "trials"
    summary: dict[str, Any] | None = None


@dataclass
class _Active:
    trial: Any
    theta: Any
    key: str          # canonical theta text = the runs' structure


def explore(preset: str | os.PathLike[str], out_dir: str | os.PathLike[str], *, trials: int,
            jobs: int = 1, executor: str = "local", address: str | None = None,
            storage: str | None = None, timeout: float | None = None,
            objective: str = "multiplier", train_fn: Callable | None = None,
            show_progress: bool = True) -> ExploreOutcome:
    """Run (or resume) the search of ``preset`` into ``out_dir``; see the module docstring.

    Every argument is checked before anything is trained or written: a bad preset, ``trials``
    < 1, a bad ``timeout`` or ``objective``, an unknown executor, an unreachable Ray address
    or a storage URL that cannot be opened raise ValueError."""
    import optuna

    with warnings.catch_warnings():
        # heartbeats and stale-trial retries are marked experimental; the ask/tell loop
        # records heartbeats itself (optuna warns that it expects Study.optimize)
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message=".*Heartbeat of storage.*")
        return _explore(preset, out_dir, trials=trials, jobs=jobs, executor=executor,
                        address=address, storage=storage, timeout=timeout, objective=objective,
                        train_fn=train_fn, show_progress=show_progress)


def _explore(preset, out_dir, *, trials, jobs, executor, address, storage, timeout, objective,
             train_fn, show_progress) -> ExploreOutcome:
    import optuna

    from .executors import get_executor

    t0 = time.perf_counter()
    spec, name = load_explore_spec(preset)
    _int_in("trials", trials, 1, 10**9)
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                or not timeout > 0):
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    if storage is not None and (not isinstance(storage, str) or "://" not in storage):
        raise ValueError(f"storage must be an Optuna storage URL such as "
                         f"'sqlite:///path/explore.db', got {storage!r}")
    out = Path(out_dir)
    ex = get_executor(executor, jobs, address)  # unknown name / unreachable Ray: nothing written
    try:
        study_storage = _open_storage(storage) if storage is not None else None
        out.mkdir(parents=True, exist_ok=True)
        url = storage or f"sqlite:///{(out / STUDY_FILE).resolve()}"
        if study_storage is None:
            study_storage = _open_storage(url)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        multi = objective != "multiplier"
        study = optuna.create_study(
            study_name=_study_name(name, objective), storage=study_storage,
            directions=["maximize", "minimize"] if multi else ["maximize"],
            sampler=optuna.samplers.TPESampler(seed=spec.sampler_seed, multivariate=True,
                                               n_startup_trials=spec.n_startup_trials,
                                               constant_liar=True),
            pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0),
            load_if_exists=True)
        _check_same_spec(study, spec)
        outcome = ExploreOutcome(out_dir=out, study_name=study.study_name, storage=_redact(url))
        runner = _Runner(spec, study, study_storage, ex, out, train_fn, multi, show_progress)
        try:
            runner.loop(trials, timeout, t0, outcome)
        finally:
            runner.close()
            outcome.trials_total = runner._finished()
            outcome.summary = write_outputs(study, spec, out, objective, url, final=True)
    finally:
        ex.close()
    outcome.wall_time_s = time.perf_counter() - t0
    return outcome


def _check_same_spec(study, spec: ExploreSpec) -> None:
    text = json.dumps(spec.to_dict(), sort_keys=True)
    old = study.user_attrs.get("spec")
    if old is None:
        study.set_user_attr("spec", text)
    elif old != text:
        raise ValueError(f"study {study.study_name!r} in this storage was made with a different "
                         f"explore spec; results would not be comparable. Use another --out / "
                         f"--storage, or the original spec:\n{old}")


class _Runner:
    def __init__(self, spec: ExploreSpec, study, storage, executor, out: Path, train_fn,
                 multi: bool, show_progress: bool):
        from .store import ResultStore

        self.spec, self.study, self.ex, self.out = spec, study, executor, out
        self.train_fn, self.multi, self.show = train_fn, multi, show_progress
        self.store = ResultStore(out / "results.sqlite")
        self.storage = storage
        self.heart = _Heartbeat(storage)
        self.batch = max(1, int(getattr(executor, "concurrency", 1)))

    def close(self) -> None:
        self.heart.stop()
        self.store.close()

    def say(self, msg: str) -> None:
        log.info(msg)
        if self.show:
            print(f"explore: {msg}", file=sys.stderr, flush=True)

    # -- training -------------------------------------------------------------------------
    def train(self, configs: list, outcome: ExploreOutcome) -> None:
        from .store import structure_meta

        done = self.store.finished_run_ids()
        todo = list({c.run_id(): c for c in configs if c.run_id() not in done}.values())
        if not todo:
            return
        for res in self.ex.run(todo, self.train_fn):
            meta = structure_meta(res.config.structure)
            if res.status == "ok":
                self.store.record(res.payload, meta)
                outcome.runs_trained += 1
            else:
                self.store.record_failure(res.config, res.payload, meta, wall_time_s=res.seconds)
                outcome.runs_failed += 1
                log.error("run %s (%s w=%s) failed:\n%s", res.config.run_id(),
                          res.config.structure, res.config.width, res.payload)

    def score(self, key: str, step: int | None, final: bool):
        """The multiplier of ``key`` on dense's widths up to the ``step``-th (all: None)
        against its own runs matched to them."""
        widths = self.spec.widths if step is None else self.spec.widths[:step + 1]
        mine = self.spec.widths_for(key) if key != DENSE else list(self.spec.widths)
        return score_structure(self.store, key, task=self.spec.task, max_width=max(widths),
                               structure_max_width=max(mine[:len(widths)]),
                               n_bootstrap=self.spec.n_bootstrap if final else 0,
                               min_widths=min(self.spec.min_widths, len(widths)),
                               loss=self.spec.loss, seed=self.spec.sampler_seed)

    # -- trials -----------------------------------------------------------------------------
    def _finished(self) -> int:
        from optuna.trial import TrialState

        return len(self.study.get_trials(deepcopy=False,
                                         states=(TrialState.COMPLETE, TrialState.PRUNED)))

    def _enqueue_references(self) -> None:
        from einsearch import resolve_structure

        if self.study.user_attrs.get("references_enqueued"):
            return
        for ref in self.spec.references:
            theta = resolve_structure(ref)
            self.study.enqueue_trial(params_from_theta(theta), user_attrs={"structure": ref},
                                     skip_if_exists=False)
        self.study.set_user_attr("references_enqueued", True)

    def _ask(self) -> _Active | None:
        """Ask one trial; settle it at once (duplicate, degenerate, dense) or return it."""
        from optuna.trial import TrialState

        from einsearch import resolve_structure, taxonomy

        step = 1.0 / self.spec.grid
        trial = self.study.ask()
        params = {n: trial.suggest_float(n, 0.0, 1.0, step=step) for n in PARAM_NAMES}
        structure = trial.user_attrs.get("structure")
        theta = resolve_structure(structure) if structure else theta_from_params(params,
                                                                                 self.spec.grid)
        canon = theta.canonical()
        key = DENSE if str(canon) == _DENSE_TEXT else str(canon)
        tax = taxonomy(canon)
        attrs = {"theta": str(theta), "canonical_theta": str(canon), "omega": tax.omega,
                 "psi": tax.psi, "nu": tax.nu, "degenerate": bool(theta.is_degenerate),
                 "named": named_as(theta), "driver": _driver_id()}
        for k, v in attrs.items():
            trial.set_user_attr(k, v)
        self.heart.trial_ids.add(trial._trial_id)
        if theta.is_degenerate and self.spec.degenerate == "prune":
            trial.set_user_attr("pruned_because", "degenerate: rho > min(alpha, epsilon)")
            self._tell(trial, state=TrialState.PRUNED)
            return None
        if key == DENSE:
            self._tell(trial, values=[1.0, 1.0] if self.multi else 1.0, ci=(1.0, 1.0))
            return None
        for old in self.study.get_trials(deepcopy=False,
                                         states=(TrialState.COMPLETE, TrialState.PRUNED)):
            if (old.user_attrs.get("canonical_theta") == attrs["canonical_theta"]
                    and "pruned_because" not in old.user_attrs
                    and "duplicate_of" not in old.user_attrs):
                trial.set_user_attr("duplicate_of", old.number)
                if old.state == TrialState.COMPLETE:
                    ci = old.user_attrs.get("ci")
                    self._tell(trial, values=old.values if self.multi else old.value,
                               ci=tuple(ci) if ci else None)
                else:
                    self._tell(trial, state=TrialState.PRUNED)
                return None
        return _Active(trial, theta, key)

    def _tell(self, trial, values=None, state=None, ci=None) -> None:
        if ci is not None:
            trial.set_user_attr("ci", list(ci))
        self.study.tell(trial, values=values, state=state)
        self.heart.trial_ids.discard(trial._trial_id)

    def loop(self, n_trials: int, timeout: float | None, t0: float,
             outcome: ExploreOutcome) -> None:
        from optuna.exceptions import TrialPruned  # noqa: F401 - documented semantics
        from optuna.trial import TrialState

        recovered = _recover_dead_trials(self.study, self.storage)
        if recovered:
            self.say(f"{recovered} trial(s) of a killed driver re-queued")
        self._enqueue_references()
        self.say(f"training dense's reference runs ({len(self.spec.widths)} widths) "
                 f"on {self.ex.describe()}")
        self.train(self.spec.configs([DENSE]), outcome)
        while True:
            if timeout is not None and time.perf_counter() - t0 > timeout:
                outcome.stopped_by = "timeout"
                break
            remaining = n_trials - self._finished()
            if remaining <= 0:
                break
            active: list[_Active] = []
            while len(active) < min(self.batch, remaining) and remaining > 0:
                a = self._ask()
                outcome.trials_run += 1
                if a is None:
                    remaining -= 1
                else:
                    active.append(a)
            if not active:
                continue
            try:
                self._run_batch(active, outcome)
            except BaseException:
                for a in active:  # interrupted: give the trials back, re-queued
                    if a.trial._trial_id in self.heart.trial_ids:
                        self._tell(a.trial, state=TrialState.FAIL)
                        _requeue(self.study, self.storage.get_trial(a.trial._trial_id))
                raise
            write_outputs(self.study, self.spec, self.out, "multi" if self.multi else "multiplier",
                          None, final=False)

    def _run_batch(self, active: list[_Active], outcome: ExploreOutcome) -> None:
        from optuna.trial import TrialState

        widths = self.spec.widths
        for i, w in enumerate(widths):
            self.say(f"trials {[a.trial.number for a in active]}: dense width {w}: "
                     + ", ".join(f"{a.key} at {self.spec.widths_for(a.key)[i]}" for a in active))
            self.train(self.spec.configs([a.key for a in active], step=i), outcome)
            if i == len(widths) - 1:
                break
            if self.multi:
                continue  # no pruning for multi-objective studies
            still = []
            for a in active:
                value, _ = self.score(a.key, i, final=False)
                if math.isfinite(value):
                    a.trial.report(value, i)
                    if a.trial.should_prune():
                        a.trial.set_user_attr("pruned_because", f"median pruner after width {w}")
                        self._tell(a.trial, state=TrialState.PRUNED)
                        continue
                still.append(a)
            active = still
            if not active:
                return
        for a in active:
            value, ci = self.score(a.key, None, final=True)
            if not math.isfinite(value):
                a.trial.set_user_attr("pruned_because", "no multiplier (estimator notes)")
                self._tell(a.trial, state=TrialState.PRUNED)
                continue
            if self.multi:
                ratio = _params_ratio(self.store, a.key, widths[-1], self.spec.task,
                                      self.spec.widths_for(a.key)[-1])
                self._tell(a.trial, values=[value, ratio], ci=ci)
            else:
                a.trial.report(value, len(widths) - 1)
                self._tell(a.trial, values=value, ci=ci)


# ------------------------------------------------------------------------------------------
# outputs


def _trial_rows(study) -> list[dict[str, Any]]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        u = t.user_attrs
        row = {"number": t.number, "theta": u.get("theta"),
               "canonical_theta": u.get("canonical_theta"), "omega": u.get("omega"),
               "psi": u.get("psi"), "nu": u.get("nu"), "named": u.get("named"),
               "degenerate": u.get("degenerate"), "state": t.state.name}
        if len(study.directions) == 1:
            row["value"] = t.value if t.state.name == "COMPLETE" else None
        else:
            row["values"] = list(t.values) if t.values is not None else None
        row["ci"] = u.get("ci")
        row["intermediate"] = {str(k): v for k, v in sorted(t.intermediate_values.items())}
        for k in ("duplicate_of", "pruned_because", "retry_of", "structure"):
            if k in u:
                row[k] = u[k]
        rows.append(row)
    return rows


def _ratio_interval(a: tuple[float, tuple | None], b: tuple[float, tuple | None]):
    """m_a / m_b with a 95 % interval from the two intervals (log-normal approximation,
    independent estimates): None when either has no interval."""
    (ma, ca), (mb, cb) = a, b
    ratio = ma / mb
    if not ca or not cb or min(ca[0], cb[0]) <= 0:
        return ratio, None
    se = [(math.log(c[1]) - math.log(c[0])) / (2 * 1.96) for c in (ca, cb)]
    half = 1.96 * math.sqrt(se[0] ** 2 + se[1] ** 2)
    return ratio, (ratio * math.exp(-half), ratio * math.exp(half))


def _comparison(rows: list[dict]) -> dict[str, Any] | None:
    done = [r for r in rows if r.get("value") is not None and "duplicate_of" not in r]
    named = [r for r in done if r["named"] and r["named"] != "dense"]
    novel = [r for r in done if not r["named"]]
    if not named or not novel:
        return None
    bn = max(named, key=lambda r: r["value"])
    bv = max(novel, key=lambda r: r["value"])
    ratio, ci = _ratio_interval((bv["value"], bv["ci"]), (bn["value"], bn["ci"]))
    if ci is None:
        verdict = ("no interval (fewer than 3 seeds per width, or the estimator gave none): "
                   "the point estimates alone cannot say")
    elif ci[0] > 1:
        verdict = "yes: the interval of the ratio lies above 1"
    elif ci[1] < 1:
        verdict = "no: the best named structure is better (the interval lies below 1)"
    else:
        verdict = "undecided: the interval of the ratio contains 1"
    return {"best_novel": bv["canonical_theta"], "best_novel_trial": bv["number"],
            "best_novel_multiplier": bv["value"], "best_named": bn["named"],
            "best_named_trial": bn["number"], "best_named_multiplier": bn["value"],
            "ratio": ratio, "ratio_ci": list(ci) if ci else None, "novel_beats_named": verdict}


def write_outputs(study, spec: ExploreSpec, out: Path, objective: str, url: str | None,
                  final: bool) -> dict[str, Any]:
    """explore.json (always) and, when ``final``, explore.md and its two plots."""
    rows = _trial_rows(study)
    multi = len(study.directions) > 1
    summary: dict[str, Any] = {
        "study": study.study_name,
        "directions": [d.name.lower() for d in study.directions],
        "objective": "compute multiplier over dense" + (" and params / dense" if multi else ""),
        "spec": spec.to_dict(),
        "trials": rows,
    }
    if url is not None:
        summary["storage"] = _redact(url)
    if not multi:
        summary["comparison"] = _comparison(rows)
    else:
        summary["pareto_front"] = [t.number for t in study.best_trials]
    atomic_write_bytes(out / JSON_NAME, (json.dumps(summary, indent=2, default=str) + "\n").encode())
    if final:
        try:
            _plot_objective(rows, multi, out / PLOT_NAMES[0])
            _plot_taxonomy(rows, multi, out / PLOT_NAMES[1])
        except Exception as err:  # noqa: BLE001 - a plot must not lose the study's report
            log.error("plots failed: %s", err)
        atomic_write_bytes(out / REPORT_NAME, _markdown(summary, multi).encode())
    return summary


def _objective_value(r: dict, multi: bool) -> float | None:
    if multi:
        return r["values"][0] if r.get("values") else None
    return r.get("value")


def _plot_objective(rows: list[dict], multi: bool, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    done = [(r["number"], _objective_value(r, multi), r) for r in rows]
    ok = [(n, v) for n, v, r in done if v is not None]
    pruned = [n for n, v, r in done if v is None and r["state"] == "PRUNED"]
    named = [(n, v) for n, v, r in done if v is not None and r["named"]]
    if ok:
        ax.scatter([n for n, _ in ok], [v for _, v in ok], s=18, c="tab:blue", label="novel theta")
        best, xs, ys = -math.inf, [], []
        for n, v in sorted(ok):
            best = max(best, v)
            xs.append(n)
            ys.append(best)
        ax.step(xs, ys, where="post", c="k", lw=1, label="best so far")
    if named:
        ax.scatter([n for n, _ in named], [v for _, v in named], s=30, marker="s", c="tab:orange",
                   label="named structure")
    if pruned:
        lo = min((v for _, v in ok), default=1.0)
        ax.scatter(pruned, [lo * 0.9] * len(pruned), marker="x", c="0.6", s=14,
                   label="pruned (no value)")
    ax.axhline(1.0, c="0.5", ls="--", lw=0.8)
    ax.set_xlabel("trial")
    ax.set_ylabel("compute multiplier over dense")
    ax.set_yscale("log")
    ax.set_title("explore: objective by trial")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path.with_name(f".{path.name}.tmp.png"), dpi=110)
    os.replace(path.with_name(f".{path.name}.tmp.png"), path)
    plt.close(fig)


def _plot_taxonomy(rows: list[dict], multi: bool, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [(r["omega"], r["psi"], r["nu"], v, r) for r in rows
           if (v := _objective_value(r, multi)) is not None and r.get("omega") is not None]
    from matplotlib.colors import TwoSlopeNorm

    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2), layout="constrained")
    pairs = (("omega", "psi", 0, 1), ("omega", "nu", 0, 2), ("psi", "nu", 1, 2))
    vals = [math.log2(p[3]) for p in pts]
    # diverging around m = 1 (log2 m = 0): blue cheaper than dense, red dearer
    span = max([abs(v) for v in vals] + [0.1])
    norm = TwoSlopeNorm(vcenter=0.0, vmin=-span, vmax=span)
    sc = None
    for ax, (xl, yl, i, j) in zip(axes, pairs):
        if pts:
            sc = ax.scatter([p[i] for p in pts], [p[j] for p in pts], c=vals, cmap="coolwarm_r", norm=norm,
                            s=[90 if p[4]["named"] else 45 for p in pts], marker="o", alpha=0.9,
                            edgecolors=["k" if p[4]["named"] else "none" for p in pts], linewidths=1.2)
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        ax.margins(0.12)
        ax.grid(alpha=0.3)
    if sc is not None:
        fig.colorbar(sc, ax=axes, label="log2 compute multiplier over dense\n(ringed: named structures)", shrink=0.9)
    fig.suptitle("explore: taxonomy of the scored thetas")
    fig.savefig(path.with_name(f".{path.name}.tmp.png"), dpi=110)
    os.replace(path.with_name(f".{path.name}.tmp.png"), path)
    plt.close(fig)


def _fmt(x: Any, d: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{d}g}"


def _ci(ci: Any) -> str:
    return "n/a" if not ci else f"[{_fmt(ci[0])}, {_fmt(ci[1])}]"


def _markdown(summary: dict[str, Any], multi: bool) -> str:
    rows = summary["trials"]
    states: dict[str, int] = {}
    for r in rows:
        states[r["state"]] = states.get(r["state"], 0) + 1
    spec = summary["spec"]
    lines = [f"# einsearch explore: {summary['study']}", "",
             f"Task `{spec['task']}`, dense widths {spec['widths']}"
             + (" (each theta at the widths whose FLOPs/token match them)"
                if spec.get("match_compute") else " (every theta at the same widths)")
             + f", seeds {spec['seeds']}, "
             f"lrs {spec['lrs']}, train {spec['train']}; exponents on a 1/{spec['grid']} grid; "
             f"degenerate thetas: {spec['degenerate']}.",
             f"Objective: {summary['objective']} ({', '.join(summary['directions'])}), scored "
             "by `einsearch.search.analysis` (headline multiplier at the lowest loss both "
             "frontiers reach; 95 % seed-bootstrap interval, none with fewer than 3 seeds).",
             f"Trials: {len(rows)} (" + ", ".join(f"{v} {k.lower()}" for k, v in
                                                  sorted(states.items())) + ").", ""]
    scored = [r for r in rows if _objective_value(r, multi) is not None
              and "duplicate_of" not in r]
    if multi:
        front = set(summary.get("pareto_front", []))
        best = sorted((r for r in scored if r["number"] in front),
                      key=lambda r: -r["values"][0])
        lines += ["## Pareto front (multiplier up, params / dense down)", "",
                  "Multi-objective studies cannot prune: every trial trained all widths.", ""]
    else:
        best = sorted(scored, key=lambda r: -r["value"])[:10]
        lines += ["## Best thetas", ""]
    lines += ["| trial | canonical theta | named | multiplier | 95 % CI | omega | psi | nu |"
              + (" params/dense |" if multi else ""),
              "|---|---|---|---|---|---|---|---|" + ("---|" if multi else "")]
    for r in best:
        v = _objective_value(r, multi)
        lines.append(f"| {r['number']} | `{r['canonical_theta']}` | {r['named'] or '-'} | "
                     f"{_fmt(v)} | {_ci(r['ci'])} | {_fmt(r['omega'])} | {_fmt(r['psi'])} | "
                     f"{_fmt(r['nu'])} |" + (f" {_fmt(r['values'][1])} |" if multi else ""))
    if best:
        b = best[0]
        lines += ["", f"The best theta `{b['canonical_theta']}` sits at omega = "
                      f"{_fmt(b['omega'])}, psi = {_fmt(b['psi'])}, nu = {_fmt(b['nu'])} "
                      "(omega: parameter sharing, psi: rank exponent, nu: compute exponent)."]
    cmp_ = summary.get("comparison")
    lines += ["", "## Does a theta that is none of the named structures beat every named one?",
              ""]
    if cmp_ is None:
        lines.append("Not answerable yet: it needs at least one scored named structure and one "
                     "scored novel theta" + (" (and a single objective)." if multi else "."))
    else:
        lines.append(f"Best novel theta `{cmp_['best_novel']}` (trial {cmp_['best_novel_trial']},"
                     f" multiplier {_fmt(cmp_['best_novel_multiplier'])}) against the best named "
                     f"structure {cmp_['best_named']} (trial {cmp_['best_named_trial']}, "
                     f"multiplier {_fmt(cmp_['best_named_multiplier'])}): ratio "
                     f"{_fmt(cmp_['ratio'])}, 95 % interval {_ci(cmp_['ratio_ci'])} (log-normal "
                     f"combination of the two bootstrap intervals). Verdict: "
                     f"{cmp_['novel_beats_named']}. The best of many trials is selected, so its "
                     "estimate is biased upwards; confirm it with a dedicated sweep.")
    lines += ["", "## Plots", "", f"![objective by trial]({PLOT_NAMES[0]})", "",
              f"![taxonomy]({PLOT_NAMES[1]})", ""]
    return "\n".join(lines)
