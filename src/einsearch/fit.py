"""Turn a *trained* dense weight into a structured layer that keeps its function.

``structurize`` on its own gives fresh, structure-aware initializations, which is what a
training run from scratch wants. A pretrained model wants the opposite: keep as much of each
layer's function as the structure can express.

``project`` / ``project_into`` / ``from_linear`` (the default everywhere) load the closed-form
projection of ``einsearch.projection`` (docs/design.md section 7): the nearest structured
matrix in Frobenius norm, exact and optimal for every plan that does not pad, or with
calibration inputs the one with the smallest output error.

``fit_to_dense`` is the older optimizer-based fit, kept for comparison (``benchmarks/
projection.py``) and as ``from_linear(..., method="adam")``. It finds cores whose
``to_dense()`` is close to a given (d_out, d_in) matrix W in Frobenius norm,

    minimize ||to_dense(cores) - W||_F^2 / ||W||_F^2,

by Adam on the cores, starting from the layer's own initialization. The objective is a
product of two cores, so it is not convex in general; for low rank its optimum is the
truncated SVD (Eckart-Young), which the tests use to check that the fit gets there. Cost:
one materialization of W per step (about d_in x d_out x the shared-axis sizes multiply-adds).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import Tensor, nn

from ._checks import check_non_negative_int, check_positive_float
from .layers import EinsumLinear
from .projection import ProjectionResult
from .theta import Theta

__all__ = ["fit_to_dense", "from_linear", "project", "project_into", "FIT_METHODS"]

#: how ``from_linear`` finds the cores: the closed-form projection or the Adam fit
FIT_METHODS = ("project", "adam")

log = logging.getLogger(__name__)


def fit_to_dense(layer: EinsumLinear, weight: Tensor, bias: Tensor | None = None, *, steps: int = 1000,
                 lr: float = 0.05, tol: float = 1e-6) -> float:
    """Fit ``layer``'s cores in place so that ``layer.to_dense() ~ weight``.

    Args:
        layer: the structured layer.
        weight: (d_out, d_in) target matrix, as ``nn.Linear.weight``.
        bias: (d_out,) copied into ``layer.bias`` (None: the layer's bias is left alone).
        steps: Adam steps at most (cosine-decayed learning rate over ``steps``).
        lr: peak Adam learning rate, relative to each core's init scale.
        tol: stop once the relative error improves by less than ``tol`` over 50 steps.
    Returns:
        The relative Frobenius error ||to_dense() - W|| / ||W|| at the end (0 when W is 0).
    """
    if not isinstance(layer, EinsumLinear):
        raise TypeError(f"layer must be an EinsumLinear, got {type(layer).__name__}")
    if not isinstance(weight, Tensor) or tuple(weight.shape) != (layer.d_out, layer.d_in):
        got = tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__
        raise ValueError(f"weight must be a tensor of shape (d_out, d_in) = ({layer.d_out}, {layer.d_in}), "
                         f"got {got}")
    layer.check_bias(bias)
    check_non_negative_int(steps, "steps")
    check_positive_float(lr, "lr")
    if bias is not None and layer.bias is not None:  # check_bias raised if the layer has no bias
        with torch.no_grad():
            layer.bias.copy_(bias)
    target = weight.detach().to(device=layer.core_a.device, dtype=layer.core_a.dtype)
    scale = target.pow(2).sum()
    if scale == 0:
        with torch.no_grad():
            for name in layer.core_names():
                getattr(layer, name).zero_()
        return 0.0
    names = layer.core_names()
    if not names:  # both cores trivial (1 x 1): nothing to fit
        return _relative_error(layer, target, scale)
    groups = [{"params": [getattr(layer, n)], "lr": lr * layer.init_std(n)} for n in names]
    if layer.config.einsum_norm:
        groups.append({"params": [layer.gain_a, layer.gain_b], "lr": lr})
    opt = torch.optim.Adam(groups)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps))
    with torch.enable_grad():
        _restart_zero_core(layer)
        best, window_start = math.inf, math.inf
        for step in range(steps):
            opt.zero_grad(set_to_none=True)
            loss = (layer.to_dense() - target).pow(2).sum() / scale
            loss.backward()
            opt.step()
            schedule.step()
            best = min(best, loss.item())
            if step % 50 == 49:
                if window_start - best < tol * max(window_start, 1e-12):
                    break
                window_start = best
    err = _relative_error(layer, target, scale)
    log.info("fit %s to a %dx%d weight: relative error %.4g", layer.theta, layer.d_out, layer.d_in, err)
    return err


@torch.no_grad()
def project_into(layer: EinsumLinear, weight: Tensor, bias: Tensor | None = None, *,
                 calibration: Tensor | None = None, **project_kwargs) -> ProjectionResult:
    """Set ``layer``'s cores to the projection of ``weight`` (``einsearch.projection.project_cores``).

    Args:
        layer: the structured layer (its plan fixes the structure and sizes).
        weight: (d_out, d_in) target; bias: (d_out,) copied into ``layer.bias`` if given.
        calibration: optional (n, d_in) inputs for the data-aware projection.
        project_kwargs: ``als_sweeps``, ``als_restarts``.
    Returns:
        The ``ProjectionResult``; afterwards ``layer.to_dense()`` is its matrix. With
        ``einsum_norm`` each gain is set to max(1, rms(core) / init_std), which cancels the
        norm's division, so the effective cores equal the projected ones.
    """
    if not isinstance(layer, EinsumLinear):
        raise TypeError(f"layer must be an EinsumLinear, got {type(layer).__name__}")
    return layer.load_projection(weight, bias, calibration=calibration, **project_kwargs)


def _relative_error(layer: EinsumLinear, target: Tensor, scale: Tensor) -> float:
    with torch.no_grad():
        return math.sqrt(((layer.to_dense() - target).pow(2).sum() / scale).item())


@torch.no_grad()
def _restart_zero_core(layer: EinsumLinear) -> None:
    """A zero core (zero_init) has a zero gradient partner: give it its init scale back."""
    for name in layer.core_names():
        core = getattr(layer, name)
        if not core.any():
            core.normal_(0.0, layer.init_std(name))


def from_linear(linear: nn.Linear, theta: Theta | str, *, method: str = "project",
                calibration: Tensor | None = None, **kwargs: Any) -> tuple[EinsumLinear, float]:
    """An ``EinsumLinear`` of structure ``theta`` nearest to ``linear`` (same dtype, device, bias).

    Args:
        linear: the trained layer.
        theta: the structure (a Theta, a name or theta text).
        method: ``"project"`` (closed form, the default) or ``"adam"`` (``fit_to_dense``).
        calibration: (n, d_in) inputs for the data-aware projection (``"project"`` only).
        kwargs: ``als_sweeps``/``als_restarts`` for ``"project"``; ``steps``/``lr``/``tol`` for
            ``"adam"``.
    Returns:
        The layer and its relative error: ||W_hat - W||_F / ||W||_F, or with calibration inputs
        the relative output error ||(W_hat - W) X^T|| / ||W X^T||.
    """
    if not isinstance(linear, nn.Linear):
        raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
    if method not in FIT_METHODS:
        raise ValueError(f"method must be one of {', '.join(FIT_METHODS)}, got {method!r}")
    if method == "adam" and calibration is not None:
        raise ValueError("calibration is only used by method='project'; got method='adam' with calibration")
    w = linear.weight
    layer = EinsumLinear(linear.in_features, linear.out_features, theta, bias=linear.bias is not None,
                         device=w.device, dtype=w.dtype)
    if method == "adam":
        return layer, fit_to_dense(layer, w, linear.bias, **kwargs)
    result = project_into(layer, w.detach(), None if linear.bias is None else linear.bias.detach(),
                          calibration=calibration, **kwargs)
    return layer, result.relative_error


def project(weight: Tensor, theta: Theta | str, bias: Tensor | None = None, *,
            calibration: Tensor | None = None, **layer_kwargs: Any) -> EinsumLinear:
    """The ``EinsumLinear`` of structure ``theta`` whose matrix is nearest to ``weight``.

    Args:
        weight: (d_out, d_in) dense weight (as ``nn.Linear.weight``); dtype and device carry over.
        theta: the structure (a Theta, a name such as ``"monarch"``, or theta text).
        bias: optional (d_out,) bias, copied.
        calibration: optional (n, d_in) inputs: minimise the output error on them instead.
        layer_kwargs: passed to ``EinsumLinear`` (``einsum_norm``, ``fast``).
    Returns:
        The layer; its relative error is logged (``from_linear`` / ``project_into`` return it).

    Optimal in Frobenius norm for every plan that does not pad (docs/design.md section 7).
    """
    if not isinstance(weight, Tensor) or weight.dim() != 2:
        got = tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__
        raise ValueError(f"weight must be a 2-D tensor (d_out, d_in), got {got}")
    d_out, d_in = weight.shape
    layer = EinsumLinear(d_in, d_out, theta, bias=bias is not None, device=weight.device, dtype=weight.dtype,
                         **layer_kwargs)
    result = project_into(layer, weight.detach(), None if bias is None else bias.detach(), calibration=calibration)
    log.info("project %s: %dx%d weight, relative error %.4g (%s, %.3f s)", layer.theta, d_out, d_in,
             result.relative_error, result.method, result.seconds)
    return layer
