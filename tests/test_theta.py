import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from einsearch import Theta, resolve_structure, structure_names, taxonomy


@st.composite
def thetas(draw, decimals: int = 2):
    unit = 10 ** decimals
    a = draw(st.integers(0, unit))
    b = draw(st.integers(0, unit - a))
    d = draw(st.integers(0, unit))
    e = draw(st.integers(0, unit - d))
    r = draw(st.integers(0, unit))
    return Theta(a / unit, b / unit, (unit - a - b) / unit, d / unit, e / unit, (unit - d - e) / unit, r / unit)


@given(thetas())
def test_str_round_trips_through_parse(theta):
    assert Theta.parse(str(theta)) == theta


@given(thetas())
def test_canonical_is_idempotent_and_equivalent(theta):
    c = theta.canonical()
    assert c.is_canonical
    assert c.canonical() == c
    assert c in (theta, theta.swapped())
    assert taxonomy(theta) == taxonomy(theta.swapped())


def test_parse_accepts_fractions_and_spaces():
    assert Theta.parse(" ( 1/2 | 0 | 1/2 | 0 | 1/2 | 1/2 | 0 ) ") == Theta.monarch()


@pytest.mark.parametrize("text, message", [
    ("(1|0|0|1|0|0)", "6 entries"),
    ("(1|0|0|1|0|0|0|0)", "8 entries"),
    ("(1|x|0|1|0|0|0)", "beta = 'x' is not a number"),
    ("(1|-0.5|0.5|1|0|0|0)", "beta must be >= 0"),
    ("(0.6|0|0|1|0|0|0)", "alpha + beta + gamma"),
    ("(1|0|0|0.5|0|0|0)", "delta + epsilon + phi"),
    ("(1|0|0|1|0|0|1.5)", "rho must be <= 1"),
    ("(1|0|0|1|0|0|nan)", "rho must be finite"),
])
def test_parse_errors_name_the_problem(text, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("+", r"\+")):
        Theta.parse(text)


def test_constructor_type_error():
    with pytest.raises(TypeError, match="alpha must be a number"):
        Theta("1", 0, 0, 1, 0, 0, 0)  # type: ignore[arg-type]


def test_sum_tolerance_is_small_but_not_zero():
    Theta(1 / 3, 1 / 3, 1 / 3, 1, 0, 0, 0)
    with pytest.raises(ValueError):
        Theta(0.334, 0.333, 0.335, 1, 0, 0, 0)


def test_named_constructors_match_design_table():
    assert str(Theta.dense()) == "(1|0|0|1|0|0|0)"
    assert str(Theta.low_rank(0.5)) == "(1|0|0|0|1|0|0.5)"
    assert str(Theta.kronecker()) == "(0.5|0.5|0|0.5|0.5|0|0)"
    assert str(Theta.tensor_train(0.25)) == "(0.5|0.5|0|0.5|0.5|0|0.25)"
    assert str(Theta.btt(0.25)) == "(0.5|0|0.5|0|0.5|0.5|0.25)"
    assert Theta.monarch() == Theta.btt(0.0)


def test_canonical_swaps_roles_when_needed():
    t = Theta.parse("(0|1|0|0|0|1|0)")  # (alpha, epsilon) = 0 < min(beta, delta)?  beta=1, delta=0 -> tie
    assert t.is_canonical
    t = Theta.parse("(0.25|0.75|0|0.75|0.25|0|0)")
    assert not t.is_canonical
    assert t.canonical() == Theta.parse("(0.75|0.25|0|0.25|0.75|0|0)")


def test_degenerate_flag():
    assert Theta.btt(0.75).is_degenerate
    assert not Theta.btt(0.5).is_degenerate
    assert Theta.parse("(1|0|0|1|0|0|0.5)").is_degenerate  # dense + rank axis
    assert not Theta.low_rank(1.0).is_degenerate


@pytest.mark.parametrize("name, expected", [
    ("monarch", Theta.monarch()), ("MONARCH", Theta.monarch()), ("low-rank", Theta.low_rank(0.5)),
    ("btt(0.2)", Theta.btt(0.2)), ("low_rank(1/4)", Theta.low_rank(0.25)),
    ("(1|0|0|1|0|0|0)", Theta.dense()),
])
def test_resolve_structure(name, expected):
    assert resolve_structure(name) == expected


@pytest.mark.parametrize("bad", ["foo", "kronecker(0.5)", "btt(x)"])
def test_resolve_structure_errors(bad):
    with pytest.raises(ValueError, match="structure|not a number"):
        resolve_structure(bad)


def test_structure_names_cover_named_constructors():
    assert {"dense", "low_rank", "kronecker", "tensor_train", "btt", "monarch"} <= set(structure_names())


@pytest.mark.parametrize("theta, omega, psi, nu", [
    (Theta.dense(), 0, 1, 1),
    (Theta.low_rank(0.5), 0, 0.5, 0.5),
    (Theta.kronecker(), 0.5, 1, 0.5),
    (Theta.tensor_train(0.25), 0.5, 1, 0.75),
    (Theta.btt(0.25), 0, 1, 0.75),
    (Theta.monarch(), 0, 1, 0.5),
    (Theta.low_rank_btt(0.25), 0, 0.75, 0.5),
])
def test_taxonomy_of_named_points(theta, omega, psi, nu):
    t = taxonomy(theta)
    assert (t.omega, t.psi, t.nu) == pytest.approx((omega, psi, nu))


@given(thetas())
@settings(max_examples=200)
def test_taxonomy_formulas(theta):
    c = theta.canonical()
    t = taxonomy(theta)
    assert t.nu == pytest.approx(1 + c.rho - min(c.alpha, c.epsilon))
    assert t.psi == pytest.approx(min(1, 2 + c.rho - c.alpha - c.epsilon))
    assert t.omega == pytest.approx(min(c.alpha + c.delta, c.beta + c.epsilon) - min(c.alpha, c.epsilon))
    assert 0 <= t.psi <= 1 and t.nu >= 0 and math.isfinite(t.omega)
