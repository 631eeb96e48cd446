"""einsearch: a continuous einsum space of structured linear layers (the layer library).

Public API::

    Theta, resolve_structure           # a point of the space and named structures
    make_plan, EinsumPlan              # integer sizes, einsum strings, costs (no tensors)
    EinsumLinear                       # the nn.Module
    taxonomy                           # omega / psi / nu
    param_groups                       # muP learning rates as plain torch param groups
    structurize                        # replace the linear layers of an existing model
    parse_structure, StructureConfig   # structure kinds (theta, btt_moe, moe) as typed configs
    StructuredLinear                   # base class of the structured layers
    project, from_linear               # nearest structured layer to a trained weight (closed form)
    project_cores, ProjectionResult    # the projection itself, on tensors (einsearch.projection)
    densify                            # structured layers back to nn.Linear, for export
    StructuredMultiheadAttention       # nn.MultiheadAttention with separate q/k/v/out layers
    BTTMoELinear, MoEFFN, moeify       # mixtures of experts in every linear layer / every FFN
    expert_stats                       # their routing (load per expert, entropy, aux loss)
    save_structured, load_structured   # safetensors + a config; rebuilt on a fresh dense model

The search pipeline (tasks, training, the results store, sweeps, analysis, the report and
the CLI) lives in :mod:`einsearch.search`; ``import einsearch`` does not load it. Its names
used to be re-exported here; they still resolve, lazily, with a ``DeprecationWarning``.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

from . import _moved
from ._version import __version__ as __version__
from .attention import StructuredMultiheadAttention
from .base import LayerCost, StructuredLinear
from .convert import DensifySummary, StructurizeSummary, densify, structurize
from .fit import fit_to_dense, from_linear, project, project_into
from .layers import EinsumLinear
from .moe import ROUTER_GATES, ROUTER_INITS, ROUTER_LRS, BTTMoELinear, MoEFFN, aux_loss, expert_stats, moeify
from .mup import lr_multipliers, param_groups
from .plan import EinsumPlan, make_plan
from .projection import ProjectionResult, project_cores
from .serialize import load_structured, save_structured
from .structures import (
    BTTMoEStructure,
    FFNMoEStructure,
    StructureConfig,
    ThetaStructure,
    apply_structure,
    parse_structure,
    register_structure,
    structure_kinds,
    structure_options,
)
from .taxonomy import Taxonomy, closed_form_flops, closed_form_params, taxonomy
from .theta import NAMED_STRUCTURES, Theta, resolve_structure, structure_names

__all__ = [
    "Theta", "resolve_structure", "structure_names", "NAMED_STRUCTURES",
    "EinsumPlan", "make_plan", "EinsumLinear", "LayerCost",
    "Taxonomy", "taxonomy", "closed_form_params", "closed_form_flops",
    "param_groups", "lr_multipliers", "structurize", "StructurizeSummary",
    "project", "project_into", "project_cores", "ProjectionResult", "from_linear", "fit_to_dense",
    "densify", "DensifySummary", "StructuredMultiheadAttention",
    "BTTMoELinear", "MoEFFN", "moeify", "aux_loss", "expert_stats", "ROUTER_LRS", "ROUTER_INITS", "ROUTER_GATES",
    "save_structured", "load_structured",
    "StructuredLinear", "StructureConfig", "ThetaStructure", "BTTMoEStructure", "FFNMoEStructure",
    "parse_structure", "register_structure", "structure_options", "apply_structure", "structure_kinds",
]

#: names that moved to :mod:`einsearch.search` (old spelling ``einsearch.NAME`` still works)
_MOVED_NAMES = (
    "TrainConfig", "Point", "RunResult", "train",
    "ResultStore", "SweepSpec", "load_spec", "run_sweep", "write_report",
    "PowerLaw", "pareto_frontier", "fit_power_law", "compute_multiplier", "bootstrap_multiplier",
    "Task", "get_task", "register_task", "task_names", "load_corpus", "Corpus", "GPT", "ResidualMLP",
)
_moved.install()  # ``import einsearch.train`` etc. alias the moved modules, with a warning


def __getattr__(name: str) -> Any:
    """Deprecated aliases for the pipeline names that moved to ``einsearch.search`` (PEP 562)."""
    if name in _MOVED_NAMES:
        warnings.warn(f"einsearch.{name} moved to einsearch.search.{name}; import it from there",
                      DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(".search", __name__), name)
    if name in _moved.MOVED_MODULES:
        return importlib.import_module(f".{name}", __name__)  # aliased (and warned) by _moved
    raise AttributeError(f"module 'einsearch' has no attribute {name!r}")
