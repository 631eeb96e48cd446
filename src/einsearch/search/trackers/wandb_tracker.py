"""Weights & Biases, offline by default (``WANDB_MODE`` overrides it): one W&B run per training
run under ``OUT/wandb`` (its config, each metric against the step), and a ``report`` run with the
multipliers and the report's figures. ``wandb sync OUT/wandb/offline-run-*`` uploads them later."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .base import Tracker, point_metrics, run_name, run_params

__all__ = ["WandbTracker", "BACKEND"]


class WandbTracker(Tracker):
    name = "wandb"

    def _init(self, name: str, config: dict[str, Any], group: str) -> Any:
        import wandb

        self.out_dir.mkdir(parents=True, exist_ok=True)
        mode: Any = os.environ.get("WANDB_MODE", "offline")
        return wandb.init(mode=mode, dir=str(self.out_dir), project=self.project, name=name, group=group,
                          config=config, reinit="create_new")

    def log_run(self, config: Any, result: Any) -> None:
        run = self._init(run_name(config), run_params(config), str(config.structure))
        try:
            for p in result.points:
                run.log(point_metrics(p), step=p.step)
            if result.final_eval_loss is not None:
                run.summary["final_eval_loss"] = result.final_eval_loss
        finally:
            run.finish()

    def log_report(self, summary: dict[str, Any], out_dir: Path) -> None:
        import wandb

        run = self._init("report", {"task": summary.get("task")}, "report")
        try:
            run.log({**self.summary_metrics(summary),
                     **{png.stem: wandb.Image(str(png)) for png in sorted(out_dir.glob("*.png"))}})
        finally:
            run.finish()


BACKEND = WandbTracker
