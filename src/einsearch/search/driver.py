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
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .store import ResultStore, structure_meta

if TYPE_CHECKING:  # pragma: no cover
    from .config import RunOptions
    from .executors import Executor

__all__ = ["drive", "DriveStats", "Sink", "ProgressBar", "run_cost"]

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


@dataclass
class DriveStats:
    """What a drive did. ``failures``: (structure, width, last line of the error) per failed run."""

    total: int
    skipped: int
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


def drive(store: ResultStore, executor: Executor, configs: Iterable[Any], *,
          options: RunOptions | None = None, train_fn: Callable | None = None,
          sinks: Sequence[Sink] = ()) -> DriveStats:
    """Train every config of ``configs`` not yet final in ``store`` on ``executor`` and record
    each result (or failure) as it arrives; see the module docstring.

    ``options`` (device, threads, checkpoints) go to every run; ``train_fn`` replaces
    ``einsearch.search.train.train`` (a module-level function, so that workers can import it).
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
    try:
        for outcome in executor.run(todo, train_fn, progress, options):
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
        for sink in sinks:
            sink.close()
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
