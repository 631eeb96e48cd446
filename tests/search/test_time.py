"""The time multiplier t(L) = T_dense(L) / T_S(L): the compute multiplier's estimator with training
seconds on the x axis, recovered from simulated runs whose speed is known."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from einsearch.search.report import write_report
from einsearch.search.store import ResultStore

sys.path.insert(0, str(Path(__file__).parent))
from fake_runs import make_scaling_result, scaling_law  # noqa: E402

WIDTHS = (16, 23, 32, 45, 64)
DENSE_SPEED = 1e-9  # seconds per FLOP


def fill(out: Path, structures: dict, seeds: int = 3, timed: bool = True) -> None:
    with ResultStore(out / "results.sqlite") as st:
        for name, (m, slowdown) in structures.items():
            law = scaling_law(m)
            for w in WIDTHS:
                for s in range(seeds):
                    st.record(make_scaling_result(
                        name, w, s, law, sigma_seed=0.01,
                        seconds_per_flop=DENSE_SPEED * slowdown if timed else None))


def rows(out: Path) -> dict:
    return {r["name"]: r for r in json.loads((out / "summary.json").read_text())["structures"]}


@pytest.mark.parametrize("m, slowdown", [(2.0, 4.0), (0.5, 0.25), (2.0, 1.0)])
def test_time_multiplier_is_recovered(tmp_path, m, slowdown):
    """S needs 1/m of dense's FLOPs and each of its FLOPs takes ``slowdown`` x as long: t = m / slowdown."""
    fill(tmp_path, {"dense": (1.0, 1.0), "btt": (m, slowdown)})
    summary = write_report(tmp_path, n_bootstrap=100)
    r = rows(tmp_path)["btt"]
    assert math.isclose(r["compute_multiplier"], m, rel_tol=0.15)
    assert math.isclose(r["time_multiplier"], m / slowdown, rel_tol=0.15)
    lo, hi = r["time_multiplier_ci"]
    assert lo < m / slowdown < hi
    assert len(r["time_multiplier_by_loss"]) == 3
    assert summary["time"]["available"] and (tmp_path / "loss_vs_time.png").stat().st_size > 10_000
    md = (tmp_path / "report.md").read_text()
    section = md.split("## Time", 1)[1].split("\n## ", 1)[0]
    if m > 1 and m / slowdown < 1:
        assert "saves compute but costs time here" in section
    elif m < 1 and m / slowdown > 1:
        assert "costs compute but saves time here" in section
    # unknown machine conditions: the fakes record no execution, so the figure is indicative
    assert summary["time"]["indicative"] and "Indicative only" in section


def test_time_is_matched_on_loss_when_a_slow_structure_shares_no_time_window(tmp_path):
    """S's FLOPs 20x slower: its frontier reaches dense's losses only after dense's largest model
    has finished, so a common seconds window holds no shared loss; matched on loss, the
    estimator still reads t = m / 20 at losses both reached."""
    from einsearch.search.analysis import analyze, curves_from_store

    fill(tmp_path, {"dense": (1.0, 1.0), "btt": (2.0, 20.0)})
    curves = curves_from_store(tmp_path / "results.sqlite", axis="time")
    on_x = analyze(curves, n_bootstrap=0)["btt"]   # the compute axis' common window, on seconds
    assert on_x.compute_multiplier is None and on_x.notes
    on_loss = analyze(curves, n_bootstrap=100, axis="time")["btt"]
    assert on_loss.matched_on == "loss" and on_loss.window[0] > on_loss.dense_window[0]
    assert math.isclose(on_loss.compute_multiplier, 0.1, rel_tol=0.15)
    lo, hi = on_loss.compute_multiplier_ci
    assert lo < 0.1 < hi
    with pytest.raises(ValueError, match="axis"):
        analyze(curves, axis="seconds")


def test_a_store_without_training_times_has_no_time_multiplier_said_once(tmp_path):
    fill(tmp_path, {"dense": (1.0, 1.0), "btt": (2.0, 1.0)}, timed=False)
    summary = write_report(tmp_path, n_bootstrap=0)
    assert not summary["time"]["available"]
    assert rows(tmp_path)["btt"]["time_multiplier"] is None
    md = (tmp_path / "report.md").read_text()
    assert md.count("recorded without training times") == 2  # the Time section and the notes, once each
    assert not (tmp_path / "loss_vs_time.png").exists()


def test_time_conditions_say_when_runs_shared_the_machine():
    from einsearch.search.report.summary import time_conditions
    from einsearch.search.store import RunRow

    def run(**execution):
        return RunRow(run_id="x", task="t", structure="dense", theta=None, omega=None, psi=None, nu=None,
                      width=1, seed=0, lr=0.1, params=1, flops_per_token=1.0, status="finished",
                      wall_time_s=1.0, final_eval_loss=1.0, config={}, finished_at="", execution=execution)

    ok = time_conditions([run(cpus=2, threads=1, concurrency=2, device="cpu")], {}, timed=1, total=1)
    assert ok["available"] and not ok["indicative"]
    busy = time_conditions([run(cpus=2, threads=2, concurrency=2, device="cpu")], {}, timed=1, total=1)
    assert busy["indicative"] and "2 concurrent runs x 2 thread(s) on 2 cores" in busy["why"]
    gpu = time_conditions([run(cpus=16, threads=1, concurrency=4, device="cuda:0", runs_per_device=4)], {},
                          timed=1, total=1)
    assert gpu["indicative"] and "4 runs shared each GPU" in gpu["why"]


def test_time_from_bench_times_every_model_of_the_store(tmp_path):
    """An old store (no recorded times): --time-from-bench rebuilds each (structure, width) from its
    recorded config and times it here, round-robin."""
    import shutil

    from einsearch.search.cli import main

    shutil.copytree(Path(__file__).parent / "data" / "store_v1", tmp_path / "out")
    assert main(["report", str(tmp_path / "out"), "--bootstrap", "0"]) == 0
    assert not json.loads((tmp_path / "out" / "summary.json").read_text())["time"]["available"]
    assert main(["report", str(tmp_path / "out"), "--bootstrap", "0", "--time-from-bench"]) == 0
    time = json.loads((tmp_path / "out" / "summary.json").read_text())["time"]
    assert time["available"] and time["source"] == "bench" and not time["indicative"]
    assert set(time["seconds_per_gflop"]) == {f"{s} w={w}" for s in ("dense", "low_rank(0.5)", "monarch")
                                              for w in (16, 32)}
    assert all(v > 0 for v in time["seconds_per_gflop"].values())


@pytest.mark.parametrize("m, t, m_ci, t_ci, reading", [
    (2.0, 0.5, (1.5, 2.5), (0.4, 0.6), "saves compute but costs time here"),
    (1.3, 0.4, (0.4, 3.7), (0.2, 0.7), "may save compute but costs time here"),
    (0.6, 0.3, (0.4, 1.04), (0.2, 0.7), "may cost compute, costs time"),
    (0.4, 0.3, (0.2, 0.8), (0.2, 0.5), "costs compute and time"),
    (0.5, 2.0, (0.4, 0.6), (1.5, 3.0), "costs compute but saves time here"),
    (2.0, 3.0, None, None, "saves compute and time"),
])
def test_the_time_reading_says_may_where_an_interval_holds_one(m, t, m_ci, t_ci, reading):
    from einsearch.search.report.prose import _time_reading

    assert _time_reading(m, t, m_ci, t_ci) == reading
