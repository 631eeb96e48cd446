"""Closed-form taxonomy and cost of a theta (docs/design.md section 3).

All quantities are for the square case d_in = d_out = d and are computed on the canonical
form of theta. FLOPs are 2 x multiply-adds, the convention of ``torch.utils.flop_counter``.
"""

from __future__ import annotations

from dataclasses import dataclass

from .theta import Theta

__all__ = ["Taxonomy", "taxonomy", "closed_form_params", "closed_form_flops", "closed_form_macs"]


@dataclass(frozen=True)
class Taxonomy:
    """omega: parameter sharing, log_d(FLOPs / params); psi: rank ~ d**psi;
    nu: compute exponent, FLOPs ~ d**(1 + nu) (dense has nu = 1)."""

    omega: float
    psi: float
    nu: float


def taxonomy(theta: Theta) -> Taxonomy:
    """omega, psi and nu of ``theta`` on its canonical form."""
    t = theta.canonical()
    m = min(t.alpha, t.epsilon)
    return Taxonomy(
        omega=_clean(min(t.alpha + t.delta, t.beta + t.epsilon) - m),
        psi=_clean(min(1.0, 2.0 + t.rho - t.alpha - t.epsilon)),
        nu=_clean(1.0 + t.rho - m),
    )


def closed_form_params(theta: Theta, d: float) -> float:
    """|A| + |B| = d^(alpha+gamma+delta+phi+rho) + d^(beta+gamma+epsilon+phi+rho)."""
    t = theta
    return d ** (t.alpha + t.gamma + t.delta + t.phi + t.rho) + d ** (
        t.beta + t.gamma + t.epsilon + t.phi + t.rho
    )


def closed_form_macs(theta: Theta, d: float) -> float:
    """Multiply-adds per token of the cheaper contraction order."""
    t = theta
    shared = t.gamma + t.phi + t.rho
    a_first = d ** (t.alpha + t.beta + t.delta + shared) + d ** (t.beta + t.delta + t.epsilon + shared)
    b_first = d ** (t.alpha + t.beta + t.epsilon + shared) + d ** (t.alpha + t.delta + t.epsilon + shared)
    return min(a_first, b_first)


def closed_form_flops(theta: Theta, d: float) -> float:
    """Forward FLOPs per token (2 x multiply-adds) of the cheaper order."""
    return 2.0 * closed_form_macs(theta, d)


def _clean(x: float) -> float:
    """Round away float noise (0.30000000000000004 -> 0.3) without hiding real values."""
    return round(x, 12) + 0.0
