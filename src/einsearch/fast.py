"""Fast forward/backward paths for EinsumLinear.

``einsum_linear(x, a, b, plan)`` must equal ``functional.einsum_linear_reference`` for every
plan; it is where batched-GEMM formulations live. Until a specialised kernel exists for a
plan, it falls back to the reference computation.
"""

from __future__ import annotations

from torch import Tensor

from .functional import einsum_linear_reference
from .plan import EinsumPlan

__all__ = ["einsum_linear"]


def einsum_linear(x: Tensor, a: Tensor, b: Tensor, plan: EinsumPlan) -> Tensor:
    """(n, d_in) -> (n, d_out); same contract as ``einsum_linear_reference``."""
    return einsum_linear_reference(x, a, b, plan)
