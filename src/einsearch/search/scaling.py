r"""Scaling-law primitives: Pareto frontiers and power-law fits (docs/design.md section 6).

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

The compute multiplier itself, with its intervals, is :mod:`einsearch.search.analysis`'s
(seed-averaged frontiers in a common window); this module holds the primitives it uses.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Frontier", "PowerLaw", "pareto_frontier", "fit_power_law", "DEFAULT_TOLERANCE"]

#: default robustness of the frontier used by the report: keep Pareto points within 2 % of
#: the lower convex hull in log-log space
DEFAULT_TOLERANCE = 0.02

#: a 1-D series of floats: a list or tuple, or a numpy array (frontiers are arrays)
FloatSeq = Sequence[float] | np.ndarray


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
