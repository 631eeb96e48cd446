"""structurize: replace the linear layers of an existing model with structured ones."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Callable, Iterable

from torch import nn

from .layers import EinsumLinear
from .moe import BTTMoELinear, check_moe_args
from .mup import _conv1d_type
from .theta import Theta, resolve_structure

__all__ = ["structurize", "StructurizeSummary", "ReplacedLayer", "linear_layers", "MOE_STRUCTURE"]

#: structure name that ``structurize`` maps to ``BTTMoELinear`` (an MoE in every linear layer)
MOE_STRUCTURE = "btt_moe"

Select = Callable[[str, nn.Module], bool] | Iterable[str] | str | None


@dataclass(frozen=True)
class ReplacedLayer:
    """One replaced layer; flops are forward FLOPs per token (bias excluded)."""

    name: str
    kind: str
    d_in: int
    d_out: int
    params_before: int
    params_after: int
    flops_before: int
    flops_after: int
    fit_error: float | None = None  # relative Frobenius error of the fitted weight (fit=True)


@dataclass
class StructurizeSummary:
    structure: str
    layers: list[ReplacedLayer] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def params_before(self) -> int:
        return sum(r.params_before for r in self.layers)

    @property
    def params_after(self) -> int:
        return sum(r.params_after for r in self.layers)

    @property
    def flops_before(self) -> int:
        return sum(r.flops_before for r in self.layers)

    @property
    def flops_after(self) -> int:
        return sum(r.flops_after for r in self.layers)

    def __str__(self) -> str:
        lines = [f"structurize -> {self.structure}: {len(self.layers)} layer(s) replaced, "
                 f"{len(self.skipped)} kept dense"]
        lines.append(f"{'layer':<40} {'shape':>12} {'params':>21} {'FLOPs/token':>23}")
        for r in self.layers:
            fit = f"  fit error {r.fit_error:.3g}" if r.fit_error is not None else ""
            lines.append(f"{r.name:<40} {f'{r.d_in}x{r.d_out}':>12} "
                         f"{r.params_before:>10,}->{r.params_after:<10,} {r.flops_before:>11,}->{r.flops_after:<11,}"
                         + fit)
        lines.append(f"{'total':<40} {'':>12} {self.params_before:>10,}->{self.params_after:<10,} "
                     f"{self.flops_before:>11,}->{self.flops_after:<11,}")
        return "\n".join(lines)


def linear_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every ``nn.Linear`` (and HF ``Conv1D``) in module order."""
    conv1d = _conv1d_type()
    kinds = (nn.Linear,) + ((conv1d,) if conv1d is not None else ())
    return [(n, m) for n, m in model.named_modules() if isinstance(m, kinds) and not isinstance(m, EinsumLinear)]


def _default_select(model: nn.Module) -> Callable[[str, nn.Module], bool]:
    """All linear layers but the readout (the last one in module order)."""
    layers = linear_layers(model)
    readout = layers[-1][0] if layers else None
    return lambda name, module: name != readout


def _as_predicate(select: Select, model: nn.Module) -> Callable[[str, nn.Module], bool]:
    if select is None:
        return _default_select(model)
    if callable(select):
        return select
    patterns = [select] if isinstance(select, str) else list(select)
    if not all(isinstance(p, str) for p in patterns):
        raise TypeError(f"select must be a callable, a glob pattern or a list of patterns, got {select!r}")
    return lambda name, module: any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _dims(module: nn.Module) -> tuple[int, int, bool, bool]:
    """(d_in, d_out, has_bias, is_zero) of an nn.Linear or Conv1D (weight (in, out))."""
    if isinstance(module, nn.Linear):
        d_in, d_out = module.in_features, module.out_features
    else:
        d_in, d_out = module.weight.shape
    is_zero = bool((module.weight.detach() == 0).all())
    return d_in, d_out, module.bias is not None, is_zero


def structurize(
    model: nn.Module,
    structure: Theta | str | Callable[[str, nn.Module], "Theta | str"],
    select: Select = None,
    *,
    fit: bool = False,
    **layer_kwargs,
) -> StructurizeSummary:
    """Replace chosen linear layers of ``model`` in place with structured layers.

    Args:
        model: any ``nn.Module``; ``nn.Linear`` and Hugging Face ``Conv1D`` (GPT-2) are replaced.
        structure: a Theta, a name (``"monarch"``, ``"btt(0.25)"``, theta text), or a callable
            ``(name, module) -> structure`` choosing per layer.
        select: which layers: a predicate ``(name, module) -> bool``, a glob pattern or a list
            of patterns over module names. Default: all but the readout (the last linear layer).
        fit: keep a trained model's function: fit each new layer's cores to the old weight
            (``einsearch.fit.fit_to_dense``) and copy its bias, instead of a fresh init.
            The summary reports each layer's relative Frobenius error.
        **layer_kwargs: passed to ``EinsumLinear`` (e.g. ``einsum_norm=True``).
    Returns:
        A summary of what was replaced, with params and FLOPs per token before and after.

    ``structure="btt_moe"`` builds ``einsearch.moe.BTTMoELinear`` layers instead (pass
    ``num_experts=`` and optionally ``top_k=``); their params count every expert and the
    router, their FLOPs only the router and the top_k active experts.

    New layers are freshly initialized (structure-aware init); a layer whose weight was all
    zeros (zero-init residual output) gets ``zero_init=True``. Dtype and device follow the old
    layer.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    pick = _as_predicate(select, model)
    per_layer = structure if callable(structure) and not isinstance(structure, Theta) else None
    moe = isinstance(structure, str) and structure.strip().lower().replace("-", "_") == MOE_STRUCTURE
    if not isinstance(fit, bool):
        raise TypeError(f"fit must be True or False, got {fit!r}")
    if moe:
        if fit:
            raise ValueError(f"structurize(model, {structure!r}, fit=True): fitting is for EinsumLinear "
                             "structures; a BTT-MoE layer's output depends on its router, not one weight")
        if "num_experts" not in layer_kwargs:
            raise ValueError(f"structurize(model, {structure!r}) needs num_experts=... (and optionally top_k=...)")
        e, k = check_moe_args(layer_kwargs["num_experts"], layer_kwargs.get("top_k", 2), "structurize")
        label = f"{MOE_STRUCTURE}(num_experts={e}, top_k={k})"
    else:
        # resolving here fails early on a bad name
        label = "per-layer" if per_layer else str(resolve_structure(structure))
    summary = StructurizeSummary(structure=label)
    for name, module in linear_layers(model):
        if not pick(name, module):
            summary.skipped.append(name)
            continue
        d_in, d_out, has_bias, is_zero = _dims(module)
        kwargs = {"bias": has_bias, "zero_init": is_zero and not fit, **layer_kwargs}
        factory = {"device": module.weight.device, "dtype": module.weight.dtype}
        if moe:
            new = BTTMoELinear(d_in, d_out, **kwargs, **factory)
        else:
            theta = resolve_structure(per_layer(name, module) if per_layer else structure)
            new = EinsumLinear(d_in, d_out, theta, **factory, **kwargs)
        fit_error = _fit(new, module) if fit else None
        _set_submodule(model, name, new)
        cost = new.cost()
        summary.layers.append(ReplacedLayer(
            name=name, kind=type(module).__name__, d_in=d_in, d_out=d_out,
            params_before=d_in * d_out, params_after=cost.core_params,
            flops_before=2 * d_in * d_out, flops_after=cost.flops, fit_error=fit_error,
        ))
    return summary


def _fit(new: EinsumLinear, old: nn.Module) -> float:
    """Fit ``new`` to the weight and bias of ``old`` (nn.Linear, or Conv1D with weight (in, out))."""
    from .fit import fit_to_dense

    weight = old.weight if isinstance(old, nn.Linear) else old.weight.t()
    return fit_to_dense(new, weight, old.bias)


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
