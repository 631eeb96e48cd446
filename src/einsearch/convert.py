"""structurize: replace the linear layers of an existing model with structured ones."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .attention import StructuredMultiheadAttention
from .guard import finish, prepare, run_example
from .layers import EinsumLinear
from .replace import ReplacedLayer, Select, StructurizeSummary, linear_layers, set_submodule
from .structures import StructureConfig, apply_structure, parse_structure, replace_linear_layers, structure_options
from .theta import Theta, resolve_structure

__all__ = ["structurize", "StructurizeSummary", "ReplacedLayer", "linear_layers", "densify", "DensifySummary",
           "record_linear_inputs", "CALIBRATION_ROWS"]

PerLayer = Callable[[str, nn.Module], "Theta | str"]


def structurize(
    model: nn.Module,
    structure: Theta | str | StructureConfig | PerLayer,
    select: Select = None,
    *,
    exclude: Select = None,
    fit: bool = False,
    calibration: Any = None,
    example_input: Any = None,
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
            of patterns over dotted module names (a pattern matches the name or any dotted
            suffix: ``"q_proj"``, ``"layers.0.*"``; PEFT's ``target_modules``). Default: all
            but the readout, as the model declares it (``is_readout = True`` on a module,
            ``model.readout_name``, ``get_output_embeddings()``), else the last linear layer,
            with a warning and a note (``einsearch.select``).
        exclude: layers never to replace, in the same forms as ``select``.
        fit: keep a trained model's function: load into each new layer the closed-form
            projection of the old weight (``einsearch.fit.project_into``, docs/design.md
            section 7) and copy its bias, instead of a fresh init. The summary reports each
            layer's relative error.
        calibration: with ``fit=True``, a model input (same forms as ``example_input``). The
            model is run on it once before any change, each linear layer's inputs are recorded
            (at most ``CALIBRATION_ROWS`` rows per layer), and each layer is projected to
            minimise its output error on them (data-aware projection); the reported error is
            then the relative output error.
        example_input: optional input for ``model(example_input)`` (a tensor, a tuple of
            arguments or a dict of keyword arguments). After replacing, the model is run on it
            (eval mode, no grad); any change the forward fails with is undone, with the reason.
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

    Never a broken model: an ``nn.MultiheadAttention`` with a selected projection
    (``<attn>.q_proj``, ``.k_proj``, ``.v_proj``, ``.out_proj``) first becomes the equivalent
    ``einsearch.attention.StructuredMultiheadAttention``; a layer whose weight is tied to
    another module or read directly by its parent stays dense; torch's fused transformer paths
    are turned off above changed modules. ``summary.skipped_reasons`` says why each skipped
    layer stayed dense and ``summary.notes`` what else was done (``einsearch.guard``).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(fit, bool):
        raise TypeError(f"fit must be True or False, got {fit!r}")
    if calibration is not None and not fit:
        raise ValueError("calibration inputs are used by the projection: pass fit=True with calibration=...")
    if calibration is not None:
        layer_kwargs["calibration"] = _LazyCalibration(model, calibration)
    if callable(structure) and not isinstance(structure, (Theta, StructureConfig)):
        per_layer = structure

        def make(name: str, old: nn.Module, d_in: int, d_out: int, kwargs: dict[str, Any]) -> EinsumLinear:
            return EinsumLinear(d_in, d_out, resolve_structure(per_layer(name, old)), **kwargs)

        def run(pick: Callable[[str, nn.Module], bool]) -> StructurizeSummary:
            return replace_linear_layers(model, make, "per-layer", pick, fit=fit, **layer_kwargs)

        return _guarded(model, run, select, exclude, example_input)
    config = parse_structure(structure)  # fails early on a bad name
    if isinstance(structure, str) and config.options:
        # a kind named by text takes its options from the text or the keyword arguments; the first
        # is required (``"btt_moe(num_experts=4)"`` or ``"btt_moe", num_experts=4``)
        first, *rest = config.options
        if first not in layer_kwargs and first not in structure_options(structure):
            optional = f" (and optionally {', '.join(f'{o}=...' for o in rest)})" if rest else ""
            raise ValueError(f"structurize(model, {structure!r}) needs {first}=...{optional}")
        config = parse_structure(config, **{o: layer_kwargs.pop(o) for o in config.options if o in layer_kwargs})
    return _guarded(model, lambda pick: apply_structure(model, config, pick, fit=fit, **layer_kwargs),
                    select, exclude, example_input)


def _guarded(model: nn.Module, run: Callable[[Callable[[str, nn.Module], bool]], StructurizeSummary],
             select: Select, exclude: Select, example_input: Any) -> StructurizeSummary:
    """``run(predicate)`` between ``einsearch.guard.prepare`` and ``finish``."""
    prepared = prepare(model, select, exclude)
    try:
        summary = run(prepared.predicate)
    except Exception:
        for name in prepared.swapped:  # a handler that refuses leaves the model as it was
            set_submodule(model, name, prepared.original[name])
        raise
    finish(model, summary, prepared, example_input)
    return summary


#: rows of recorded inputs kept per layer for the data-aware projection (``calibration=``)
CALIBRATION_ROWS = 8192


class _LazyCalibration(Mapping[str, Tensor]):
    """Each linear layer's recorded inputs (name -> (n, d_in)), recorded on first lookup.

    Recording waits until the handler asks, so it sees the model after ``guard.prepare`` (an
    ``nn.MultiheadAttention`` replaced by ``StructuredMultiheadAttention`` has separate q/k/v
    layers whose inputs can be recorded) and before any layer is replaced.
    """

    def __init__(self, model: nn.Module, inputs: Any) -> None:
        self.model, self.inputs = model, inputs
        self._recorded: dict[str, Tensor] | None = None

    def _data(self) -> dict[str, Tensor]:
        if self._recorded is None:
            self._recorded = record_linear_inputs(self.model, self.inputs)
        return self._recorded

    def __getitem__(self, name: str) -> Tensor:
        return self._data()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data())

    def __len__(self) -> int:
        return len(self._data())


def record_linear_inputs(model: nn.Module, inputs: Any, max_rows: int = CALIBRATION_ROWS) -> dict[str, Tensor]:
    """Run ``model`` on ``inputs`` once (eval, no grad) and return each linear layer's inputs.

    Returns name -> (n, d_in) for every ``nn.Linear`` / ``Conv1D`` that ran (the first
    ``max_rows`` rows over all its calls). Raises ValueError if the model does not run on them.
    """
    recorded: dict[str, list[Tensor]] = {}

    def hook(name: str) -> Callable[..., None]:
        def record(module: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0].detach()
            rows = x.reshape(-1, x.shape[-1])
            have = sum(r.shape[0] for r in recorded.setdefault(name, []))
            if have < max_rows:
                recorded[name].append(rows[: max_rows - have].clone())
        return record

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in linear_layers(model)]
    try:
        error = run_example(model, inputs)
    finally:
        for h in handles:
            h.remove()
    if error is not None:
        raise ValueError(f"structurize: the model does not run on the calibration inputs ({error})")
    return {name: torch.cat(parts) for name, parts in recorded.items()}


# ----------------------------------------------------------------------------- densify
@dataclass
class DensifySummary:
    """What ``densify`` turned back into dense layers, and what it could not (with reasons)."""

    layers: list[str] = field(default_factory=list)
    skipped_reasons: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [f"densify: {len(self.layers)} module(s) made dense, {len(self.skipped_reasons)} left structured"]
        lines += [f"dense: {name}" for name in self.layers]
        lines += [f"left: {name} ({why})" for name, why in self.skipped_reasons.items()]
        return "\n".join(lines)


@torch.no_grad()
def densify(model: nn.Module) -> DensifySummary:
    """Turn every structured layer of ``model`` back into ``nn.Linear``, in place (for export).

    A layer with ``to_dense()`` (``EinsumLinear``) becomes ``nn.Linear(d_in, d_out)`` holding
    the materialised (d_out, d_in) weight and the bias, so the model computes the same function
    with plain torch modules. A ``StructuredMultiheadAttention`` whose projections all have a
    dense weight becomes ``nn.MultiheadAttention`` again (else its projections are made dense
    one by one). Layers with no single dense weight (``BTTMoELinear``: the output depends on
    its router) are left as they are, with the reason in the summary. Dtype, device and
    train/eval mode follow each layer.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    summary = DensifySummary()
    for name, module in list(model.named_modules()):
        if any(name.startswith(done + ".") for done in summary.layers):
            continue  # inside an attention already rebuilt
        if isinstance(module, StructuredMultiheadAttention):
            reason = module.dense_reason()
            if reason is None and name:
                set_submodule(model, name, module.to_mha())
                summary.layers.append(name)
            continue
        if isinstance(module, nn.Linear) or not hasattr(module, "core_a"):
            continue  # not a structured layer
        if not name:
            summary.skipped_reasons["<model>"] = "the model itself is a structured layer: call to_dense() on it"
            continue
        if not callable(getattr(module, "to_dense", None)):
            summary.skipped_reasons[name] = (f"{type(module).__name__} has no to_dense(): no single dense weight "
                                             "(a mixture of experts' output depends on its router)")
            continue
        weight = module.to_dense().detach()
        bias = getattr(module, "bias", None)
        dense = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None,
                          device=weight.device, dtype=weight.dtype)
        dense.weight.copy_(weight)
        if bias is not None:
            dense.bias.copy_(bias)
        dense.train(module.training)
        set_submodule(model, name, dense)
        summary.layers.append(name)
    return summary
