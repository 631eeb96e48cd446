"""muP for structured layers: per-parameter Adam learning rates as plain param groups.

Rules (docs/design.md section 4):

- a core of an ``EinsumLinear`` gets ``lr * (d_in / core_fan_in) / num_cores``;
- a weight whose fan-in grows with the model's width (hidden layers and the readout) is
  further multiplied by the muP width multiplier ``base_width / width``; input layers
  (fan-in fixed, e.g. 8 features or an embedding) keep ``lr``;
- biases, norm gains and embeddings keep ``lr``.

At ``base_width == width`` every width multiplier is 1, so muP equals the standard
parameterization there. Init scales live on the layers themselves
(``EinsumLinear.init_std``); this module only deals with learning rates.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from ._checks import check_positive_float, check_positive_int
from ._compat import conv1d_type
from .layers import EinsumLinear

__all__ = ["param_groups", "lr_multipliers", "width_multiplier"]


def width_multiplier(fan_in: int, width: int | None, base_width: int | None) -> float:
    """muP Adam multiplier ``base_width / width`` when ``fan_in`` scales with width, else 1."""
    if base_width is None or width is None:
        return 1.0
    return base_width / width if fan_in % width == 0 else 1.0


def lr_multipliers(model: nn.Module, base_width: int | None = None, width: int | None = None) -> dict[str, float]:
    """Parameter name -> learning-rate multiplier for every trainable parameter of ``model``."""
    if base_width is not None:
        check_positive_int(base_width, "base_width", "param_groups")
        if width is None:
            width = getattr(model, "width", None)
            if width is None:
                raise ValueError(
                    "param_groups(base_width=...) needs the model's width: pass width=... or give "
                    f"the model a `width` attribute ({type(model).__name__} has none)"
                )
        check_positive_int(width, "width", "param_groups")
    conv1d = conv1d_type()
    mults: dict[str, float] = {}
    for mod_name, module in model.named_modules():
        prefix = f"{mod_name}." if mod_name else ""
        local = _module_multipliers(module, base_width, width, conv1d)
        for pname, mult in local.items():
            mults.setdefault(prefix + pname, mult)
    for name, _ in model.named_parameters():
        mults.setdefault(name, 1.0)
    return mults


def _module_multipliers(module: nn.Module, base_width: int | None, width: int | None,
                        conv1d: type | None) -> dict[str, float]:
    if isinstance(module, EinsumLinear):
        wm = width_multiplier(module.d_in, width, base_width)
        return {core: module.lr_multiplier(core) * wm for core in module.core_names()}
    if isinstance(module, nn.Linear):
        return {"weight": width_multiplier(module.in_features, width, base_width)}
    if conv1d is not None and isinstance(module, conv1d):
        # HF Conv1D stores its weight as (d_in, d_out)
        return {"weight": width_multiplier(module.get_parameter("weight").shape[0], width, base_width)}
    # MoE layers and other structured modules may declare their own multipliers.
    declare = getattr(module, "mup_lr_multipliers", None)
    if callable(declare):
        return dict(declare(base_width=base_width, width=width))
    return {}


def param_groups(
    model: nn.Module, lr: float, base_width: int | None = None, width: int | None = None
) -> list[dict]:
    """Plain torch param groups with muP learning rates, usable with any optimizer.

    Args:
        model: any module; ``EinsumLinear``, ``nn.Linear`` and Hugging Face ``Conv1D`` get
            structure- and width-aware rates.
        lr: base learning rate (the rate of a dense layer at ``base_width``).
        base_width: the width at which the base ``lr`` was tuned; ``None`` disables the
            width multiplier (structure multipliers still apply).
        width: the model's width; defaults to ``model.width``.
    Returns:
        A list of ``{"params": [...], "lr": float, "names": [...]}``, one per distinct rate;
        every trainable parameter appears exactly once.
    """
    check_positive_float(lr, "lr", "param_groups")
    mults = lr_multipliers(model, base_width, width)
    groups: "OrderedDict[float, dict]" = OrderedDict()
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        rate = float(lr) * mults[name]
        group = groups.setdefault(rate, {"params": [], "lr": rate, "names": []})
        group["params"].append(p)
        group["names"].append(name)
    return list(groups.values())
