"""Fit a structured layer to a dense weight: turn a *trained* nn.Linear into an EinsumLinear.

``structurize`` on its own gives fresh, structure-aware initializations, which is what a
training run from scratch wants. A pretrained model wants the opposite: keep as much of each
layer's function as the structure can express. ``fit_to_dense`` finds cores whose
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

import torch
from torch import Tensor, nn

from .layers import EinsumLinear
from .project import ProjectionResult, project_cores
from .theta import Theta

__all__ = ["fit_to_dense", "from_linear", "project_into"]

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
    if bias is not None:
        if layer.bias is None:
            raise ValueError("bias given but the layer was built with bias=False")
        if not isinstance(bias, Tensor) or tuple(bias.shape) != (layer.d_out,):
            got = tuple(bias.shape) if isinstance(bias, Tensor) else type(bias).__name__
            raise ValueError(f"bias must be a tensor of shape (d_out,) = ({layer.d_out},), got {got}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    if bias is not None:
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
    """Set ``layer``'s cores to the projection of ``weight`` (see ``einsearch.project``).

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
    if bias is not None:
        if layer.bias is None:
            raise ValueError("bias given but the layer was built with bias=False")
        if not isinstance(bias, Tensor) or tuple(bias.shape) != (layer.d_out,):
            got = tuple(bias.shape) if isinstance(bias, Tensor) else type(bias).__name__
            raise ValueError(f"bias must be a tensor of shape (d_out,) = ({layer.d_out},), got {got}")
    result = project_cores(weight, layer.plan, calibration=calibration, **project_kwargs)
    for name, core in (("core_a", result.core_a), ("core_b", result.core_b)):
        target = getattr(layer, name)
        target.copy_(core.to(device=target.device, dtype=target.dtype))
        if layer.config.einsum_norm and core.numel() > 1:
            rms = core.pow(2).mean().sqrt().item()
            getattr(layer, "gain" + name[-2:]).fill_(max(1.0, rms / layer.init_std(name)))
    if bias is not None:
        layer.bias.copy_(bias)
    return result


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


def from_linear(linear: nn.Linear, theta: Theta | str, **fit_kwargs) -> tuple[EinsumLinear, float]:
    """An ``EinsumLinear`` that approximates ``linear`` (same dtype, device and bias).

    Returns the layer and its relative Frobenius error (see ``fit_to_dense``). ``fit_kwargs``
    go to ``fit_to_dense`` (``steps``, ``lr``, ``tol``).
    """
    if not isinstance(linear, nn.Linear):
        raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
    w = linear.weight
    layer = EinsumLinear(linear.in_features, linear.out_features, theta, bias=linear.bias is not None,
                         device=w.device, dtype=w.dtype)
    return layer, fit_to_dense(layer, w, linear.bias, **fit_kwargs)
