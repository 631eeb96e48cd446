"""Module replacement machinery shared by ``structurize`` and the structure handlers.

What was replaced (``ReplacedLayer``, ``StructurizeSummary``), which layers are candidates
(``linear_layers``, ``select_predicate``) and how a submodule is swapped (``set_submodule``).
Imports only the layer classes, so ``convert``, ``moe`` and ``structures`` can all build on it.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from torch import Tensor, nn

from ._compat import conv1d_type
from .base import StructuredLinear

__all__ = ["ReplacedLayer", "StructurizeSummary", "Select", "linear_layers", "select_predicate",
           "set_submodule", "linear_dims"]

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
    #: why each skipped layer stayed dense (not selected, readout, weight read elsewhere, ...)
    skipped_reasons: dict[str, str] = field(default_factory=dict)
    #: what else structurize did or guessed (attention swaps, fused paths off, readout guess)
    notes: list[str] = field(default_factory=list)

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
        lines += [f"kept dense: {name} ({self.skipped_reasons.get(name, 'not selected')})" for name in self.skipped]
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)


def linear_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every ``nn.Linear`` (and HF ``Conv1D``) in module order.

    Layers that are already structured (``StructuredLinear``) are not candidates.
    """
    conv1d = conv1d_type()
    kinds: tuple[type, ...] = (nn.Linear,) + ((conv1d,) if conv1d is not None else ())
    return [(n, m) for n, m in model.named_modules()
            if any(isinstance(m, k) for k in kinds) and not isinstance(m, StructuredLinear)]


def _default_select(model: nn.Module) -> Callable[[str, nn.Module], bool]:
    """All linear layers but the readout (the last one in module order)."""
    layers = linear_layers(model)
    readout = layers[-1][0] if layers else None
    return lambda name, module: name != readout


def select_predicate(select: Select, model: nn.Module) -> Callable[[str, nn.Module], bool]:
    """``select`` (a predicate, a glob pattern, a list of patterns, or None = all but the
    readout) as a predicate ``(name, module) -> bool``."""
    if select is None:
        return _default_select(model)
    if callable(select):
        return select
    patterns = [select] if isinstance(select, str) else list(select)
    if not all(isinstance(p, str) for p in patterns):
        raise TypeError(f"select must be a callable, a glob pattern or a list of patterns, got {select!r}")
    return lambda name, module: any(fnmatch.fnmatchcase(name, p) for p in patterns)


def linear_dims(module: nn.Module) -> tuple[int, int, bool, bool]:
    """(d_in, d_out, has_bias, is_zero) of an nn.Linear or Conv1D (weight (in, out)); a weight
    on the ``meta`` device has no values, so it is not zero (a model sized without memory)."""
    weight = module.weight
    if not isinstance(weight, Tensor):
        raise TypeError(f"{type(module).__name__} has no weight tensor")
    if isinstance(module, nn.Linear):
        d_in, d_out = module.in_features, module.out_features
    else:
        d_in, d_out = weight.shape
    is_zero = not weight.is_meta and bool((weight.detach() == 0).all())
    return d_in, d_out, module.bias is not None, is_zero


def set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` at the dotted path ``name`` of ``model`` (its parent must exist)."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
