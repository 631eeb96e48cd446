"""The compute-multiplier estimator on simulated frontiers with known multipliers.

Simulator: structure S at width w costs ``2e4 w^2 / cost_S`` FLOPs per step, so its run covers
C = that x step over log-spaced steps 1..T. Along the run the loss is

    L_t = (E + a_S C^-b_S) x (1 + tau_S exp(-t / (tau_steps_S T))) x exp(sigma_seed z_run + sigma_point z_t)

so every run, once its transient has died, lies on S's compute-optimal law L_S(C) = E + a_S C^-b_S
(the frontier over widths is that law), and the true multiplier is
m(L) = C_dense(L) / C_S(L) = ((L - E) / a_D)^(-1/b_D) / ((L - E) / a_S)^(-1/b_S).
Parallel laws (b_S = b_D, a_S = a_D m^-b) have the constant m; ``cost = m`` makes S's point
cloud dense's shifted by m in compute, as a cheaper structure at equal width would be.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

from einsearch.search.analysis import Curve, analyze, curves_from_store, select_lrs, t_quantile

A, B = 16.0, 0.15
WIDTHS = (16, 23, 32, 45, 64, 91)
T = 2000


def simulate(laws, *, widths=WIDTHS, seeds=4, n_points=20, sigma_seed=0.015, sigma_point=0.005,
             rng=None, T=T, seed_luck_across_widths=False):
    """Curves of every structure in ``laws`` (name -> dict(a, b, E=0, cost=1, tau=0,
    tau_steps=0.02, widths=None, lrs={lr: loss factor})).

    ``seed_luck_across_widths``: a seed's luck (its ``sigma_seed`` factor) is one draw per
    (structure, seed), shared by every width, as when the seed fixes a data stream; by default
    each run draws its own."""
    rng = np.random.default_rng(0) if rng is None else rng
    steps = np.unique(np.round(np.geomspace(1, T, n_points)).astype(int))
    out = []
    for name, p in laws.items():
        luck = rng.normal(size=seeds)
        for w in p.get("widths", widths):
            c = 2.0e4 * w * w / p.get("cost", 1.0) * steps
            law = p.get("E", 0.0) + p["a"] * c ** -p["b"]
            trans = 1.0 + p.get("tau", 0.0) * np.exp(-steps / (p.get("tau_steps", 0.02) * T))
            for lr, factor in p.get("lrs", {1e-3: 1.0}).items():
                for s in range(seeds):
                    z = luck[s] if seed_luck_across_widths else rng.normal()
                    noise = np.exp(sigma_seed * z + sigma_point * rng.normal(size=steps.size))
                    out.append(Curve(name, w, s, lr, steps, c, law * trans * noise * factor,
                                     total_steps=T))
    return out


def parallel(m, **extra):
    """S needs 1/m of dense's compute for every loss."""
    return {"dense": dict(a=A, b=B), "S": dict(a=A * m ** -B, b=B, cost=m, **extra)}


def true_m(law_d, law_s, loss):
    e = law_d.get("E", 0.0)
    cd = ((loss - e) / law_d["a"]) ** (-1.0 / law_d["b"])
    cs = ((loss - e) / law_s["a"]) ** (-1.0 / law_s["b"])
    return cd / cs


def log_err(x, y):
    return abs(math.log(x / y))


# ------------------------------------------------------------------------------------------
# (a) parallel laws, (c) dense against itself


@pytest.mark.parametrize("m", [0.5, 4.0])
def test_parallel_laws_give_the_constant_multiplier(m):
    laws = parallel(m)
    res = analyze(simulate(laws), n_bootstrap=100)
    s = res["S"]
    # tolerances ~3 sd of the estimator over noise draws (sd of log m ~0.05)
    assert log_err(s.compute_multiplier, m) < 0.15
    assert all(log_err(x.multiplier, m) < 0.15 for x in s.multiplier_by_loss)
    assert abs(s.exponent - B) < 0.015 and abs(s.exponent_delta) < 0.02
    assert s.varies is False
    assert s.reference_loss == s.loss_range[0] == s.multiplier_by_loss[0].loss
    summary = res.to_summary()
    assert list(summary) == ["dense", "S"]
    assert set(summary["S"]) == {"compute_multiplier", "compute_multiplier_ci", "reference_loss",
                                 "multiplier_by_loss", "exponent", "exponent_delta", "varies",
                                 "diagnostics"}
    assert len(summary["S"]["multiplier_by_loss"]) == 3


def test_dense_against_itself_gives_one():
    laws = {"dense": dict(a=A, b=B), "dense_again": dict(a=A, b=B)}
    res = analyze(simulate(laws, rng=np.random.default_rng(3)), n_bootstrap=100)
    d, again = res["dense"], res["dense_again"]
    assert d.compute_multiplier == 1.0 and d.exponent_delta == 0.0 and d.varies is False
    assert log_err(again.compute_multiplier, 1.0) < 0.1
    lo, hi = again.compute_multiplier_ci
    assert lo <= 1.0 <= hi


# ------------------------------------------------------------------------------------------
# (b) non-parallel laws


@pytest.mark.parametrize("b_s, varies", [(0.16, False), (0.3, True)])
def test_non_parallel_laws_give_m_of_loss(b_s, varies):
    law_d = dict(a=A, b=B)
    law_s = dict(a=A * 2e10 ** (b_s - B), b=b_s)  # the laws cross (m = 1) at C = 2e10
    res = analyze(simulate({"dense": law_d, "S": law_s}), n_bootstrap=0)
    s = res["S"]
    assert s.varies is varies
    levels = [x.loss for x in s.multiplier_by_loss]
    assert levels[0] < levels[1] < levels[2]
    for x in s.multiplier_by_loss:
        assert log_err(x.multiplier, true_m(law_d, law_s, x.loss)) < 0.15
    assert abs(s.exponent_delta - (b_s - B)) < 0.02
    truth = true_m(law_d, law_s, np.asarray(levels))
    assert bool(truth.max() / truth.min() > 2.0) is varies


# ------------------------------------------------------------------------------------------
# (d) interval coverage, (e) too few seeds


def test_interval_covers_the_truth_near_its_nominal_rate():
    m, n_sim = 3.0, 40
    covered, ratios = 0, []
    for k in range(n_sim):
        curves = simulate(parallel(m), widths=WIDTHS[:5], n_points=14, sigma_seed=0.04,
                          rng=np.random.default_rng(1000 + k))
        s = analyze(curves, n_bootstrap=100, seed=k)["S"]
        lo, hi = s.compute_multiplier_ci
        covered += lo <= m <= hi
        ratios.append(hi / lo)
    # binomial(40, 0.95): P(<= 34 covered) ~ 0.05; 0.85 -> 34
    assert covered >= 0.85 * n_sim
    assert np.median(ratios) < 2.5  # not covering by being uselessly wide


def test_a_rerun_with_other_seeds_lands_inside_a_three_seed_interval():
    """The demo's stability criterion on simulated runs: 3 seeds, then 3 other seeds."""
    m, n_sim = 3.0, 30
    inside, ratios = 0, []
    for k in range(n_sim):
        sim = dict(widths=WIDTHS[:5], n_points=14, sigma_seed=0.04, seeds=3)
        first = analyze(simulate(parallel(m), rng=np.random.default_rng(2000 + k), **sim),
                        n_bootstrap=100, seed=k)["S"]
        rerun = analyze(simulate(parallel(m), rng=np.random.default_rng(5000 + k), **sim),
                        n_bootstrap=0)["S"]
        lo, hi = first.compute_multiplier_ci
        inside += lo <= rerun.compute_multiplier <= hi
        ratios.append(hi / lo)
        assert first.interval_t == pytest.approx(t_quantile(0.95, 2))
    # a 95% interval holds an independent re-run's estimate ~83% of the time when it is exact
    # (the difference of two estimates has twice the variance); the t quantile of 2 degrees
    # of freedom makes it wider than that on purpose
    assert inside >= 0.85 * n_sim
    assert np.median(ratios) < 5.0


def test_interval_covers_when_a_seed_is_lucky_at_every_width():
    """Seed luck shared by a structure's widths (one data stream per seed) moves its whole
    frontier at once; the interval must still cover the truth."""
    m, n_sim = 2.0, 30
    covered = 0
    for k in range(n_sim):
        curves = simulate(parallel(m), widths=WIDTHS[:5], n_points=14, sigma_seed=0.05, seeds=5,
                          rng=np.random.default_rng(7000 + k), seed_luck_across_widths=True)
        lo, hi = analyze(curves, n_bootstrap=100, seed=k)["S"].compute_multiplier_ci
        covered += lo <= m <= hi
    assert covered >= 0.85 * n_sim


def test_intervals_at_three_losses_cover_a_multiplier_that_varies():
    law_d = dict(a=A, b=B)
    law_s = dict(a=A * 2e10 ** (0.2 - B), b=0.2)  # m(L) changes with the loss
    n_sim = 30
    covered = np.zeros(3)
    for k in range(n_sim):
        curves = simulate({"dense": law_d, "S": law_s}, widths=WIDTHS[:5], n_points=14,
                          sigma_seed=0.04, seeds=5, rng=np.random.default_rng(9000 + k))
        for i, x in enumerate(analyze(curves, n_bootstrap=100, seed=k)["S"].multiplier_by_loss):
            covered[i] += x.ci[0] <= true_m(law_d, law_s, x.loss) <= x.ci[1]
    assert np.all(covered >= 0.85 * n_sim), covered


def test_t_quantile_is_students():
    assert t_quantile(0.95, 2) == pytest.approx(4.3027, abs=1e-4)
    assert t_quantile(0.95, 1000) == pytest.approx(1.9623, abs=1e-3)


def test_fewer_than_three_seeds_gives_no_interval():
    res = analyze(simulate(parallel(2.0), seeds=2), n_bootstrap=50)
    s = res["S"]
    assert s.compute_multiplier is not None
    assert s.compute_multiplier_ci is None
    assert all(x.ci is None for x in s.multiplier_by_loss)
    assert any("fewer than 3 seeds" in n for n in s.notes)
    assert res.to_summary()["S"]["compute_multiplier_ci"] is None


def test_bootstrap_is_deterministic_given_the_seed():
    curves = simulate(parallel(2.0))
    a = analyze(curves, n_bootstrap=40, seed=7)["S"].compute_multiplier_ci
    b = analyze(curves, n_bootstrap=40, seed=7)["S"].compute_multiplier_ci
    c = analyze(curves, n_bootstrap=40, seed=8)["S"].compute_multiplier_ci
    assert a == b and a != c


# ------------------------------------------------------------------------------------------
# (f) transient, (g) no extrapolation, (h) learning rates


def test_transient_is_left_out():
    """S's transient dies 6x slower than dense's: early points of S's small widths own the
    low-compute end of its frontier and tilt it, unless the first 30 % of steps are left out."""
    m = 3.0
    laws = {"dense": dict(a=A, b=B, tau=3.0, tau_steps=0.01),
            "S": dict(a=A * m ** -B, b=B, cost=m, tau=3.0, tau_steps=0.05)}
    curves = simulate(laws)
    s = analyze(curves, n_bootstrap=0)["S"]
    assert log_err(s.compute_multiplier, m) < 0.15
    assert all(log_err(x.multiplier, m) < 0.15 for x in s.multiplier_by_loss)
    kept_all = analyze(curves, transient_fraction=0.0, n_bootstrap=0)["S"]
    assert log_err(kept_all.compute_multiplier, m) > 0.25


def test_multiplier_is_read_only_inside_both_frontiers():
    m = 8.0
    curves = simulate(parallel(m))
    res = analyze(curves, n_bootstrap=0)
    s, d = res["S"], res["dense"]
    lo, hi = s.window
    assert d.frontier.span[0] <= lo < hi <= d.frontier.span[1]
    assert s.frontier.span[0] <= lo and hi <= s.frontier.span[1]
    inside_s, inside_d = s.frontier.inside(s.window), d.frontier.inside(s.window)
    l_lo, l_hi = s.loss_range
    for f in (inside_s, inside_d):
        assert f.loss.min() <= l_lo and l_hi <= f.loss.max()
    assert all(l_lo <= x.loss <= l_hi for x in s.multiplier_by_loss)
    assert s.band.loss.min() >= l_lo and s.band.loss.max() <= l_hi
    assert log_err(s.compute_multiplier, m) < 0.15
    # a reference loss dense never reaches in the window: no headline, not an extrapolation
    below = analyze(curves, n_bootstrap=0, reference_loss=0.5 * l_lo)["S"]
    assert below.compute_multiplier is None and below.reference_loss is None
    assert any("outside the common loss range" in n for n in below.notes)
    assert below.multiplier_by_loss  # m(L) over the common range is still given


def test_frontiers_without_a_common_loss_range_give_no_multiplier():
    """S's loss is a third of dense's at every compute: the compute window is all of dense's,
    but no loss is reached by both."""
    laws = {"dense": dict(a=A, b=B), "S": dict(a=A / 3, b=B)}
    s = analyze(simulate(laws), n_bootstrap=0)["S"]
    assert s.window is not None and s.loss_range is None
    assert s.compute_multiplier is None and not s.multiplier_by_loss
    assert any("share no loss range" in n for n in s.notes)


def test_no_common_compute_window_gives_no_multiplier():
    res = analyze(simulate(parallel(1e4)), n_bootstrap=0)
    s = res["S"]
    assert s.compute_multiplier is None and s.window is None and not s.multiplier_by_loss
    assert any("no common compute window" in n for n in s.notes)
    assert res.to_summary()["S"]["compute_multiplier"] is None


def test_one_width_frontier_gives_no_multiplier():
    laws = parallel(2.0)
    laws["S"]["widths"] = (32,)
    s = analyze(simulate(laws), n_bootstrap=0)["S"]
    assert s.compute_multiplier is None
    assert any("from 1 width(s)" in n for n in s.notes)


def test_a_missing_estimate_names_the_reference_it_is_measured_against():
    """Head to head (BTT-MoE against FFN-MoE) the reference sits in dense's place; a reference
    frontier with one width is the reference's, not 'dense's'."""
    laws = {"moe": dict(a=A, b=B, widths=(32,)), "btt_moe": dict(a=A, b=B)}
    s = analyze(simulate(laws), dense="moe", n_bootstrap=0)["btt_moe"]
    assert s.compute_multiplier is None
    assert any("moe's frontier has" in n and "from 1 width(s)" in n for n in s.notes)
    assert not any("dense" in n for n in s.notes)


def test_the_best_learning_rate_is_kept_per_width():
    m = 2.0
    laws = parallel(m)
    laws["dense"]["lrs"] = {1e-3: 1.0, 3e-3: 1.25}
    laws["S"]["lrs"] = {1e-3: 1.2, 3e-4: 1.0}
    curves = simulate(laws)
    chosen, scores = select_lrs(curves)
    assert {lr for (n, _), lr in chosen.items() if n == "dense"} == {1e-3}
    assert {lr for (n, _), lr in chosen.items() if n == "S"} == {3e-4}
    res = analyze(curves, n_bootstrap=0)
    assert set(res["S"].lr_by_width.values()) == {3e-4}
    assert log_err(res["S"].compute_multiplier, m) < 0.1
    assert res["S"].diagnostics()["lr_scores"]["32"].keys() == {"0.001", "0.0003"}


# ------------------------------------------------------------------------------------------
# offset law


def test_shared_offset_is_adopted_when_the_data_have_one():
    m, e, b = 3.0, 0.1, 0.2
    laws = {"dense": dict(a=A, b=b, E=e), "S": dict(a=A * m ** -b, b=b, cost=m, E=e)}
    curves = simulate(laws)
    res = analyze(curves, n_bootstrap=0, offset="shared")
    assert res.settings["law"] == "offset (shared E)"
    assert res.settings["aic_power"] - res.settings["aic_offset"] > 10.0
    assert abs(res.settings["E"] - e) < 0.04
    s = res["S"]
    assert s.law.E == s.dense_law.E == res.settings["E"]
    assert all(log_err(x.multiplier, m) < 0.2 for x in s.multiplier_by_loss)  # sd ~0.065
    assert s.varies is False
    fixed = analyze(curves, n_bootstrap=0, offset=e)
    assert fixed.settings["law"] == "offset (fixed E)" and fixed["S"].law.E == e


def test_shared_offset_is_not_adopted_without_one():
    res = analyze(simulate(parallel(2.0)), n_bootstrap=0, offset="shared")
    assert res.settings["law"] == "power" and res.settings["E"] == 0.0
    assert res.settings["aic_offset"] > res.settings["aic_power"] - 10.0
    assert any("plain power law used" in n for n in res.notes)


# ------------------------------------------------------------------------------------------
# diagnostics


def test_diagnostics_count_frontier_points_and_warn_on_one_width():
    laws = parallel(2.0)
    laws["S"]["widths"] = (16, 23)
    curves = simulate(laws)
    # S's width 32 trained 10x longer and logged densely: it owns the frontier's high end
    laws["S"]["widths"] = (32,)
    curves += [c for c in simulate(laws, T=10 * T, n_points=80) if c.structure == "S"]
    s = analyze(curves, n_bootstrap=0)["S"]
    diag = s.diagnostics()
    per_width = diag["frontier_points_per_width"]
    assert sum(per_width.values()) == diag["frontier_points"] == len(s.frontier.inside(s.window))
    assert per_width["32"] > diag["frontier_points"] / 2
    assert any(w.startswith("width 32 makes up") and "points of its frontier inside" in w
               for w in s.warnings)
    assert 0 <= diag["frontier_points_first_half"] <= diag["frontier_points"]
    assert diag["frontier_fraction_first_half"] == pytest.approx(
        diag["frontier_points_first_half"] / diag["frontier_points"])
    assert 0.9 < diag["r2"] <= 1.0 and 0.9 < diag["dense_r2"] <= 1.0
    assert diag["window"] == list(s.window)


def test_transient_steps_never_reach_the_frontier():
    curves = simulate(parallel(2.0))
    res = analyze(curves, n_bootstrap=0, transient_fraction=0.5)
    first_kept = {c.compute[np.searchsorted(c.step, math.ceil(0.5 * T))] for c in curves}
    for name in ("dense", "S"):
        f = res[name].frontier
        assert not f.first_half.any()  # with 50 % left out nothing is from the first half
        assert f.compute.min() >= min(first_kept) * (1 - 1e-9)


# ------------------------------------------------------------------------------------------
# (i) bad input


def _ok():
    return simulate(parallel(2.0), seeds=1, n_points=8)


@pytest.mark.parametrize("kwargs, match", [
    ({"curves": []}, "curves"),
    ({"dense": "nope"}, "dense"),
    ({"transient_fraction": 1.0}, "transient_fraction"),
    ({"transient_fraction": -0.1}, "transient_fraction"),
    ({"reference_loss": -1.0}, "reference_loss"),
    ({"offset": "free"}, "offset"),
    ({"offset": 1e6}, "offset"),
    ({"n_bootstrap": -1}, "n_bootstrap"),
    ({"level": 1.5}, "level"),
    ({"min_widths": 0}, "min_widths"),
])
def test_bad_arguments_are_named(kwargs, match):
    curves = kwargs.pop("curves", None)
    with pytest.raises(ValueError, match=match):
        analyze(_ok() if curves is None else curves, **kwargs)


def test_bad_curves_are_named():
    with pytest.raises(ValueError, match="loss"):
        Curve("dense", 16, 0, 1e-3, [1, 2], [1.0, 2.0], [0.5, -0.1])
    with pytest.raises(ValueError, match="compute"):
        Curve("dense", 16, 0, 1e-3, [1, 2], [0.0, 2.0], [0.5, 0.4])
    with pytest.raises(ValueError, match="one length"):
        Curve("dense", 16, 0, 1e-3, [1, 2], [1.0], [0.5, 0.4])
    with pytest.raises(TypeError, match=r"curves\[0\]"):
        analyze([("dense", 1)])
    c = _ok()
    with pytest.raises(ValueError, match="two runs"):
        analyze(c + c[:1])


# ------------------------------------------------------------------------------------------
# the store converter


def test_curves_from_store(tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))
    from fake_runs import make_result

    from einsearch.search.store import ResultStore

    path = tmp_path / "results.sqlite"
    with ResultStore(path) as st:
        for s in ("dense", "btt"):
            for w in (16, 32):
                st.record(make_result(s, w, seed=0, steps=20))
        st.record(make_result("btt", 64, steps=20, diverge_at=5))
    curves = curves_from_store(path, loss="eval")
    assert len(curves) == 4  # the diverged run is left out
    c = next(c for c in curves if c.structure == "btt" and c.width == 32)
    assert c.total_steps == 20 and c.lr == pytest.approx(3e-3)
    assert list(c.step) == [5, 10, 15, 20]  # eval loss is logged every 5th step
    train = curves_from_store(path, loss="train")
    assert len(next(x for x in train if x.structure == "btt" and x.width == 32).step) == 20
    with pytest.raises(ValueError, match="loss"):
        curves_from_store(path, loss="best")
    with pytest.raises(ValueError, match="task"):
        curves_from_store(path, task="charlm")
