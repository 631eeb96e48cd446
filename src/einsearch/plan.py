"""The plan of an einsum layer: integer sizes, einsum strings, order, shapes and costs.

A plan is computed from (theta, d_in, d_out) alone — no tensors — and is immutable, so it
can be validated and tested on its own (the style of einops' ``EinMix``)::

    >>> p = make_plan(Theta.monarch(), 1024, 1024)
    >>> p.shape_a, p.shape_b, p.params
    ((32, 32, 1, 32, 1), (1, 32, 32, 32, 1), 65536)

Axis letters: a=alpha, b=beta, g=gamma (input); d=delta, e=epsilon, f=phi (output); r=rho.
Core A has axes ``agdfr``, core B ``bgefr``; x is viewed as ``(n, a, b, g)`` and y as
``(n, d, e, f)``, where n flattens all leading (batch) dimensions.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass

import opt_einsum

from .taxonomy import taxonomy
from .theta import Theta

__all__ = ["AxisSizes", "EinsumPlan", "make_plan", "integer_sizes", "rank_bound"]

# An axis may miss its target size by at most this factor; otherwise the dimension is padded.
_SIZE_TOLERANCE = 2.0
_TIE = 1e-9

EQ_A = "agdfr"
EQ_B = "bgefr"
EQ_X = "nabg"
EQ_Y = "ndef"


@dataclass(frozen=True)
class AxisSizes:
    """Integer size of every index class; 1 means the axis is absent."""

    alpha: int
    beta: int
    gamma: int
    delta: int
    epsilon: int
    phi: int
    rho: int

    @property
    def d_in(self) -> int:
        return self.alpha * self.beta * self.gamma

    @property
    def d_out(self) -> int:
        return self.delta * self.epsilon * self.phi

    def as_dict(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in ("alpha", "beta", "gamma", "delta", "epsilon", "phi", "rho")}


def rank_bound(s: AxisSizes) -> int:
    """Upper bound (reached by generic cores) on the rank of the materialized matrix.

    For a fixed block (gamma, phi) the matrix is a sum over rho of Kronecker products
    A_r[alpha, delta] (x) B_r[beta, epsilon]; blocks tile the matrix along gamma (columns)
    and phi (rows).
    """
    block = min(s.alpha * s.beta, s.delta * s.epsilon,
                s.rho * min(s.alpha, s.delta) * min(s.beta, s.epsilon))
    return min(s.d_in, s.d_out,
               s.phi * min(s.delta * s.epsilon, s.gamma * block),
               s.gamma * min(s.alpha * s.beta, s.phi * block))


@dataclass(frozen=True)
class EinsumPlan:
    """Everything about a layer that does not need a tensor.

    Attributes:
        theta: the structure; d_in, d_out: the user's widths.
        sizes: integer axis sizes; ``sizes.d_in >= d_in`` (zero padding when larger).
        first: ``"A"`` or ``"B"``, the core contracted with x first (the cheaper order).
        eq_first, eq_second: the two einsum strings of the forward pass.
        shape_a, shape_b: core shapes (axes ``agdfr`` and ``bgefr``).
        fan_in_a, fan_out_a, fan_in_b, fan_out_b: per-core fans (docs/design.md section 4).
        macs_first, macs_second: multiply-adds per token of each step (0 for a trivial core).
        params: trainable core parameters (a single-entry core is a constant, not counted).
    """

    theta: Theta
    d_in: int
    d_out: int
    sizes: AxisSizes
    first: str
    eq_first: str
    eq_second: str
    shape_a: tuple[int, ...]
    shape_b: tuple[int, ...]
    fan_in_a: int
    fan_out_a: int
    fan_in_b: int
    fan_out_b: int
    macs_first: int
    macs_second: int
    params: int
    rank: int

    # ------------------------------------------------------------------ derived
    @property
    def d_in_padded(self) -> int:
        return self.sizes.d_in

    @property
    def d_out_padded(self) -> int:
        return self.sizes.d_out

    @property
    def is_padded(self) -> bool:
        return self.d_in_padded != self.d_in or self.d_out_padded != self.d_out

    @property
    def trivial_a(self) -> bool:
        return math.prod(self.shape_a) == 1

    @property
    def trivial_b(self) -> bool:
        return math.prod(self.shape_b) == 1

    @property
    def num_cores(self) -> int:
        """Cores that carry parameters (a single-entry core is the constant 1)."""
        return int(not self.trivial_a) + int(not self.trivial_b)

    @property
    def macs(self) -> int:
        return self.macs_first + self.macs_second

    @property
    def flops(self) -> int:
        """Forward FLOPs per token (2 x multiply-adds), bias excluded."""
        return 2 * self.macs

    @property
    def dense_flops(self) -> int:
        """Forward FLOPs per token of ``nn.Linear(d_in, d_out)``."""
        return 2 * self.d_in * self.d_out

    @property
    def eq_dense(self) -> str:
        """Einsum that materializes W with rows (d, e, f) and columns (a, b, g)."""
        return f"{EQ_A},{EQ_B}->defabg"

    @property
    def contraction_order(self) -> str:
        return "x·A then ·B" if self.first == "A" else "x·B then ·A"

    def fans(self, core: str) -> tuple[int, int]:
        return (self.fan_in_a, self.fan_out_a) if core == "A" else (self.fan_in_b, self.fan_out_b)

    def init_std(self, core: str) -> float:
        """Spectral init: s = sqrt(min(fan_in, fan_out)) / fan_in."""
        fan_in, fan_out = self.fans(core)
        return math.sqrt(min(fan_in, fan_out)) / fan_in

    def lr_multiplier(self, core: str) -> float:
        """Adam LR multiplier of a core: (dense fan-in / core fan-in) / number of cores."""
        fan_in, _ = self.fans(core)
        return (self.d_in / fan_in) / max(1, self.num_cores)

    def describe(self) -> str:
        s = self.sizes
        return (f"alpha={s.alpha} beta={s.beta} gamma={s.gamma} | delta={s.delta} "
                f"epsilon={s.epsilon} phi={s.phi} | rho={s.rho}")


# --------------------------------------------------------------------------- sizes
def _check_dim(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


@functools.lru_cache(maxsize=4096)
def _ordered_triples(n: int) -> tuple[tuple[int, int, int], ...]:
    divisors = [k for k in range(1, n + 1) if n % k == 0] if n < 4096 else _divisors(n)
    out = []
    for x in divisors:
        rest = n // x
        for y in divisors:
            if y > rest:
                break
            if rest % y == 0:
                out.append((x, y, rest // y))
    return tuple(out)


def _divisors(n: int) -> list[int]:
    small = [k for k in range(1, math.isqrt(n) + 1) if n % k == 0]
    return sorted(set(small + [n // k for k in small]))


def _side_candidates(d: int, exps: tuple[float, float, float]) -> list[tuple[int, int, int]] | None:
    """Exact factorizations of d closest (in log space) to the targets d**exps, ties kept.

    Returns None when no factorization keeps every axis within the size tolerance.
    """
    log_d = math.log(d)
    targets = [e * log_d for e in exps]
    limit = math.log(_SIZE_TOLERANCE) + _TIE
    scored = []
    for triple in _ordered_triples(d):
        errs = [math.log(n) - t for n, t in zip(triple, targets)]
        if max(abs(e) for e in errs) <= limit:
            scored.append((sum(e * e for e in errs), triple))
    if not scored:
        return None
    best = min(score for score, _ in scored)
    return [t for score, t in scored if score <= best + _TIE]


def _pad_and_factor(d: int, exps: tuple[float, float, float]) -> tuple[int, list[tuple[int, int, int]]]:
    """Smallest d' >= d that factors within tolerance, with its candidate triples."""
    for padded in itertools.count(d):
        cands = _side_candidates(padded, exps)
        if cands is not None:
            return padded, cands
    raise AssertionError("unreachable")  # pragma: no cover - a power of 2 always factors


def _rho_candidates(m: int, rho: float) -> list[int]:
    target = rho * math.log(m)
    lo = max(1, math.floor(math.exp(target) + 1e-9))
    opts = sorted({lo, lo + 1} if math.exp(target) - lo > 1e-9 else {lo})
    scores = {n: abs(math.log(n) - target) for n in opts}
    best = min(scores.values())
    return [n for n, s in scores.items() if s <= best + _TIE]


def integer_sizes(theta: Theta, d_in: int, d_out: int) -> AxisSizes:
    """Integer axis sizes for (d_in, d_out): exact factorizations closest to the targets.

    Each input (output) axis aims at d_in**exponent (d_out**exponent) and the three sizes
    multiply to exactly d_in (d_out). When no factorization keeps every axis within a
    factor of 2 of its target (a prime d, say), d is zero-padded to the smallest size that
    does. Among equally close choices, the one whose rank, parameter count and FLOPs stay
    closest to theta's closed forms wins (so a full-rank theta stays full rank).
    """
    d_in = _check_dim("d_in", d_in)
    d_out = _check_dim("d_out", d_out)
    t = theta
    _, in_cands = _pad_and_factor(d_in, (t.alpha, t.beta, t.gamma))
    _, out_cands = _pad_and_factor(d_out, (t.delta, t.epsilon, t.phi))
    m = min(d_in, d_out)
    rho_cands = _rho_candidates(m, t.rho)

    psi = taxonomy(t).psi
    target_rank = math.log(m) * psi
    target_params = math.log(_target_product(t, d_in, d_out, "A") + _target_product(t, d_in, d_out, "B"))

    def score(sizes: AxisSizes) -> tuple[float, float, float]:
        rank = min(rank_bound(sizes), m)
        params = math.prod(_shape(sizes, "A")) + math.prod(_shape(sizes, "B"))
        macs = _macs(sizes, "A") if _order(sizes) == "A" else _macs(sizes, "B")
        target_macs = math.log(_target_macs(t, d_in, d_out))
        return (round(abs(math.log(rank) - target_rank), 9),
                round(abs(math.log(params) - target_params), 9),
                round(abs(math.log(max(1, sum(macs))) - target_macs), 9))

    options = [AxisSizes(*i, *o, r) for i in in_cands for o in out_cands for r in rho_cands]
    return min(options, key=score)


def _target_product(t: Theta, d_in: int, d_out: int, core: str) -> float:
    m = min(d_in, d_out)
    if core == "A":
        return d_in ** (t.alpha + t.gamma) * d_out ** (t.delta + t.phi) * m ** t.rho
    return d_in ** (t.beta + t.gamma) * d_out ** (t.epsilon + t.phi) * m ** t.rho


def _target_macs(t: Theta, d_in: int, d_out: int) -> float:
    m = min(d_in, d_out)
    shared = d_in ** t.gamma * d_out ** t.phi * m ** t.rho
    x_in, y_out = d_in ** (t.alpha + t.beta), d_out ** (t.delta + t.epsilon)
    a_first = shared * (x_in * d_out ** t.delta + d_in ** t.beta * y_out)
    b_first = shared * (x_in * d_out ** t.epsilon + d_in ** t.alpha * y_out)
    return min(a_first, b_first)


# --------------------------------------------------------------------------- costs
def _shape(s: AxisSizes, core: str) -> tuple[int, ...]:
    if core == "A":
        return (s.alpha, s.gamma, s.delta, s.phi, s.rho)
    return (s.beta, s.gamma, s.epsilon, s.phi, s.rho)


def _macs(s: AxisSizes, first: str) -> tuple[int, int]:
    """Multiply-adds per token of (first step, second step); a trivial core's step is free."""
    shared = s.gamma * s.phi * s.rho
    if first == "A":
        step1 = s.alpha * s.beta * s.delta * shared
        step2 = s.beta * s.delta * s.epsilon * shared
    else:
        step1 = s.alpha * s.beta * s.epsilon * shared
        step2 = s.alpha * s.delta * s.epsilon * shared
    first_core, second_core = (("A", "B") if first == "A" else ("B", "A"))
    if math.prod(_shape(s, first_core)) == 1:
        step1 = 0
    if math.prod(_shape(s, second_core)) == 1:
        step2 = 0
    return step1, step2


def _order(s: AxisSizes) -> str:
    """The cheaper contraction order for these sizes, costed by opt_einsum (A first on ties)."""
    eq = f"{EQ_X},{EQ_A},{EQ_B}->{EQ_Y}"
    shapes = [(1, s.alpha, s.beta, s.gamma), _shape(s, "A"), _shape(s, "B")]
    costs = {}
    for first, path in (("A", [(0, 1), (0, 1)]), ("B", [(0, 2), (0, 1)])):
        _, info = opt_einsum.contract_path(eq, *shapes, shapes=True, optimize=path)
        costs[first] = (sum(_macs(s, first)), int(info.opt_cost))
    return "A" if costs["A"] <= costs["B"] else "B"


def make_plan(theta: Theta, d_in: int, d_out: int) -> EinsumPlan:
    """Build the immutable plan of ``EinsumLinear(d_in, d_out, theta)``."""
    if not isinstance(theta, Theta):
        raise TypeError(f"theta must be a Theta, got {type(theta).__name__}")
    return _make_plan_cached(theta, d_in, d_out)


@functools.lru_cache(maxsize=1024)
def _make_plan_cached(theta: Theta, d_in: int, d_out: int) -> EinsumPlan:
    s = integer_sizes(theta, d_in, d_out)
    first = _order(s)
    macs1, macs2 = _macs(s, first)
    if first == "A":
        eq1 = f"{EQ_X},{EQ_A}->nbgdfr"
        eq2 = f"nbgdfr,{EQ_B}->{EQ_Y}"
        fans = dict(fan_in_a=s.alpha, fan_out_a=s.delta * s.phi * s.rho,
                    fan_in_b=s.beta * s.gamma * s.rho, fan_out_b=s.epsilon)
    else:
        eq1 = f"{EQ_X},{EQ_B}->nagefr"
        eq2 = f"nagefr,{EQ_A}->{EQ_Y}"
        fans = dict(fan_in_b=s.beta, fan_out_b=s.epsilon * s.phi * s.rho,
                    fan_in_a=s.alpha * s.gamma * s.rho, fan_out_a=s.delta)
    shape_a, shape_b = _shape(s, "A"), _shape(s, "B")
    params = sum(math.prod(sh) for sh in (shape_a, shape_b) if math.prod(sh) > 1)
    return EinsumPlan(
        theta=theta, d_in=d_in, d_out=d_out, sizes=s, first=first,
        eq_first=eq1, eq_second=eq2, shape_a=shape_a, shape_b=shape_b,
        macs_first=macs1, macs_second=macs2, params=params,
        rank=min(rank_bound(s), d_in, d_out), **fans,
    )
