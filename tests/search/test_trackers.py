"""--track tensorboard|mlflow|wandb: each run's curve and the report, offline under --out, read
back with each tool's own reader."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from einsearch.search.cli import main
from einsearch.search.store import ResultStore
from einsearch.search.trackers import check_trackers

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """A tiny sweep (4 runs) tracked by all three backends; W&B offline."""
    out = tmp_path_factory.mktemp("tracked") / "out"
    os.environ.setdefault("WANDB_SILENT", "true")
    assert main(["search", "--preset", "tiny", "--out", str(out), "--quiet", "--checkpoint-every", "0",
                 "--track", "tensorboard", "--track", "mlflow", "--track", "wandb"]) == 0
    with ResultStore(out / "results.sqlite") as st:
        runs = {r.run_id: (r, st.points(r.run_id)) for r in st.runs()}
    return out, runs


def test_tensorboard_event_files_hold_one_series_per_run(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, runs = tracked
    folders = [d for d in (out / "tensorboard").iterdir() if d.name != "report"]
    assert len(folders) == len(runs) == 4
    for folder in folders:
        acc = EventAccumulator(str(folder))
        acc.Reload()
        run_id = folder.name.rsplit("_", 1)[1]
        _, points = runs[run_id]
        series = acc.Scalars("loss/train")
        assert [e.step for e in series] == [p.step for p in points]
        assert [round(e.value, 5) for e in series] == [round(p.train_loss, 5) for p in points]
        assert {"loss/eval", "tokens", "flops", "train_seconds"} <= set(acc.Tags()["scalars"])
    report = EventAccumulator(str(out / "tensorboard" / "report"))
    report.Reload()
    assert "loss_vs_compute" in report.Tags()["images"]


def test_mlflow_store_holds_every_run_and_the_report(tracked):
    from mlflow.tracking import MlflowClient

    out, runs = tracked
    client = MlflowClient(tracking_uri=f"sqlite:///{(out / 'mlflow.db').resolve()}")
    experiment = client.get_experiment_by_name("out")
    found = client.search_runs([experiment.experiment_id])
    by_id = {r.data.tags.get("einsearch.run_id"): r for r in found}
    assert set(runs) <= set(by_id) and any(r.info.run_name == "report" for r in found)
    run_id, (row, points) = next(iter(runs.items()))
    history = client.get_metric_history(by_id[run_id].info.run_id, "loss.train")
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == [p.step for p in points]
    assert by_id[run_id].data.params["structure"] == row.structure


def test_wandb_offline_writes_its_run_folders(tracked):
    out, runs = tracked
    folders = sorted((out / "wandb").glob("offline-run-*"))
    assert len(folders) == len(runs) + 1  # one per run and the report
    assert all(any(f.glob("*.wandb")) for f in folders)


def test_an_unknown_or_missing_backend_fails_before_anything_is_written(tmp_path, capsys, monkeypatch):
    with pytest.raises(ValueError, match="expected one of tensorboard, mlflow, wandb"):
        check_trackers(["neptune"])
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if it were not installed
    out = tmp_path / "out"
    assert main(["search", "--preset", "tiny", "--out", str(out), "--quiet", "--track", "mlflow"]) == 2
    assert "pip install 'einsearch[mlflow]'" in capsys.readouterr().err and not out.exists()
