"""The plan: integer sizes, padding, order and costs, all without tensors."""

import dataclasses
import math

import opt_einsum
import pytest
from conftest import NAMED_STRUCTURES
from hypothesis import given, settings
from hypothesis import strategies as st
from test_theta import thetas

from einsearch import Theta, closed_form_flops, closed_form_params, make_plan, taxonomy
from einsearch.plan import EQ_A, EQ_B, EQ_X, EQ_Y, integer_sizes


@given(thetas(), st.sampled_from([1, 2, 12, 64, 97, 100, 360, 1024, 2048]), st.sampled_from([1, 8, 97, 256, 2048]))
@settings(max_examples=150, deadline=None)
def test_sizes_multiply_to_the_dims_or_pad_minimally(theta, d_in, d_out):
    s = integer_sizes(theta, d_in, d_out)
    assert s.d_in >= d_in and s.d_out >= d_out
    for exps, dims, d in (((theta.alpha, theta.beta, theta.gamma), (s.alpha, s.beta, s.gamma), s.d_in),
                          ((theta.delta, theta.epsilon, theta.phi), (s.delta, s.epsilon, s.phi), s.d_out)):
        for e, n in zip(exps, dims):  # every axis within a factor 2 of its target
            assert abs(math.log(n) - e * math.log(d)) <= math.log(2) + 1e-9


@pytest.mark.parametrize("d", [64, 1024, 2048, 4096])
def test_powers_of_two_never_pad(named_theta, d):
    plan = make_plan(named_theta, d, d)
    assert not plan.is_padded


def test_prime_pads_to_nearest_factorable_size():
    plan = make_plan(Theta.monarch(), 97, 97)
    assert plan.d_in_padded == 98 and plan.d_out_padded == 98
    assert make_plan(Theta.dense(), 97, 97).d_in_padded == 97  # dense never needs factors


def test_ties_keep_full_rank():
    """2048 = 2^11 splits 32x64 or 64x32: the choice must keep Monarch and Kronecker full rank."""
    for theta in (Theta.monarch(), Theta.kronecker(), Theta.btt(0.25), Theta.tensor_train(0.25)):
        assert make_plan(theta, 2048, 2048).rank == 2048, theta


def test_monarch_1024_numbers():
    plan = make_plan(Theta.monarch(), 1024, 1024)
    assert plan.params == 65_536
    assert plan.flops == 2 * 65_536
    assert plan.shape_a == (32, 32, 1, 32, 1) and plan.shape_b == (1, 32, 32, 32, 1)


@pytest.mark.parametrize("d", [16, 256, 4096])
def test_costs_match_closed_forms_at_exact_powers(named_theta, d):
    """d = 16^k makes every quarter-exponent size exact, so plan and closed forms agree."""
    plan = make_plan(named_theta, d, d)
    closed_params = closed_form_params(named_theta, d)
    trivial = (1 if plan.trivial_a else 0) + (1 if plan.trivial_b else 0)  # a constant core holds no parameter
    assert plan.params == pytest.approx(closed_params - trivial, rel=1e-9)
    closed = closed_form_flops(named_theta, d)
    if trivial:  # the step through a constant core is a reshape, not a contraction
        closed -= 2 * d
    assert plan.flops == pytest.approx(closed, rel=1e-9)


@pytest.mark.parametrize("d", [1024, 4096])
def test_nu_is_the_flops_exponent(named_theta, d):
    plan_small, plan_big = make_plan(named_theta, 256, 256), make_plan(named_theta, d, d)
    slope = math.log(plan_big.flops / plan_small.flops) / math.log(d / 256)
    assert slope == pytest.approx(1 + taxonomy(named_theta).nu, abs=0.1)


def test_order_is_the_cheaper_one_per_opt_einsum(named_theta):
    for d_in, d_out in [(64, 64), (256, 64), (97, 300)]:
        plan = make_plan(named_theta, d_in, d_out)
        s = plan.sizes
        shapes = [(1, s.alpha, s.beta, s.gamma), plan.shape_a, plan.shape_b]
        eq = f"{EQ_X},{EQ_A},{EQ_B}->{EQ_Y}"
        cost = {}
        for first, path in (("A", [(0, 1), (0, 1)]), ("B", [(0, 2), (0, 1)])):
            cost[first] = opt_einsum.contract_path(eq, *shapes, shapes=True, optimize=path)[1].opt_cost
        assert cost[plan.first] <= cost["B" if plan.first == "A" else "A"]


def test_canonical_theta_contracts_a_first():
    for theta in NAMED_STRUCTURES.values():
        assert make_plan(theta.canonical(), 256, 256).first == "A"


def test_fans_follow_contraction_order():
    plan = make_plan(Theta.btt(0.25), 1024, 1024)
    s = plan.sizes
    assert plan.first == "A"
    assert (plan.fan_in_a, plan.fan_out_a) == (s.alpha, s.delta * s.phi * s.rho)
    assert (plan.fan_in_b, plan.fan_out_b) == (s.beta * s.gamma * s.rho, s.epsilon)
    swapped = make_plan(Theta.btt(0.25).swapped(), 1024, 1024)
    assert swapped.first == "B"
    assert (swapped.fan_in_b, swapped.fan_out_a) == (s.alpha, s.epsilon)


def test_plan_is_immutable_and_cached():
    plan = make_plan(Theta.monarch(), 64, 64)
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.d_in = 3  # type: ignore[misc]
    assert make_plan(Theta.monarch(), 64, 64) is plan


@pytest.mark.parametrize("bad", [0, -3, 2.5, "8", True, None])
def test_bad_dims_raise_value_error(bad):
    with pytest.raises(ValueError, match=r"d_in must be a positive integer"):
        make_plan(Theta.dense(), bad, 8)
    with pytest.raises(ValueError, match=r"d_out must be a positive integer"):
        make_plan(Theta.dense(), 8, bad)


def test_plan_rejects_non_theta():
    with pytest.raises(TypeError, match="theta must be a Theta"):
        make_plan("monarch", 8, 8)  # type: ignore[arg-type]
