"""The driver loop: the one place that turns run configs into stored results.

``einsearch search`` (:func:`einsearch.search.sweep.run_sweep`), ``einsearch explore`` (one call
per batch of trials at a width) and ``--lr-check`` all hand their runs to :func:`drive`::

    skip finished -> execute (an executor: in-process, worker processes, Ray)
                  -> record the result, or the failure -> notify the sinks

Only the driver writes the store (docs/design.md section 6): workers return results and the
driver records each run in one transaction as it finishes, so a killed driver loses no finished
run. A run whose trainer raised is recorded ``failed`` (the next drive retries it); ``finished``
and ``diverged`` are final. Sinks (:class:`Sink`: progress bars, experiment trackers) see every
recorded run; they never see a run twice and never block the store.

Several drivers on one output folder (a second terminal, a cluster job started twice) share the
work: each run is claimed in the store just before it is handed to a worker, a run another live
driver holds is left to it, and recording a run releases its claim. A heartbeat thread keeps this
driver's claims fresh; the claims of a driver that died are taken over once its process is gone
(same host) or its heartbeat is older than ``CLAIM_TTL_S``. No run is trained twice.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .store import ResultStore, driver_id, structure_meta

if TYPE_CHECKING:  # pragma: no cover
    from .config import RunOptions
    from .executors import Executor

__all__ = ["drive", "DriveStats", "Sink", "ProgressBar", "run_cost", "CLAIM_TTL_S", "HEARTBEAT_S"]

#: a claim whose driver has not beaten for this long is free (the driver died on another host)
CLAIM_TTL_S = 60.0
#: seconds between a driver's heartbeats
HEARTBEAT_S = 10.0

log = logging.getLogger(__name__)


class Sink:
    """Notified by :func:`drive`; every method is optional."""

    def on_start(self, total: int, skipped: int) -> None:  # noqa: B027 - optional hook
        """Before the first run: ``total`` configs, ``skipped`` of them already in the store."""

    def on_progress(self, config: Any, step: int, loss: float) -> None:  # noqa: B027 - optional hook
        """A logged point of a run training in this process."""

    def on_run(self, config: Any, status: str, result: Any, error: str | None) -> None:  # noqa: B027
        """A run was recorded: ``status`` is ``finished``, ``diverged`` or ``failed`` (then
        ``result`` is None and ``error`` the error text)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """After the last run (also when the drive stops on an exception)."""

    def on_report(self, summary: dict[str, Any], out_dir: Any) -> None:  # noqa: B027 - optional hook
        """The command wrote its report (``summary``, the files in ``out_dir``) after the loop."""


@dataclass
class DriveStats:
    """What a drive did. ``failures``: (structure, width, last line of the error) per failed run."""

    total: int
    skipped: int
    elsewhere: int = 0   # held by another driver when this one reached them
    finished: int = 0
    diverged: int = 0
    failed: int = 0
    failures: list[tuple[str, int, str]] = field(default_factory=list)

    @property
    def trained(self) -> int:
        return self.finished + self.diverged


def run_cost(config: Any) -> tuple:
    """Largest runs first, so the last ones to finish are short (better packing over workers)."""
    return (-int(getattr(config, "width", 0)) * int(getattr(config, "steps", 1)), str(config.structure))


def unique_by_run_id(configs: Iterable[Any]) -> list[Any]:
    """``configs`` without repeats of a run id (first kept, order kept)."""
    first: dict[str, Any] = {}
    for c in configs:
        first.setdefault(c.run_id(), c)
    return list(first.values())


class _Heartbeat:
    """Refreshes ``driver``'s claims every ``HEARTBEAT_S`` seconds on a connection of its own."""

    def __init__(self, path: Any, driver: str):
        self._store = ResultStore(path)
        self._driver = driver
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="einsearch-claims-heartbeat", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self._store.heartbeat(self._driver)
            except Exception:  # noqa: BLE001 - a missed beat only risks a takeover after the TTL
                log.debug("claims heartbeat failed", exc_info=True)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._store.close()


def drive(store: ResultStore, executor: Executor, configs: Iterable[Any], *,
          options: RunOptions | None = None, train_fn: Callable | None = None,
          sinks: Sequence[Sink] = ()) -> DriveStats:
    """Train every config of ``configs`` not yet final in ``store`` on ``executor`` and record
    each result (or failure) as it arrives; see the module docstring.

    ``options`` (device, threads, checkpoints) go to every run; ``train_fn`` replaces
    ``einsearch.search.train.train`` (a module-level function, so that workers can import it).
    Runs another live driver holds are left to it (``DriveStats.elsewhere``).
    """
    unique = unique_by_run_id(configs)
    done = store.finished_run_ids()
    todo = sorted((c for c in unique if c.run_id() not in done), key=run_cost)
    stats = DriveStats(total=len(unique), skipped=len(unique) - len(todo))
    if stats.skipped:
        log.info("%d of %d runs already in %s", stats.skipped, stats.total, store.path)
    for sink in sinks:
        sink.on_start(stats.total, stats.skipped)

    def progress(config: Any, step: int, loss: float) -> None:
        for sink in sinks:
            sink.on_progress(config, step, loss)

    execution = {"executor": executor.describe(), "concurrency": executor.concurrency,
                 "runs_per_device": executor.runs_per_device}
    me = driver_id()

    def claimed(candidates: list[Any]) -> Iterator[Any]:
        for cfg in candidates:
            if store.claim(cfg.run_id(), me, CLAIM_TTL_S):
                yield cfg
            else:
                stats.elsewhere += 1
                log.info("run %s (%s w=%s) is being trained by another driver; left to it", cfg.run_id(),
                         cfg.structure, cfg.width)

    heartbeat = _Heartbeat(store.path, me)
    try:
        for outcome in executor.run(claimed(todo), train_fn, progress, options):
            cfg = outcome.config
            meta = structure_meta(cfg.structure)
            if outcome.status == "ok":
                result = outcome.payload
                env = {**execution, **(getattr(result, "environment", None) or {}), "attempts": outcome.attempts}
                store.record(result, meta, execution=env)
                status = str(result.status)
                if status == "diverged":
                    stats.diverged += 1
                else:
                    stats.finished += 1
                for sink in sinks:
                    sink.on_run(cfg, status, result, None)
                continue
            store.record_failure(cfg, outcome.payload, meta, wall_time_s=outcome.seconds, execution=execution)
            stats.failed += 1
            text = str(outcome.payload).strip()
            stats.failures.append((cfg.structure, cfg.width, text.splitlines()[-1] if text else ""))
            log.error("run %s (structure %s, width %s) failed:\n%s", cfg.run_id(), cfg.structure, cfg.width,
                      outcome.payload)
            for sink in sinks:
                sink.on_run(cfg, "failed", None, str(outcome.payload))
    finally:
        heartbeat.stop()
        store.release(me)  # whatever this driver still holds (it stopped early) is free again
        for sink in sinks:
            sink.close()
    if stats.elsewhere:
        log.warning("%d run(s) were left to another driver on %s; its report will include them",
                    stats.elsewhere, store.path)
    return stats


def _fmt_loss(x: Any) -> str:
    return "n/a" if x is None or not math.isfinite(float(x)) else f"{float(x):.4g}"


class ProgressBar(Sink):
    """A tqdm bar over the runs on stderr: one tick per recorded run, the last result beside it."""

    def __init__(self, desc: str = "sweep"):
        self.desc = desc
        self._bar: Any = None

    def on_start(self, total: int, skipped: int) -> None:
        import sys

        from tqdm.auto import tqdm

        self._bar = tqdm(total=total, initial=skipped, unit="run", desc=self.desc, file=sys.stderr,
                         dynamic_ncols=True)

    def on_progress(self, config: Any, step: int, loss: float) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(f"{config.structure} w={config.width} step {step}: loss={_fmt_loss(loss)}")

    def on_run(self, config: Any, status: str, result: Any, error: str | None) -> None:
        if self._bar is None:
            return
        if result is None:
            self._bar.set_postfix_str(f"{config.structure} w={config.width}: FAILED")
        else:
            loss = result.final_eval_loss
            if loss is None and result.points:
                loss = result.points[-1].train_loss
            self._bar.set_postfix_str(f"{config.structure} w={config.width}: {status}, loss={_fmt_loss(loss)}")
        self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
