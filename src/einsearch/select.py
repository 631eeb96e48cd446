"""Which linear layers ``structurize`` replaces, and why the others are left dense.

Selection works the way PEFT's ``target_modules`` does:

- ``select=`` / ``exclude=`` take a glob pattern over dotted module names, a list of patterns,
  or a predicate ``(name, module) -> bool``. A pattern matches a name when it matches the whole
  name or any dotted suffix of it: ``"q_proj"`` and ``"attn.*"`` both match
  ``"layers.0.attn.q_proj"``; ``"layers.0.*"`` matches every layer under ``layers.0``.
- The default (``select=None``) is every linear layer but the readout. The readout is what the
  model declares (:func:`find_readout`): a submodule with ``is_readout = True`` (muP's
  ``MuReadout`` idea; ``MuReadout`` itself is recognised), a model attribute ``readout_name``
  (a name or a list of names), or a Hugging Face model's ``get_output_embeddings()``; else a
  linear layer whose weight is tied to an embedding (a tied LM head, as in nanoGPT). Only when
  nothing identifies one is the last linear layer in module order taken, with a logged
  warning and a note in the summary.

Some layers cannot be replaced whatever the selection says, because something else reads their
``.weight`` directly (:func:`blocked_reason`): a weight tied to another module (GPT-2's
``lm_head`` and ``wte``), or a child its parent reads directly (``nn.MultiheadAttention``'s
``out_proj``; ``structurize`` first swaps such attention for
``einsearch.attention.StructuredMultiheadAttention``). Those stay dense with the reason.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from torch import nn

__all__ = ["Pattern", "Readout", "Selection", "find_readout", "name_matches", "as_predicate",
           "blocked_reason", "register_weight_reader", "tied_parameters"]

log = logging.getLogger(__name__)

Pattern = Callable[[str, nn.Module], bool] | Iterable[str] | str | None

#: parent type -> {child attribute: why the parent needs the child's dense ``.weight``}
_WEIGHT_READERS: dict[type, dict[str, str]] = {
    nn.MultiheadAttention: {"out_proj": "nn.MultiheadAttention reads out_proj.weight directly in its forward"},
}


def register_weight_reader(parent_type: type, child: str, reason: str) -> None:
    """Declare that modules of ``parent_type`` read ``<child>.weight`` directly.

    ``structurize`` then leaves such a child dense (and says ``reason`` in the summary).
    """
    if not isinstance(parent_type, type) or not issubclass(parent_type, nn.Module):
        raise TypeError(f"parent_type must be an nn.Module subclass, got {parent_type!r}")
    if not isinstance(child, str) or not child:
        raise ValueError(f"child must be a non-empty attribute name, got {child!r}")
    _WEIGHT_READERS.setdefault(parent_type, {})[child] = str(reason)


def name_matches(name: str, pattern: str) -> bool:
    """Whether glob ``pattern`` matches dotted ``name`` or one of its dotted suffixes."""
    parts = name.split(".")
    return any(fnmatch.fnmatchcase(".".join(parts[i:]), pattern) for i in range(len(parts)))


def as_predicate(spec: Pattern, arg: str) -> Callable[[str, nn.Module], bool] | None:
    """``spec`` (pattern, patterns or predicate) as a predicate; None for None.

    Raises:
        TypeError: ``spec`` is none of those (``arg`` names the argument in the message).
    """
    if spec is None:
        return None
    if callable(spec):
        return spec
    if isinstance(spec, (bytes, nn.Module)) or not isinstance(spec, (str, Iterable)):
        raise TypeError(f"{arg} must be a callable, a glob pattern or a list of patterns, got {spec!r}")
    patterns = [spec] if isinstance(spec, str) else list(spec)
    if not all(isinstance(p, str) for p in patterns):
        raise TypeError(f"{arg} must be a callable, a glob pattern or a list of patterns, got {spec!r}")
    return lambda name, module: any(name_matches(name, p) for p in patterns)


@dataclass(frozen=True)
class Readout:
    """The model's readout layer(s) and how they were found.

    names: dotted module names (a linear layer inside one of them counts as readout too);
    source: how they were found; heuristic: True when the model declared nothing and the last
    linear layer was taken.
    """

    names: tuple[str, ...]
    source: str
    heuristic: bool = False

    def contains(self, name: str) -> bool:
        return any(name == r or name.startswith(r + ".") for r in self.names)


def find_readout(model: nn.Module, candidates: list[tuple[str, nn.Module]] | None = None) -> Readout:
    """The readout of ``model``: declared if it can be, else the last of ``candidates``.

    Declarations, in order: submodules with ``is_readout = True`` (or of a class named
    ``MuReadout``); ``model.readout_name`` (a name or a list of names); a Hugging Face
    ``model.get_output_embeddings()``. Then a linear layer whose weight is tied to an
    embedding (a tied LM head). Only when nothing identifies one, the last of ``candidates``
    (the (name, module) linear layers in module order), with a warning.

    Raises:
        ValueError: ``model.readout_name`` names a module the model does not have.
    """
    flagged = tuple(n for n, m in model.named_modules()
                    if n and (getattr(m, "is_readout", False) is True or type(m).__name__ == "MuReadout"))
    if flagged:
        return Readout(flagged, "declared: is_readout = True")
    declared = getattr(model, "readout_name", None)
    if declared is not None:
        names = (declared,) if isinstance(declared, str) else tuple(declared)
        for n in names:
            if not isinstance(n, str):
                raise ValueError(f"model.readout_name must be a module name or a list of them, got {declared!r}")
            try:
                model.get_submodule(n)
            except AttributeError:
                raise ValueError(f"model.readout_name = {declared!r}: {type(model).__name__} has no submodule "
                                 f"{n!r}") from None
        return Readout(names, "declared: model.readout_name")
    get_out = getattr(model, "get_output_embeddings", None)
    if callable(get_out):
        try:
            head = get_out()
        except Exception:  # noqa: BLE001 - a model without a head may raise; fall through
            head = None
        if isinstance(head, nn.Module):
            names = tuple(n for n, m in model.named_modules() if m is head)
            if names:
                return Readout(names, "declared: get_output_embeddings()")
    tied = _tied_to_embedding(model)
    if tied:
        return Readout(tied, "tied: its weight is an embedding's (the output layer of a tied LM head)")
    if candidates is None:
        candidates = _plain_linears(model)
    if not candidates:
        return Readout((), "none: no linear layer")
    name = candidates[-1][0]
    log.warning("structurize: %s declares no readout (is_readout, readout_name or get_output_embeddings); "
                "keeping the last linear layer %r dense as the readout", type(model).__name__, name)
    return Readout((name,), "heuristic: last linear layer in module order", heuristic=True)


def _tied_to_embedding(model: nn.Module) -> tuple[str, ...]:
    """Linear layers whose weight is the very tensor of an ``nn.Embedding`` (nanoGPT's and GPT-2's
    tied LM head): they map the residual stream back to the vocabulary, so they are the readout."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    return tuple(n for n, m in model.named_modules()
                 if isinstance(m, nn.Linear) and id(m.weight) in embeddings)


def _plain_linears(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """nn.Linear / HF Conv1D layers in module order, leaving out attention's own projections."""
    attention = [n for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)]
    return [(n, m) for n, m in model.named_modules()
            if (isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D")
            and not any(n.startswith(a + ".") for a in attention)]


def tied_parameters(model: nn.Module) -> dict[str, list[str]]:
    """Module name -> names of the other modules that share one of its parameters."""
    owners: dict[int, list[str]] = {}
    for mod_name, module in model.named_modules(remove_duplicate=False):
        for p in module.parameters(recurse=False):
            owners.setdefault(id(p), []).append(mod_name)
    tied: dict[str, list[str]] = {}
    for names in owners.values():
        unique = list(dict.fromkeys(names))
        if len(unique) > 1:
            for n in unique:
                tied.setdefault(n, []).extend(o for o in unique if o != n)
    return tied


def blocked_reason(model: nn.Module, name: str, tied: dict[str, list[str]] | None = None) -> str | None:
    """Why the layer at ``name`` must stay dense whatever the selection; None when it need not."""
    tied = tied_parameters(model) if tied is None else tied
    if tied.get(name):
        others = ", ".join(repr(o or "<model>") for o in tied[name])
        return f"weight tied to {others}: replacing it would untie them"
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else None
    if parent is not None:
        for parent_type, children in _WEIGHT_READERS.items():
            if isinstance(parent, parent_type) and child in children:
                return children[child]
    return None


class Selection:
    """The combined choice: ``select`` minus ``exclude`` minus the readout (default select only).

    Calling it is the ``(name, module) -> bool`` predicate; ``reason(name, module)`` says why a
    layer was not chosen, and ``notes`` what the summary should say about the readout.
    """

    def __init__(self, model: nn.Module, select: Pattern = None, exclude: Pattern = None,
                 candidates: list[tuple[str, nn.Module]] | None = None) -> None:
        self._select = as_predicate(select, "select")
        self._exclude = as_predicate(exclude, "exclude")
        self.readout: Readout | None = None
        self.notes: list[str] = []
        if self._select is None:
            self.readout = find_readout(model, candidates)
            if self.readout.heuristic:
                self.notes.append(f"readout kept dense by a guess ({self.readout.source}: "
                                  f"{', '.join(self.readout.names)}); declare it with is_readout = True "
                                  "or model.readout_name, or pass select=/exclude=")

    def __call__(self, name: str, module: nn.Module) -> bool:
        return self.reason(name, module) is None

    def reason(self, name: str, module: nn.Module) -> str | None:
        """Why ``name`` is not selected; None when it is."""
        if self._select is None:
            if self.readout is not None and self.readout.contains(name):
                return f"readout ({self.readout.source})"
        elif not self._select(name, module):
            return "not matched by select="
        if self._exclude is not None and self._exclude(name, module):
            return "matched by exclude="
        return None
