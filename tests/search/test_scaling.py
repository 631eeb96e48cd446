"""Frontier and power-law fit on data with a known law."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from einsearch.search.scaling import fit_power_law, pareto_frontier

C = np.logspace(10, 14, 25)


def dense_loss(c):
    return 2.0 * np.asarray(c, dtype=float) ** -0.1


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
