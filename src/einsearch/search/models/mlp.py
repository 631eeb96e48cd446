"""Residual MLP student for the regression task (docs/design.md section 6).

    x (d_in) -> Linear(d_in -> w) -> GELU -> LayerNorm
             -> depth x [ h + Linear(4w -> w)(GELU(Linear(w -> 4w)(LayerNorm(h)))) ]
             -> LayerNorm -> Linear(w -> d_out)

Only the block layers (``blocks.<i>.fc`` and ``blocks.<i>.proj``) are meant to be structured;
``blocks.<i>.proj`` and ``readout`` start at zero, so the network outputs exactly 0 at init.
Linear weights start at the spectral (muP) scale N(0, s^2), s = sqrt(min(fan_in, fan_out)) / fan_in,
the same scale ``EinsumLinear`` uses for a dense theta.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from einsearch._checks import check_positive_int

__all__ = ["ResidualMLP", "MLPBlock", "spectral_init_", "ZERO_INIT_ATTR"]

#: attribute set to True on linear layers that start at zero (last layer of a residual branch,
#: readout); ``structurize`` can read it to zero the last core of the replacement.
ZERO_INIT_ATTR = "zero_init"


@torch.no_grad()
def spectral_init_(linear: nn.Linear, *, zero: bool = False) -> nn.Linear:
    """Initialise ``linear`` in place: N(0, s^2) weight with s = sqrt(min(fan_in, fan_out)) / fan_in,
    zero bias; or all zeros (and tagged ``zero_init``) when ``zero``."""
    fan_out, fan_in = linear.weight.shape
    if zero:
        linear.weight.zero_()
    else:
        linear.weight.normal_(0.0, math.sqrt(min(fan_in, fan_out)) / fan_in)
    if linear.bias is not None:
        linear.bias.zero_()
    setattr(linear, ZERO_INIT_ATTR, bool(zero))
    return linear


class MLPBlock(nn.Module):
    """Pre-LN residual branch: LayerNorm -> Linear(w -> 4w) -> GELU -> Linear(4w -> w) (zero init)."""

    def __init__(self, width: int, expansion: int = 4) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc = spectral_init_(nn.Linear(width, expansion * width))
        self.proj = spectral_init_(nn.Linear(expansion * width, width), zero=True)

    def forward(self, h: Tensor) -> Tensor:
        return self.proj(F.gelu(self.fc(self.norm(h))))


class ResidualMLP(nn.Module):
    """The regression student. Input (..., d_in) -> output (..., d_out).

    Args:
        width: residual width w (``model.width``; the muP width).
        d_in, d_out: input and output dimensions (8 and 1 for the regression task).
        depth: number of residual blocks (3 by default).
        expansion: hidden size of each block is ``expansion * width``.
    """

    def __init__(self, width: int, *, d_in: int = 8, d_out: int = 1, depth: int = 3, expansion: int = 4) -> None:
        super().__init__()
        checked = (("width", width), ("d_in", d_in), ("d_out", d_out), ("depth", depth), ("expansion", expansion))
        for field, value in checked:
            check_positive_int(value, field, "ResidualMLP")
        self.width = width
        self.depth = depth
        self.input = spectral_init_(nn.Linear(d_in, width))
        self.input_norm = nn.LayerNorm(width)
        self.blocks = nn.ModuleList(MLPBlock(width, expansion) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.readout = spectral_init_(nn.Linear(width, d_out), zero=True)

    def forward(self, x: Tensor) -> Tensor:
        h = self.input_norm(F.gelu(self.input(x)))
        for block in self.blocks:
            h = h + block(h)
        return self.readout(self.norm(h))

    @staticmethod
    def is_block_linear(name: str, module: nn.Module) -> bool:
        """True for the linear layers inside residual blocks (the ones to structure)."""
        return (isinstance(module, nn.Linear) and name.startswith("blocks.")
                and name.rsplit(".", 1)[-1] in ("fc", "proj"))
