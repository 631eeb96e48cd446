"""EinsumLinear: a structured drop-in replacement for ``nn.Linear``."""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from . import functional
from .base import CORE_NAMES, GAIN_NAMES, LayerCost, StructuredLinear, plan_core
from .plan import EinsumPlan, make_plan
from .projection import ProjectionResult, project_cores
from .theta import Theta, resolve_structure

__all__ = ["EinsumLinear", "EinsumLinearConfig", "LayerCost"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EinsumLinearConfig:
    """What defines a layer (``structure_dict``; the state dict holds tensors only)."""

    theta: str
    d_in: int
    d_out: int
    bias: bool = True
    einsum_norm: bool = False
    zero_init: bool = False


class EinsumLinear(StructuredLinear):
    """y = W x + b with W expressed by two cores through one einsum (docs/design.md section 2).

    Args:
        d_in, d_out: input and output widths (positive integers).
        theta: a ``Theta``, a structure name (``"monarch"``, ``"btt(0.25)"``) or theta text.
        bias: add a learnable bias of shape (d_out,).
        einsum_norm: divide a core whose RMS exceeds its init scale by RMS / init scale, with a
            learnable scalar gain per core (docs/design.md section 4).
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
        super().__init__(d_in, d_out, bias=bias, einsum_norm=einsum_norm)
        theta = resolve_structure(theta)
        if theta.is_degenerate:
            warnings.warn(
                f"theta {theta} is degenerate: rho > min(alpha, epsilon) on its canonical form, so the "
                "extra rank adds cost but no expressivity", stacklevel=2)
        self.plan: EinsumPlan = make_plan(theta, d_in, d_out)
        self.config = EinsumLinearConfig(str(theta), d_in, d_out, bool(bias), bool(einsum_norm), bool(zero_init))
        self.fast = fast
        factory: dict[str, Any] = {"device": device, "dtype": dtype}  # torch.empty/ones keywords
        for name, shape in zip(CORE_NAMES, (self.plan.shape_a, self.plan.shape_b)):
            if math.prod(shape) == 1:
                self.register_buffer(name, torch.ones(shape, **factory), persistent=False)
            else:
                setattr(self, name, nn.Parameter(torch.empty(shape, **factory)))
        self._register_gains_and_bias(device, dtype)
        self.reset_parameters()

    # ------------------------------------------------------------------ basics
    @property
    def theta(self) -> Theta:
        return self.plan.theta

    @property
    def size_plan(self) -> EinsumPlan:
        return self.plan

    def last_core(self) -> str:
        """The core applied last (zeroed by ``zero_init``); the other one if that is trivial."""
        order = CORE_NAMES if self.plan.first == plan_core(CORE_NAMES[0]) else CORE_NAMES[::-1]
        trainable = [n for n in order if n in self.core_names()]
        return trainable[-1]

    def init_std(self, core: str) -> float:
        """Spectral init std of ``core_a`` / ``core_b``: sqrt(min(fan_in, fan_out)) / fan_in."""
        return self.plan.init_std(plan_core(core))

    def lr_multiplier(self, core: str) -> float:
        """Structure part of the Adam LR multiplier of a core (width multiplier not included)."""
        return self.plan.lr_multiplier(plan_core(core))

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for name in self.core_names():
            getattr(self, name).normal_(0.0, self.init_std(name))
        if self.config.zero_init:
            getattr(self, self.last_core()).zero_()
        self._reset_gains_and_bias()

    @classmethod
    def from_linear(cls, linear: nn.Linear, theta: Theta | str, *, calibration: Tensor | None = None,
                    **layer_kwargs: Any) -> "EinsumLinear":
        """The layer of structure ``theta`` nearest to a (trained) ``nn.Linear``.

        Cores come from ``einsearch.projection.project_cores`` (closed form, docs/design.md
        section 7): the nearest structured matrix in Frobenius norm, or, with ``calibration``
        inputs (n, d_in), the one with the smallest output error. The bias is copied; dtype
        and device follow ``linear``. ``layer_kwargs`` (``einsum_norm``, ``fast``) go to the
        constructor. The relative error is logged; ``einsearch.fit.from_linear`` returns it.
        """
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        legacy = sorted(k for k in ("steps", "lr", "tol") if k in layer_kwargs)
        if legacy:
            warnings.warn(f"EinsumLinear.from_linear: {legacy} are ignored; the cores are now projected in "
                          "closed form (use einsearch.fit.fit_to_dense for the Adam fit)",
                          DeprecationWarning, stacklevel=2)
            for k in legacy:
                layer_kwargs.pop(k)
        w = linear.weight
        layer = cls(linear.in_features, linear.out_features, theta, bias=linear.bias is not None,
                    device=w.device, dtype=w.dtype, **layer_kwargs)
        result = layer.load_projection(w.detach(), None if linear.bias is None else linear.bias.detach(),
                                       calibration=calibration)
        log.info("from_linear %s: %dx%d weight, relative error %.4g (%s)", layer.theta, layer.d_out,
                 layer.d_in, result.relative_error, result.method)
        return layer

    @torch.no_grad()
    def load_projection(self, weight: Tensor, bias: Tensor | None = None, *, calibration: Tensor | None = None,
                        **project_kwargs: Any) -> ProjectionResult:
        """Set the cores to the projection of ``weight`` (``einsearch.projection.project_cores``).

        Args:
            weight: (d_out, d_in) target; bias: (d_out,) copied into ``self.bias`` if given.
            calibration: optional (n, d_in) inputs for the data-aware projection.
            project_kwargs: ``als_sweeps``, ``als_restarts``.
        Returns:
            The ``ProjectionResult``; afterwards ``to_dense()`` is its matrix (with ``einsum_norm``
            the gains are set so the norm cancels, see ``load_cores``).
        """
        self.check_bias(bias)
        result = project_cores(weight, self.plan, calibration=calibration, **project_kwargs)
        self.load_cores(result.core_a.to(self.core_a), result.core_b.to(self.core_b))
        if bias is not None and self.bias is not None:  # check_bias raised if the layer has no bias
            self.bias.copy_(bias)
        return result

    def check_bias(self, bias: Tensor | None) -> None:
        """Raise ValueError unless ``bias`` is None or a (d_out,) tensor for a layer with a bias."""
        if bias is None:
            return
        if self.bias is None:
            raise ValueError("bias given but the layer was built with bias=False")
        if not isinstance(bias, Tensor) or tuple(bias.shape) != (self.d_out,):
            got = tuple(bias.shape) if isinstance(bias, Tensor) else type(bias).__name__
            raise ValueError(f"bias must be a tensor of shape (d_out,) = ({self.d_out},), got {got}")

    @torch.no_grad()
    def load_cores(self, core_a: Tensor, core_b: Tensor) -> None:
        """Set the cores so that ``effective_cores()`` returns (core_a, core_b).

        Shapes are ``plan.shape_a`` / ``plan.shape_b``; a trivial (constant) core must be ones.
        With ``einsum_norm`` each gain is set to max(1, RMS / init std), which undoes the norm.
        """
        for name, value, shape in zip(CORE_NAMES, (core_a, core_b), (self.plan.shape_a, self.plan.shape_b)):
            if not isinstance(value, Tensor) or tuple(value.shape) != tuple(shape):
                got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise ValueError(f"load_cores: {name} must have shape {tuple(shape)}, got {got}")
            if name not in self.core_names():
                if not torch.all(value == 1):
                    raise ValueError(f"load_cores: {name} is the constant 1 in this plan; got other values")
                continue
            getattr(self, name).copy_(value)
            if self.einsum_norm:
                rms = value.double().pow(2).mean().sqrt().item()
                getattr(self, GAIN_NAMES[name]).fill_(max(1.0, rms / self.init_std(name)))

    # ----------------------------------------------------------------- forward
    def _forward_2d(self, x2: Tensor) -> Tensor:
        a, b = self.effective_cores(x2)
        if self.fast:
            from . import fast  # local import: optional acceleration layer

            return fast.einsum_linear(x2, a, b, self.plan)
        return functional.einsum_linear_reference(x2, a, b, self.plan)

    def forward_reference(self, x: Tensor) -> Tensor:
        """The plain two-einsum path (for tests and benchmarks)."""
        def reference(x2: Tensor) -> Tensor:
            return functional.einsum_linear_reference(x2, *self.effective_cores(), self.plan)

        return self._apply_2d(x, reference)

    def to_dense(self) -> Tensor:
        """The (d_out, d_in) matrix W such that forward(x) = x @ W.T + bias."""
        a, b = self.effective_cores()
        return functional.materialize(a, b, self.plan)

    # -------------------------------------------------------------------- cost
    def cost(self) -> LayerCost:
        dense_params, dense_flops = self._dense_cost()
        return LayerCost(
            params=sum(p.numel() for p in self.parameters()),
            core_params=self.plan.params,
            flops=self.plan.flops,
            dense_params=dense_params,
            dense_flops=dense_flops,
        )

    # ------------------------------------------------------- (de)serialization
    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        """State dicts hold tensors only (safetensors and Hugging Face's sharded saving need it);
        the structure lives in ``einsearch.save_structured``'s config. A checkpoint written
        before that still carries ``_extra_state`` (theta and widths): it is checked against this
        layer and dropped, so old ``torch.save`` files keep loading, or fail naming both."""
        old = state_dict.pop(prefix + "_extra_state", None)
        if isinstance(old, dict):
            same = (old.get("d_in") == self.d_in and old.get("d_out") == self.d_out
                    and Theta.parse(str(old.get("theta"))) == self.theta)
            if not same:
                raise ValueError(
                    f"state_dict is for EinsumLinear(theta={old.get('theta')}, d_in={old.get('d_in')}, "
                    f"d_out={old.get('d_out')}); this layer is theta={self.theta}, d_in={self.d_in}, "
                    f"d_out={self.d_out}")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def structure_dict(self) -> dict[str, Any]:
        """What rebuilds this layer (``einsearch.save_structured``'s config entry)."""
        return {"kind": "einsum_linear", **asdict(self.config)}

    def _repr_head(self) -> list[str]:
        return [f"theta={self.plan.theta}"]

    def _repr_order(self) -> list[str]:
        return [f"first={self.plan.first}"]
