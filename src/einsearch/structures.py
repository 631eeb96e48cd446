"""Structure kinds as small typed configs, each applied to a model by a registered handler.

A *structure* says what ``structurize`` puts in place of a model's linear layers. It is a
frozen config (the way torchao's ``quantize_(model, config)`` maps a config type to its
handler):

- :class:`ThetaStructure` - one point theta of the einsum space (``EinsumLinear`` layers);
- :class:`BTTMoEStructure` - a BTT-MoE layer (``BTTMoELinear``) in every selected linear layer;
- :class:`FFNMoEStructure` - a standard FFN mixture of experts (``MoEFFN``) in every
  feed-forward block; the other selected linear layers become dense ``EinsumLinear``.

Every config answers ``name`` (the stable text stores and reports use), ``theta`` and
``taxonomy()`` (None when the structure is not one point of the space), ``is_moe``,
``baseline`` (the structure it is compared with head to head, if any), ``label`` and
``to_dict()``. :func:`parse_structure` turns text, a ``Theta`` or a config into a config;
:func:`apply_structure` runs the handler registered for the config's type.
New kinds: :func:`register_structure` (a name, its parser and its handler).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from torch import Tensor, nn

from ._checks import check_bool
from .base import StructuredLinear
from .layers import EinsumLinear
from .moe import ROUTER_INITS, BTTMoELinear, check_moe_args, check_router_gate, check_router_lr, moeify
from .replace import (
    ReplacedLayer,
    Select,
    StructurizeSummary,
    linear_dims,
    linear_layers,
    select_predicate,
    set_submodule,
)
from .taxonomy import Taxonomy, taxonomy
from .theta import Theta, resolve_structure

__all__ = ["StructureConfig", "ThetaStructure", "BTTMoEStructure", "FFNMoEStructure",
           "parse_structure", "register_structure", "structure_options", "register_handler", "apply_structure",
           "structure_kinds", "replace_linear_layers"]


class StructureConfig:
    """Base of the structure configs (frozen dataclasses). See the module docstring."""

    #: structure compared with this one head to head in reports (None: only against dense)
    baseline: ClassVar[str | None] = None
    #: options a kind named by text takes as keyword arguments of ``structurize`` (first: required)
    options: ClassVar[tuple[str, ...]] = ()
    #: the point of the einsum space, or None when the structure is not one (a field of
    #: ``ThetaStructure``)
    theta: Theta | None = None

    @property
    def name(self) -> str:
        """Stable text of the structure (what sweeps, stores and reports key on)."""
        raise NotImplementedError

    @property
    def label(self) -> str:
        """Human-readable text with every option (``StructurizeSummary.structure``)."""
        return self.name

    @property
    def expert_theta(self) -> Theta | None:
        """For a mixture of structured experts: the theta of one expert; else None."""
        return None

    @property
    def is_moe(self) -> bool:
        """True for mixtures of experts (they add a router and an auxiliary loss)."""
        return False

    @property
    def has_dense_layers(self) -> bool:
        """True when some selected layers stay dense (dense itself; FFN-MoE's non-FFN layers):
        the structures a setting for dense layers, such as whether they carry the einsum
        norm, applies to."""
        return self.is_dense

    @property
    def is_dense(self) -> bool:
        """True for the dense layer, written any way (``"dense"``, its theta or the swapped
        theta): the reference every compute multiplier is measured against."""
        return self.theta is not None and not self.is_moe and self.theta.canonical() == Theta.dense().canonical()

    def taxonomy(self) -> Taxonomy | None:
        """omega / psi / nu of ``theta`` (None when ``theta`` is None)."""
        theta = self.theta
        return taxonomy(theta) if theta is not None else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description: ``{"kind": ..., "name": ..., <options>}``."""
        raise NotImplementedError

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class ThetaStructure(StructureConfig):
    """One point theta of the space: every selected linear layer becomes an ``EinsumLinear``.

    ``spec`` is the text it was parsed from (``"monarch"``), kept as its ``name``; it does
    not take part in equality (``"monarch"`` and ``"btt(0)"`` are the same structure).
    """

    theta: Theta
    spec: str | None = dataclasses.field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.theta, Theta):
            raise TypeError(f"ThetaStructure: theta must be a Theta, got {type(self.theta).__name__}")

    @property
    def name(self) -> str:
        return self.spec if self.spec else str(self.theta)

    @property
    def label(self) -> str:
        return str(self.theta)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "theta", "name": self.name, "theta": str(self.theta)}


@dataclass(frozen=True)
class _MoEStructure(StructureConfig):
    num_experts: int = 8
    top_k: int = 2
    router_lr: str = "mup"
    router_init: str = "zero"
    router_gate: str = "topk"

    kind: ClassVar[str] = ""
    options: ClassVar[tuple[str, ...]] = ("num_experts", "top_k", "router_lr", "router_init", "router_gate")

    def __post_init__(self) -> None:
        check_moe_args(self.num_experts, self.top_k, type(self).__name__)
        check_router_lr(self.router_lr, type(self).__name__)
        if self.router_init not in ROUTER_INITS:
            raise ValueError(f"{type(self).__name__}: router_init must be one of {ROUTER_INITS}, "
                             f"got {self.router_init!r}")
        check_router_gate(self.router_gate, type(self).__name__)

    @property
    def name(self) -> str:
        return self.kind

    @property
    def label(self) -> str:
        return (f"{self.kind}(num_experts={self.num_experts}, top_k={self.top_k}, router_lr={self.router_lr}, "
                f"router_init={self.router_init}"
                + ("" if self.router_gate == "topk" else f", router_gate={self.router_gate}") + ")")

    @property
    def is_moe(self) -> bool:
        return True

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "num_experts": self.num_experts, "top_k": self.top_k,
                "router_lr": self.router_lr, "router_init": self.router_init, "router_gate": self.router_gate}


@dataclass(frozen=True)
class BTTMoEStructure(_MoEStructure):
    """A ``BTTMoELinear`` (a BTT whose rank axis is ``num_experts`` gated Monarch experts, top_k
    active per token) in every selected linear layer. Compared head to head with ``"moe"``."""

    kind: ClassVar[str] = "btt_moe"
    baseline: ClassVar[str | None] = "moe"

    @property
    def expert_theta(self) -> Theta:
        return Theta.monarch()


@dataclass(frozen=True)
class FFNMoEStructure(_MoEStructure):
    """A standard FFN MoE (``MoEFFN``: dense GELU experts) in every feed-forward block
    (modules with ``is_ffn = True``); the other selected linear layers become dense
    ``EinsumLinear`` layers, so init and learning-rate rules stay those of dense."""

    kind: ClassVar[str] = "moe"
    router_init: str = "normal"  # the authors' FFN-MoE router: tokens spread over experts at step 0

    @property
    def has_dense_layers(self) -> bool:
        return True


# --------------------------------------------------------------------------- registry
class Handler(Protocol):
    def __call__(self, model: nn.Module, config: Any, select: Select = None, *, fit: bool = False,
                 **layer_kwargs: Any) -> StructurizeSummary: ...


_PARSERS: dict[str, Callable[..., StructureConfig]] = {}
_HANDLERS: dict[type, Handler] = {}


def _key(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def register_handler(config_type: type, handler: Handler) -> None:
    """Apply configs of ``config_type`` (and its subclasses) with ``handler``."""
    if not isinstance(config_type, type) or not issubclass(config_type, StructureConfig):
        raise TypeError(f"config_type must be a StructureConfig subclass, got {config_type!r}")
    if not callable(handler):
        raise TypeError(f"handler must be callable, got {handler!r}")
    _HANDLERS[config_type] = handler


def register_structure(kind_name: str, parser: Callable[..., StructureConfig], handler: Handler) -> None:
    """Register a named structure kind.

    Args:
        kind_name: the text that selects it in ``parse_structure`` / ``structurize``.
        parser: ``parser(**options) -> StructureConfig`` (a config class itself will do).
        handler: ``handler(model, config, select=None, *, fit=False, **layer_kwargs)
            -> StructurizeSummary``, registered for the type of the configs ``parser`` makes.
    """
    if not isinstance(kind_name, str) or not kind_name.strip():
        raise ValueError(f"kind_name must be a non-empty string, got {kind_name!r}")
    if not callable(parser):
        raise TypeError(f"parser must be callable, got {parser!r}")
    config_type = parser if isinstance(parser, type) else type(parser())
    register_handler(config_type, handler)
    _PARSERS[_key(kind_name)] = parser


def structure_kinds() -> list[str]:
    """Names of the registered structure kinds (theta structures are not listed: any name
    or theta text that ``resolve_structure`` accepts is one)."""
    return sorted(_PARSERS)


_KIND_CALL = re.compile(r"^\s*([A-Za-z][\w-]*)\s*\((.*)\)\s*$")


def structure_options(spec: str) -> dict[str, Any]:
    """The options written into a kind's text, ``"btt_moe(num_experts=4, top_k=1)"`` ->
    ``{"num_experts": 4, "top_k": 1}`` (integers as ints, anything else as text); ``{}`` for text
    without them (a theta name such as ``"btt(0.25)"`` has none: its argument is positional)."""
    match = _KIND_CALL.match(spec) if isinstance(spec, str) else None
    if match is None or _key(match.group(1)) not in _PARSERS:
        return {}
    out: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in match.group(2).split(","))):
        key, eq, value = (x.strip() for x in part.partition("="))
        if not eq or not key.isidentifier() or not value:
            raise ValueError(f"structure {spec!r}: options must be written key=value, got {part!r}")
        out[key] = int(value) if value.lstrip("-").isdigit() else value
    return out


def parse_structure(spec: str | Theta | StructureConfig, **options: Any) -> StructureConfig:
    """A structure config from a registered kind name (``"btt_moe"``, ``"moe"``; ``options``
    such as ``num_experts``/``top_k`` go to its parser, and may be written in the text:
    ``"btt_moe(num_experts=4, top_k=1)"``, its label's form), a named structure or theta text
    (``"monarch"``, ``"btt(0.25)"``, ``"(1|0|0|1|0|0|0)"``), a ``Theta``, or a config
    (``options`` replace its fields)."""
    if isinstance(spec, StructureConfig):
        return dataclasses.replace(spec, **options) if options else spec  # type: ignore[type-var]
    if isinstance(spec, Theta):
        config: StructureConfig = ThetaStructure(spec)
    elif isinstance(spec, str):
        call = _KIND_CALL.match(spec)
        if call is not None and _key(call.group(1)) in _PARSERS:
            try:
                return _PARSERS[_key(call.group(1))](**{**structure_options(spec), **options})
            except TypeError as err:
                raise ValueError(f"structure {spec!r}: {err}") from None
        parser = _PARSERS.get(_key(spec))
        if parser is not None:
            return parser(**options)
        config = ThetaStructure(resolve_structure(spec), spec=spec.strip())
    else:
        raise TypeError(f"structure must be a string, a Theta or a StructureConfig, got {type(spec).__name__}")
    if options:
        raise ValueError(f"structure {config.name!r} takes no options, got {sorted(options)}; "
                         f"options are for the kinds {structure_kinds()}")
    return config


def apply_structure(model: nn.Module, config: StructureConfig, select: Select = None, *,
                    fit: bool = False, **layer_kwargs: Any) -> StructurizeSummary:
    """Apply ``config`` to ``model`` in place with the handler registered for its type."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(config, StructureConfig):
        raise TypeError(f"config must be a StructureConfig, got {type(config).__name__}")
    check_bool(fit, "fit")
    for cls in type(config).__mro__:
        if cls in _HANDLERS:
            return _HANDLERS[cls](model, config, select, fit=fit, **layer_kwargs)
    raise ValueError(f"no handler registered for {type(config).__name__}; use register_structure")


# --------------------------------------------------------------------------- handlers
MakeLayer = Callable[[str, nn.Module, int, int, dict[str, Any]], StructuredLinear]


def replace_linear_layers(model: nn.Module, make_layer: MakeLayer, label: str, select: Select = None,
                          *, fit: bool = False, calibration: Mapping[str, Tensor] | None = None,
                          **layer_kwargs: Any) -> StructurizeSummary:
    """Replace each selected linear layer with ``make_layer(name, old, d_in, d_out, kwargs)``.

    ``kwargs`` holds ``bias``, ``zero_init`` (the old weight was all zeros and ``fit`` is off),
    ``device``, ``dtype`` and ``layer_kwargs``. With ``fit=True`` each new layer is fitted to the
    old weight and bias by the closed-form projection (``einsearch.fit.project_into``);
    ``calibration`` maps a layer name to (n, d_in) inputs it saw, for the data-aware projection.
    """
    pick = select_predicate(select, model)
    summary = StructurizeSummary(structure=label)
    for name, module in linear_layers(model):
        if not pick(name, module):
            summary.skipped.append(name)
            continue
        d_in, d_out, has_bias, is_zero = linear_dims(module)
        kwargs = {"bias": has_bias, "zero_init": is_zero and not fit, **layer_kwargs,
                  "device": module.weight.device, "dtype": module.weight.dtype}
        new = make_layer(name, module, d_in, d_out, kwargs)
        fit_error = _fit(new, module, (calibration or {}).get(name)) if fit else None
        set_submodule(model, name, new)
        cost = new.cost()
        summary.layers.append(ReplacedLayer(
            name=name, kind=type(module).__name__, d_in=d_in, d_out=d_out,
            params_before=d_in * d_out, params_after=cost.core_params,
            flops_before=2 * d_in * d_out, flops_after=cost.flops, fit_error=fit_error,
        ))
    return summary


def _fit(new: StructuredLinear, old: nn.Module, calibration: Tensor | None = None) -> float:
    """Project ``old``'s weight (nn.Linear, or Conv1D with weight (in, out)) onto ``new`` and copy
    its bias; returns the relative error (of the outputs on ``calibration`` inputs when given)."""
    from .fit import project_into  # loading trained weights is only needed with fit=True

    if not isinstance(new, EinsumLinear):
        raise TypeError(f"fit=True needs EinsumLinear layers, got {type(new).__name__}")
    weight, bias = old.weight, old.bias
    if not isinstance(weight, Tensor) or not (bias is None or isinstance(bias, Tensor)):
        raise TypeError(f"fit=True: {type(old).__name__} has no weight/bias tensors")
    weight = weight if isinstance(old, nn.Linear) else weight.t()
    result = project_into(new, weight.detach(), None if bias is None else bias.detach(), calibration=calibration)
    return result.relative_error


def _no_fit(config: StructureConfig, fit: bool) -> None:
    if fit:
        raise ValueError(f"structurize(model, {config.name!r}, fit=True): fitting is for EinsumLinear "
                         "structures; an MoE layer's output depends on its router, not one weight")


def _apply_theta(model: nn.Module, config: ThetaStructure, select: Select = None, *, fit: bool = False,
                 calibration: Mapping[str, Tensor] | None = None, **layer_kwargs: Any) -> StructurizeSummary:
    theta = config.theta

    def make(name: str, old: nn.Module, d_in: int, d_out: int, kwargs: dict[str, Any]) -> EinsumLinear:
        return EinsumLinear(d_in, d_out, theta, **kwargs)

    return replace_linear_layers(model, make, config.label, select, fit=fit, calibration=calibration,
                                 **layer_kwargs)


def _apply_btt_moe(model: nn.Module, config: BTTMoEStructure, select: Select = None, *, fit: bool = False,
                   **layer_kwargs: Any) -> StructurizeSummary:
    _no_fit(config, fit)

    def make(name: str, old: nn.Module, d_in: int, d_out: int, kwargs: dict[str, Any]) -> BTTMoELinear:
        return BTTMoELinear(d_in, d_out, config.num_experts, config.top_k, router_lr=config.router_lr,
                            router_init=config.router_init, router_gate=config.router_gate, **kwargs)

    return replace_linear_layers(model, make, config.label, select, **layer_kwargs)


def _apply_ffn_moe(model: nn.Module, config: FFNMoEStructure, select: Select = None, *, fit: bool = False,
                   **layer_kwargs: Any) -> StructurizeSummary:
    _no_fit(config, fit)
    experts = moeify(model, config.num_experts, config.top_k, router_lr=config.router_lr,
                     router_init=config.router_init, router_gate=config.router_gate)
    rest = _apply_theta(model, ThetaStructure(Theta.dense()), select, **layer_kwargs)
    return StructurizeSummary(structure=config.label, layers=experts.layers + rest.layers,
                              skipped=rest.skipped)


register_handler(ThetaStructure, _apply_theta)
register_structure(BTTMoEStructure.kind, BTTMoEStructure, _apply_btt_moe)
register_structure(FFNMoEStructure.kind, FFNMoEStructure, _apply_ffn_moe)
