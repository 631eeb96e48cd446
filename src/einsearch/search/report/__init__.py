"""Report of a sweep: summary.json, plots and report.md, from the results store alone.

``write_report(out_dir)`` reads ``out_dir/results.sqlite`` (nothing else), measures every
structure's compute multiplier over dense with :func:`einsearch.search.analysis.analyze`
(seed-averaged frontiers without the transient, laws fitted in a common compute window,
m(L) = C_dense(L) / C_S(L) without extrapolation, seed-bootstrap intervals; docs/design.md
section 6) and writes:

* ``summary.json``           settings, notes and per structure: ``compute_multiplier`` at
  ``reference_loss`` with ``compute_multiplier_ci`` (null: no interval), ``multiplier_by_loss``,
  ``exponent``, ``exponent_delta``, ``varies``, ``omega``/``psi``/``nu`` (null for MoE kinds),
  ``diagnostics``; ``head_to_head`` for structures with a ``baseline`` (BTT-MoE vs FFN-MoE)
* ``loss_vs_compute.png``    seed-averaged curves (faint), frontier points, fitted laws inside
  their window (solid), the window (shaded), dense's law in the same window (dashed)
* ``multiplier_vs_loss.png`` m(L) per structure with its 95% band (seed bootstrap, t quantile)
* ``multipliers.png``        headline m at the reference loss with its interval, coloured by psi
* ``taxonomy_{omega,psi,nu}.png``: headline m against each taxonomy value
* ``report.md``              a reading that claims only what the intervals support, tables,
  diagnostics and the figures

Everything is computed and rendered in memory first; only then is each file written
atomically (temporary file, then ``os.replace``), so an error leaves the previous report (or
none), never a half-written one.

Modules: :mod:`~.summary` (the numbers: store -> analysis -> summary dict), :mod:`~.prose`
(the reading and report.md), :mod:`~.plots` (the figures), :mod:`~.fmt` (number formatting).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .._io import atomic_write_bytes
from ..analysis import DEFAULT_TRANSIENT_FRACTION
from ..store import ResultStore
from .plots import PLOT_NAMES, render_plots
from .prose import STORE_NAME, markdown
from .summary import DEFAULT_BOOTSTRAP, LOSSES, Report, StructureInfo, build_report, check_options, summary_dict

__all__ = ["write_report", "build_report", "Report", "StructureInfo", "STORE_NAME", "PLOT_NAMES", "LOSSES",
           "DEFAULT_BOOTSTRAP"]


def write_report(out_dir: str | os.PathLike[str], *, task: str | None = None,
                 loss: str = "eval", n_bootstrap: int = DEFAULT_BOOTSTRAP, seed: int = 0,
                 transient: float = DEFAULT_TRANSIENT_FRACTION,
                 offset: None | str | float = None,
                 reference_loss: float | None = None, time_from_bench: bool = False,
                 run_ids: Iterable[str] | None = None) -> dict[str, Any]:
    """Analyse ``out_dir/results.sqlite`` and write the report files into ``out_dir``.

    ``loss``: the curve frontiers are built from, ``"eval"`` (held-out, default) or
    ``"train"``; ``transient``: fraction of each run's steps left out; ``offset``: None
    (L = a C^-b), ``"shared"`` (one E for all, adopted by an AIC criterion) or a fixed E;
    ``reference_loss``: the headline's loss (default: per structure, the lowest loss both it
    and dense reach); ``time_from_bench``: the time multiplier from each model's speed measured
    now instead of the runs' recorded times; ``run_ids``: only these runs (a sweep reports its
    own; None: every run in the store). Returns the summary dict (as written to summary.json). Raises
    ``FileNotFoundError`` if the store is missing and ``ValueError`` on bad options, an empty
    store or no dense runs; nothing is written then.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    check_options(loss, n_bootstrap, transient, offset, reference_loss)
    out = Path(out_dir)
    db = out / STORE_NAME
    if not db.is_file():
        raise FileNotFoundError(f"no results store at {db}; run `einsearch search --out {out}` first")
    with ResultStore(db) as store:
        rep = build_report(store, task, loss=loss, n_bootstrap=n_bootstrap, seed=seed,
                           transient=transient, offset=offset, reference_loss=reference_loss,
                           time_from_bench=time_from_bench, run_ids=run_ids)
    summary = summary_dict(rep)
    files = render_plots(rep, summary)            # everything in memory first ...
    files["report.md"] = markdown(rep, summary).encode()
    files["summary.json"] = (json.dumps(summary, indent=2, allow_nan=False) + "\n").encode()
    for name, data in files.items():              # ... then each file atomically
        atomic_write_bytes(out / name, data)
    return summary
