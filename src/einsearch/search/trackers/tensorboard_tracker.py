"""TensorBoard: one event-file folder per run under ``OUT/tensorboard`` (one scalar series per
run and metric, against the step), the run's config as hparams; the report's multipliers and
figures under ``OUT/tensorboard/report``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import Tracker, point_metrics, run_name, run_params

__all__ = ["TensorBoardTracker", "BACKEND"]


class TensorBoardTracker(Tracker):
    name = "tensorboard"

    @property
    def logdir(self) -> Path:
        return self.out_dir / "tensorboard"

    def log_run(self, config: Any, result: Any) -> None:
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(str(self.logdir / run_name(config))) as writer:
            for p in result.points:
                for key, value in point_metrics(p).items():
                    writer.add_scalar(key, value, global_step=p.step)
            final = {"hparam/final_eval_loss": result.final_eval_loss} if result.final_eval_loss is not None else {}
            writer.add_hparams(run_params(config), final or {"hparam/final_eval_loss": float("nan")}, run_name=".")

    def log_report(self, summary: dict[str, Any], out_dir: Path) -> None:
        import matplotlib.image as mpimg
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(str(self.logdir / "report")) as writer:
            for key, value in self.summary_metrics(summary).items():
                writer.add_scalar(key, value, global_step=0)
            for png in sorted(out_dir.glob("*.png")):
                writer.add_image(png.stem, mpimg.imread(png)[..., :3], global_step=0, dataformats="HWC")
            writer.add_text("report", (out_dir / "report.md").read_text() if (out_dir / "report.md").is_file() else "")


BACKEND = TensorBoardTracker
