"""The objective of a trial: the pipeline's compute multiplier of a theta over dense, scored
from the results store (the ONE place that turns training runs into an objective value)."""

from __future__ import annotations

import logging
import math
from typing import Any

from .spec import DENSE

__all__ = ["score_structure", "params_ratio"]

log = logging.getLogger(__name__)


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
    from ..analysis import Curve, analyze, curves_from_store

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


def params_ratio(store: Any, structure: str, width: int, task: str,
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
