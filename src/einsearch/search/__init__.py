"""einsearch.search: the search pipeline built on the layer library's public API.

    task -> model builder -> structurize -> train (FLOP ledger) -> store (SQLite)
         -> analysis (frontiers, fits, m(L)) -> report (summary.json, plots, report.md)

Public API::

    TrainConfig, train, Point, RunResult    # one training run: a pure function of its config
    get_task, register_task, load_corpus    # tasks (regression, charlm) and the corpus loader
    GPT, ResidualMLP                        # the models the tasks build
    ResultStore                             # the SQLite results store
    SweepSpec, load_spec, run_sweep         # sweeps over structures x widths x seeds
    Curve, curves_from_store, analyze       # the compute-multiplier estimator: m(L) with intervals
    pareto_frontier, fit_power_law, ...     # scaling-law primitives (and the older frontier-mean multiplier)
    write_report                            # summary.json, plots and report.md from a store

Nothing here is imported by ``import einsearch``.
"""

from .analysis import AnalysisResult, Curve, StructureAnalysis, analyze, curves_from_store
from .models import GPT, ResidualMLP
from .report import write_report
from .scaling import PowerLaw, bootstrap_multiplier, compute_multiplier, fit_power_law, pareto_frontier
from .store import ResultStore
from .sweep import SweepSpec, load_spec, run_sweep
from .tasks import Corpus, Task, get_task, load_corpus, register_task, task_names
from .train import Point, RunResult, TrainConfig, train

__all__ = [
    "TrainConfig", "Point", "RunResult", "train",
    "Task", "get_task", "register_task", "task_names", "load_corpus", "Corpus", "GPT", "ResidualMLP",
    "ResultStore", "SweepSpec", "load_spec", "run_sweep", "write_report",
    "Curve", "curves_from_store", "analyze", "AnalysisResult", "StructureAnalysis",
    "PowerLaw", "pareto_frontier", "fit_power_law", "compute_multiplier", "bootstrap_multiplier",
]
