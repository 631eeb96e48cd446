"""Functional core of the einsum layer: the plain, readable reference computation.

Every faster path is tested against these two functions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .plan import EinsumPlan

__all__ = ["einsum_linear_reference", "materialize", "pad_input", "crop_output"]


def pad_input(x: Tensor, plan: EinsumPlan) -> Tensor:
    """(n, d_in) -> (n, d_in_padded), zero-padded on the right when the plan pads."""
    extra = plan.d_in_padded - plan.d_in
    return F.pad(x, (0, extra)) if extra else x


def crop_output(y: Tensor, plan: EinsumPlan) -> Tensor:
    """(n, d_out_padded) -> (n, d_out)."""
    return y[:, : plan.d_out] if plan.d_out_padded != plan.d_out else y


def einsum_linear_reference(x: Tensor, a: Tensor, b: Tensor, plan: EinsumPlan) -> Tensor:
    """y = x W^T for the structured W of ``plan``, without bias.

    Args:
        x: (n, d_in) input rows.
        a: core A, shape ``plan.shape_a`` (axes alpha, gamma, delta, phi, rho).
        b: core B, shape ``plan.shape_b`` (axes beta, gamma, epsilon, phi, rho).
    Returns:
        (n, d_out) output rows.

    Two einsums in the plan's order. A single-entry (trivial) core is the constant 1, so its
    step is a reshape and costs nothing.
    """
    s = plan.sizes
    n = x.shape[0]
    xs = pad_input(x, plan).reshape(n, s.alpha, s.beta, s.gamma)
    first, second = (a, b) if plan.first == "A" else (b, a)
    mid_shape = ((n, s.beta, s.gamma, s.delta, s.phi, s.rho) if plan.first == "A"
                 else (n, s.alpha, s.gamma, s.epsilon, s.phi, s.rho))
    if first.numel() == 1:
        z = xs.reshape(mid_shape)
    else:
        z = torch.einsum(plan.eq_first, xs, first)
    if second.numel() == 1:
        y = z.reshape(n, s.delta, s.epsilon, s.phi)
    else:
        y = torch.einsum(plan.eq_second, z, second)
    return crop_output(y.reshape(n, plan.d_out_padded), plan)


def materialize(a: Tensor, b: Tensor, plan: EinsumPlan) -> Tensor:
    """The (d_out, d_in) dense matrix W of the layer (padding cropped)."""
    w = torch.einsum(plan.eq_dense, a, b).reshape(plan.d_out_padded, plan.d_in_padded)
    return w[: plan.d_out, : plan.d_in]
