"""Theta: a point of the 7-dimensional einsum space of structured linear layers.

A layer maps x (d_in) to y (d_out). x is reshaped into axes (alpha, beta, gamma), y into
(delta, epsilon, phi), and two cores carry the weights::

    y[d, e, f] = sum_{a, b, g, r} A[a, g, d, f, r] * B[b, g, e, f, r] * x[a, b, g]

Each exponent says how large its axis is: n_alpha ~ d_in**alpha, n_delta ~ d_out**delta,
n_rho ~ min(d_in, d_out)**rho. See docs/design.md section 2.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, fields

__all__ = ["Theta", "AXES", "NAMED_STRUCTURES", "resolve_structure", "structure_names"]

AXES: tuple[str, ...] = ("alpha", "beta", "gamma", "delta", "epsilon", "phi", "rho")
_SUM_TOLERANCE = 1e-6


@dataclass(frozen=True)
class Theta:
    """Exponents (alpha, beta, gamma, delta, epsilon, phi, rho) of one structure.

    Constraints (checked on construction, each violation a ``ValueError``): every entry
    >= 0; alpha + beta + gamma = 1; delta + epsilon + phi = 1; rho <= 1.
    """

    alpha: float
    beta: float
    gamma: float
    delta: float
    epsilon: float
    phi: float
    rho: float

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"Theta.{f.name} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"Theta.{f.name} must be finite, got {value!r}")
            if value < 0:
                raise ValueError(f"Theta.{f.name} must be >= 0, got {value!r}")
            object.__setattr__(self, f.name, float(value))
        in_sum = self.alpha + self.beta + self.gamma
        if abs(in_sum - 1.0) > _SUM_TOLERANCE:
            raise ValueError(
                f"Theta input exponents must sum to 1: alpha + beta + gamma = "
                f"{self.alpha:g} + {self.beta:g} + {self.gamma:g} = {in_sum:g}"
            )
        out_sum = self.delta + self.epsilon + self.phi
        if abs(out_sum - 1.0) > _SUM_TOLERANCE:
            raise ValueError(
                f"Theta output exponents must sum to 1: delta + epsilon + phi = "
                f"{self.delta:g} + {self.epsilon:g} + {self.phi:g} = {out_sum:g}"
            )
        if self.rho > 1.0 + _SUM_TOLERANCE:
            raise ValueError(f"Theta.rho must be <= 1, got {self.rho:g}")

    # ------------------------------------------------------------------ text form
    @classmethod
    def parse(cls, text: str) -> "Theta":
        """Parse ``"(alpha|beta|gamma|delta|epsilon|phi|rho)"``; fractions like ``1/2`` allowed."""
        if not isinstance(text, str):
            raise TypeError(f"Theta.parse expects a string, got {type(text).__name__}")
        body = text.strip()
        if body.startswith("(") and body.endswith(")"):
            body = body[1:-1]
        parts = [p.strip() for p in body.split("|")]
        if len(parts) != len(AXES):
            raise ValueError(
                f"theta {text!r} has {len(parts)} entries; expected 7 separated by '|': "
                "(alpha|beta|gamma|delta|epsilon|phi|rho)"
            )
        values = [_parse_number(p, axis, text) for p, axis in zip(parts, AXES)]
        return cls(*values)

    def __str__(self) -> str:
        return "(" + "|".join(_format_number(v) for v in self.as_tuple()) + ")"

    def as_tuple(self) -> tuple[float, ...]:
        return tuple(getattr(self, a) for a in AXES)

    # ----------------------------------------------------------- equivalence
    def swapped(self) -> "Theta":
        """The same family with the roles of the two cores exchanged."""
        return Theta(self.beta, self.alpha, self.gamma, self.epsilon, self.delta, self.phi, self.rho)

    @property
    def is_canonical(self) -> bool:
        """Canonical form: min(alpha, epsilon) >= min(beta, delta)."""
        return min(self.alpha, self.epsilon) >= min(self.beta, self.delta) - 1e-12

    def canonical(self) -> "Theta":
        """The canonical equivalent (A-first is the cheaper order in this form)."""
        return self if self.is_canonical else self.swapped()

    @property
    def is_degenerate(self) -> bool:
        """rho > min(alpha, epsilon) (canonical form): extra rank adds cost, no expressivity."""
        c = self.canonical()
        return c.rho > min(c.alpha, c.epsilon) + 1e-12

    # ------------------------------------------------------------ named points
    @classmethod
    def dense(cls) -> "Theta":
        return cls(1, 0, 0, 1, 0, 0, 0)

    @classmethod
    def low_rank(cls, rho: float = 0.5) -> "Theta":
        return cls(1, 0, 0, 0, 1, 0, rho)

    @classmethod
    def kronecker(cls) -> "Theta":
        return cls(0.5, 0.5, 0, 0.5, 0.5, 0, 0)

    @classmethod
    def tensor_train(cls, rho: float = 0.25) -> "Theta":
        return cls(0.5, 0.5, 0, 0.5, 0.5, 0, rho)

    @classmethod
    def btt(cls, rho: float = 0.25) -> "Theta":
        return cls(0.5, 0, 0.5, 0, 0.5, 0.5, rho)

    @classmethod
    def monarch(cls) -> "Theta":
        return cls.btt(0.0)

    @classmethod
    def low_rank_btt(cls, rho: float = 0.25) -> "Theta":
        """BTT whose blocks are low rank: rank ~ d**(0.5 + rho), below full for rho < 0.5."""
        return cls(0.75, 0, 0.25, 0, 0.75, 0.25, rho)


def _parse_number(part: str, axis: str, text: str) -> float:
    try:
        if "/" in part:
            num, den = part.split("/", 1)
            return float(num) / float(den)
        return float(part)
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"theta {text!r}: {axis} = {part!r} is not a number") from None


def _format_number(v: float) -> str:
    text = f"{v:.6g}"
    return text if "e" not in text else repr(v)


# Named structures: name -> constructor taking an optional rho.
NAMED_STRUCTURES: dict[str, Callable[..., Theta]] = {
    "dense": Theta.dense,
    "low_rank": Theta.low_rank,
    "kronecker": Theta.kronecker,
    "tensor_train": Theta.tensor_train,
    "btt": Theta.btt,
    "monarch": Theta.monarch,
    "low_rank_btt": Theta.low_rank_btt,
}
_TAKES_RHO = {"low_rank", "tensor_train", "btt", "low_rank_btt"}
_FUNCTIONAL = re.compile(r"^\s*([a-z_]+)\s*\(\s*([^)]*)\s*\)\s*$")


def structure_names() -> list[str]:
    return sorted(NAMED_STRUCTURES)


def resolve_structure(structure: "str | Theta") -> Theta:
    """Turn a name (``"monarch"``), a call (``"low_rank(0.5)"``) or theta text into a Theta."""
    if isinstance(structure, Theta):
        return structure
    if not isinstance(structure, str):
        raise TypeError(f"structure must be a Theta or a string, got {type(structure).__name__}")
    text = structure.strip()
    if text.startswith("(") or "|" in text:
        return Theta.parse(text)
    key = text.lower().replace("-", "_")
    if key in NAMED_STRUCTURES:
        return NAMED_STRUCTURES[key]()
    match = _FUNCTIONAL.match(key)
    if match and match.group(1) in _TAKES_RHO:
        rho = _parse_number(match.group(2), "rho", text)
        return NAMED_STRUCTURES[match.group(1)](rho)
    raise ValueError(
        f"unknown structure {structure!r}; expected one of {structure_names()}, "
        f"a call such as 'btt(0.25)' for {sorted(_TAKES_RHO)}, or theta text "
        "'(alpha|beta|gamma|delta|epsilon|phi|rho)'"
    )
