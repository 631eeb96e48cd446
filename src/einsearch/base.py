"""The shell shared by every structured linear layer (``EinsumLinear``, ``BTTMoELinear``).

A structured layer maps (..., d_in) -> (..., d_out) through two cores, ``core_a`` (axes
alpha, gamma, delta, phi, rho) and ``core_b`` (axes beta, gamma, epsilon, phi, rho), plus an
optional bias. This module holds what does not depend on how the cores are contracted:
widths, bias, the einsum norm with its gains (docs/design.md section 4), the forward shell
with its width check, the per-token cost record and the ``repr``.

Core names: parameters are ``core_a`` / ``core_b``; plans (``EinsumPlan.fans`` and friends)
call the same cores ``"A"`` / ``"B"``. :func:`plan_core` is the one mapping between the two.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from ._checks import check_positive_int

if TYPE_CHECKING:
    from .plan import AxisSizes, EinsumPlan

__all__ = ["StructuredLinear", "LayerCost", "CORE_NAMES", "GAIN_NAMES", "plan_core", "describe_sizes",
           "autocast_dtype", "LOW_PRECISION"]

#: the dtypes autocast computes matrix products in
LOW_PRECISION = (torch.bfloat16, torch.float16)


def autocast_dtype(x: Tensor) -> torch.dtype | None:
    """The dtype autocast runs ``x``'s matrix products in, or None (autocast off for x's device,
    a device autocast does not know, such as ``meta``, or x not floating point)."""
    if not x.is_floating_point():
        return None
    kind = x.device.type
    try:
        if not torch.is_autocast_enabled(kind):
            return None
        return torch.get_autocast_dtype(kind)
    except RuntimeError:  # "unknown device type for autocast"
        return None


def as_compute_dtype(t: Tensor, x: Tensor) -> Tensor:
    """``t`` in ``x``'s dtype when ``x`` is a low-precision compute copy (autocast's cast of a
    float32 weight), else ``t`` unchanged (other mismatches fail as nn.Linear's do)."""
    if x.dtype in LOW_PRECISION and t.dtype != x.dtype and t.is_floating_point():
        return t.to(x.dtype)
    return t

#: parameter names of the two cores, in plan order (A, B)
CORE_NAMES: tuple[str, str] = ("core_a", "core_b")
_PLAN_CORE = {"core_a": "A", "core_b": "B"}
#: einsum-norm gain parameter of each core
GAIN_NAMES = {"core_a": "gain_a", "core_b": "gain_b"}


def plan_core(core: str) -> str:
    """The plan's name (``"A"`` / ``"B"``) of the parameter ``core`` (``"core_a"`` / ``"core_b"``)."""
    try:
        return _PLAN_CORE[core]
    except (KeyError, TypeError):
        raise ValueError(f"core must be one of {list(CORE_NAMES)}, got {core!r}") from None


def describe_sizes(s: AxisSizes) -> str:
    """One-line text of the axis sizes: ``alpha=.. beta=.. gamma=.. | delta=.. ... | rho=..``."""
    return (f"alpha={s.alpha} beta={s.beta} gamma={s.gamma} | delta={s.delta} "
            f"epsilon={s.epsilon} phi={s.phi} | rho={s.rho}")


@dataclass(frozen=True)
class LayerCost:
    """Real cost of a built layer, per token.

    params: trainable parameters (cores + bias + norm gains + router, if any); core_params:
    the weights that define the map (cores, and the router of an MoE layer); flops: forward
    FLOPs per token (2 x multiply-adds, bias excluded, padding included; active experts only
    for an MoE layer); dense_*: the same for ``nn.Linear(d_in, d_out)`` without bias.
    """

    params: int
    core_params: int
    flops: int
    dense_params: int
    dense_flops: int

    @property
    def flops_ratio(self) -> float:
        return self.flops / self.dense_flops

    @property
    def params_ratio(self) -> float:
        return self.core_params / self.dense_params


class StructuredLinear(nn.Module):
    """Base class of structured ``nn.Linear`` replacements: y = f(x; core_a, core_b) + bias.

    Subclasses register ``core_a`` and ``core_b`` (parameters, or a constant buffer for a
    single-entry core), set ``size_plan`` (the plan whose sizes and padding the layer uses) and
    implement ``init_std``, ``_forward_2d`` and ``cost``.

    Args:
        d_in, d_out: input and output widths (positive integers).
        bias: add a learnable bias of shape (d_out,).
        einsum_norm: divide a core whose RMS exceeds its init scale by RMS / init scale, with a
            learnable scalar gain per core (``gain_a``, ``gain_b``; docs/design.md section 4).
    """

    core_a: Tensor
    core_b: Tensor
    bias: nn.Parameter | None

    def __init__(self, d_in: int, d_out: int, *, bias: bool = True, einsum_norm: bool = False) -> None:
        super().__init__()
        where = type(self).__name__
        self._widths = (check_positive_int(d_in, "d_in", where), check_positive_int(d_out, "d_out", where))
        self.einsum_norm = bool(einsum_norm)
        self._has_bias = bool(bias)

    def _register_gains_and_bias(self, device: torch.device | str | None, dtype: torch.dtype | None) -> None:
        """Create ``gain_a``/``gain_b`` (einsum norm) and ``bias``; call after the cores."""
        if self.einsum_norm:
            for gain in GAIN_NAMES.values():
                setattr(self, gain, nn.Parameter(torch.ones((), device=device, dtype=dtype)))
        self.bias = nn.Parameter(torch.zeros(self.d_out, device=device, dtype=dtype)) if self._has_bias else None

    # ------------------------------------------------------------------ widths
    @property
    def d_in(self) -> int:
        return self._widths[0]

    @property
    def d_out(self) -> int:
        return self._widths[1]

    # aliases so code written for nn.Linear keeps working
    @property
    def in_features(self) -> int:
        return self._widths[0]

    @property
    def out_features(self) -> int:
        return self._widths[1]

    @property
    def size_plan(self) -> EinsumPlan:
        """The plan whose axis sizes and padding this layer uses."""
        raise NotImplementedError

    @property
    def sizes(self) -> AxisSizes:
        """Integer axis sizes of the cores."""
        return self.size_plan.sizes

    # ------------------------------------------------------------------- cores
    def core_names(self) -> list[str]:
        """Names of the cores that are trainable parameters."""
        return [n for n in CORE_NAMES if isinstance(getattr(self, n), nn.Parameter)]

    def init_std(self, core: str) -> float:
        """Init std of ``core_a`` / ``core_b`` (the scale the einsum norm measures against)."""
        raise NotImplementedError

    @torch.no_grad()
    def _reset_gains_and_bias(self) -> None:
        if self.bias is not None:
            self.bias.zero_()
        if self.einsum_norm:
            for gain in GAIN_NAMES.values():
                getattr(self, gain).fill_(1.0)

    def effective_cores(self, like: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(core_a, core_b) as used in the forward pass (after the optional einsum norm, which
        is computed in the cores' own dtype); with ``like`` a low-precision compute input (under
        autocast), cast to its dtype afterwards."""
        a, b = self.core_a, self.core_b
        if self.einsum_norm:
            trainable = self.core_names()
            if "core_a" in trainable:
                a = self._normalized(a, "core_a")
            if "core_b" in trainable:
                b = self._normalized(b, "core_b")
        if like is not None:
            a, b = as_compute_dtype(a, like), as_compute_dtype(b, like)
        return a, b

    def _normalized(self, core: Tensor, name: str) -> Tensor:
        gain = getattr(self, GAIN_NAMES[name])
        # (RMS / init scale)^2, clamped before the root so a zero core (zero init) has a
        # finite, zero gradient through the norm instead of sqrt'(0) = inf.
        ratio_sq = core.pow(2).mean() / self.init_std(name) ** 2
        return core * (gain * torch.clamp(ratio_sq, min=1.0).rsqrt())

    # ----------------------------------------------------------------- forward
    def forward(self, x: Tensor) -> Tensor:
        """(..., d_in) -> (..., d_out)."""
        return self._apply_2d(x, self._forward_2d)

    def _forward_2d(self, x2: Tensor) -> Tensor:
        """(n, d_in) -> (n, d_out), bias excluded."""
        raise NotImplementedError

    def _apply_2d(self, x: Tensor, fn) -> Tensor:
        """The shell: width check, flatten the leading dims, ``fn``, bias, restore the leading dims.

        Under autocast the layer behaves like ``nn.Linear``: the input is cast to the autocast
        dtype, ``fn`` runs with autocast off on that copy (cores cast by ``effective_cores(x2)``
        after the einsum norm, which stays in float32), the bias is added in that dtype and the
        output is in it; gradients reach the float32 parameters through the casts.
        """
        if x.shape[-1] != self.d_in:
            raise ValueError(f"{type(self).__name__} expected input of width d_in={self.d_in} in its "
                             f"last dimension, got shape {tuple(x.shape)}")
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.d_in)
        low = autocast_dtype(x2)
        if low is None:
            y = fn(x2)
        else:
            with torch.autocast(x2.device.type, enabled=False):
                y = fn(x2.to(low))
        if self.bias is not None:
            y = y + as_compute_dtype(self.bias, y)
        return y.reshape(*lead, self.d_out)

    # -------------------------------------------------------------------- cost
    def cost(self) -> LayerCost:
        """Real per-token cost of this layer."""
        raise NotImplementedError

    def _dense_cost(self) -> tuple[int, int]:
        """(params, forward FLOPs per token) of ``nn.Linear(d_in, d_out)`` without bias."""
        return self.d_in * self.d_out, 2 * self.d_in * self.d_out

    # -------------------------------------------------------------------- repr
    def _repr_head(self) -> list[str]:
        """Fields shown between the widths and the sizes."""
        return []

    def _repr_order(self) -> list[str]:
        """Fields shown right after the sizes."""
        return []

    def _repr_tail(self) -> list[str]:
        """Fields shown last."""
        return []

    def extra_repr(self) -> str:
        p = self.size_plan
        fields = [f"d_in={self.d_in}", f"d_out={self.d_out}", *self._repr_head(),
                  f"sizes=[{describe_sizes(self.sizes)}]", *self._repr_order()]
        if p.is_padded:
            fields.append(f"padded=({p.d_in_padded}->{p.d_out_padded})")
        fields.append(f"bias={self.bias is not None}")
        if self.einsum_norm:
            fields.append("einsum_norm=True")
        return ", ".join(fields + self._repr_tail())
