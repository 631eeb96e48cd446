"""MLflow, offline: a local store in ``OUT/mlflow.db`` with artifacts in ``OUT/mlartifacts``
(MLflow 3 keeps its plain-file store in maintenance mode and recommends SQLite; ``mlflow ui
--backend-store-uri sqlite:///OUT/mlflow.db`` shows it). The experiment is named after the output
folder; one MLflow run per training run (its config as params, each metric against the step),
and a ``report`` run with the multipliers and the report's files as artifacts."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .base import Tracker, point_metrics, run_name, run_params

__all__ = ["MLflowTracker", "BACKEND"]


class MLflowTracker(Tracker):
    name = "mlflow"

    def __init__(self, out_dir: Path, project: str):
        super().__init__(out_dir, project)
        self._client: Any = None
        self._experiment: str | None = None

    @property
    def uri(self) -> str:
        return f"sqlite:///{(self.out_dir / 'mlflow.db').resolve()}"

    def client(self) -> tuple[Any, str]:
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self.out_dir.mkdir(parents=True, exist_ok=True)
            self._client = MlflowClient(tracking_uri=self.uri)
            found = self._client.get_experiment_by_name(self.project)
            self._experiment = (found.experiment_id if found is not None else self._client.create_experiment(
                self.project, artifact_location=(self.out_dir / "mlartifacts").resolve().as_uri()))
        assert self._experiment is not None
        return self._client, self._experiment

    def log_run(self, config: Any, result: Any) -> None:
        from mlflow.entities import Metric, Param

        client, experiment = self.client()
        run = client.create_run(experiment, run_name=run_name(config), tags={"einsearch.run_id": config.run_id(),
                                                                            "einsearch.status": str(result.status)})
        now = int(time.time() * 1000)
        params = [Param(k, str(v)[:500]) for k, v in run_params(config).items()]
        metrics = [Metric(key.replace("/", "."), value, now, p.step) for p in result.points
                   for key, value in point_metrics(p).items()]
        for i in range(0, max(len(metrics), 1), 900):  # MLflow caps a batch at 1000 entries
            client.log_batch(run.info.run_id, metrics=metrics[i:i + 900], params=params if i == 0 else [])
        client.set_terminated(run.info.run_id, "FINISHED" if result.status == "finished" else "FAILED")

    def log_report(self, summary: dict[str, Any], out_dir: Path) -> None:
        client, experiment = self.client()
        run = client.create_run(experiment, run_name="report", tags={"einsearch.kind": "report"})
        for key, value in self.summary_metrics(summary).items():
            client.log_metric(run.info.run_id, key.replace("(", "_").replace(")", "_").replace("|", "_"), value)
        for path in sorted([*out_dir.glob("*.png"), *out_dir.glob("*.md"), *out_dir.glob("summary.json")]):
            client.log_artifact(run.info.run_id, str(path))
        client.set_terminated(run.info.run_id, "FINISHED")


BACKEND = MLflowTracker
