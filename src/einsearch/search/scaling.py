r"""Compute-optimal scaling laws and compute multipliers (docs/design.md section 6).

Notation. A *run* is one training curve: points (C, L) of cumulative training FLOPs C and loss
L, logged along the run. A *structure* S has many runs (widths x seeds x learning rates).

1. Frontier (:func:`pareto_frontier`). Pool every point of every run of S. Sorted by compute,
   point i is *Pareto* if no point with compute <= C_i has loss <= L_i (the staircase lower
   envelope; ties in compute keep the lowest loss). Robust form (``tolerance > 0``): the
   Pareto points are further compared with the lower convex hull H of the Pareto set in
   (log C, log L) space, and only those with ``log L_i <= H(log C_i) + log(1 + tolerance)``
   are kept. This drops the long, flat tails of small models that sit on the staircase only
   because nothing else was measured at that compute, which would otherwise bend the fit.
   By construction the frontier's loss strictly falls as compute grows.

2. Law (:func:`fit_power_law`). On the frontier fit

       log L = log a - b log C        (ordinary least squares in log-log space)

   so L(C) = a C^-b, and b is the scaling exponent (larger is better). The optional offset
   form L = E + a C^-b (E >= 0 an irreducible loss) is fitted by ``scipy.optimize.curve_fit``
   on log L. The inverse is C(L) = ((L - E) / a)^(-1/b).

3. Multiplier (:func:`compute_multiplier`). With the dense law L_D(C) fitted on dense's
   frontier, every frontier point (C_i, L_i) of S gives

       m_i = C_D(L_i) / C_i,      C_D = L_D^{-1},

   the factor of compute dense would need to reach the loss S reached with C_i. The summary is
   the geometric mean exp(mean_i log m_i) (mean in log space) with its geometric standard
   deviation exp(std_i log m_i) as the spread. Two cross-checks are returned:
   *matched loss*: L* = max(min L_D-frontier, min L_S-frontier), the lowest loss both frontiers
   reach; each frontier's compute at L* is read by linear interpolation in log-log space and
   m* = C_D(L*) / C_S(L*) (no fitted law involved); *fitted ratio*: C_D(L*) / C_S(L*) with both
   computes from the two fitted laws. m > 1 means S needs LESS compute than dense for the same
   loss; dense against itself is 1 (up to the fit's residuals).

4. Uncertainty (:func:`bootstrap_multiplier`). Resample the runs of S and of dense with
   replacement (runs, not points: points of one curve are strongly correlated), redo 1-3 and
   take the 2.5 / 97.5 percentiles of the geometric-mean multiplier. Deterministic given seed.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "Frontier", "PowerLaw", "MultiplierResult", "BootstrapResult", "StructureFit",
    "pareto_frontier", "fit_power_law", "compute_multiplier", "bootstrap_multiplier",
    "fit_structure", "DEFAULT_TOLERANCE",
]

#: default robustness of the frontier used by the report: keep Pareto points within 2 % of
#: the lower convex hull in log-log space
DEFAULT_TOLERANCE = 0.02

#: a 1-D series of floats: a list or tuple, or a numpy array (frontiers are arrays)
FloatSeq = Sequence[float] | np.ndarray
Curve = tuple[FloatSeq, FloatSeq]  # (compute, loss) of one run


@dataclass(frozen=True)
class Frontier:
    """Frontier points sorted by increasing compute (and strictly decreasing loss).

    ``index`` are positions in the arrays given to :func:`pareto_frontier`.
    """

    compute: np.ndarray
    loss: np.ndarray
    index: np.ndarray

    def __len__(self) -> int:
        return int(self.compute.size)

    def compute_at(self, loss: float) -> float:
        """Compute at which the frontier reaches ``loss`` (log-log interpolation), NaN outside."""
        if len(self) == 0 or not (self.loss.min() <= loss <= self.loss.max()):
            return math.nan
        if len(self) == 1:
            return float(self.compute[0])
        # loss is strictly decreasing: interpolate on the reversed (increasing) arrays
        x = np.log(self.loss[::-1])
        y = np.log(self.compute[::-1])
        return float(np.exp(np.interp(math.log(loss), x, y)))


@dataclass(frozen=True)
class PowerLaw:
    """L(C) = E + a * C**(-b); ``E = 0`` for the plain power law."""

    a: float
    b: float
    E: float = 0.0
    r2: float = math.nan  # coefficient of determination of the fit, in log L

    def loss(self, compute: "float | np.ndarray") -> "float | np.ndarray":
        c = np.asarray(compute, dtype=float)
        out = self.E + self.a * c ** (-self.b)
        return float(out) if out.ndim == 0 else out

    def compute(self, loss: "float | np.ndarray") -> "float | np.ndarray":
        """Inverse law: C(L) = ((L - E) / a)**(-1/b); NaN where L <= E or b == 0."""
        lo = np.asarray(loss, dtype=float)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            excess = lo - self.E
            out = np.where((excess > 0) & (self.b != 0),
                           (np.maximum(excess, 1e-300) / self.a) ** (-1.0 / self.b), np.nan)
        return float(out) if out.ndim == 0 else out


@dataclass(frozen=True)
class MultiplierResult:
    """Compute multiplier of a structure over dense (see module docstring, step 3)."""

    mean: float               # geometric mean of m_i over frontier points
    spread: float             # geometric std exp(std log m_i); 1.0 = no spread
    per_point: np.ndarray     # m_i
    min: float
    max: float
    matched_loss: float       # L*, the lowest loss both frontiers reach (NaN if unknown)
    at_matched_loss: float    # C_D(L*) / C_S(L*) by frontier interpolation
    fitted_ratio: float       # C_D(L*) / C_S(L*) from the two fitted laws


@dataclass(frozen=True)
class BootstrapResult:
    estimate: float           # multiplier on the original data
    lo: float                 # 2.5th percentile (or (1-level)/2)
    hi: float
    samples: np.ndarray       # the successful bootstrap replicates
    n_failed: int             # replicates whose frontier/fit could not be formed


def _clean_points(compute, loss) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    c = np.asarray(compute, dtype=float).ravel()
    lo = np.asarray(loss, dtype=float).ravel()
    if c.shape != lo.shape:
        raise ValueError(f"compute and loss differ in length: {c.size} vs {lo.size}")
    ok = np.isfinite(c) & np.isfinite(lo) & (c > 0) & (lo > 0)
    return c[ok], lo[ok], np.flatnonzero(ok)


def _lower_hull(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vertices of the lower convex hull of points sorted by x (monotone chain)."""
    hull: list[int] = []
    for i in range(x.size):
        while len(hull) >= 2:
            o, a = hull[-2], hull[-1]
            cross = (x[a] - x[o]) * (y[i] - y[o]) - (y[a] - y[o]) * (x[i] - x[o])
            if cross <= 0:  # a is not strictly below the chord o -> i
                hull.pop()
            else:
                break
        hull.append(i)
    h = np.asarray(hull)
    return x[h], y[h]


def pareto_frontier(compute: FloatSeq, loss: FloatSeq,
                    tolerance: float = 0.0) -> Frontier:
    """Lower envelope of (compute, loss) points in log-log space.

    ``tolerance == 0``: every Pareto point, i.e. no other point with <= compute has <= loss.
    ``tolerance > 0`` (e.g. 0.02 = 2 %): the robust frontier, only Pareto points whose loss is
    within that fraction of the lower convex hull (in log-log) at their compute.
    Non-finite and non-positive values are ignored.
    """
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    c, lo, idx = _clean_points(compute, loss)
    if c.size == 0:
        empty = np.zeros(0)
        return Frontier(empty, empty, np.zeros(0, dtype=int))
    order = np.lexsort((lo, c))  # by compute, then loss
    c, lo, idx = c[order], lo[order], idx[order]
    keep = []
    best = math.inf
    for i in range(c.size):
        if lo[i] < best:
            keep.append(i)
            best = lo[i]
    keep_a = np.asarray(keep, dtype=int)
    c, lo, idx = c[keep_a], lo[keep_a], idx[keep_a]
    if tolerance > 0 and c.size > 2:
        x, y = np.log(c), np.log(lo)
        hx, hy = _lower_hull(x, y)
        envelope = np.interp(x, hx, hy)
        near = y <= envelope + math.log1p(tolerance) + 1e-12
        c, lo, idx = c[near], lo[near], idx[near]
    return Frontier(c, lo, idx)


def fit_power_law(compute: FloatSeq, loss: FloatSeq, offset: bool = False) -> PowerLaw:
    """Fit L = a C^-b by least squares on log L = log a - b log C.

    With ``offset=True`` fit L = E + a C^-b (0 <= E < min L) by ``scipy.optimize.curve_fit``
    on log L, started from the plain fit. Raises ``ValueError`` with fewer than two points of
    distinct compute.
    """
    c, lo, _ = _clean_points(compute, loss)
    if c.size < 2 or np.unique(c).size < 2:
        raise ValueError(f"a power law needs at least 2 points of distinct compute, got {c.size}")
    x, y = np.log(c), np.log(lo)
    slope, intercept = np.polyfit(x, y, 1)
    a, b = float(math.exp(intercept)), float(-slope)
    if not offset:
        return PowerLaw(a=a, b=b, E=0.0, r2=_r2(y, intercept + slope * x))

    from scipy.optimize import curve_fit

    x0 = float(np.mean(x))  # centre log C for conditioning: L = E + exp(k - b (x - x0))

    def model(xx, E, k, bb):
        return np.log(E + np.exp(k - bb * (xx - x0)))

    lmin = float(lo.min())
    p0 = [0.0, float(intercept + slope * x0), max(b, 1e-3)]
    bounds = ([0.0, -np.inf, 0.0], [lmin * (1 - 1e-9), np.inf, np.inf])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            (E, k, bb), _ = curve_fit(model, x, y, p0=p0, bounds=bounds, maxfev=20000)
        except (RuntimeError, ValueError):
            return PowerLaw(a=a, b=b, E=0.0, r2=_r2(y, intercept + slope * x))
    a_off = float(math.exp(k + bb * x0))
    return PowerLaw(a=a_off, b=float(bb), E=float(E), r2=_r2(y, model(x, E, k, bb)))


def _r2(y: np.ndarray, yhat: np.ndarray) -> float:
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    if ss_tot == 0:
        return math.nan
    return 1.0 - float(np.sum((y - yhat) ** 2)) / ss_tot


def compute_multiplier(dense_law: PowerLaw, compute: FloatSeq, loss: FloatSeq,
                       dense_frontier: Frontier | None = None,
                       struct_law: PowerLaw | None = None) -> MultiplierResult:
    """Compute multiplier of a structure's frontier points ``(compute, loss)`` over dense.

    ``m_i = dense_law.compute(L_i) / C_i``; returns their geometric mean and spread. With
    ``dense_frontier`` also the matched-loss multiplier (frontier interpolation at the lowest
    loss both reach) and, with ``struct_law`` too, the ratio of the two fitted laws there.
    Points whose loss dense's law cannot reach (L <= E) are ignored; all NaN if none remain.
    """
    c, lo, _ = _clean_points(compute, loss)
    with np.errstate(divide="ignore", invalid="ignore"):
        m = np.asarray(dense_law.compute(lo), dtype=float).reshape(-1) / c
    m = m[np.isfinite(m) & (m > 0)]
    if m.size:
        logm = np.log(m)
        mean = float(np.exp(logm.mean()))
        spread = float(np.exp(logm.std()))
        mmin, mmax = float(m.min()), float(m.max())
    else:
        mean = spread = mmin = mmax = math.nan
    matched = at_matched = fitted = math.nan
    if dense_frontier is not None and len(dense_frontier) > 0 and c.size > 0:
        struct_frontier = pareto_frontier(c, lo)
        matched = max(float(dense_frontier.loss.min()), float(struct_frontier.loss.min()))
        cd = dense_frontier.compute_at(matched)
        cs = struct_frontier.compute_at(matched)
        at_matched = cd / cs if math.isfinite(cd) and math.isfinite(cs) else math.nan
        if struct_law is not None:
            fitted = float(dense_law.compute(matched)) / float(struct_law.compute(matched))
    elif struct_law is not None and c.size > 0:
        ref = float(lo.min())
        fitted = float(dense_law.compute(ref)) / float(struct_law.compute(ref))
    return MultiplierResult(mean=mean, spread=spread, per_point=m, min=mmin, max=mmax,
                            matched_loss=matched, at_matched_loss=at_matched,
                            fitted_ratio=fitted)


@dataclass
class StructureFit:
    """Everything the report shows for one structure."""

    frontier: Frontier
    law: PowerLaw | None
    multiplier: MultiplierResult | None = None
    bootstrap: BootstrapResult | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def exponent(self) -> float:
        return self.law.b if self.law is not None else math.nan


def _pool(runs: Sequence[Curve]) -> tuple[np.ndarray, np.ndarray]:
    if not runs:
        return np.zeros(0), np.zeros(0)
    cs = [np.asarray(c, dtype=float).ravel() for c, _ in runs]
    ls = [np.asarray(lo, dtype=float).ravel() for _, lo in runs]
    return np.concatenate(cs), np.concatenate(ls)


def fit_structure(runs: Sequence[Curve], tolerance: float = DEFAULT_TOLERANCE,
                  offset: bool = False) -> StructureFit:
    """Frontier over all points of all ``runs`` (each a (compute, loss) pair) and its law.

    ``law`` is None (with a note) when the frontier has fewer than 2 points.
    """
    c, lo = _pool(runs)
    frontier = pareto_frontier(c, lo, tolerance)
    if len(frontier) < 2:
        return StructureFit(frontier, None, notes=[
            f"frontier has {len(frontier)} point(s); at least 2 are needed to fit a law"])
    return StructureFit(frontier, fit_power_law(frontier.compute, frontier.loss, offset=offset))


def _multiplier_of(runs_struct: Sequence[Curve], runs_dense: Sequence[Curve],
                   tolerance: float, offset: bool) -> float:
    dense = fit_structure(runs_dense, tolerance, offset)
    if dense.law is None:
        return math.nan
    s = fit_structure(runs_struct, tolerance, offset)
    if len(s.frontier) == 0:
        return math.nan
    return compute_multiplier(dense.law, s.frontier.compute, s.frontier.loss).mean


def bootstrap_multiplier(runs_struct: Sequence[Curve], runs_dense: Sequence[Curve], n: int = 200,
                         seed: int = 0, tolerance: float = DEFAULT_TOLERANCE,
                         offset: bool = False, level: float = 0.95) -> BootstrapResult:
    """Percentile bootstrap interval of the geometric-mean multiplier, resampling RUNS.

    Each replicate draws len(runs) runs with replacement from the structure's runs and,
    independently, from dense's runs, rebuilds both frontiers and dense's law, and recomputes
    the multiplier. Replicates where a frontier has < 2 points are counted in ``n_failed``.
    Passing the same run lists for both sides resamples them jointly (dense vs itself).
    """
    runs_struct, runs_dense = list(runs_struct), list(runs_dense)
    estimate = _multiplier_of(runs_struct, runs_dense, tolerance, offset)
    rng = np.random.default_rng(seed)
    same = _same_runs(runs_struct, runs_dense)
    samples, failed = [], 0
    if not runs_struct or not runs_dense:
        return BootstrapResult(estimate, math.nan, math.nan, np.zeros(0), n)
    for _ in range(n):
        si = rng.integers(0, len(runs_struct), len(runs_struct))
        s = [runs_struct[i] for i in si]
        d = s if same else [runs_dense[i] for i in rng.integers(0, len(runs_dense), len(runs_dense))]
        m = _multiplier_of(s, d, tolerance, offset)
        if math.isfinite(m):
            samples.append(m)
        else:
            failed += 1
    arr = np.asarray(samples, dtype=float)
    if arr.size == 0:
        return BootstrapResult(estimate, math.nan, math.nan, arr, failed)
    tail = (1.0 - level) / 2.0 * 100.0
    lo, hi = np.percentile(arr, [tail, 100.0 - tail])
    return BootstrapResult(estimate, float(lo), float(hi), arr, failed)


def _same_runs(a: Sequence[Curve], b: Sequence[Curve]) -> bool:
    if a is b:
        return True
    if len(a) != len(b):
        return False
    return all(x is y or (np.array_equal(np.asarray(x[0]), np.asarray(y[0]))
                          and np.array_equal(np.asarray(x[1]), np.asarray(y[1])))
               for x, y in zip(a, b))
