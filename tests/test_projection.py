"""project_cores: the closed-form projection of a dense weight onto a structure (float64)."""

import math

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from test_theta import thetas

from einsearch import EinsumLinear, Theta, fit_to_dense, make_plan
from einsearch.functional import materialize
from einsearch.projection import ProjectionResult, project_cores

pytestmark = pytest.mark.usefixtures("float64")

# (d_in, d_out): square, rectangular both ways, and sizes whose blocks are not square
SIZES = [(64, 64), (48, 80), (96, 40), (36, 100)]
# sizes that make most structures pad (primes, 2 x prime)
PADDED_SIZES = [(37, 37), (97, 50), (26, 53)]
EXTRA_THETAS = {
    "low_rank_1": Theta.low_rank(0.0),
    "tt_full": Theta.tensor_train(0.5),
    "btt_half": Theta.btt(0.5),
    "gamma_only": Theta.parse("(0|0|1|0|0|1|0)"),  # block diagonal
    "beta_first": Theta.parse("(0|0.5|0.5|0.5|0|0.5|0.25)"),
}


def _representable(plan, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.ones(plan.shape_a) if plan.trivial_a else torch.randn(plan.shape_a, generator=g)
    b = torch.ones(plan.shape_b) if plan.trivial_b else torch.randn(plan.shape_b, generator=g)
    return materialize(a, b, plan)


def _rel(w, a, b, plan):
    return (torch.linalg.norm(w - materialize(a, b, plan)) / torch.linalg.norm(w)).item()


def _out_rel(w, a, b, plan, x):
    return (torch.linalg.norm((w - materialize(a, b, plan)) @ x.T) / torch.linalg.norm(w @ x.T)).item()


def _check_result(res, plan, w):
    assert isinstance(res, ProjectionResult)
    assert tuple(res.core_a.shape) == plan.shape_a and tuple(res.core_b.shape) == plan.shape_b
    assert res.core_a.dtype == w.dtype and res.seconds >= 0
    # a single-entry core is the layer's constant 1: the projection must not rely on another value
    if plan.trivial_a:
        assert torch.equal(res.core_a, torch.ones(plan.shape_a))
    if plan.trivial_b:
        assert torch.equal(res.core_b, torch.ones(plan.shape_b))


# ----------------------------------------------------------------------- (a) exact recovery
@pytest.mark.parametrize("d_in, d_out", SIZES)
def test_representable_matrices_are_recovered(named_theta, d_in, d_out):
    plan = make_plan(named_theta, d_in, d_out)
    w = _representable(plan)
    res = project_cores(w, plan)
    _check_result(res, plan, w)
    assert _rel(w, res.core_a, res.core_b, plan) < 1e-10
    assert res.relative_error < 1e-10
    assert res.method == ("svd+als" if plan.is_padded else "svd") and res.exact == (not plan.is_padded)


@pytest.mark.parametrize("name", sorted(EXTRA_THETAS))
@pytest.mark.parametrize("d_in, d_out", SIZES)
def test_representable_matrices_are_recovered_more_thetas(name, d_in, d_out):
    plan = make_plan(EXTRA_THETAS[name], d_in, d_out)
    w = _representable(plan, seed=1)
    res = project_cores(w, plan)
    _check_result(res, plan, w)
    assert res.relative_error < (1e-6 if plan.is_padded else 1e-10)


def test_monarch_non_square_blocks_and_float32():
    plan = make_plan(Theta.monarch(), 128, 32)  # A's blocks map 8 inputs to 4 outputs, B's 16 to 8
    s = plan.sizes
    assert not plan.is_padded and s.alpha != s.phi and s.gamma != s.epsilon
    w = _representable(plan).float()
    res = project_cores(w, plan)
    assert res.core_a.dtype == torch.float32 and res.relative_error < 1e-5


# ----------------------------------------------------------------------- (b) low rank = SVD
@pytest.mark.parametrize("d_in, d_out", [(64, 64), (80, 48), (30, 70)])
@pytest.mark.parametrize("rho", [0.0, 0.5, 0.75])
def test_low_rank_equals_truncated_svd(d_in, d_out, rho):
    plan = make_plan(Theta.low_rank(rho), d_in, d_out)
    w = torch.randn(d_out, d_in)
    r = plan.sizes.rho
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    best = (u[:, :r] * s[:r]) @ vh[:r]
    res = project_cores(w, plan)
    eckart_young = math.sqrt((s[r:] ** 2).sum() / (s ** 2).sum())
    assert res.relative_error == pytest.approx(eckart_young, abs=1e-10)
    torch.testing.assert_close(materialize(res.core_a, res.core_b, plan), best, atol=1e-10, rtol=0)


# ---------------------------------------------------------------- (c) Kronecker = Van Loan
@pytest.mark.parametrize("d_in, d_out", [(64, 64), (48, 80), (36, 100)])
def test_kronecker_equals_van_loan_nearest_kronecker_product(d_in, d_out):
    plan = make_plan(Theta.kronecker(), d_in, d_out)
    assert not plan.is_padded
    s = plan.sizes
    w = torch.randn(d_out, d_in)
    # Van Loan & Pitsianis: W ~ X (x) Y, X (delta x alpha), Y (epsilon x beta)
    rearranged = w.reshape(s.delta, s.epsilon, s.alpha, s.beta).permute(0, 2, 1, 3).reshape(
        s.delta * s.alpha, s.epsilon * s.beta)
    u, sv, vh = torch.linalg.svd(rearranged)
    x = (u[:, 0] * sv[0]).reshape(s.delta, s.alpha)
    y = vh[0].reshape(s.epsilon, s.beta)
    res = project_cores(w, plan)
    torch.testing.assert_close(materialize(res.core_a, res.core_b, plan), torch.kron(x, y), atol=1e-10, rtol=0)


# ------------------------------------------------------------------------ (d) optimality
@pytest.mark.parametrize("d_in, d_out", [(64, 64), (48, 80)])
def test_no_random_perturbation_improves_the_projection(named_theta, d_in, d_out):
    plan = make_plan(named_theta, d_in, d_out)
    w = torch.randn(d_out, d_in)
    res = project_cores(w, plan)
    assert res.relative_error == pytest.approx(_rel(w, res.core_a, res.core_b, plan), rel=1e-9)
    for k in range(20):
        step = 10.0 ** -(1 + k % 4)
        a = res.core_a if plan.trivial_a else res.core_a + step * torch.randn(plan.shape_a)
        b = res.core_b if plan.trivial_b else res.core_b + step * torch.randn(plan.shape_b)
        assert _rel(w, a, b, plan) >= res.relative_error - 1e-12


def test_projection_is_never_worse_than_the_adam_fit(named_theta):
    plan = make_plan(named_theta, 32, 48)
    w = torch.randn(48, 32)
    res = project_cores(w, plan)
    layer = EinsumLinear(32, 48, named_theta, bias=False)
    adam = fit_to_dense(layer, w, steps=600)
    assert res.relative_error <= adam + 1e-12


# ------------------------------------------------------------------------- (e) padded plans
@pytest.mark.parametrize("d_in, d_out", PADDED_SIZES)
def test_padded_als_is_never_worse_than_its_start_nor_adam(named_theta, d_in, d_out):
    plan = make_plan(named_theta, d_in, d_out)
    w = torch.randn(d_out, d_in)
    res = project_cores(w, plan)
    start = project_cores(w, plan, als_sweeps=0)  # the SVD of the zero-padded weight
    assert res.relative_error <= start.relative_error + 1e-12
    assert res.relative_error == pytest.approx(_rel(w, res.core_a, res.core_b, plan), rel=1e-9)
    if plan.is_padded:
        assert res.method == "svd+als" and not res.exact
        layer = EinsumLinear(d_in, d_out, named_theta, bias=False)
        assert res.relative_error <= fit_to_dense(layer, w, steps=600) + 1e-9


@pytest.mark.parametrize("name", ["monarch", "btt", "kronecker"])
def test_padded_als_recovers_representable_matrices(name):
    from conftest import NAMED_STRUCTURES

    plan = make_plan(NAMED_STRUCTURES[name], 97, 97)
    assert plan.is_padded
    w = _representable(plan)
    assert project_cores(w, plan).relative_error < 1e-8


# ----------------------------------------------------------------------- (f) data-aware
def _correlated_inputs(n, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g) * torch.logspace(0, -2, d)  # decaying spectrum
    return torch.randn(n, d, generator=g) @ mix.T


@pytest.mark.parametrize("d_in, d_out", [(48, 80), (37, 37)])
def test_data_aware_lowers_the_output_error(named_theta, d_in, d_out):
    plan = make_plan(named_theta, d_in, d_out)
    w = torch.randn(d_out, d_in)
    x = _correlated_inputs(256, d_in)
    plain = project_cores(w, plan)
    aware = project_cores(w, plan, calibration=x)
    assert aware.method == "data-aware"
    assert aware.relative_error == pytest.approx(_out_rel(w, aware.core_a, aware.core_b, plan, x), rel=1e-9)
    plain_out = _out_rel(w, plain.core_a, plain.core_b, plan, x)
    assert aware.relative_error <= plain_out + 1e-12
    if plain_out > 1e-6:  # the structure cannot express W exactly: the weighting must pay off
        assert aware.relative_error < 0.95 * plain_out


@pytest.mark.parametrize("d_in, d_out", [(64, 64), (48, 80)])
def test_data_aware_low_rank_is_exact_whitened_svd(d_in, d_out):
    """Low rank: min ||(W - W_r) S^1/2|| is the SVD of W S^1/2, un-whitened (SVD-LLM's answer)."""
    plan = make_plan(Theta.low_rank(0.5), d_in, d_out)
    w, x = torch.randn(d_out, d_in), _correlated_inputs(300, d_in)
    res = project_cores(w, plan, calibration=x)
    assert res.exact
    s_mat = x.T @ x / x.shape[0]
    lam, q = torch.linalg.eigh(s_mat)
    root, inv = (q * lam.sqrt()) @ q.T, (q / lam.sqrt()) @ q.T
    u, s, vh = torch.linalg.svd(w @ root, full_matrices=False)
    r = plan.sizes.rho
    expected = (u[:, :r] * s[:r]) @ vh[:r] @ inv
    torch.testing.assert_close(materialize(res.core_a, res.core_b, plan), expected, atol=1e-8, rtol=1e-8)


def test_data_aware_monarch_is_exact_for_block_kronecker_inputs():
    """Inputs whose second moment is blockdiag over gamma of S_alpha (x) S_beta: closed form, optimal."""
    plan = make_plan(Theta.parse("(0.25|0.25|0.5|0|0.5|0.5|0)"), 64, 64)
    s = plan.sizes
    assert not plan.is_padded and s.alpha > 1 and s.beta > 1 and s.gamma > 1
    la, lb = torch.randn(s.alpha, s.alpha), torch.randn(s.beta, s.beta)
    mixing = torch.kron(torch.kron(la, lb), torch.eye(s.gamma))  # axes (alpha, beta, gamma)
    n = 4 * plan.d_in
    z = torch.linalg.qr(torch.randn(n, plan.d_in)).Q * math.sqrt(n)  # exactly white: Z^T Z / n = I
    x = z @ mixing.T
    w = torch.randn(64, 64)
    res = project_cores(w, plan, calibration=x)
    assert res.exact
    for _ in range(10):
        a = res.core_a + 1e-3 * torch.randn(plan.shape_a)
        b = res.core_b + 1e-3 * torch.randn(plan.shape_b)
        assert _out_rel(w, a, b, plan, x) >= res.relative_error - 1e-12
    # ALS from the exact answer cannot find anything better
    generic = project_cores(w, plan, calibration=x + 1e-9 * torch.randn_like(x))
    assert not generic.exact and generic.relative_error >= res.relative_error - 1e-6


# ---------------------------------------------------------------------- (g) bad inputs
@pytest.mark.parametrize("weight, kwargs, error, match", [
    (torch.randn(16), {}, ValueError, r"weight must be a 2-D tensor .*\(8, 16\).*shape \(16,\)"),
    (torch.randn(16, 8), {}, ValueError, r"weight must have shape \(d_out, d_in\) = \(8, 16\).*\(16, 8\)"),
    (torch.full((8, 16), math.nan), {}, ValueError, r"weight must be finite, got 128 non-finite"),
    (torch.ones(8, 16, dtype=torch.int64), {}, ValueError, r"weight must be a floating-point tensor"),
    ([[1.0] * 16] * 8, {}, TypeError, r"weight must be a torch.Tensor"),
    (torch.randn(8, 16), dict(calibration=torch.randn(5, 15)), ValueError,
     r"calibration must have shape \(n, d_in\) = \(n >= 1, 16\), got \(5, 15\)"),
    (torch.randn(8, 16), dict(calibration=torch.full((5, 16), math.inf)), ValueError, "calibration must be finite"),
    (torch.randn(8, 16), dict(als_sweeps=-1), ValueError, "als_sweeps must be a non-negative integer, got -1"),
    (torch.randn(8, 16), dict(als_restarts=1.5), ValueError, "als_restarts must be a non-negative integer, got 1.5"),
])
def test_bad_inputs_raise_naming_the_argument(weight, kwargs, error, match):
    with pytest.raises(error, match=match):
        project_cores(weight, make_plan(Theta.monarch(), 16, 8), **kwargs)


def test_plan_must_be_a_plan():
    with pytest.raises(TypeError, match="plan must be an EinsumPlan"):
        project_cores(torch.randn(8, 16), Theta.monarch())


def test_zero_weight():
    plan = make_plan(Theta.btt(0.25), 37, 37)
    res = project_cores(torch.zeros(37, 37), plan)
    assert res.relative_error == 0.0 and not materialize(res.core_a, res.core_b, plan).any()


# -------------------------------------------------------------------- (h) random thetas
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(thetas(), st.sampled_from([1, 12, 30, 64, 100]), st.sampled_from([1, 16, 45, 64, 72]))
def test_random_thetas_recover_representable_matrices(theta, d_in, d_out):
    plan = make_plan(theta, d_in, d_out)
    assume(not plan.is_padded)
    w = _representable(plan)
    assume(torch.linalg.norm(w) > 0)
    res = project_cores(w, plan)
    assert res.exact and res.relative_error < 1e-10
    assert _rel(w, res.core_a, res.core_b, plan) < 1e-10


# ------------------------------------------------------------ loading into a layer (fit.py)
@pytest.mark.parametrize("einsum_norm", [False, True])
def test_project_into_makes_the_layer_compute_the_projection(named_theta, einsum_norm):
    from einsearch.fit import project_into

    layer = EinsumLinear(48, 80, named_theta, einsum_norm=einsum_norm)
    w, bias = 3.0 * torch.randn(80, 48), torch.randn(80)  # large: the norm would shrink the cores
    res = project_into(layer, w, bias)
    expected = materialize(res.core_a, res.core_b, layer.plan)
    torch.testing.assert_close(layer.to_dense(), expected, atol=1e-10, rtol=1e-10)
    x = torch.randn(7, 48)
    torch.testing.assert_close(layer(x), x @ expected.T + bias, atol=1e-9, rtol=1e-9)
    with pytest.raises(ValueError, match=r"bias must be a tensor of shape \(d_out,\) = \(80,\)"):
        project_into(layer, w, torch.zeros(3))
