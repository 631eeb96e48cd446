"""einsearch: a continuous einsum space of structured linear layers.

Public API::

    Theta, resolve_structure           # a point of the space and named structures
    make_plan, EinsumPlan              # integer sizes, einsum strings, costs (no tensors)
    EinsumLinear                       # the nn.Module
    taxonomy                           # omega / psi / nu
    param_groups                       # muP learning rates as plain torch param groups
    structurize                        # replace the linear layers of an existing model
    fit_to_dense, from_linear          # fit a structured layer to a trained dense weight
    TrainConfig, train                 # one training run: a pure function of its config
    get_task, load_corpus              # tasks (regression, charlm) and the text-corpus loader
    BTTMoELinear, MoEFFN, moeify       # mixtures of experts in every linear layer / every FFN
    load_spec, run_sweep, ResultStore  # sweeps over structures x widths into a SQLite store
    pareto_frontier, fit_power_law     # scaling-law analysis; write_report for the report
"""

from .convert import StructurizeSummary, structurize
from .layers import EinsumLinear, LayerCost
from .fit import fit_to_dense, from_linear
from .mup import lr_multipliers, param_groups
from .plan import EinsumPlan, make_plan
from .taxonomy import Taxonomy, closed_form_flops, closed_form_params, taxonomy
from .theta import NAMED_STRUCTURES, Theta, resolve_structure, structure_names
from .models import GPT, ResidualMLP
from .moe import BTTMoELinear, MoEFFN, aux_loss, moeify
from .tasks import Corpus, Task, get_task, load_corpus, register_task, task_names
from .train import Point, RunResult, TrainConfig, train
from .store import ResultStore
from .sweep import SweepSpec, load_spec, run_sweep
from .scaling import PowerLaw, bootstrap_multiplier, compute_multiplier, fit_power_law, pareto_frontier
from .report import write_report

__version__ = "0.1.0"

__all__ = [
    "Theta", "resolve_structure", "structure_names", "NAMED_STRUCTURES",
    "EinsumPlan", "make_plan", "EinsumLinear", "LayerCost",
    "Taxonomy", "taxonomy", "closed_form_params", "closed_form_flops",
    "param_groups", "lr_multipliers", "structurize", "StructurizeSummary",
    "fit_to_dense", "from_linear",
    "TrainConfig", "Point", "RunResult", "train",
    "ResultStore", "SweepSpec", "load_spec", "run_sweep", "write_report",
    "PowerLaw", "pareto_frontier", "fit_power_law", "compute_multiplier", "bootstrap_multiplier",
    "BTTMoELinear", "MoEFFN", "moeify", "aux_loss",
    "Task", "get_task", "register_task", "task_names", "load_corpus", "Corpus", "GPT", "ResidualMLP",
]
