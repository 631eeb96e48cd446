"""einsearch.search: the search pipeline built on the layer library's public API.

    task -> model builder -> structurize -> train (FLOP ledger) -> store (SQLite)
         -> analysis (frontiers, fits, m(L)) -> report (summary.json, plots, report.md)

Public API::

    TrainConfig, RunOptions                 # what a run is (hashed into its id) / how it executes
    train, Point, RunResult, Callback       # one training run: a pure function of its config
    get_task, register_task, load_corpus    # tasks (regression, charlm) and the corpus loader
    GPT, ResidualMLP                        # the models the tasks build
    ResultStore                             # the SQLite results store
    SweepSpec, load_spec, run_sweep         # sweeps over structures x widths x seeds
    drive, Sink                             # the driver loop shared by search, explore, --lr-check
    Curve, curves_from_store, analyze       # the compute-multiplier estimator: m(L) with intervals
    pareto_frontier, fit_power_law          # scaling-law primitives
    write_report                            # summary.json, plots and report.md from a store

Nothing here is imported by ``import einsearch``.
"""

from .analysis import AnalysisResult, Curve, StructureAnalysis, analyze, curves_from_store
from .callbacks import Callback
from .config import RunOptions, TrainConfig
from .driver import Sink, drive
from .models import GPT, ResidualMLP
from .report import write_report
from .scaling import PowerLaw, fit_power_law, pareto_frontier
from .spec import SweepSpec, load_spec
from .store import ResultStore
from .sweep import run_sweep
from .tasks import Corpus, Task, get_task, load_corpus, register_task, task_names
from .train import Point, RunResult, train

__all__ = [
    "TrainConfig", "RunOptions", "Point", "RunResult", "train", "Callback", "drive", "Sink",
    "Task", "get_task", "register_task", "task_names", "load_corpus", "Corpus", "GPT", "ResidualMLP",
    "ResultStore", "SweepSpec", "load_spec", "run_sweep", "write_report",
    "Curve", "curves_from_store", "analyze", "AnalysisResult", "StructureAnalysis",
    "PowerLaw", "pareto_frontier", "fit_power_law",
]
