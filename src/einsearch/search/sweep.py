"""``einsearch search``: train every (structure x width x seed x lr) of a spec, then report.

A sweep is a :class:`~einsearch.search.spec.SweepSpec` (a shipped preset or the user's file,
:func:`~einsearch.search.spec.load_spec`). :func:`run_sweep`

1. writes the resolved spec to ``out_dir/spec.yaml``;
2. hands its runs to the driver loop (:func:`einsearch.search.driver.drive`) with the results
   store ``out_dir/results.sqlite``: runs already finished (or diverged) there are skipped, so a
   killed sweep restarted with the same command resumes where it stopped; the rest train on the
   executor (:mod:`einsearch.search.executors`) and each is recorded as it completes;
3. writes the report (:func:`einsearch.search.report.write_report`), the step after the loop.

``einsearch search --dry-run`` prints the run table without training; ``--lr-check`` trains
each structure at 1/3, 1 and 3 x the transferred lr (:mod:`einsearch.search.runplan`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ._io import atomic_write_text, utc_now_iso
from .driver import DriveStats, ProgressBar, Sink, drive
from .spec import SweepSpec, load_spec
from .store import ResultStore

__all__ = ["SweepOutcome", "run_sweep", "search", "format_outcome", "DEFAULT_BOOTSTRAP"]

log = logging.getLogger(__name__)

#: seed-bootstrap replicates of the report a sweep writes
DEFAULT_BOOTSTRAP = 200


@dataclass
class SweepOutcome(DriveStats):
    """What a sweep did: its drive's counts (:class:`DriveStats`), then the report's
    ``summary`` dict (None if it failed)."""

    out_dir: Path = field(kw_only=True)
    wall_time_s: float = 0.0
    summary: dict[str, Any] | None = None
    report_error: str | None = None

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.report_error is None

    @classmethod
    def of(cls, out_dir: Path, stats: DriveStats) -> "SweepOutcome":
        counts = {f.name: getattr(stats, f.name) for f in fields(DriveStats)}
        return cls(out_dir=out_dir, **{**counts, "failures": list(stats.failures)})


def _write_spec(spec: SweepSpec, out_dir: Path) -> None:
    import yaml

    from einsearch import __version__

    header = (f"# einsearch {__version__} sweep spec, resolved {utc_now_iso()}.\n"
              f"# Rerun or resume with: einsearch search --preset {out_dir / 'spec.yaml'} --out {out_dir}\n")
    body = yaml.safe_dump(spec.to_dict(), sort_keys=False, default_flow_style=None)
    atomic_write_text(out_dir / "spec.yaml", header + body)


def run_sweep(spec: SweepSpec, out_dir: str | os.PathLike[str], executor: Any | None = None, *,
              options: Any | None = None, show_progress: bool = True, train_fn: Callable | None = None,
              report: bool = True, n_bootstrap: int = DEFAULT_BOOTSTRAP,
              sinks: Sequence[Sink] = ()) -> SweepOutcome:
    """Run (or resume) ``spec`` into ``out_dir`` and write the report. See the module docstring.

    ``executor`` (an :class:`einsearch.search.executors.Executor`; default: this process) trains
    the runs with ``options`` (``RunOptions``: device, threads, checkpoints); ``train_fn``
    replaces ``einsearch.search.train.train``; ``report=False`` skips the report, which covers
    the spec's runs only (``einsearch report`` reads the whole store); ``sinks`` are
    told of every recorded run (trackers). Whatever trains the runs, only this process writes
    the store.
    """
    from .executors import LocalExecutor

    t0 = time.perf_counter()
    configs = spec.configs()  # a bad spec fails here, before anything is written
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write_spec(spec, out)
    own = executor is None
    ex = LocalExecutor(1) if executor is None else executor
    all_sinks = [*([ProgressBar("sweep")] if show_progress else []), *sinks]
    try:
        with ResultStore(out / "results.sqlite") as store:
            stats = drive(store, ex, configs, options=options, train_fn=train_fn, sinks=all_sinks)
    finally:
        if own:
            ex.close()
    outcome = SweepOutcome.of(out, stats)
    outcome.wall_time_s = time.perf_counter() - t0
    if report:
        from .report import write_report

        try:
            # the sweep's own runs: a store copied in to reuse runs may hold others with other settings
            outcome.summary = write_report(out, task=spec.task, n_bootstrap=n_bootstrap,
                                           run_ids={c.run_id() for c in configs})
        except (ValueError, FileNotFoundError) as err:
            outcome.report_error = str(err)
            log.error("no report: %s", err)
        if outcome.summary is not None:
            for sink in sinks:
                sink.on_report(outcome.summary, out)
    return outcome


def search(preset: str | os.PathLike[str], out_dir: str | os.PathLike[str], *,
           task: str | None = None, structures: list[str] | None = None,
           widths: list[int] | None = None, jobs: int = 1, show_progress: bool = True,
           executor: str = "local", address: str | None = None, options: Any | None = None,
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
        return run_sweep(spec, out_dir, ex, options=options, show_progress=show_progress)


def format_outcome(outcome: SweepOutcome) -> str:
    """Short human summary of a sweep for the command line."""
    lines = [f"{outcome.total} runs: {outcome.skipped} already done, {outcome.finished} finished, "
             f"{outcome.diverged} diverged, {outcome.failed} failed "
             f"({outcome.wall_time_s:.0f} s) -> {outcome.out_dir}"]
    if outcome.elsewhere:
        lines.append(f"  {outcome.elsewhere} run(s) were being trained by another driver on this folder: "
                     "its report will include them (or run this command again when it is done)")
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
