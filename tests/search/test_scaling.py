"""Frontier, power-law fit, compute multiplier and bootstrap on data with a known law."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from einsearch.search.scaling import (
    PowerLaw,
    bootstrap_multiplier,
    compute_multiplier,
    fit_power_law,
    fit_structure,
    pareto_frontier,
)

C = np.logspace(10, 14, 25)


def dense_loss(c):
    return 2.0 * np.asarray(c, dtype=float) ** -0.1


def half_compute_loss(c):
    """A structure that needs half of dense's compute for any loss."""
    return dense_loss(2.0 * np.asarray(c, dtype=float))


def runs_of(loss_fn, widths=(1, 2, 4, 8), noise=0.0, rng=None):
    """Curves that follow ``loss_fn`` until a width-limited floor bends them up."""
    rng = rng or np.random.default_rng(0)
    out = []
    for w in widths:
        c = np.logspace(10, 12.5, 30) * w
        bend = 1.0 + 0.2 * (c / (3e12 * w)) ** 1.5
        lo = loss_fn(c) * bend * np.exp(rng.normal(0.0, noise, c.size))
        out.append((c, lo))
    return out


def test_frontier_is_the_pareto_staircase():
    c = [1, 2, 3, 4, 5, 6]
    lo = [5, 6, 4, 4, 3.5, 3.9]
    f = pareto_frontier(c, lo)
    assert list(f.compute) == [1, 3, 5]
    assert list(f.loss) == [5, 4, 3.5]
    assert list(f.index) == [0, 2, 4]
    # ties in compute keep the lowest loss; NaN / non-positive values are ignored
    f = pareto_frontier([1, 1, 2, 3, 0], [3, 2, math.nan, 1, 0.1])
    assert list(f.compute) == [1, 3] and list(f.loss) == [2, 1]
    assert len(pareto_frontier([], [])) == 0


def test_robust_frontier_drops_plateau_points():
    # a straight law plus one "small model plateau" point that is Pareto only because
    # nothing else was measured there
    c = np.array([1e1, 1e2, 1e3, 2e3, 1e4])
    lo = 2.0 * c ** -0.1
    lo[3] = lo[2] * 0.999  # barely below its predecessor: on the staircase, far above the hull
    assert 3 in pareto_frontier(c, lo).index
    robust = pareto_frontier(c, lo, tolerance=0.02)
    assert 3 not in robust.index and {0, 1, 2, 4} <= set(robust.index)
    # within tolerance it is kept
    lo[3] = 2.0 * 2e3 ** -0.1 * 1.01
    assert 3 in pareto_frontier(c, lo, tolerance=0.02).index
    with pytest.raises(ValueError):
        pareto_frontier(c, lo, tolerance=-1)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(1.0, 1e6), st.floats(0.01, 10.0)), min_size=1, max_size=40),
       st.sampled_from([0.0, 0.02, 0.1]))
def test_frontier_properties(points, tol):
    c, lo = map(np.array, zip(*points))
    f = pareto_frontier(c, lo, tol)
    assert len(f) >= 1
    assert np.all(np.diff(f.compute) > 0) and np.all(np.diff(f.loss) < 0)
    assert np.array_equal(c[f.index], f.compute) and np.array_equal(lo[f.index], f.loss)
    # no point dominates a frontier point
    for ci, li in zip(f.compute, f.loss):
        assert not np.any((c <= ci) & (lo < li))
    # the lowest loss overall is always on the frontier
    assert f.loss.min() == lo.min()


def test_fit_recovers_law_and_inverse():
    law = fit_power_law(C, dense_loss(C))
    assert law.a == pytest.approx(2.0, rel=1e-9) and law.b == pytest.approx(0.1, rel=1e-9)
    assert law.r2 == pytest.approx(1.0)
    assert law.loss(1e12) == pytest.approx(2.0 * 1e12 ** -0.1)
    assert law.compute(law.loss(3.3e11)) == pytest.approx(3.3e11, rel=1e-9)
    assert np.allclose(law.compute(law.loss(C)), C, rtol=1e-9)
    with pytest.raises(ValueError, match="at least 2"):
        fit_power_law([1e10], [0.5])
    with pytest.raises(ValueError):
        fit_power_law([1e10, 1e10], [0.5, 0.4])


def test_offset_fit_recovers_irreducible_loss():
    lo = 0.5 + 3.0 * C ** -0.2
    law = fit_power_law(C, lo, offset=True)
    assert law.E == pytest.approx(0.5, rel=1e-4)
    assert law.b == pytest.approx(0.2, rel=1e-3) and law.a == pytest.approx(3.0, rel=1e-2)
    assert law.compute(0.5) != law.compute(0.5)  # NaN: below the irreducible loss
    assert law.compute(law.loss(1e12)) == pytest.approx(1e12, rel=1e-6)


def test_multiplier_two_on_noiseless_data():
    dense_f = pareto_frontier(C, dense_loss(C))
    dense_law = fit_power_law(dense_f.compute, dense_f.loss)
    sf = pareto_frontier(C, half_compute_loss(C))
    s_law = fit_power_law(sf.compute, sf.loss)
    m = compute_multiplier(dense_law, sf.compute, sf.loss, dense_f, s_law)
    assert abs(m.mean - 2.0) < 1e-6
    assert np.allclose(m.per_point, 2.0, atol=1e-6) and m.spread == pytest.approx(1.0)
    assert abs(m.at_matched_loss - 2.0) < 1e-6 and abs(m.fitted_ratio - 2.0) < 1e-6
    # the lowest loss both reach is dense's best loss (the structure goes lower)
    assert m.matched_loss == pytest.approx(dense_f.loss.min())
    # exponent is the same: b = 0.1
    assert s_law.b == pytest.approx(0.1)
    # dense against itself is exactly 1; a structure needing 4x more compute is 0.25
    assert compute_multiplier(dense_law, C, dense_loss(C)).mean == pytest.approx(1.0)
    worse = dense_loss(C / 4.0)
    assert compute_multiplier(dense_law, C, worse).mean == pytest.approx(0.25)


def test_multiplier_ignores_unreachable_losses():
    law = PowerLaw(a=1.0, b=0.5, E=0.3)
    m = compute_multiplier(law, [1.0, 2.0], [0.2, 0.25])  # both below E
    assert math.isnan(m.mean) and m.per_point.size == 0


def test_bootstrap_ci_contains_truth_and_is_deterministic():
    rng = np.random.default_rng(42)
    dense_runs = runs_of(dense_loss, noise=0.01, rng=rng)
    s_runs = runs_of(half_compute_loss, noise=0.01, rng=rng)
    b1 = bootstrap_multiplier(s_runs, dense_runs, n=100, seed=7)
    b2 = bootstrap_multiplier(s_runs, dense_runs, n=100, seed=7)
    assert b1.lo <= 2.0 <= b1.hi
    assert b1.lo < b1.estimate < b1.hi
    assert 1.5 < b1.estimate < 2.6
    assert (b1.lo, b1.hi) == (b2.lo, b2.hi) and np.array_equal(b1.samples, b2.samples)
    assert b1.n_failed == 0 and b1.samples.size == 100
    b3 = bootstrap_multiplier(s_runs, dense_runs, n=100, seed=8)
    assert (b3.lo, b3.hi) != (b1.lo, b1.hi)
    # dense against itself: resampled jointly, exactly 1 every time
    self_b = bootstrap_multiplier(dense_runs, dense_runs, n=20, seed=0)
    assert np.allclose(self_b.samples, 1.0, atol=0.05)


def test_fit_structure_with_too_few_points():
    fit = fit_structure([(np.array([1e10]), np.array([0.5]))])
    assert fit.law is None and math.isnan(fit.exponent) and fit.notes
    empty = fit_structure([])
    assert empty.law is None and len(empty.frontier) == 0
    b = bootstrap_multiplier([(np.array([1e10]), np.array([0.5]))], runs_of(dense_loss), n=5)
    assert b.samples.size == 5  # a 1-point frontier still yields a multiplier per point
    b = bootstrap_multiplier([], runs_of(dense_loss), n=5)
    assert math.isnan(b.lo) and math.isnan(b.estimate)
