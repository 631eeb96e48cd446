"""What every tracker shares: run names, hyperparameters and the metrics of a point."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..driver import Sink

__all__ = ["Tracker", "run_name", "run_params", "point_metrics"]


def run_name(config: Any) -> str:
    """``structure_wWIDTH_sSEED_RUNID``, file-name safe (theta text has '|' and parentheses)."""
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in str(config.structure)).strip("_")
    return f"{safe}_w{config.width}_s{config.seed}_{config.run_id()}"


def run_params(config: Any) -> dict[str, Any]:
    """The run's config as flat hyperparameters (strings, numbers, booleans; None as "None")."""
    d = config.to_dict() if hasattr(config, "to_dict") else dict(vars(config))
    out: dict[str, Any] = {"run_id": config.run_id()}
    for k, v in d.items():
        out[k] = v if isinstance(v, (int, float, str, bool)) else json.dumps(v, sort_keys=True)
    return out


def point_metrics(point: Any) -> dict[str, float]:
    """A logged point's scalars: train and eval loss, tokens, training FLOPs and seconds, and
    its extra metrics (expert load...)."""
    out = {"loss/train": point.train_loss, "tokens": float(point.tokens), "flops": float(point.compute)}
    if point.eval_loss is not None:
        out["loss/eval"] = point.eval_loss
    if getattr(point, "elapsed_s", None) is not None:
        out["train_seconds"] = point.elapsed_s
    for k, v in (getattr(point, "metrics", None) or {}).items():
        if "/load/" not in k:  # per-expert loads stay in the store; the summaries go to the tracker
            out[k] = v
    return {k: float(v) for k, v in out.items() if v is not None}


class Tracker(Sink):
    """A sink of the driver loop that logs each recorded run, and the report (``log_report``)."""

    name = "tracker"

    def __init__(self, out_dir: Path, project: str):
        self.out_dir = Path(out_dir)
        self.project = project

    def on_run(self, config: Any, status: str, result: Any, error: str | None) -> None:
        if result is not None:
            self.log_run(config, result)

    def on_report(self, summary: dict[str, Any], out_dir: Any) -> None:
        self.log_report(summary, Path(out_dir))

    def log_run(self, config: Any, result: Any) -> None:
        """One run's curve and hyperparameters."""
        raise NotImplementedError

    def log_report(self, summary: dict[str, Any], out_dir: Path) -> None:
        """The sweep's summary (multipliers per structure) and its plots."""
        raise NotImplementedError

    @staticmethod
    def summary_metrics(summary: dict[str, Any]) -> dict[str, float]:
        out = {}
        for row in summary.get("structures", []):
            for key in ("compute_multiplier", "time_multiplier", "exponent"):
                if row.get(key) is not None:
                    out[f"{key}/{row['name']}"] = float(row[key])
        return out
