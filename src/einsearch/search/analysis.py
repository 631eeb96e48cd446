r"""Compute-optimal scaling estimator: m(L) from seed-averaged, windowed frontiers, with
seed-bootstrap intervals (docs/design.md section 6).

Framework-neutral (numpy and scipy only, no torch, no store): the input is plain
:class:`Curve` records; :func:`curves_from_store` converts a results store's finished runs.

Notation: a *run* is one training curve of structure S at width w, seed s and learning rate
lr: points (t, C_t, L_t) of step t, cumulative training FLOPs C_t and (held-out) loss L_t.
T is the run's planned number of steps.

1. Learning rate (:func:`select_lrs`). When (S, w) was trained at several lrs, keep the lr
   with the lowest seed-averaged final held-out loss,  exp(mean_seeds log L_final(lr)).
   The choice is made once, on the data; the bootstrap (step 8) does not redo it.

2. Transient. Each run keeps only the steps t >= max(warmup, ceil(f T)), f =
   ``transient_fraction`` (default 0.3): the early optimisation transient falls far faster
   than any compute-optimal law and would otherwise own the low-compute end of the frontier.

3. Seed average. For (S, w) at the kept lr, on the steps every seed logged (intersection):
   log Lbar_t = mean_seeds log L_{s,t}  (GEOMETRIC mean: log loss is what the laws fit) and
   Cbar_t = mean_seeds C_{s,t}. Averaging before the frontier stops lucky seeds from setting it.

4. Frontier. Pool S's averaged points over widths; the frontier is their lower envelope in
   log-log, the Pareto staircase: point i is kept if no point with C <= C_i has L <= L_i
   (:func:`einsearch.search.scaling.pareto_frontier`, tolerance 0). Its *span* is
   [min C, max C] of its points.

5. Common window. For S against dense: [C_lo, C_hi] = intersection of the two spans. It is
   usable only if, inside it, EACH frontier has points from at least ``min_widths`` (default
   2) widths and at least 3 points; otherwise no multiplier (a note says why). Both laws of
   the pair are fitted on the frontier points inside this window only. Dense's own record
   uses its whole span, under the same rule.
   On the time axis (``axis="time"``) the pair is matched on loss instead: the common loss
   range [L_lo, L_hi] = intersection of the two frontiers' loss ranges, and each law is fitted
   on its own frontier's points inside it (a staircase's points at losses in a range are one
   x interval, S's and dense's different ones), under the same widths-and-points rule. Why:
   compute-matched sweeps make the FLOP spans overlap by design, but not the seconds. Where S's
   FLOPs run slower than dense's, S is still above the losses dense reaches early while dense's
   largest model has finished; then no time window holds both at one loss, though every loss in
   the common range was reached by both (measured on the demo, 2-core CPU: four of six
   structures had no common-window estimate, all six have a loss-matched one). The comparison
   is still at losses both frontiers reached: no extrapolation in either.

6. Law. log(L - E) = log a - b log C, ordinary least squares, so L(C) = E + a C^-b and
   C(L) = ((L - E) / a)^(-1/b). E (irreducible loss) is one number for every structure:
   * ``offset=None``: E = 0 (plain power law).
   * ``offset=<float>``: E fixed by the user (0 <= E < every loss).
   * ``offset="shared"``: E estimated jointly over every structure's frontier (each over its
     own span): E minimises SSE(E) = sum_S sum_i (log L_i - log(E + a_S(E) C_i^-b_S(E)))^2
     with (a_S, b_S) the OLS fit at that E, E searched in [0, 0.99 min L] (grid then bounded
     refinement). Criterion: the offset law is adopted only if it lowers
     AIC = n log(SSE / n) + 2 k  (k = 2 per structure, + 1 for E) by more than 10 AND E is not
     pinned at the bound (E < 0.99 x 0.99 min L); otherwise the plain law is used and a note
     says so. The margin is 10, not the textbook 2, because frontier points are not
     independent (neighbours come from one seed-averaged curve), which inflates AIC's evidence:
     on simulated frontiers without an offset, 2 adopted a spurious E in ~1 of 4 draws, 10 in
     ~1 of 20, while a real E = 0.1 (losses 0.18-0.3) lowered AIC by 17-64.
     Never a free per-structure E pinned to the lowest point.
   R^2 is that of the OLS fit, in log(L - E).

7. Multiplier. m_S(L) = C_dense(L) / C_S(L) from the two laws fitted in the pair's window
   (m > 1: S needs less compute than dense for loss L). Evaluated only on the common loss
   range [L_lo, L_hi] = [max(min L_D, min L_S), min(max L_D, max L_S)] of the two frontiers'
   points inside the window: no extrapolation. Headline ``compute_multiplier`` = m at
   ``reference_loss`` (default L_lo, the lowest loss both frontiers reach; a user value
   outside [L_lo, L_hi] gives no headline). m is also given at 3 levels
   L_lo, sqrt(L_lo L_hi), L_hi; ``exponent`` = b_S, ``exponent_delta`` = b_S - b_dense
   (dense fitted in the same window; m is constant in L only when it is 0 and E = 0);
   ``varies`` = max m / min m over the common range > 2. Dense's own record: m = 1 exactly,
   interval [1, 1], law fitted over its whole span.

8. Interval. A bootstrap over seeds for the standard error, a Student-t quantile for the
   interval. Each replicate redraws seeds with replacement and recomputes step 3's means and
   steps 4, 6 (E re-estimated if the offset law was adopted) and 7 with the window, the
   reference loss and the 3 levels held at their values on the data. When every (structure,
   width) ran the same seeds (a sweep's normal case), ONE draw of seed positions serves them
   all: seed s fixes the data stream of every run, so its runs share luck across widths and
   between S and dense, and the draw keeps that correlation (a cluster bootstrap, seeds the
   clusters). Otherwise each (structure, width) draws its own seeds (every width kept).
   Small-sample correction: resampled seed deviations are scaled by sqrt(n / (n - 1))
   (n = seeds), so a replicate mean has the unbiased variance s^2 / n instead of (n - 1)/n of
   it. With se = the standard deviation of log m over the replicates, the interval is

       m_hat x exp(-/+ t_{n-1, (1 + level)/2} x se),   n = fewest seeds at any width of S or dense,

   (exponent_delta: its value -/+ t x se, on its own scale). Why t and not the replicates'
   percentiles: se is itself estimated from n seeds, and with n = 3 the percentile interval
   (a normal-quantile interval in effect) was far too narrow. Measured on the demo's 6 seeds:
   each 3-seed interval was checked against the multiplier of the complementary 3 seeds, over
   all 20 triples x 6 structures; the re-run landed inside in 107 of 120 cases with per-width
   draws and percentiles (median hi/lo 2.0), 116 with per-width draws and t (t_2 = 4.30, median
   hi/lo 4.4), 117 with shared draws and t (median hi/lo 4.8). With fewer than 3 seeds at any
   width of S or dense there is no interval (None). Deterministic given ``seed``. Replicates
   whose window holds too few points to fit are counted as failed; with more than half failed
   there is no interval.

Diagnostics per structure: frontier points per width inside the window, how many come from
the first half of their runs (t < T / 2), a warning when one width makes up more than half of
a frontier (S's or dense's, inside the window), R^2 of both fits, the window, chosen lrs.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._io import finite_or_none
from .scaling import PowerLaw, pareto_frontier

__all__ = [
    "Curve", "FrontierPoints", "MultiplierCurve", "LossLevel", "StructureAnalysis",
    "AnalysisResult", "analyze", "curves_from_store", "select_lrs", "seed_averaged_curves", "AXES",
    "t_quantile", "DEFAULT_TRANSIENT_FRACTION", "AIC_MARGIN", "VARIES_FACTOR", "MIN_SEEDS_FOR_INTERVAL",
]

logger = logging.getLogger(__name__)

#: fraction of each run's steps left out as the optimisation transient
DEFAULT_TRANSIENT_FRACTION = 0.3
#: the offset law must lower AIC by more than this to be adopted
AIC_MARGIN = 10.0
#: E is searched in [0, E_MAX_FRACTION x lowest frontier loss]
E_MAX_FRACTION = 0.99
#: an E at or above this fraction of the search bound is pinned there (degenerate): rejected
E_PINNED_FRACTION = 0.99
#: m(L) "varies" when max/min over the common loss range exceeds this
VARIES_FACTOR = 2.0
#: fewer seeds than this at any width: no interval
MIN_SEEDS_FOR_INTERVAL = 3
#: points a frontier needs inside the window
MIN_POINTS = 3
#: loss levels of the m(L) band (for plots)
BAND_POINTS = 25
#: more than this fraction of failed bootstrap replicates: no interval
MAX_FAILED_FRACTION = 0.5


# ------------------------------------------------------------------------------------------
# input


@dataclass(frozen=True, eq=False)
class Curve:
    """One training run: ``step`` (n,), ``compute`` (n,) cumulative training FLOPs and
    ``loss`` (n,) held-out loss, sorted by step on construction.

    ``total_steps``: the run's planned steps T (default: its last logged step);
    ``warmup_steps``: LR warmup, also left out; ``final_loss``: the held-out loss at the end
    used to choose between learning rates (default: the last point's loss).
    """

    structure: str
    width: int
    seed: int
    lr: float | None
    step: np.ndarray
    compute: np.ndarray
    loss: np.ndarray
    total_steps: int | None = None
    warmup_steps: int = 0
    final_loss: float | None = None

    def __post_init__(self) -> None:
        who = f"Curve({self.structure!r}, width={self.width}, seed={self.seed}, lr={self.lr})"
        if not isinstance(self.structure, str) or not self.structure:
            raise TypeError(f"Curve.structure must be a non-empty str, got {self.structure!r}")
        step = np.asarray(self.step, dtype=float).ravel()
        compute = np.asarray(self.compute, dtype=float).ravel()
        loss = np.asarray(self.loss, dtype=float).ravel()
        if not (step.size == compute.size == loss.size):
            raise ValueError(f"{who}: step, compute and loss must have one length, got "
                             f"{step.size}, {compute.size}, {loss.size}")
        if step.size == 0:
            raise ValueError(f"{who}: step is empty; a curve needs at least one point")
        if not np.all(np.isfinite(step)) or np.any(step < 0) or np.any(step != np.round(step)):
            raise ValueError(f"{who}: step must hold non-negative integers, got {step[:5]}...")
        for name, arr in (("compute", compute), ("loss", loss)):
            bad = ~np.isfinite(arr) | (arr <= 0)
            if bad.any():
                raise ValueError(f"{who}: {name} must be finite and > 0, got {arr[bad][0]!r} "
                                 f"at step {int(step[bad][0])}")
        order = np.argsort(step, kind="stable")
        step, compute, loss = step[order].astype(np.int64), compute[order], loss[order]
        if np.any(np.diff(step) == 0):
            raise ValueError(f"{who}: step has repeated values")
        if self.total_steps is not None and int(self.total_steps) <= 0:
            raise ValueError(f"{who}: total_steps must be > 0, got {self.total_steps}")
        if int(self.warmup_steps) < 0:
            raise ValueError(f"{who}: warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.final_loss is not None and not (math.isfinite(self.final_loss) and self.final_loss > 0):
            raise ValueError(f"{who}: final_loss must be finite and > 0, got {self.final_loss}")
        object.__setattr__(self, "step", step)
        object.__setattr__(self, "compute", compute)
        object.__setattr__(self, "loss", loss)

    @property
    def planned_steps(self) -> int:
        """T: ``total_steps`` or the last logged step."""
        return int(self.total_steps) if self.total_steps is not None else int(self.step[-1])

    @property
    def final(self) -> float:
        """Held-out loss at the end of the run (lr selection)."""
        return float(self.final_loss) if self.final_loss is not None else float(self.loss[-1])


#: what a curve's x axis holds: cumulative training FLOPs, or training seconds (the time multiplier)
AXES = ("compute", "time")
#: the unit of each axis, for messages
UNITS = {"compute": "FLOPs", "time": "s"}


def curves_from_store(store: Any, task: str | None = None, loss: str = "eval",
                      axis: str = "compute", run_ids: Iterable[str] | None = None) -> list[Curve]:
    """The finished runs of ``task`` in a results store (a ``ResultStore`` or a path to one)
    as :class:`Curve` records (``run_ids``: only these runs; None: all of them).

    ``loss="eval"``: the held-out loss at the steps where it was logged (runs without any are
    left out, with a logged warning); ``loss="train"``: the mean training loss per logging
    window. ``axis="compute"``: x is cumulative training FLOPs; ``axis="time"``: x is the
    training seconds since the run's first step (``Point.elapsed_s``), and runs recorded without
    them are left out (the caller compares counts to say so). Every estimate downstream is the
    same code whichever the axis: with time, ``compute_multiplier`` reads as t(L) = T_dense(L) /
    T_S(L). Points at x <= 0 (step 0) are dropped.
    """
    from .store import ResultStore  # lazy: the estimator itself never needs the store

    if loss not in ("eval", "train"):
        raise ValueError(f"loss must be 'eval' or 'train', got {loss!r}")
    if axis not in AXES:
        raise ValueError(f"axis must be one of {AXES}, got {axis!r}")
    own = isinstance(store, (str, os.PathLike))
    if own:
        store = ResultStore(store)
    elif not isinstance(store, ResultStore):
        raise TypeError(f"store must be a ResultStore or a path, got {type(store).__name__}")
    try:
        task = store.resolve_task(task)
        out = []
        for run, points in store.load(task=task, status="finished", run_ids=run_ids):
            if axis == "time" and any(p.elapsed_s is None for p in points):
                continue
            pairs = [(p.step, p.compute if axis == "compute" else p.elapsed_s,
                      p.eval_loss if loss == "eval" else p.train_loss) for p in points]
            pairs = [(s, x, lo) for s, x, lo in pairs
                     if x is not None and x > 0 and lo is not None and math.isfinite(lo) and lo > 0]
            if not pairs:
                logger.warning("run %s has no %s loss points; left out", run.run_id, loss)
                continue
            s, c, lo = zip(*pairs)
            cfg = run.config or {}
            final = run.final_eval_loss if loss == "eval" else None
            out.append(Curve(
                structure=run.structure, width=int(run.width if run.width is not None else cfg.get("width", 0)),
                seed=int(run.seed if run.seed is not None else cfg.get("seed", 0)),
                lr=run.lr if run.lr is not None else cfg.get("lr"),
                step=np.asarray(s), compute=np.asarray(c), loss=np.asarray(lo),
                total_steps=int(cfg["steps"]) if cfg.get("steps") else None,
                warmup_steps=int(cfg.get("warmup_steps") or 0),
                final_loss=final if final is not None and math.isfinite(final) and final > 0 else None))
        return out
    finally:
        if own:
            store.close()


# ------------------------------------------------------------------------------------------
# steps 1-3: lr selection, transient, seed average


def select_lrs(curves: Sequence[Curve]) -> tuple[dict[tuple[str, int], Any], dict[tuple[str, int], dict[Any, float]]]:
    """Step 1: per (structure, width) the lr with the lowest geometric-mean final loss.

    Returns ``(chosen, scores)``: ``chosen[(S, w)] = lr`` and ``scores[(S, w)] = {lr:
    exp(mean_seeds log final_loss)}``. Ties go to the smaller lr.
    """
    logs: dict[tuple[str, int], dict[Any, list[float]]] = {}
    for c in curves:
        logs.setdefault((c.structure, int(c.width)), {}).setdefault(c.lr, []).append(math.log(c.final))
    chosen, scores = {}, {}
    for key, by_lr in logs.items():
        sc = {lr: float(math.exp(np.mean(v))) for lr, v in by_lr.items()}
        scores[key] = sc
        chosen[key] = min(sc, key=lambda lr: (sc[lr], _lr_order(lr)))
    return chosen, scores


def _lr_order(lr: Any) -> float:
    return float(lr) if isinstance(lr, (int, float)) and math.isfinite(lr) else math.inf


@dataclass
class _Group:
    """Seed-averaged curve of one (structure, width) at its chosen lr (step 3)."""

    width: int
    lr: Any
    seeds: list[int]
    step: np.ndarray        # (n,) steps every seed logged, after the transient
    compute: np.ndarray     # (n,) mean compute over seeds
    log_loss: np.ndarray    # (n_seeds, n)
    first_half: np.ndarray  # (n,) bool: step < T / 2
    mean: np.ndarray = field(init=False)  # (n,) mean log loss over seeds

    def __post_init__(self) -> None:
        self.mean = self.log_loss.mean(axis=0)

    def resample(self, draw: np.ndarray) -> np.ndarray:
        """Mean log loss over the seeds at positions ``draw`` (n,), drawn with replacement,
        deviations scaled by sqrt(n / (n - 1)) (module docstring, step 8)."""
        n = self.log_loss.shape[0]
        mean = self.mean
        if n < 2:
            return mean
        resampled = np.add.reduce(self.log_loss[draw], axis=0) / n
        return mean + math.sqrt(n / (n - 1)) * (resampled - mean)


def _groups(curves: Sequence[Curve], transient_fraction: float,
            chosen: Mapping[tuple[str, int], Any], *,
            cut: bool = True) -> tuple[dict[str, dict[int, _Group]], list[str]]:
    """Step 3: the seed-averaged curve of every (structure, width) at its chosen lr, on the
    steps every seed logged after the transient (``cut=False``: every step, transient and
    warmup included)."""
    by_key: dict[tuple[str, int], list[Curve]] = {}
    for c in curves:
        if c.lr == chosen[(c.structure, int(c.width))]:
            by_key.setdefault((c.structure, int(c.width)), []).append(c)
    out: dict[str, dict[int, _Group]] = {}
    notes = []
    for (name, w), runs in sorted(by_key.items()):
        runs = sorted(runs, key=lambda c: c.seed)
        kept = []
        for c in runs:
            first = max(int(c.warmup_steps), math.ceil(transient_fraction * c.planned_steps)) if cut else 0
            keep = c.step >= first
            kept.append((c, keep))
        common = None
        for c, keep in kept:
            s = set(c.step[keep].tolist())
            common = s if common is None else common & s
        steps = np.asarray(sorted(common or ()), dtype=np.int64)
        if steps.size == 0:
            notes.append(f"{name} width {w}: no step left after the transient that every seed logged")
            continue
        comp, logl = [], []
        for c, _ in kept:
            pos = np.searchsorted(c.step, steps)
            comp.append(c.compute[pos])
            logl.append(np.log(c.loss[pos]))
        half = steps < np.asarray([c.planned_steps for c, _ in kept]).min() / 2.0
        out.setdefault(name, {})[w] = _Group(
            width=w, lr=runs[0].lr, seeds=[c.seed for c in runs], step=steps,
            compute=np.mean(comp, axis=0), log_loss=np.asarray(logl), first_half=half)
    return out, notes



def seed_averaged_curves(curves: Sequence[Curve]) -> dict[str, list[tuple[int, np.ndarray, np.ndarray]]]:
    """Per structure, one (width, compute, loss) per width: the seed-averaged curve at the
    chosen lr on every step all seeds logged, transient included (what the report plots);
    the same lr choice and averaging (geometric mean of the loss) as :func:`analyze`."""
    if not curves:
        return {}
    chosen, _ = select_lrs(curves)
    groups, _ = _groups(curves, 0.0, chosen, cut=False)
    return {name: [(w, g.compute, np.exp(g.mean)) for w, g in sorted(by_width.items())]
            for name, by_width in groups.items()}

# ------------------------------------------------------------------------------------------
# steps 4-7: frontier, window, law, multiplier


@dataclass(frozen=True)
class FrontierPoints:
    """Frontier of one structure (step 4): arrays (n,) sorted by compute."""

    compute: np.ndarray
    loss: np.ndarray
    width: np.ndarray
    first_half: np.ndarray  # bool: the point comes from the first half of its run

    def __len__(self) -> int:
        return int(self.compute.size)

    def in_window(self, window: tuple[float, float] | None) -> np.ndarray:
        """(n,) bool: which points lie in the compute ``window`` (none when it is None)."""
        if window is None:
            return np.zeros(len(self.compute), dtype=bool)
        lo, hi = window
        return (self.compute >= lo * (1 - 1e-12)) & (self.compute <= hi * (1 + 1e-12))

    def inside(self, window: tuple[float, float]) -> "FrontierPoints":
        k = self.in_window(window)
        return FrontierPoints(self.compute[k], self.loss[k], self.width[k], self.first_half[k])

    @property
    def span(self) -> tuple[float, float]:
        return float(self.compute[0]), float(self.compute[-1])

    def n_widths(self) -> int:
        return int(np.unique(self.width).size)


def _frontier(groups: Mapping[int, _Group], means: Mapping[int, np.ndarray]) -> FrontierPoints:
    ws = sorted(groups)
    c = np.concatenate([groups[w].compute for w in ws])
    lo = np.exp(np.concatenate([means[w] for w in ws]))
    wid = np.concatenate([np.full(groups[w].compute.size, w) for w in ws])
    half = np.concatenate([groups[w].first_half for w in ws])
    f = pareto_frontier(c, lo)
    return FrontierPoints(f.compute, f.loss, wid[f.index], half[f.index])


def _ols(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """(intercept, slope, R^2) of y ~ x."""
    xm, ym = x.mean(), y.mean()
    dx = x - xm
    sxx = float(dx @ dx)
    slope = float(dx @ (y - ym)) / sxx
    intercept = float(ym - slope * xm)
    res = y - intercept - slope * x
    sst = float(((y - ym) ** 2).sum())
    r2 = 1.0 - float(res @ res) / sst if sst > 0 else math.nan
    return intercept, slope, r2


def _fit(f: FrontierPoints, E: float) -> PowerLaw | None:
    """Step 6 at a known E; None with < 2 distinct computes or a non-falling law (b <= 0)."""
    if len(f) < 2 or np.unique(f.compute).size < 2 or np.any(f.loss <= E):
        return None
    intercept, slope, r2 = _ols(np.log(f.compute), np.log(f.loss - E))
    if not slope < 0:
        return None
    return PowerLaw(a=math.exp(intercept), b=-slope, E=E, r2=r2)


def _sse_log(fronts: Sequence[FrontierPoints], E: float) -> float:
    total = 0.0
    for f in fronts:
        law = _fit(f, E)
        if law is None:
            return math.inf
        total += float(((np.log(f.loss) - np.log(law.loss(f.compute))) ** 2).sum())
    return total


def _estimate_E(fronts: Sequence[FrontierPoints]) -> tuple[float, float, float]:
    """Shared E (step 6): (E, SSE at E, SSE at 0) over ``fronts``; grid then bounded search."""
    from scipy.optimize import minimize_scalar

    hi = E_MAX_FRACTION * min(float(f.loss.min()) for f in fronts)
    grid = np.linspace(0.0, hi, 33)
    vals = np.asarray([_sse_log(fronts, e) for e in grid])
    k = int(np.argmin(vals))
    a, b = grid[max(k - 1, 0)], grid[min(k + 1, grid.size - 1)]
    best_e, best = float(grid[k]), float(vals[k])
    if b > a:
        res = minimize_scalar(lambda e: _sse_log(fronts, e), bounds=(a, b), method="bounded",
                              options={"xatol": 1e-6 * max(hi, 1e-300)})
        if res.fun < best:
            best_e, best = float(res.x), float(res.fun)
    return best_e, best, float(vals[0])


def _aic(sse: float, n: int, k: int) -> float:
    return n * math.log(max(sse, 1e-300) / n) + 2 * k


def _m(law_d: PowerLaw, law_s: PowerLaw, loss: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        return np.asarray(law_d.compute(loss), dtype=float) / np.asarray(law_s.compute(loss), dtype=float)


@dataclass
class _Pair:
    window: tuple[float, float]        # x range of S's fitted frontier points
    law_s: PowerLaw
    law_d: PowerLaw
    front_s: FrontierPoints   # the points each law is fitted on
    front_d: FrontierPoints
    loss_range: tuple[float, float]
    dense_window: tuple[float, float]  # x range of dense's fitted points (= window when matched on x)
    matched: tuple[float, float]       # what replicates hold fixed: the x window or the loss range


def _x_range(f: FrontierPoints) -> tuple[float, float]:
    return (float(f.compute.min()), float(f.compute.max())) if len(f) else (math.nan, math.nan)


def _in_losses(f: FrontierPoints, lo: float, hi: float) -> FrontierPoints:
    k = (f.loss >= lo * (1 - 1e-12)) & (f.loss <= hi * (1 + 1e-12))
    return FrontierPoints(f.compute[k], f.loss[k], f.width[k], f.first_half[k])


def _pair(fs: FrontierPoints, fd: FrontierPoints, E: float, min_widths: int,
          window: tuple[float, float] | None = None, match: str = "x", axis: str = "compute",
          ref: str = "dense") -> _Pair | str:
    """Steps 5-6 for S against dense; a reason string when there is no estimate. ``match="x"``:
    ``window`` is the common x window (None: the intersection of the spans); ``match="loss"``:
    ``window`` is the common loss range (None: the intersection of the frontiers' loss ranges)."""
    if len(fs) == 0 or len(fd) == 0:
        return "an empty frontier"
    unit = UNITS[axis]
    if match == "loss":
        if window is None:
            window = (max(float(fs.loss.min()), float(fd.loss.min())),
                      min(float(fs.loss.max()), float(fd.loss.max())))
            if not window[0] < window[1]:
                return (f"the frontiers share no loss range (its losses [{float(fs.loss.min()):.4g}, "
                        f"{float(fs.loss.max()):.4g}], {ref}'s [{float(fd.loss.min()):.4g}, "
                        f"{float(fd.loss.max()):.4g}])")
        ws, wd = _in_losses(fs, *window), _in_losses(fd, *window)
        where = f"the common loss range [{window[0]:.4g}, {window[1]:.4g}]"
    else:
        if window is None:
            lo, hi = max(fs.span[0], fd.span[0]), min(fs.span[1], fd.span[1])
            if not lo < hi:
                return (f"no common {axis} window: spans [{fs.span[0]:.3g}, {fs.span[1]:.3g}] and "
                        f"{ref} [{fd.span[0]:.3g}, {fd.span[1]:.3g}] {unit} do not overlap")
            window = (lo, hi)
        ws, wd = fs.inside(window), fd.inside(window)
        where = f"the common window [{window[0]:.3g}, {window[1]:.3g}] {unit}"
    for who, f in (("its", ws), (f"{ref}'s", wd)):
        if f.n_widths() < min_widths or len(f) < MIN_POINTS:
            return (f"{who} frontier has {len(f)} point(s) from {f.n_widths()} width(s) inside "
                    f"{where}; at least {MIN_POINTS} points from {min_widths} widths are needed")
    law_s, law_d = _fit(ws, E), _fit(wd, E)
    if law_s is None or law_d is None:
        return f"a law could not be fitted inside {where} (loss not falling along the axis)"
    l_lo = max(float(ws.loss.min()), float(wd.loss.min()))
    l_hi = min(float(ws.loss.max()), float(wd.loss.max()))
    if match == "loss":
        return _Pair(_x_range(ws), law_s, law_d, ws, wd, (l_lo, l_hi), _x_range(wd), window)
    return _Pair(window, law_s, law_d, ws, wd, (l_lo, l_hi), window, window)


# ------------------------------------------------------------------------------------------
# results


@dataclass(frozen=True)
class LossLevel:
    """m at one loss level, with its interval (None: no interval)."""

    loss: float
    multiplier: float
    ci: tuple[float, float] | None


@dataclass(frozen=True)
class MultiplierCurve:
    """m(L) on a log grid of the common loss range, with a pointwise band (NaN: none)."""

    loss: np.ndarray
    multiplier: np.ndarray
    lo: np.ndarray
    hi: np.ndarray


@dataclass
class StructureAnalysis:
    """One structure against dense. None/NaN fields mean "not available" (see ``notes``)."""

    name: str
    is_dense: bool
    compute_multiplier: float | None = None
    compute_multiplier_ci: tuple[float, float] | None = None
    reference_loss: float | None = None
    multiplier_by_loss: list[LossLevel] = field(default_factory=list)
    exponent: float | None = None
    exponent_delta: float | None = None
    exponent_delta_ci: tuple[float, float] | None = None
    varies: bool | None = None
    law: PowerLaw | None = None              # S's law inside the window
    dense_law: PowerLaw | None = None        # dense's law inside the same window
    window: tuple[float, float] | None = None        # x range S's law is fitted on
    dense_window: tuple[float, float] | None = None  # x range dense's law is fitted on
    matched_on: str = "x"                            # "x": one common x window; "loss": a common loss range
    loss_range: tuple[float, float] | None = None
    frontier: FrontierPoints | None = None   # S's whole frontier (for plots)
    band: MultiplierCurve | None = None
    lr_by_width: dict[int, Any] = field(default_factory=dict)
    lr_scores: dict[int, dict[Any, float]] = field(default_factory=dict)
    seeds_per_width: dict[int, int] = field(default_factory=dict)
    bootstrap_replicates: int = 0
    bootstrap_failed: int = 0
    interval_t: float | None = None  # the Student-t quantile of the interval (step 8)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: hook for fields the caller adds to the summary (the report: omega, psi, nu)
    extra: dict[str, Any] = field(default_factory=dict)

    def diagnostics(self) -> dict[str, Any]:
        """JSON-safe diagnostics (module docstring, last paragraph)."""
        inside = self.frontier.inside(self.window) if self.frontier is not None and self.window else None
        per_width = ({str(int(w)): int(n) for w, n in zip(*np.unique(inside.width, return_counts=True))}
                     if inside is not None else {})
        n_first = int(inside.first_half.sum()) if inside is not None else 0
        n = len(inside) if inside is not None else 0
        m_range = None
        if self.band is not None and np.isfinite(self.band.multiplier).any():
            m_range = [finite_or_none(np.nanmin(self.band.multiplier)), finite_or_none(np.nanmax(self.band.multiplier))]
        return {
            "window": _pair_list(self.window),
            "dense_window": _pair_list(self.dense_window),
            "matched_on": self.matched_on,
            "loss_range": _pair_list(self.loss_range),
            "frontier_points": n,
            "frontier_points_per_width": per_width,
            "frontier_points_first_half": n_first,
            "frontier_fraction_first_half": finite_or_none(n_first / n) if n else None,
            "r2": finite_or_none(self.law.r2) if self.law else None,
            "dense_r2": finite_or_none(self.dense_law.r2) if self.dense_law else None,
            "law": _law_dict(self.law),
            "dense_law": _law_dict(self.dense_law),
            "exponent_delta_ci": _pair_list(self.exponent_delta_ci),
            "multiplier_range": m_range,
            "lr_by_width": {str(w): lr for w, lr in sorted(self.lr_by_width.items())},
            "lr_scores": {str(w): {str(lr): finite_or_none(v) for lr, v in sc.items()}
                          for w, sc in sorted(self.lr_scores.items()) if len(sc) > 1},
            "seeds_per_width": {str(w): n for w, n in sorted(self.seeds_per_width.items())},
            "bootstrap": ({"replicates": self.bootstrap_replicates, "failed": self.bootstrap_failed,
                           "t_quantile": finite_or_none(self.interval_t)}
                          if self.bootstrap_replicates else None),
            "warnings": list(self.warnings),
            "notes": list(self.notes),
        }

    def to_summary(self) -> dict[str, Any]:
        """The summary.json fields of this structure (docs/design.md section 6)."""
        out = {
            "compute_multiplier": finite_or_none(self.compute_multiplier),
            "compute_multiplier_ci": _pair_list(self.compute_multiplier_ci),
            "reference_loss": finite_or_none(self.reference_loss),
            "multiplier_by_loss": [{"loss": finite_or_none(x.loss), "multiplier": finite_or_none(x.multiplier),
                                    "ci": _pair_list(x.ci)} for x in self.multiplier_by_loss],
            "exponent": finite_or_none(self.exponent),
            "exponent_delta": finite_or_none(self.exponent_delta),
            "varies": self.varies,
            "diagnostics": self.diagnostics(),
        }
        out.update(self.extra)
        return out


@dataclass
class AnalysisResult:
    """Every structure's analysis, dense first, then by name; ``settings`` is JSON-safe."""

    dense: str
    structures: dict[str, StructureAnalysis]
    settings: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    def __getitem__(self, name: str) -> StructureAnalysis:
        return self.structures[name]

    def to_summary(self, extra: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
        """``{structure: summary fields}``; ``extra[name]`` (e.g. omega/psi/nu) is merged in."""
        out = {}
        for name, s in self.structures.items():
            row = s.to_summary()
            if extra and name in extra:
                row.update(extra[name])
            out[name] = row
        return out


def _pair_list(p: tuple[float, float] | None) -> list[float | None] | None:
    return None if p is None else [finite_or_none(p[0]), finite_or_none(p[1])]


def _law_dict(law: PowerLaw | None) -> dict[str, float | None] | None:
    return None if law is None else {"a": finite_or_none(law.a), "b": finite_or_none(law.b), "E": finite_or_none(law.E)}


# ------------------------------------------------------------------------------------------
# the estimator


def _validate(curves: Any, dense: str, transient_fraction: Any, reference_loss: Any, offset: Any,
              n_bootstrap: Any, seed: Any, level: Any, min_widths: Any) -> list[Curve]:
    if isinstance(curves, (str, bytes)) or not isinstance(curves, Iterable):
        raise TypeError(f"curves must be a sequence of Curve, got {type(curves).__name__}")
    curves = list(curves)
    if not curves:
        raise ValueError("curves is empty: nothing to analyse")
    for i, c in enumerate(curves):
        if not isinstance(c, Curve):
            raise TypeError(f"curves[{i}] must be a Curve, got {type(c).__name__}")
    names = {c.structure for c in curves}
    if not isinstance(dense, str) or dense not in names:
        raise ValueError(f"dense={dense!r} has no curves; the multiplier is measured against dense "
                         f"(structures present: {sorted(names)})")
    if isinstance(transient_fraction, bool) or not isinstance(transient_fraction, (int, float)) \
            or not 0.0 <= transient_fraction < 1.0:
        raise ValueError(f"transient_fraction must be a number in [0, 1), got {transient_fraction!r}")
    if reference_loss is not None and (isinstance(reference_loss, bool) or
                                       not isinstance(reference_loss, (int, float)) or
                                       not math.isfinite(reference_loss) or reference_loss <= 0):
        raise ValueError(f"reference_loss must be None or a finite loss > 0, got {reference_loss!r}")
    if offset is not None and offset != "shared":
        if isinstance(offset, bool) or not isinstance(offset, (int, float)) or not math.isfinite(offset) \
                or offset < 0:
            raise ValueError(f"offset must be None, 'shared' or a fixed E >= 0, got {offset!r}")
        lmin = min(float(c.loss.min()) for c in curves)
        if offset >= lmin:
            raise ValueError(f"offset (fixed E) must be below every loss, got {offset} >= lowest loss {lmin:.6g}")
        if reference_loss is not None and reference_loss <= offset:
            raise ValueError(f"reference_loss must exceed the offset E={offset}, got {reference_loss}")
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, (int, np.integer)) or n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be an integer >= 0, got {n_bootstrap!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {seed!r}")
    if not isinstance(level, (int, float)) or not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    if isinstance(min_widths, bool) or not isinstance(min_widths, (int, np.integer)) or min_widths < 1:
        raise ValueError(f"min_widths must be an integer >= 1, got {min_widths!r}")
    seen = set()
    for c in curves:
        key = (c.structure, int(c.width), c.seed, c.lr)
        if key in seen:
            raise ValueError(f"curves holds two runs of structure={c.structure!r} width={c.width} "
                             f"seed={c.seed} lr={c.lr} (they differ in another setting: the store mixes "
                             "sweeps; a sweep's own report covers its runs only, or keep sweeps in "
                             "separate folders)")
        seen.add(key)
    return curves


def t_quantile(level: float, df: int) -> float:
    """Two-sided Student-t quantile t_{df, (1 + level) / 2} (step 8)."""
    from scipy.stats import t as student_t

    return float(student_t.ppf(0.5 + level / 2.0, df))


def _t_interval(point: np.ndarray, replicates: np.ndarray, t: float) -> tuple[np.ndarray, np.ndarray]:
    """Step 8 for multipliers: point (k,) and replicates (r, k) -> (lo, hi), each (k,):
    point x exp(-/+ t x sd(log replicates)); NaN where the point or the spread is undefined."""
    with np.errstate(all="ignore"):
        logs = np.log(np.where(replicates > 0, replicates, np.nan))
        ok = np.sum(np.isfinite(logs), axis=0) >= 2
        se = np.full(point.shape, np.nan)
        if ok.any():
            se[ok] = np.nanstd(logs[:, ok], axis=0, ddof=1)
        centre = np.log(np.where(point > 0, point, np.nan))
        return np.exp(centre - t * se), np.exp(centre + t * se)


def _levels(l_lo: float, l_hi: float) -> np.ndarray:
    return np.asarray([l_lo, math.sqrt(l_lo * l_hi), l_hi])


def analyze(curves: Sequence[Curve], *, dense: str = "dense",
            transient_fraction: float = DEFAULT_TRANSIENT_FRACTION,
            reference_loss: float | None = None, offset: None | str | float = None,
            n_bootstrap: int = 200, seed: int = 0, level: float = 0.95,
            min_widths: int = 2, axis: str = "compute") -> AnalysisResult:
    """Compute multipliers over ``dense`` of every structure in ``curves`` (module docstring).

    ``axis``: what the curves' x holds (:func:`curves_from_store`). ``"compute"``: FLOPs, pairs
    matched on a common x window (step 5); ``"time"``: seconds, pairs matched on a common loss
    range (step 5, last paragraph), and the result reads as t(L) = T_dense(L) / T_S(L).

    ``offset``: None (L = a C^-b), ``"shared"`` (one E for all structures, adopted by the AIC
    criterion) or a fixed E. ``reference_loss``: the loss of the headline multiplier (default:
    per structure, the lowest loss both it and dense reach in their window). ``n_bootstrap``
    replicates give ``level`` percentile intervals (0: none). Raises ``ValueError`` /
    ``TypeError`` on bad input before any work.
    """
    curves = _validate(curves, dense, transient_fraction, reference_loss, offset, n_bootstrap,
                       seed, level, min_widths)
    if axis not in AXES:
        raise ValueError(f"axis must be one of {AXES}, got {axis!r}")
    match = "x" if axis == "compute" else "loss"
    chosen, scores = select_lrs(curves)
    groups, notes = _groups(curves, float(transient_fraction), chosen)
    names = [dense] + sorted(n for n in {c.structure for c in curves} if n != dense)

    records: dict[str, StructureAnalysis] = {}
    for name in names:
        r = StructureAnalysis(name=name, is_dense=name == dense)
        for (s, w), lr in chosen.items():
            if s == name:
                r.lr_by_width[w] = lr
                r.lr_scores[w] = scores[(s, w)]
        r.seeds_per_width = {w: len(g.seeds) for w, g in groups.get(name, {}).items()}
        r.notes.extend(n for n in notes if n.startswith(f"{name} width "))
        records[name] = r

    fronts = {n: _frontier(g, {w: x.mean for w, x in g.items()}) for n, g in groups.items()}

    # step 6: E
    usable = [f for f in fronts.values() if f.n_widths() >= min_widths and len(f) >= MIN_POINTS]
    settings: dict[str, Any] = {
        "dense": dense, "transient_fraction": float(transient_fraction),
        "seed_average": "geometric (mean of log loss)", "frontier": "Pareto staircase in log-log",
        "min_widths": int(min_widths), "axis": axis,
        "pairs_matched_on": "a common x window" if match == "x" else "a common loss range",
        "offset_requested": offset if offset is None or isinstance(offset, str)
        else float(offset), "aic_margin": AIC_MARGIN, "n_bootstrap": int(n_bootstrap),
        "seed": int(seed), "ci_level": float(level),
        "interval": ("seed bootstrap standard error (one draw shared by all runs when they ran "
                     "the same seeds), Student-t quantile (df = seeds - 1)"),
        "reference_loss_rule": ("given" if reference_loss is not None
                                else "lowest loss both frontiers reach inside the window"),
    }
    E, adopt_shared = 0.0, False
    result_notes: list[str] = []
    if isinstance(offset, (int, float)) and not isinstance(offset, bool):
        E = float(offset)
        settings.update(law="offset (fixed E)", E=E)
    elif offset == "shared":
        if not usable:
            result_notes.append("offset='shared': no frontier to fit E on; plain power law used")
            settings.update(law="power", E=0.0)
        else:
            e_hat, sse_e, sse_0 = _estimate_E(usable)
            n_pts = sum(len(f) for f in usable)
            aic_0, aic_e = _aic(sse_0, n_pts, 2 * len(usable)), _aic(sse_e, n_pts, 2 * len(usable) + 1)
            bound = E_MAX_FRACTION * min(float(f.loss.min()) for f in usable)
            pinned = e_hat >= E_PINNED_FRACTION * bound
            adopt_shared = (aic_e < aic_0 - AIC_MARGIN) and not pinned
            settings.update(aic_power=finite_or_none(aic_0), aic_offset=finite_or_none(aic_e),
                            E_fitted=finite_or_none(e_hat),
                            law="offset (shared E)" if adopt_shared else "power",
                            E=e_hat if adopt_shared else 0.0)
            if adopt_shared:
                E = e_hat
            elif pinned:
                result_notes.append(f"offset='shared': fitted E={e_hat:.4g} is pinned at its bound "
                                    f"{bound:.4g} (degenerate); plain power law used")
            else:
                result_notes.append(f"offset='shared': the shared E={e_hat:.4g} lowers AIC by "
                                    f"{aic_0 - aic_e:.2f} <= {AIC_MARGIN}; plain power law used")
    else:
        settings.update(law="power", E=0.0)
    if reference_loss is not None and reference_loss <= E:
        raise ValueError(f"reference_loss must exceed the fitted offset E={E:.6g}, got {reference_loss}")

    # steps 5-7 on the data
    fd = fronts.get(dense)
    pairs: dict[str, _Pair] = {}
    evals: dict[str, tuple[float | None, np.ndarray, np.ndarray]] = {}  # ref, levels, band grid
    for name in names:
        r = records[name]
        f = fronts.get(name)
        r.frontier = f
        if f is None or len(f) == 0:
            r.notes.append("no points left after the transient")
            continue
        if fd is None or len(fd) == 0:
            r.notes.append(f"dense ({dense!r}) has no frontier, so no multiplier")
            continue
        own = None if name != dense else (f.span if match == "x" else (float(f.loss.min()), float(f.loss.max())))
        p = _pair(f, fd, E, int(min_widths), window=own, match=match, axis=axis, ref=dense)
        if isinstance(p, str):
            r.notes.append("no multiplier: " + p)
            continue
        pairs[name] = p
        r.window, r.dense_window, r.law, r.dense_law = p.window, p.dense_window, p.law_s, p.law_d
        r.matched_on = match
        r.exponent = p.law_s.b
        r.exponent_delta = 0.0 if r.is_dense else p.law_s.b - p.law_d.b
        for who, fr in (("its", p.front_s), (f"{dense}'s", p.front_d)):
            if r.is_dense and who != "its":
                continue
            ws, counts = np.unique(fr.width, return_counts=True)
            k = int(np.argmax(counts))
            if counts[k] > len(fr) / 2:
                r.warnings.append(f"width {int(ws[k])} makes up {int(counts[k])} of the {len(fr)} "
                                  f"points of {who} frontier "
                                  f"inside the window")
        l_lo, l_hi = p.loss_range
        if not l_lo < l_hi:
            r.notes.append(f"no multiplier: inside the window the frontiers share no loss range "
                           f"(lowest loss both reach {l_lo:.4g} > highest {l_hi:.4g})")
            continue
        r.loss_range = (l_lo, l_hi)
        ref: float | None = l_lo if reference_loss is None else float(reference_loss)
        if ref is not None and not (l_lo * (1 - 1e-12) <= ref <= l_hi * (1 + 1e-12)):
            r.notes.append(f"no headline multiplier: reference_loss {ref:.4g} is outside the common "
                           f"loss range [{l_lo:.4g}, {l_hi:.4g}] (no extrapolation)")
            ref = None
        levels, grid = _levels(l_lo, l_hi), np.geomspace(l_lo, l_hi, BAND_POINTS)
        evals[name] = (ref, levels, grid)
        if r.is_dense:
            r.compute_multiplier = 1.0 if ref is not None else None
            r.compute_multiplier_ci = (1.0, 1.0) if ref is not None else None
            r.reference_loss = ref
            r.multiplier_by_loss = [LossLevel(float(x), 1.0, (1.0, 1.0)) for x in levels]
            ones = np.ones(grid.size)
            r.band = MultiplierCurve(grid, ones, ones, ones)
            r.varies = False
            r.exponent_delta_ci = (0.0, 0.0)
            continue
        m_grid, m_lv = _m(p.law_d, p.law_s, grid), _m(p.law_d, p.law_s, levels)
        r.reference_loss = ref
        r.compute_multiplier = float(_m(p.law_d, p.law_s, np.asarray([ref]))[0]) if ref is not None else None
        r.multiplier_by_loss = [LossLevel(float(x), float(m), None) for x, m in zip(levels, m_lv)]
        r.band = MultiplierCurve(grid, m_grid, np.full(grid.size, np.nan), np.full(grid.size, np.nan))
        r.varies = bool(np.nanmax(m_grid) / np.nanmin(m_grid) > VARIES_FACTOR)

    # step 8: seed bootstrap for the standard error, Student-t interval
    def fewest_seeds(name: str) -> int:
        g = groups.get(name, {})
        return min((len(x.seeds) for x in g.values()), default=0)

    def enough_seeds(name: str) -> bool:
        return fewest_seeds(name) >= MIN_SEEDS_FOR_INTERVAL

    targets = [n for n in names if n != dense and n in evals]
    for n in targets:
        if not (enough_seeds(n) and enough_seeds(dense)):
            records[n].notes.append(f"no interval: fewer than {MIN_SEEDS_FOR_INTERVAL} seeds at some "
                                    f"width of {n if not enough_seeds(n) else dense!r}")
        elif n_bootstrap == 0:
            records[n].notes.append("no interval: n_bootstrap=0")
    targets = [n for n in targets if enough_seeds(n) and enough_seeds(dense)]
    if targets and n_bootstrap > 0:
        rng = np.random.default_rng(seed)
        # one draw of seeds for every (structure, width) when they all ran the same seeds
        seed_lists = {tuple(x.seeds) for g in groups.values() for x in g.values()}
        seed_set = list(next(iter(seed_lists))) if len(seed_lists) == 1 else []
        samples: dict[str, list[tuple[float, np.ndarray, np.ndarray, float]]] = {n: [] for n in targets}
        failed = {n: 0 for n in targets}
        for _ in range(int(n_bootstrap)):
            shared = rng.integers(0, len(seed_set), len(seed_set)) if seed_set else None
            rep = {name: _frontier(g, {w: x.resample(shared if shared is not None else
                                                     rng.integers(0, len(x.seeds), len(x.seeds)))
                                       for w, x in g.items()})
                   for name, g in groups.items()}
            e_rep = E
            if adopt_shared:
                ok = [f for f in rep.values() if f.n_widths() >= min_widths and len(f) >= MIN_POINTS]
                e_rep = _estimate_E(ok)[0] if ok else 0.0
            for n in targets:
                p = _pair(rep[n], rep[dense], e_rep, int(min_widths), window=pairs[n].matched, match=match,
                          axis=axis, ref=dense)
                if isinstance(p, str):
                    failed[n] += 1
                    continue
                ref, levels, grid = evals[n]
                m_ref = float(_m(p.law_d, p.law_s, np.asarray([ref]))[0]) if ref is not None else math.nan
                m_lv, m_grid = _m(p.law_d, p.law_s, levels), _m(p.law_d, p.law_s, grid)
                if ref is not None and not (math.isfinite(m_ref) and m_ref > 0):
                    failed[n] += 1
                    continue
                samples[n].append((m_ref, m_lv, m_grid, p.law_s.b - p.law_d.b))
        for n in targets:
            r = records[n]
            r.bootstrap_replicates, r.bootstrap_failed = len(samples[n]), failed[n]
            if failed[n] > MAX_FAILED_FRACTION * n_bootstrap or len(samples[n]) < 2:
                r.notes.append(f"no interval: {failed[n]} of {n_bootstrap} bootstrap replicates "
                               f"could not be fitted inside the window")
                continue
            if failed[n]:
                r.notes.append(f"{failed[n]} of {n_bootstrap} bootstrap replicates could not be "
                               f"fitted inside the window; the interval uses the rest")
            t = t_quantile(level, min(fewest_seeds(n), fewest_seeds(dense)) - 1)
            r.interval_t = t
            ms = np.asarray([s[0] for s in samples[n]])
            lv = np.asarray([s[1] for s in samples[n]])
            gr = np.asarray([s[2] for s in samples[n]])
            db = np.asarray([s[3] for s in samples[n]])
            if r.compute_multiplier is not None:
                lo, hi = _t_interval(np.asarray([r.compute_multiplier]), ms[:, None], t)
                r.compute_multiplier_ci = (float(lo[0]), float(hi[0]))
            point_lv = np.asarray([x.multiplier for x in r.multiplier_by_loss])
            lv_lo, lv_hi = _t_interval(point_lv, lv, t)
            r.multiplier_by_loss = [LossLevel(x.loss, x.multiplier, (float(a), float(b)))
                                    for x, a, b in zip(r.multiplier_by_loss, lv_lo, lv_hi)]
            if r.band is not None:
                g_lo, g_hi = _t_interval(r.band.multiplier, gr, t)
                r.band = MultiplierCurve(r.band.loss, r.band.multiplier, g_lo, g_hi)
            half = t * float(np.std(db, ddof=1))
            d = float(r.exponent_delta) if r.exponent_delta is not None else math.nan
            r.exponent_delta_ci = (d - half, d + half)

    return AnalysisResult(dense=dense, structures=records, settings=settings, notes=result_notes)
