"""EinsumLinear against its materialized dense weight, in float64."""

import copy
import math
import pickle
import warnings

import pytest
import torch
from conftest import NAMED_STRUCTURES
from hypothesis import given, settings
from hypothesis import strategies as st
from test_theta import thetas
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from einsearch import EinsumLinear, Theta, make_plan, taxonomy

f64 = torch.float64


def _check_matches_dense(layer: EinsumLinear, batch=(3, 5)) -> None:
    x = torch.randn(*batch, layer.d_in, dtype=f64)
    expected = x @ layer.to_dense().T + (layer.bias if layer.bias is not None else 0)
    for fast in (True, False):
        layer.fast = fast
        torch.testing.assert_close(layer(x), expected, rtol=1e-10, atol=1e-10)
    assert layer(x).shape == (*batch, layer.d_out)


@pytest.mark.parametrize("d_in, d_out", [(64, 64), (48, 80), (97, 97), (97, 50), (7, 300), (1, 5)])
def test_forward_equals_dense_named(named_theta, d_in, d_out):
    layer = EinsumLinear(d_in, d_out, named_theta, dtype=f64)
    _check_matches_dense(layer)


@given(thetas(), st.sampled_from([1, 12, 30, 64, 97]), st.sampled_from([1, 16, 45, 64, 101]), st.booleans())
@settings(max_examples=60, deadline=None)
def test_forward_equals_dense_random_thetas(theta, d_in, d_out, bias):
    theta = Theta(*theta.as_tuple()[:6], min(theta.rho, 0.5))  # keep the rank axis small
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # degenerate thetas warn; they must still be exact
        layer = EinsumLinear(d_in, d_out, theta, bias=bias, dtype=f64)
    with torch.no_grad():
        if layer.bias is not None:
            layer.bias.normal_()
    _check_matches_dense(layer)


@pytest.mark.parametrize("text", ["(0.33|0.33|0.34|0.25|0.5|0.25|0.1)", "(0.5|0.17|0.33|0.12|0.63|0.25|0)",
                                  "(0.62|0.38|0|0.5|0.5|0|0.13)"])
def test_forward_equals_dense_2048_two_decimal_thetas(text):
    layer = EinsumLinear(2048, 2048, Theta.parse(text), dtype=f64)
    _check_matches_dense(layer, batch=(4,))


def test_prime_widths_pad_and_still_match():
    layer = EinsumLinear(97, 89, "monarch", dtype=f64)
    assert layer.plan.is_padded
    _check_matches_dense(layer)


@pytest.mark.parametrize("name", sorted(NAMED_STRUCTURES))
@pytest.mark.parametrize("fast", [True, False])
def test_gradcheck_inputs_and_cores(name, fast):
    layer = EinsumLinear(12, 10, NAMED_STRUCTURES[name], dtype=f64, einsum_norm=(name == "btt"))
    layer.fast = fast
    x = torch.randn(4, 12, dtype=f64, requires_grad=True)
    params = [p for p in layer.parameters()]
    names = [n for n, _ in layer.named_parameters()]

    def f(x, *ps):
        return torch.func.functional_call(layer, dict(zip(names, ps)), (x,))

    assert torch.autograd.gradcheck(f, (x, *params))


def test_core_gradients_match_dense_reference(named_theta):
    layer = EinsumLinear(24, 20, named_theta, dtype=f64)
    x = torch.randn(6, 24, dtype=f64)
    g = torch.randn(6, 20, dtype=f64)
    (layer(x) * g).sum().backward()
    fast_grads = [p.grad.clone() for p in layer.parameters()]
    layer.zero_grad()
    (((x @ layer.to_dense().T) + layer.bias) * g).sum().backward()
    for got, want in zip(fast_grads, [p.grad for p in layer.parameters()]):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("d_in, d_out", [(256, 256), (97, 64), (256, 1024)])
def test_cost_matches_flop_counter(named_theta, d_in, d_out):
    layer = EinsumLinear(d_in, d_out, named_theta, bias=False)
    tokens = 8
    x = torch.randn(tokens, d_in)
    for fast in (True, False):
        layer.fast = fast
        with FlopCounterMode(display=False) as counter:
            layer(x)
        assert counter.get_total_flops() == layer.cost().flops * tokens
    cost = layer.cost()
    assert cost.params == sum(p.numel() for p in layer.parameters()) == cost.core_params
    assert cost.dense_flops == 2 * d_in * d_out


@pytest.mark.parametrize("name", ["low_rank", "btt", "low_rank_btt", "kronecker", "monarch", "tensor_train"])
def test_numerical_rank_follows_psi(name):
    theta = NAMED_STRUCTURES[name]
    d = 1024
    layer = EinsumLinear(d, d, theta, bias=False, dtype=f64)
    with torch.no_grad():
        w = layer.to_dense()
    rank = torch.linalg.matrix_rank(w).item()
    assert rank == layer.plan.rank  # generic cores reach the plan's rank bound
    psi = taxonomy(theta).psi
    assert math.log(rank) / math.log(d) == pytest.approx(psi, abs=0.05)


@pytest.mark.parametrize("name", sorted(NAMED_STRUCTURES))
def test_output_rms_at_init_is_order_one_across_widths(name):
    rms = {}
    for d in (64, 256, 1024, 4096):
        layer = EinsumLinear(d, d, NAMED_STRUCTURES[name], bias=False)
        x = torch.randn(64, d)
        with torch.no_grad():
            rms[d] = layer(x).pow(2).mean().sqrt().item()
    # Full-rank, rank-axis-free structures preserve RMS exactly; with a rank axis the spectral
    # init passes ~ sqrt(rank / d) / sqrt(n_rho) of a random input's energy (a slow decay).
    assert all(0.1 < v < 2.0 for v in rms.values()), rms
    assert max(rms.values()) / min(rms.values()) < 3.0, rms


@pytest.mark.parametrize("name", sorted(NAMED_STRUCTURES))
def test_operator_norm_at_init_is_order_one(name):
    """Spectral init: ||W||_2 ~ sqrt(d_out / d_in) = 1 at every width."""
    norms = []
    for d in (64, 256, 1024):
        layer = EinsumLinear(d, d, NAMED_STRUCTURES[name], bias=False, dtype=f64)
        with torch.no_grad():
            norms.append(torch.linalg.matrix_norm(layer.to_dense(), ord=2).item())
    assert all(0.5 < v < 4.0 for v in norms), norms


def test_zero_init_outputs_zero_but_trains():
    layer = EinsumLinear(32, 32, "btt", zero_init=True)
    x = torch.randn(5, 32)
    assert torch.count_nonzero(layer(x)) == 0
    (layer(x) - 1).pow(2).sum().backward()
    assert getattr(layer, layer.last_core()).grad.abs().sum() > 0


def test_cores_are_parameters_with_two_or_more_dims(named_theta):
    layer = EinsumLinear(64, 32, named_theta)
    for name in layer.core_names():
        assert getattr(layer, name).dim() >= 2
    assert len(layer.core_names()) == layer.plan.num_cores


def test_init_std_is_spectral():
    layer = EinsumLinear(1024, 1024, "low_rank")
    p = layer.plan
    assert layer.init_std("core_a") == pytest.approx(math.sqrt(min(p.fan_in_a, p.fan_out_a)) / p.fan_in_a)
    assert layer.core_a.std().item() == pytest.approx(layer.init_std("core_a"), rel=0.05)
    dense = EinsumLinear(256, 256, "dense")
    assert dense.init_std("core_a") == pytest.approx(1 / 16)  # standard N(0, 1/fan_in)


def test_einsum_norm_caps_core_rms():
    layer = EinsumLinear(64, 64, "monarch", einsum_norm=True, bias=False, dtype=f64)
    with torch.no_grad():
        layer.core_a.mul_(10.0)
    a, _ = layer.effective_cores()
    assert a.pow(2).mean().sqrt().item() == pytest.approx(layer.init_std("core_a"), rel=1e-9)
    small = EinsumLinear(64, 64, "monarch", einsum_norm=True, bias=False, dtype=f64)
    with torch.no_grad():
        small.core_a.mul_(0.1)
    a, _ = small.effective_cores()
    torch.testing.assert_close(a, small.core_a)  # below the init scale: untouched
    assert {"gain_a", "gain_b"} <= {n for n, _ in layer.named_parameters()}


def test_einsum_norm_on_zero_init_core_has_finite_gradients():
    layer = EinsumLinear(32, 32, "btt", einsum_norm=True, zero_init=True, dtype=f64)
    (layer(torch.randn(4, 32, dtype=f64)) - 1).pow(2).sum().backward()
    for name, p in layer.named_parameters():
        assert torch.isfinite(p.grad).all(), name
    assert getattr(layer, layer.last_core()).grad.abs().sum() > 0


def test_state_dict_round_trip_keeps_config():
    layer = EinsumLinear(48, 40, "btt", einsum_norm=True)
    other = EinsumLinear(48, 40, "btt", einsum_norm=True)
    other.load_state_dict(layer.state_dict())
    x = torch.randn(3, 48)
    torch.testing.assert_close(other(x), layer(x))
    assert all(isinstance(v, torch.Tensor) for v in layer.state_dict().values())  # safetensors-ready
    assert layer.structure_dict()["theta"] == str(Theta.btt())


def test_an_old_checkpoint_with_extra_state_still_loads_or_names_the_mismatch():
    layer = EinsumLinear(48, 40, "btt")
    old = {**layer.state_dict(), "_extra_state": {"theta": str(Theta.btt()), "d_in": 48, "d_out": 40}}
    twin = EinsumLinear(48, 40, "btt")
    twin.load_state_dict(old)
    torch.testing.assert_close(twin.core_a, layer.core_a)
    other = {**old, "_extra_state": {"theta": "(1|0|0|0|1|0|0.5)", "d_in": 48, "d_out": 40}}
    with pytest.raises(ValueError, match="theta"):
        EinsumLinear(48, 40, "btt").load_state_dict(other)


def test_state_dict_of_another_structure_is_rejected():
    a = EinsumLinear(64, 64, "monarch")
    b = EinsumLinear(64, 64, "(0.5|0|0.5|0|0.5|0.5|0.25)")
    state = b.state_dict()
    with pytest.raises(RuntimeError, match="size mismatch for core_a"):
        a.load_state_dict(state, strict=False)


@pytest.mark.parametrize("clone", [copy.deepcopy, lambda m: pickle.loads(pickle.dumps(m))])
def test_deepcopy_and_pickle(clone, named_theta):
    layer = EinsumLinear(30, 20, named_theta)
    twin = clone(layer)
    x = torch.randn(2, 30)
    torch.testing.assert_close(twin(x), layer(x))
    assert twin.plan == layer.plan and twin.config == layer.config


def test_wrong_input_width_names_expected_width():
    layer = EinsumLinear(64, 32, "monarch")
    with pytest.raises(ValueError, match="d_in=64"):
        layer(torch.randn(2, 63))


@pytest.mark.parametrize("bad", [0, -1, 3.5, "64"])
def test_bad_dims(bad):
    with pytest.raises(ValueError, match="positive integer"):
        EinsumLinear(bad, 8, "dense")


def test_unknown_structure():
    with pytest.raises(ValueError, match="unknown structure"):
        EinsumLinear(8, 8, "hyperbolic")


def test_degenerate_theta_warns():
    with pytest.warns(UserWarning, match="degenerate"):
        EinsumLinear(64, 64, Theta.btt(0.75))


def test_extra_repr_shows_theta_and_sizes():
    text = repr(EinsumLinear(1024, 1024, "monarch"))
    assert "theta=(0.5|0|0.5|0|0.5|0.5|0)" in text and "alpha=32" in text and "d_in=1024" in text


def test_plan_matches_module():
    layer = EinsumLinear(1024, 1024, "monarch", bias=False)
    assert layer.plan == make_plan(Theta.monarch(), 1024, 1024)
    assert layer.cost().params == 65_536




@pytest.mark.parametrize("einsum_norm", [False, True])
def test_from_linear_projects_in_closed_form(float64, einsum_norm):
    # a weight that IS a Monarch matrix is recovered exactly, einsum norm or not
    torch.manual_seed(0)
    target = EinsumLinear(16, 16, "monarch")
    with torch.no_grad():
        target.core_a.mul_(7.0)  # well above the init scale: the norm would shrink it
    linear = nn.Linear(16, 16)
    with torch.no_grad():
        linear.weight.copy_(target.to_dense())
    layer = EinsumLinear.from_linear(linear, "monarch", einsum_norm=einsum_norm)
    torch.testing.assert_close(layer.to_dense(), linear.weight, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(layer.bias, linear.bias)
    x = torch.randn(4, 16)
    torch.testing.assert_close(layer(x), linear(x), rtol=1e-9, atol=1e-9)


def test_from_linear_ignores_adam_settings_with_a_warning():
    with pytest.warns(DeprecationWarning, match="closed form"):
        layer = EinsumLinear.from_linear(nn.Linear(8, 8), "dense", steps=5)
    assert isinstance(layer, EinsumLinear)
    with pytest.raises(TypeError, match="nn.Linear"):
        EinsumLinear.from_linear(nn.ReLU(), "dense")


def test_load_cores_checks_shapes():
    layer = EinsumLinear(16, 16, "monarch")
    with pytest.raises(ValueError, match="core_a must have shape"):
        layer.load_cores(torch.zeros(3), layer.core_b.detach())
