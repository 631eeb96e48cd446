"""EinsumLinear: a structured drop-in replacement for ``nn.Linear``."""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from . import functional
from .plan import EinsumPlan, make_plan
from .theta import Theta, resolve_structure

__all__ = ["EinsumLinear", "EinsumLinearConfig", "LayerCost"]


@dataclass(frozen=True)
class EinsumLinearConfig:
    """What defines a layer; kept in the module's state_dict as extra state."""

    theta: str
    d_in: int
    d_out: int
    bias: bool = True
    einsum_norm: bool = False
    zero_init: bool = False


@dataclass(frozen=True)
class LayerCost:
    """Real cost of a built layer, per token.

    params: trainable parameters (cores + bias + norm gains); core_params: cores only;
    flops: forward FLOPs per token (2 x multiply-adds, bias excluded, padding included);
    dense_*: the same for ``nn.Linear(d_in, d_out)`` without bias.
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


class EinsumLinear(nn.Module):
    """y = W x + b with W expressed by two cores through one einsum (DESIGN.md section 2).

    Args:
        d_in, d_out: input and output widths (positive integers).
        theta: a ``Theta``, a structure name (``"monarch"``, ``"btt(0.25)"``) or theta text.
        bias: add a learnable bias of shape (d_out,).
        einsum_norm: divide a core whose RMS exceeds its init scale by RMS / init scale, with a
            learnable scalar gain per core (DESIGN.md section 4).
        zero_init: start with the last core (in contraction order) at zero, so the layer
            outputs zero at init (last layer of a residual branch).
        fast: use the batched-GEMM path when available; ``False`` forces the einsum reference.

    Shapes: input (..., d_in) -> output (..., d_out). Cores: ``core_a`` with axes
    (alpha, gamma, delta, phi, rho) and ``core_b`` with axes (beta, gamma, epsilon, phi, rho).
    A single-entry core is the constant 1 (a buffer, not a parameter).
    """

    def __init__(
        self,
        d_in: int,
        d_out: int,
        theta: Theta | str = "dense",
        bias: bool = True,
        *,
        einsum_norm: bool = False,
        zero_init: bool = False,
        fast: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        theta = resolve_structure(theta)
        if theta.is_degenerate:
            warnings.warn(
                f"theta {theta} is degenerate: rho > min(alpha, epsilon) on its canonical form, so the "
                "extra rank adds cost but no expressivity", stacklevel=2)
        self.plan: EinsumPlan = make_plan(theta, d_in, d_out)
        self.config = EinsumLinearConfig(str(theta), d_in, d_out, bool(bias), bool(einsum_norm), bool(zero_init))
        self.fast = fast
        factory = {"device": device, "dtype": dtype}
        for name, shape in (("core_a", self.plan.shape_a), ("core_b", self.plan.shape_b)):
            if math.prod(shape) == 1:
                self.register_buffer(name, torch.ones(shape, **factory), persistent=False)
            else:
                setattr(self, name, nn.Parameter(torch.empty(shape, **factory)))
        if einsum_norm:
            self.gain_a = nn.Parameter(torch.ones((), **factory))
            self.gain_b = nn.Parameter(torch.ones((), **factory))
        self.bias = nn.Parameter(torch.zeros(d_out, **factory)) if bias else None
        self.reset_parameters()

    # ------------------------------------------------------------------ basics
    @property
    def theta(self) -> Theta:
        return self.plan.theta

    @property
    def d_in(self) -> int:
        return self.plan.d_in

    @property
    def d_out(self) -> int:
        return self.plan.d_out

    # aliases so code written for nn.Linear keeps working
    in_features = d_in
    out_features = d_out

    def core_names(self) -> list[str]:
        """Names of the cores that are trainable parameters."""
        return [n for n in ("core_a", "core_b") if isinstance(getattr(self, n), nn.Parameter)]

    def last_core(self) -> str:
        """The core applied last (zeroed by ``zero_init``); the other one if that is trivial."""
        order = ["core_a", "core_b"] if self.plan.first == "A" else ["core_b", "core_a"]
        trainable = [n for n in order if n in self.core_names()]
        return trainable[-1]

    def init_std(self, core: str) -> float:
        """Spectral init std of ``core_a`` / ``core_b``: sqrt(min(fan_in, fan_out)) / fan_in."""
        return self.plan.init_std(core[-1].upper())

    def lr_multiplier(self, core: str) -> float:
        """Structure part of the Adam LR multiplier of a core (width multiplier not included)."""
        return self.plan.lr_multiplier(core[-1].upper())

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for name in self.core_names():
            getattr(self, name).normal_(0.0, self.init_std(name))
        if self.config.zero_init:
            getattr(self, self.last_core()).zero_()
        if self.bias is not None:
            self.bias.zero_()
        if self.config.einsum_norm:
            self.gain_a.fill_(1.0)
            self.gain_b.fill_(1.0)

    @classmethod
    def from_linear(cls, linear: nn.Linear, theta: Theta | str, **fit_kwargs) -> "EinsumLinear":
        """A layer fitted to a (trained) ``nn.Linear``: see ``einsearch.fit.from_linear``.

        The relative Frobenius error of the fit is logged; ``einsearch.fit.from_linear``
        returns it too.
        """
        from .fit import from_linear  # fit builds on this module

        return from_linear(linear, theta, **fit_kwargs)[0]

    # ----------------------------------------------------------------- forward
    def effective_cores(self) -> tuple[Tensor, Tensor]:
        """Cores as used in the forward pass (after the optional einsum norm)."""
        a, b = self.core_a, self.core_b
        if self.config.einsum_norm:
            a = self._normalized(a, self.gain_a, "core_a")
            b = self._normalized(b, self.gain_b, "core_b")
        return a, b

    def _normalized(self, core: Tensor, gain: Tensor, name: str) -> Tensor:
        if core.numel() == 1:
            return core
        # (RMS / init scale)^2, clamped before the root so a zero core (zero init) has a
        # finite, zero gradient through the norm instead of sqrt'(0) = inf.
        ratio_sq = core.pow(2).mean() / self.init_std(name) ** 2
        return core * (gain * torch.clamp(ratio_sq, min=1.0).rsqrt())

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.d_in:
            raise ValueError(
                f"EinsumLinear expected input of width d_in={self.d_in} in its last dimension, "
                f"got shape {tuple(x.shape)}"
            )
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.d_in)
        a, b = self.effective_cores()
        y = self._matmul(x2, a, b)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.d_out)

    def _matmul(self, x2: Tensor, a: Tensor, b: Tensor) -> Tensor:
        if self.fast:
            from . import fast  # local import: optional acceleration layer

            return fast.einsum_linear(x2, a, b, self.plan)
        return functional.einsum_linear_reference(x2, a, b, self.plan)

    def forward_reference(self, x: Tensor) -> Tensor:
        """The plain two-einsum path (for tests and benchmarks)."""
        lead = x.shape[:-1]
        a, b = self.effective_cores()
        y = functional.einsum_linear_reference(x.reshape(-1, self.d_in), a, b, self.plan)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.d_out)

    def to_dense(self) -> Tensor:
        """The (d_out, d_in) matrix W such that forward(x) = x @ W.T + bias."""
        a, b = self.effective_cores()
        return functional.materialize(a, b, self.plan)

    # -------------------------------------------------------------------- cost
    def cost(self) -> LayerCost:
        return LayerCost(
            params=sum(p.numel() for p in self.parameters()),
            core_params=self.plan.params,
            flops=self.plan.flops,
            dense_params=self.d_in * self.d_out,
            dense_flops=self.plan.dense_flops,
        )

    # ------------------------------------------------------- (de)serialization
    def get_extra_state(self) -> dict[str, Any]:
        return asdict(self.config)

    def set_extra_state(self, state: dict[str, Any]) -> None:
        mine = asdict(self.config)
        theirs = {k: state.get(k) for k in ("theta", "d_in", "d_out")}
        if Theta.parse(str(theirs["theta"])) != self.theta or theirs["d_in"] != self.d_in or theirs["d_out"] != self.d_out:
            raise ValueError(
                f"state_dict is for EinsumLinear(theta={theirs['theta']}, d_in={theirs['d_in']}, "
                f"d_out={theirs['d_out']}); this layer is theta={mine['theta']}, d_in={self.d_in}, "
                f"d_out={self.d_out}"
            )

    def extra_repr(self) -> str:
        p = self.plan
        pad = f", padded=({p.d_in_padded}->{p.d_out_padded})" if p.is_padded else ""
        return (f"d_in={p.d_in}, d_out={p.d_out}, theta={p.theta}, sizes=[{p.describe()}], "
                f"first={p.first}{pad}, bias={self.bias is not None}"
                + (", einsum_norm=True" if self.config.einsum_norm else ""))
