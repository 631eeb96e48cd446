"""write_report on synthetic stores: schema of summary.json, valid PNGs, report.md, edge cases."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from einsearch.search.report import PLOT_NAMES, write_report
from einsearch.search.store import ResultStore

sys.path.insert(0, str(Path(__file__).parent))
from fake_runs import make_result  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
STRUCTURE_KEYS = {"name", "theta", "omega", "psi", "nu", "params", "exponent",
                  "compute_multiplier", "compute_multiplier_ci", "multiplier_at_matched_loss",
                  "runs", "diverged_runs"}


def fill(out: Path, structures, widths=(32, 64, 128), steps=40, **kw) -> None:
    with ResultStore(out / "results.sqlite") as st:
        for s in structures:
            for w in widths:
                st.record(make_result(s, w, steps=steps, **kw))


def check_png(path: Path) -> None:
    import matplotlib.image as mpimg

    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000, path
    img = mpimg.imread(path)
    assert img.shape[0] > 300 and img.shape[1] > 400
    assert img.std() > 0.01  # not a blank canvas


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    fill(out, ["dense", "btt", "low_rank", "kronecker", "(0.75|0|0.25|0|0.5|0.5|0.25)"],
         noise=0.005)
    with ResultStore(out / "results.sqlite") as st:
        st.record(make_result("btt", 256, steps=40, diverge_at=10))
    summary = write_report(out, n_bootstrap=40)
    return out, summary


def test_summary_schema(report_dir):
    out, summary = report_dir
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["structures"] == summary["structures"]
    assert on_disk["task"] == "regression" and on_disk["generated_at"].endswith("Z")
    assert isinstance(on_disk["estimator"], dict) and on_disk["estimator"]
    rows = {r["name"]: r for r in on_disk["structures"]}
    assert set(rows) == {"dense", "btt", "low_rank", "kronecker", "(0.75|0|0.25|0|0.5|0.5|0.25)"}
    for r in rows.values():
        assert STRUCTURE_KEYS <= set(r), STRUCTURE_KEYS - set(r)
        assert len(r["compute_multiplier_ci"]) == 2
        assert r["exponent"] == pytest.approx(0.1, abs=0.03)
    assert on_disk["structures"][0]["name"] == "dense"
    d = rows["dense"]
    assert d["compute_multiplier"] == 1.0 and d["compute_multiplier_ci"] == [1.0, 1.0]
    assert (d["theta"], d["omega"], d["psi"], d["nu"]) == ("(1|0|0|1|0|0|0)", 0.0, 1.0, 1.0)
    assert d["params"] == [4 * 32 * 32, 4 * 64 * 64, 4 * 128 * 128]
    b = rows["btt"]
    assert b["runs"] == 4 and b["diverged_runs"] == 1
    assert 1.5 < b["compute_multiplier"] < 2.5  # the synthetic truth is 2 (before the floors)
    lo, hi = b["compute_multiplier_ci"]
    assert lo <= b["compute_multiplier"] <= hi
    assert rows["low_rank"]["compute_multiplier"] < 1 < rows["btt"]["compute_multiplier"]
    # ordering: dense first, then best multiplier first
    mults = [r["compute_multiplier"] for r in on_disk["structures"][1:]]
    assert mults == sorted(mults, reverse=True)


def test_pngs_and_markdown(report_dir):
    out, _ = report_dir
    for name in PLOT_NAMES:
        check_png(out / name)
    md = (out / "report.md").read_text()
    for name in PLOT_NAMES:
        assert f"]({name})" in md
    assert "| structure | θ | ω | ψ | ν | params | exponent b | multiplier [95% CI] | runs |" in md
    assert "`(0.75\\|0\\|0.25\\|0\\|0.5\\|0.5\\|0.25)`" in md  # pipes escaped for the table
    assert "**btt**" in md and "dense" in md.split("## Reading")[1]
    assert "4 (1 diverged)" in md
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporaries


def test_loss_choice(tmp_path):
    fill(tmp_path, ["dense", "btt"], widths=(32, 64), steps=30)
    train = write_report(tmp_path, n_bootstrap=5)
    ev = write_report(tmp_path, n_bootstrap=5, loss="eval")
    assert "training loss" in train["estimator"]["loss"] and "eval" in ev["estimator"]["loss"]
    # the fake runs log eval every 5th step: the eval frontier is built from fewer points
    assert ev["structures"][0]["frontier_points"] < train["structures"][0]["frontier_points"]
    with pytest.raises(ValueError, match="loss must be one of"):
        write_report(tmp_path, loss="test")


def test_structure_without_theta(tmp_path):
    """MoE structures are not points of the theta space: theta and taxonomy are unknown."""
    fill(tmp_path, ["dense"], widths=(32, 64), steps=30)
    with ResultStore(tmp_path / "results.sqlite") as st:
        for w in (32, 64):
            st.record(make_result("btt_moe", w, steps=30, multiplier=1.5),
                      {"theta": None, "omega": None, "psi": None, "nu": None})
    summary = write_report(tmp_path, n_bootstrap=5)
    row = next(r for r in summary["structures"] if r["name"] == "btt_moe")
    assert row["theta"] is None and row["omega"] is None
    assert row["compute_multiplier"] == pytest.approx(1.5, rel=0.3)
    assert "| btt_moe | n/a | n/a | n/a | n/a |" in (tmp_path / "report.md").read_text()
    for name in PLOT_NAMES:
        check_png(tmp_path / name)


def test_no_dense_runs_is_a_clear_error(tmp_path):
    fill(tmp_path, ["btt", "low_rank"], widths=(32,), steps=10)
    with pytest.raises(ValueError, match="no dense runs"):
        write_report(tmp_path, n_bootstrap=5)
    assert not (tmp_path / "summary.json").exists()


def test_missing_store(tmp_path):
    with pytest.raises(FileNotFoundError, match="results.sqlite"):
        write_report(tmp_path)


def test_empty_store(tmp_path):
    ResultStore(tmp_path / "results.sqlite").close()
    with pytest.raises(ValueError, match="no runs"):
        write_report(tmp_path)


def test_structure_with_one_frontier_point_is_na(tmp_path):
    fill(tmp_path, ["dense"], steps=20)
    with ResultStore(tmp_path / "results.sqlite") as st:
        one = make_result("monarch", 32, steps=1)  # a single logged point
        st.record(one)
    summary = write_report(tmp_path, n_bootstrap=10)
    row = next(r for r in summary["structures"] if r["name"] == "monarch")
    assert row["exponent"] is None and row["frontier_points"] == 1
    assert row["notes"]
    md = (tmp_path / "report.md").read_text()
    assert "| monarch |" in md and "n/a" in md
    for name in PLOT_NAMES:
        check_png(tmp_path / name)


def test_all_runs_diverged(tmp_path):
    with ResultStore(tmp_path / "results.sqlite") as st:
        for s in ("dense", "btt"):
            for w in (32, 64):
                st.record(make_result(s, w, steps=10, diverge_at=1))
    summary = write_report(tmp_path, n_bootstrap=10)
    for r in summary["structures"]:
        assert r["compute_multiplier"] is None and r["diverged_runs"] == 2
    md = (tmp_path / "report.md").read_text()
    assert "all dense runs diverged" in md
    for name in PLOT_NAMES:
        assert (tmp_path / name).read_bytes().startswith(PNG_MAGIC)


def test_several_tasks_need_a_choice(tmp_path):
    fill(tmp_path, ["dense", "btt"], widths=(32, 64), steps=15)
    fill(tmp_path, ["dense"], widths=(32, 64), steps=15, task="charlm")
    with pytest.raises(ValueError, match="several tasks"):
        write_report(tmp_path, n_bootstrap=5)
    summary = write_report(tmp_path, task="charlm", n_bootstrap=5)
    assert summary["task"] == "charlm" and [r["name"] for r in summary["structures"]] == ["dense"]
    # NaN never reaches the JSON file
    text = (tmp_path / "summary.json").read_text()
    assert "NaN" not in text and not math.isnan(summary["structures"][0]["exponent"])


def test_btt_moe_is_compared_head_to_head_with_moe(tmp_path):
    with ResultStore(tmp_path / "results.sqlite") as st:
        for name, m in (("dense", 1.0), ("moe", 1.5), ("btt_moe", 3.0)):
            for w in (32, 64, 128):
                st.record(make_result(name, w, steps=40, multiplier=m))
    summary = write_report(tmp_path, n_bootstrap=20)
    rows = {r["name"]: r for r in summary["structures"]}
    # the fake law has a width-limited floor, which biases each estimate a little (see above)
    assert rows["moe"]["compute_multiplier"] == pytest.approx(1.5, rel=0.3)
    assert rows["btt_moe"]["compute_multiplier"] == pytest.approx(3.0, rel=0.3)
    (h,) = summary["head_to_head"]
    assert (h["name"], h["reference"]) == ("btt_moe", "moe")
    assert h["compute_multiplier"] == pytest.approx(2.0, rel=0.3)
    lo, hi = h["compute_multiplier_ci"]
    assert lo <= h["compute_multiplier"] <= hi
    assert json.loads((tmp_path / "summary.json").read_text())["head_to_head"] == summary["head_to_head"]
    md = (tmp_path / "report.md").read_text()
    assert "## Head to head" in md and "| btt_moe | moe |" in md
    assert "It is a BTT structure" not in md  # BTT-MoE is not the plain BTT structure


def test_no_head_to_head_without_both_moe_structures(report_dir):
    out, summary = report_dir
    assert summary["head_to_head"] == []
    assert "## Head to head" not in (out / "report.md").read_text()


def test_reading_names_the_btt_family(report_dir):
    out, summary = report_dir
    best = summary["structures"][1]
    assert best["name"] == "btt"  # the fake law gives btt the largest multiplier (2x)
    reading = (out / "report.md").read_text().split("## Reading", 1)[1].split("##", 1)[0]
    assert "**btt**" in reading and "It is a BTT structure" in reading
