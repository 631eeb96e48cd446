"""structurize: replace the linear layers of an existing model with structured ones."""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from .layers import EinsumLinear
from .replace import ReplacedLayer, Select, StructurizeSummary, linear_layers
from .structures import StructureConfig, apply_structure, parse_structure, replace_linear_layers
from .theta import Theta, resolve_structure

__all__ = ["structurize", "StructurizeSummary", "ReplacedLayer", "linear_layers"]

PerLayer = Callable[[str, nn.Module], "Theta | str"]


def structurize(
    model: nn.Module,
    structure: Theta | str | StructureConfig | PerLayer,
    select: Select = None,
    *,
    fit: bool = False,
    **layer_kwargs: Any,
) -> StructurizeSummary:
    """Replace chosen linear layers of ``model`` in place with structured layers.

    Args:
        model: any ``nn.Module``; ``nn.Linear`` and Hugging Face ``Conv1D`` (GPT-2) are replaced.
        structure: a Theta, a name (``"monarch"``, ``"btt(0.25)"``, theta text), a structure
            kind (``"btt_moe"``, ``"moe"``), a ``StructureConfig``
            (``einsearch.structures``), or a callable ``(name, module) -> Theta | str``
            choosing a theta per layer.
        select: which layers: a predicate ``(name, module) -> bool``, a glob pattern or a list
            of patterns over module names. Default: all but the readout (the last linear layer).
        fit: keep a trained model's function: fit each new layer's cores to the old weight
            (``einsearch.fit.fit_to_dense``) and copy its bias, instead of a fresh init.
            The summary reports each layer's relative Frobenius error.
        **layer_kwargs: passed to the new layers (e.g. ``einsum_norm=True``); for a structure
            kind given by name, its options (``num_experts``, ``top_k``) too.
    Returns:
        A summary of what was replaced, with params and FLOPs per token before and after.

    ``structure="btt_moe"`` builds ``einsearch.moe.BTTMoELinear`` layers instead (pass
    ``num_experts=`` and optionally ``top_k=``); their params count every expert and the
    router, their FLOPs only the router and the top_k active experts. ``structure="moe"``
    puts an ``MoEFFN`` in every feed-forward block (``moeify``) and makes the other selected
    layers dense ``EinsumLinear``. The config's handler does the work
    (``einsearch.structures.apply_structure``).

    New layers are freshly initialized (structure-aware init); a layer whose weight was all
    zeros (zero-init residual output) gets ``zero_init=True``. Dtype and device follow the old
    layer.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(fit, bool):
        raise TypeError(f"fit must be True or False, got {fit!r}")
    if callable(structure) and not isinstance(structure, (Theta, StructureConfig)):
        per_layer = structure

        def make(name: str, old: nn.Module, d_in: int, d_out: int, kwargs: dict[str, Any]) -> EinsumLinear:
            return EinsumLinear(d_in, d_out, resolve_structure(per_layer(name, old)), **kwargs)

        return replace_linear_layers(model, make, "per-layer", select, fit=fit, **layer_kwargs)
    config = parse_structure(structure)  # fails early on a bad name
    if isinstance(structure, str) and config.options:
        # a kind named by text takes its options from the keyword arguments; the first is required
        first, *rest = config.options
        if first not in layer_kwargs:
            optional = f" (and optionally {', '.join(f'{o}=...' for o in rest)})" if rest else ""
            raise ValueError(f"structurize(model, {structure!r}) needs {first}=...{optional}")
        config = parse_structure(config, **{o: layer_kwargs.pop(o) for o in config.options if o in layer_kwargs})
    return apply_structure(model, config, select, fit=fit, **layer_kwargs)
