"""Experiment trackers: each run's curve, as it is recorded, and the sweep's summary and plots
when the report is written, in the tools researchers already watch (``--track``).

A tracker is a :class:`~einsearch.search.driver.Sink` of the driver loop: only the driver talks
to it, and it sees each run once, when the run's result comes back (from this process, a local
worker or a Ray worker alike). Everything is offline by default: TensorBoard event files under
``OUT/tensorboard``, a local MLflow store in ``OUT/mlflow.db``, W&B in offline mode under
``OUT/wandb`` (``wandb sync`` uploads it later). Each backend is an optional extra
(``pip install 'einsearch[tensorboard]'`` / ``[mlflow]`` / ``[wandb]``); asking for one that is
not installed is an error before anything is trained.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from .base import Tracker, point_metrics, run_name, run_params

__all__ = ["Tracker", "TRACKERS", "make_trackers", "check_trackers", "run_name", "run_params", "point_metrics"]

#: backend name -> (module with the Tracker class, the package it needs, the extra that installs it)
TRACKERS = {
    "tensorboard": ("tensorboard", "tensorboard", "tensorboard"),
    "mlflow": ("mlflow", "mlflow", "mlflow"),
    "wandb": ("wandb", "wandb", "wandb"),
}


def check_trackers(names: list[str] | None) -> list[str]:
    """The distinct backend names, checked: known, and their package importable."""
    out = []
    for name in dict.fromkeys(names or []):
        if name not in TRACKERS:
            raise ValueError(f"--track {name!r}: expected one of {', '.join(TRACKERS)}")
        _, package, extra = TRACKERS[name]
        try:
            importlib.import_module(package)
        except ImportError:
            raise ValueError(f"--track {name} needs the {package} package: pip install 'einsearch[{extra}]'") from None
        out.append(name)
    return out


def make_trackers(names: list[str] | None, out_dir: str | os.PathLike[str], project: str) -> list[Tracker]:
    """One tracker per backend name, writing under ``out_dir`` (nothing is written until a run
    is recorded)."""
    trackers: list[Tracker] = []
    for name in check_trackers(names):
        module = importlib.import_module(f"{__name__}.{TRACKERS[name][0]}_tracker")
        trackers.append(module.BACKEND(Path(out_dir), project))
    return trackers
