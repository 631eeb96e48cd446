"""The study loop of ``einsearch explore``: ask Optuna for thetas, train them through the driver
loop (:func:`einsearch.search.driver.drive`), score them, tell Optuna; resumable and shared by
several drivers through the Optuna storage (see :mod:`einsearch.search.explore`).

Trials are addressed through Optuna's public storage API only: a trial's id comes from
``storage.get_trial_id_from_study_id_trial_number``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..driver import drive
from ..spec import is_dense
from ..store import ResultStore
from .objective import params_ratio, score_structure
from .outputs import redact, write_outputs
from .space import PARAM_NAMES, named_as, params_from_theta, theta_from_params
from .spec import DENSE, OBJECTIVES, ExploreSpec, _int_in, load_explore_spec

__all__ = ["explore", "ExploreOutcome", "STUDY_FILE", "HEARTBEAT_S", "GRACE_S"]

log = logging.getLogger(__name__)

STUDY_FILE = "explore.db"
HEARTBEAT_S = 30
GRACE_S = 120


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
        raise ValueError(f"cannot open the Optuna storage {redact(url)!r}: "
                         f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                         ) from None
    return storage


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


def _trial_id(study, storage, number: int) -> int:
    """The storage's id of trial ``number`` of ``study`` (public API, no private attributes)."""
    return storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study.study_name),
                                                           number)


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
            if storage.set_trial_state_values(_trial_id(study, storage, t.number), TrialState.FAIL):
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
            jobs: int | None = 1, executor: Any = "local", address: str | None = None,
            storage: str | None = None, timeout: float | None = None,
            objective: str = "multiplier", train_fn: Callable | None = None,
            show_progress: bool = True, options: Any | None = None,
            precision: str | None = None, sinks: Any = ()) -> ExploreOutcome:
    """Run (or resume) the search of ``preset`` into ``out_dir``; see the module docstring.

    ``sinks`` (trackers) see every recorded run. ``executor`` is an executor name (``local``
    with ``jobs`` workers, ``ray`` at ``address``) or an
    :class:`~einsearch.search.executors.Executor` (closed at the end); ``options``
    (``RunOptions``: device, threads, checkpoints) go to every run; ``precision`` (``bf16``,
    ``fp16``) overrides the spec's ``train.precision``. Every argument
    is checked before anything is trained or written: a bad preset, ``trials``
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
                        train_fn=train_fn, show_progress=show_progress, options=options,
                        precision=precision, sinks=sinks)


def _explore(preset, out_dir, *, trials, jobs, executor, address, storage, timeout, objective,
             train_fn, show_progress, options, precision, sinks) -> ExploreOutcome:
    import optuna

    from ..executors import get_executor

    t0 = time.perf_counter()
    spec, name = load_explore_spec(preset, None if precision is None else {"precision": precision})
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
    # unknown name / unreachable Ray: nothing written
    ex = get_executor(executor, jobs, address) if isinstance(executor, str) else executor
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
        outcome = ExploreOutcome(out_dir=out, study_name=study.study_name, storage=redact(url))
        runner = _Runner(spec, study, study_storage, ex, out, train_fn, multi, show_progress, options, sinks)
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
                 multi: bool, show_progress: bool, options: Any = None, sinks: Any = ()):
        self.spec, self.study, self.ex, self.out = spec, study, executor, out
        self.sinks = list(sinks)
        self.train_fn, self.multi, self.show, self.options = train_fn, multi, show_progress, options
        self.store = ResultStore(out / "results.sqlite")
        self.storage = storage
        self.heart = _Heartbeat(storage)
        self.batch = max(1, int(getattr(executor, "concurrency", 1)))
        self._ids: dict[int, int] = {}  # trial number -> storage trial id

    def trial_id(self, trial) -> int:
        if trial.number not in self._ids:
            self._ids[trial.number] = _trial_id(self.study, self.storage, trial.number)
        return self._ids[trial.number]

    def close(self) -> None:
        self.heart.stop()
        self.store.close()

    def say(self, msg: str) -> None:
        log.info(msg)
        if self.show:
            print(f"explore: {msg}", file=sys.stderr, flush=True)

    # -- training -------------------------------------------------------------------------
    def train(self, configs: list, outcome: ExploreOutcome) -> None:
        stats = drive(self.store, self.ex, configs, options=self.options, train_fn=self.train_fn, sinks=self.sinks)
        outcome.runs_trained += stats.trained
        outcome.runs_failed += stats.failed

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
        key = DENSE if is_dense(str(canon)) else str(canon)
        tax = taxonomy(canon)
        attrs = {"theta": str(theta), "canonical_theta": str(canon), "omega": tax.omega,
                 "psi": tax.psi, "nu": tax.nu, "degenerate": bool(theta.is_degenerate),
                 "named": named_as(theta), "driver": _driver_id()}
        for k, v in attrs.items():
            trial.set_user_attr(k, v)
        self.heart.trial_ids.add(self.trial_id(trial))
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
        self.heart.trial_ids.discard(self.trial_id(trial))

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
                    if self.trial_id(a.trial) in self.heart.trial_ids:
                        self._tell(a.trial, state=TrialState.FAIL)
                        _requeue(self.study, self.storage.get_trial(self.trial_id(a.trial)))
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
                ratio = params_ratio(self.store, a.key, widths[-1], self.spec.task,
                                      self.spec.widths_for(a.key)[-1])
                self._tell(a.trial, values=[value, ratio], ci=ci)
            else:
                a.trial.report(value, len(widths) - 1)
                self._tell(a.trial, values=value, ci=ci)


# ------------------------------------------------------------------------------------------
# outputs


