"""Keep a structurized model working: the steps ``structurize`` runs around a structure's handler.

Before the handler (:func:`prepare`): resolve ``select``/``exclude`` and the readout
(``einsearch.select``), swap every ``nn.MultiheadAttention`` that has a selected projection for
the equivalent ``StructuredMultiheadAttention`` (``einsearch.attention``), and build the
predicate the handler uses: selected, and not a layer whose ``.weight`` something else reads
directly (tied weights, a parent's direct read).

After it (:func:`finish`): write why each skipped layer stayed dense into the summary, turn off
torch's fused transformer paths above changed modules, and, when an ``example_input`` is
given, run the model on it (eval mode, no grad, RNG state restored). If that fails, every
change is undone and re-applied one unit at a time (an attention with its projections, or one
layer), keeping only those with which the forward still runs; the others are left as they were
and the summary says why. A model that fails at forward is never returned.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .attention import disable_fused_paths, swap_attention
from .select import Pattern, Selection, blocked_reason, tied_parameters

__all__ = ["Prepared", "prepare", "finish", "run_example"]


@dataclass
class Prepared:
    """What ``prepare`` did; ``predicate`` is the ``select`` to hand to the handler."""

    selection: Selection
    original: dict[str, nn.Module]
    swapped: list[str]
    blocked: dict[str, str] = field(default_factory=dict)
    predicate: Callable[[str, nn.Module], bool] = lambda name, module: False


def prepare(model: nn.Module, select: Pattern = None, exclude: Pattern = None) -> Prepared:
    """Resolve the selection and swap selected attention; see the module docstring.

    Raises:
        TypeError: ``select`` or ``exclude`` is not a pattern, a list of patterns or a callable.
        ValueError: ``model.readout_name`` names a module the model does not have.
    """
    selection = Selection(model, select, exclude)
    original = dict(model.named_modules())
    tied = tied_parameters(model)
    swapped, blocked = swap_attention(model, selection)
    prepared = Prepared(selection, original, swapped, dict(blocked))

    def predicate(name: str, module: nn.Module) -> bool:
        if name in prepared.blocked or not selection(name, module):
            return False
        reason = blocked_reason(model, name, tied)
        if reason is not None:
            prepared.blocked[name] = reason
            return False
        return True

    prepared.predicate = predicate
    return prepared


def run_example(model: nn.Module, example_input: Any) -> str | None:
    """Run ``model`` on ``example_input`` (eval mode, no grad); the error text, or None if it ran.

    ``example_input``: a tensor (one positional argument), a tuple (positional arguments) or a
    dict (keyword arguments). The model's train/eval mode and the CPU RNG state are restored.
    """
    if isinstance(example_input, dict):
        args: tuple[Any, ...] = ()
        kwargs: dict[str, Any] = example_input
    else:
        args = example_input if isinstance(example_input, tuple) else (example_input,)
        kwargs = {}
    training = model.training
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            model.eval()
            model(*args, **kwargs)
    except Exception as err:  # noqa: BLE001 - any failure means "this model does not run"
        return f"{type(err).__name__}: {err}"
    finally:
        model.train(training)
    return None


def _put(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def finish(model: nn.Module, summary: Any, prepared: Prepared, example_input: Any = None) -> None:
    """Reasons, fused-path flags and the forward check; updates ``summary`` in place.

    ``summary`` is a ``StructurizeSummary`` (``layers``, ``skipped``, ``skipped_reasons``,
    ``notes``).

    Raises:
        ValueError: ``example_input`` does not run through the model even with every change
            undone (the model is left as it was, but for the fused-path flags).
    """
    modules = dict(model.named_modules())
    for name in summary.skipped:
        module = modules.get(name)
        why = prepared.blocked.get(name) or (prepared.selection.reason(name, module) if module is not None else None)
        summary.skipped_reasons[name] = why or "not selected"
    summary.notes.extend(prepared.selection.notes)
    summary.notes.extend(f"{name}: nn.MultiheadAttention -> StructuredMultiheadAttention (same function)"
                         for name in prepared.swapped)
    changed = [r.name for r in summary.layers] + prepared.swapped
    summary.notes.extend(disable_fused_paths(model, changed))
    if example_input is None:
        return
    error = run_example(model, example_input)
    if error is None:
        return
    # one unit per swapped attention (its projections included) or per other replaced layer
    units = list(prepared.swapped)
    units += [r.name for r in summary.layers
              if not any(r.name.startswith(a + ".") for a in prepared.swapped) and r.name in prepared.original]
    new = {u: model.get_submodule(u) for u in units}
    for u in units:
        _put(model, u, prepared.original[u])
    base_error = run_example(model, example_input)
    if base_error is not None:
        raise ValueError(f"structurize: example_input does not run through the model even unchanged "
                         f"({base_error}); every change was undone")
    dropped: dict[str, str] = {}
    for u in units:
        _put(model, u, new[u])
        error = run_example(model, example_input)
        if error is not None:
            _put(model, u, prepared.original[u])
            dropped[u] = f"forward on example_input failed with it replaced ({error})"
    if not dropped:
        return
    kept = []
    for r in summary.layers:
        unit = next((u for u in dropped if r.name == u or r.name.startswith(u + ".")), None)
        if unit is None:
            kept.append(r)
            continue
        summary.skipped.append(r.name)
        summary.skipped_reasons[r.name] = dropped[unit]
    summary.layers[:] = kept
    summary.notes.extend(f"{u}: change undone, {why}" for u, why in dropped.items())
