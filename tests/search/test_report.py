"""write_report on synthetic stores whose frontiers follow known laws (fake_runs.scaling_law):
summary.json fields and types, what the prose may claim given the intervals, m(L) leading the
reading where it varies, plots, atomic writes, edge cases."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from einsearch.search import report as report_mod
from einsearch.search.report import PLOT_NAMES, write_report
from einsearch.search.report import plots as plots_mod
from einsearch.search.store import ResultStore

sys.path.insert(0, str(Path(__file__).parent))
from fake_runs import make_result, make_scaling_result, scaling_law, true_m  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
WIDTHS = (16, 23, 32, 45, 64)
NO_TAX = {"theta": None, "omega": None, "psi": None, "nu": None}

# name -> (law, seeds). Truth: btt 2x (CI excludes 1), tensor_train 1x (CI includes 1),
# low_rank 0.5x, monarch 1.5x with 2 seeds (no interval), kronecker non-parallel
# (m from ~2.6 at high loss to ~0.9 at the lowest: varies > 2x).
LAWS = {
    "dense": (scaling_law(1.0), 3),
    "btt": (scaling_law(2.0), 3),
    "tensor_train": (scaling_law(1.0), 3),
    "low_rank": (scaling_law(0.5), 3),
    "monarch": (scaling_law(1.5), 2),
    "kronecker": (scaling_law(2.0, b=0.10, pivot_loss=0.8), 3),
}


def fill(out: Path, laws=LAWS, widths=WIDTHS, meta=None, **kw) -> None:
    with ResultStore(out / "results.sqlite") as st:
        for name, (law, seeds) in laws.items():
            for w in widths:
                for s in range(seeds):
                    st.record(make_scaling_result(name, w, s, law, **kw), meta)


def check_png(path: Path) -> None:
    import matplotlib.image as mpimg

    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000, path
    img = mpimg.imread(path)
    assert img.shape[0] > 300 and img.shape[1] > 400
    assert img.std() > 0.01  # not a blank canvas


def reading(out: Path) -> str:
    return (out / "report.md").read_text().split("## Reading", 1)[1].split("\n## ", 1)[0]


def bullet(text: str, name: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(f"- **{name}**"))


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    fill(out)
    with ResultStore(out / "results.sqlite") as st:
        st.record(make_result("btt", 128, seed=7, steps=40, diverge_at=10))
    summary = write_report(out, n_bootstrap=100)
    return out, summary


def test_summary_has_every_field_with_its_type(report_dir):
    out, summary = report_dir
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["structures"] == summary["structures"]
    assert "NaN" not in (out / "summary.json").read_text()
    st = on_disk["settings"]
    assert st["transient_fraction"] == 0.3 and st["n_bootstrap"] == 100
    assert st["run_seeds"] == [0, 1, 2, 7] and isinstance(st["bootstrap_seed"], int)
    assert st["law_form"].startswith("power") and "window" in st["window_rule"]
    assert isinstance(on_disk["notes"], list)
    rows = {r["name"]: r for r in on_disk["structures"]}
    assert set(rows) == set(LAWS) and on_disk["structures"][0]["name"] == "dense"
    for r in rows.values():
        assert isinstance(r["compute_multiplier"], float)
        assert r["compute_multiplier_ci"] is None or (
            len(r["compute_multiplier_ci"]) == 2 and all(isinstance(x, float) for x in r["compute_multiplier_ci"]))
        assert isinstance(r["reference_loss"], float)
        assert len(r["multiplier_by_loss"]) == 3
        for lv in r["multiplier_by_loss"]:
            assert set(lv) == {"loss", "multiplier", "ci"} and isinstance(lv["multiplier"], float)
        assert isinstance(r["exponent"], float) and isinstance(r["exponent_delta"], float)
        assert isinstance(r["varies"], bool)
        for key in ("omega", "psi", "nu"):
            assert isinstance(r[key], float)
        d = r["diagnostics"]
        assert sum(d["frontier_points_per_width"].values()) == d["frontier_points"] > 0
        assert 0 <= d["frontier_points_first_half"] <= d["frontier_points"]
        assert len(d["window"]) == 2 and d["window"][0] < d["window"][1]
        assert 0.9 < d["r2"] <= 1 and set(d["lr_by_width"]) == {str(w) for w in WIDTHS}
        assert isinstance(d["warnings"], list)
    # taxonomy from the structure configs
    assert (rows["low_rank"]["omega"], rows["low_rank"]["psi"], rows["low_rank"]["nu"]) == (0.0, 0.5, 0.5)
    assert rows["kronecker"]["omega"] == 0.5
    d = rows["dense"]
    assert d["compute_multiplier"] == 1.0 and d["compute_multiplier_ci"] == [1.0, 1.0]
    assert rows["btt"]["runs"] == 16 and rows["btt"]["diverged_runs"] == 1
    # the estimates against the known laws (parallel ones: m constant)
    for name, m in (("btt", 2.0), ("tensor_train", 1.0), ("low_rank", 0.5), ("monarch", 1.5)):
        assert abs(math.log(rows[name]["compute_multiplier"] / m)) < 0.2, name
        assert rows[name]["varies"] is False
    k = rows["kronecker"]
    assert k["varies"] is True and k["exponent_delta"] < -0.02
    law = LAWS["kronecker"][0]
    for lv in k["multiplier_by_loss"]:
        assert abs(math.log(lv["multiplier"] / true_m(law, lv["loss"]))) < 0.25
    mults = [r["compute_multiplier"] for r in on_disk["structures"][1:]]
    assert mults == sorted(mults, reverse=True)


def test_no_interval_with_fewer_than_3_seeds(report_dir):
    out, summary = report_dir
    m = next(r for r in summary["structures"] if r["name"] == "monarch")
    assert m["compute_multiplier_ci"] is None and all(lv["ci"] is None for lv in m["multiplier_by_loss"])
    line = bullet(reading(out), "monarch")
    assert "no interval (fewer than 3 seeds)" in line
    assert "better than dense" not in line
    assert "(no interval)" in (out / "report.md").read_text().split("## Compute multipliers")[1]


def test_claims_follow_the_intervals(report_dir):
    out, summary = report_dir
    rows = {r["name"]: r for r in summary["structures"]}
    text = reading(out)
    lo, hi = rows["btt"]["compute_multiplier_ci"]
    assert 1 < lo <= rows["btt"]["compute_multiplier"] <= hi
    assert "better than dense" in bullet(text, "btt")
    lo, hi = rows["tensor_train"]["compute_multiplier_ci"]
    assert lo < 1 < hi
    tt = bullet(text, "tensor_train")
    assert "better" not in tt and "worse" not in tt and "not distinguishable from dense" in tt
    assert rows["low_rank"]["compute_multiplier_ci"][1] < 1
    assert "worse than dense" in bullet(text, "low_rank")
    # monarch has no interval: the taxonomy ordering cannot be claimed
    assert "as the taxonomy predicts" not in text.lower() and "cannot separate" in text


def test_varying_multiplier_leads_with_m_of_l(report_dir):
    out, summary = report_dir
    text = reading(out)
    paras = text.strip().split("\n\n")
    assert "varies more than 2×" in paras[1] and "**kronecker**" in paras[1]
    first_bullet = paras[2].splitlines()[0]
    assert first_bullet.startswith("- **kronecker**: m depends on the loss level: it ranges from")
    k = next(r for r in summary["structures"] if r["name"] == "kronecker")
    hi_l = k["multiplier_by_loss"][-1]
    assert f"{hi_l['multiplier']:.3g}× at loss {hi_l['loss']:.3g}" in first_bullet


def test_plots_and_markdown(report_dir):
    out, _ = report_dir
    for name in PLOT_NAMES:
        check_png(out / name)
    md = (out / "report.md").read_text()
    for name in PLOT_NAMES:
        assert f"]({name})" in md
    assert "## Diagnostics" in md and "frontier points per width" in md
    assert "| btt |" in md and "16 (1 diverged)" in md
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporaries


def test_taxonomy_claimed_only_with_separated_intervals(tmp_path):
    laws = {"dense": (scaling_law(1.0), 3), "btt": (scaling_law(3.0), 3),
            "low_rank": (scaling_law(0.4), 3)}
    fill(tmp_path, laws, widths=(16, 23, 32, 45))
    summary = write_report(tmp_path, n_bootstrap=60)
    rows = {r["name"]: r for r in summary["structures"]}
    assert rows["btt"]["compute_multiplier_ci"][0] > rows["low_rank"]["compute_multiplier_ci"][1]
    assert "As the taxonomy predicts" in reading(tmp_path)


def test_failure_while_plotting_writes_nothing(tmp_path, monkeypatch):
    fill(tmp_path, {"dense": (scaling_law(1.0), 2), "btt": (scaling_law(2.0), 2)}, widths=(16, 23, 32))

    def boom(*a, **k):
        raise RuntimeError("plotting failed")

    monkeypatch.setattr(plots_mod, "_plot_multipliers", boom)
    with pytest.raises(RuntimeError, match="plotting failed"):
        write_report(tmp_path, n_bootstrap=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.sqlite"]
    monkeypatch.undo()
    summary = write_report(tmp_path, n_bootstrap=0)
    before = (tmp_path / "summary.json").read_bytes()
    assert json.loads(before)["structures"][1]["compute_multiplier_ci"] is None
    monkeypatch.setattr(plots_mod, "_plot_taxonomy", boom)
    with pytest.raises(RuntimeError):
        write_report(tmp_path, n_bootstrap=0, transient=0.5)
    # the previous report is still there, whole
    assert (tmp_path / "summary.json").read_bytes() == before
    assert json.loads(before)["settings"]["transient_fraction"] == summary["settings"]["transient_fraction"]
    assert not list(tmp_path.glob(".*.tmp"))


def test_options(tmp_path):
    fill(tmp_path, {"dense": (scaling_law(1.0), 3), "btt": (scaling_law(2.0), 3)}, widths=(16, 23, 32, 45))
    with ResultStore(tmp_path / "results.sqlite") as st:  # the analysis alone, no files
        rep = report_mod.build_report(st, loss="train", n_bootstrap=0, transient=0.5)
    ref = rep.by_name("btt").analysis.multiplier_by_loss[1].loss  # inside the common range
    summary = write_report(tmp_path, n_bootstrap=0, loss="train", transient=0.5, reference_loss=ref)
    st = summary["settings"]
    assert st["loss"] == "train" and st["transient_fraction"] == 0.5 and st["n_bootstrap"] == 0
    btt = summary["structures"][1]
    assert btt["reference_loss"] == ref and btt["compute_multiplier_ci"] is None
    assert "no interval (bootstrap turned off)" in reading(tmp_path)
    with ResultStore(tmp_path / "results.sqlite") as st:
        shared = report_mod.build_report(st, n_bootstrap=0, offset="shared")
    assert shared.settings["offset_requested"] == "shared"
    for bad, match in ((dict(loss="test"), "loss must be"), (dict(transient=1.0), "transient"),
                       (dict(offset="free"), "offset"), (dict(reference_loss=-1.0), "reference_loss"),
                       (dict(n_bootstrap=-1), "n_bootstrap")):
        with pytest.raises(ValueError, match=match):
            write_report(tmp_path, **bad)


def test_btt_moe_is_compared_head_to_head_with_its_baseline(tmp_path):
    laws = {"dense": (scaling_law(1.0), 3), "moe": (scaling_law(1.5), 3),
            "btt_moe": (scaling_law(3.0), 3)}
    fill(tmp_path, laws, widths=(16, 23, 32, 45), meta=NO_TAX)
    summary = write_report(tmp_path, n_bootstrap=60)
    rows = {r["name"]: r for r in summary["structures"]}
    for name in ("moe", "btt_moe"):
        assert rows[name]["is_moe"] and rows[name]["omega"] is None and rows[name]["theta"] is None
    (h,) = summary["head_to_head"]
    assert (h["name"], h["reference"]) == ("btt_moe", "moe")
    assert abs(math.log(h["compute_multiplier"] / 2.0)) < 0.25
    lo, hi = h["compute_multiplier_ci"]
    assert lo <= h["compute_multiplier"] <= hi and len(h["multiplier_by_loss"]) == 3
    md = (tmp_path / "report.md").read_text()
    assert "## Head to head" in md and "| btt_moe | moe |" in md
    assert "moe in dense's place" in reading(tmp_path)
    assert "| btt_moe | n/a | n/a | n/a | n/a |" in md
    for name in PLOT_NAMES:
        check_png(tmp_path / name)


def test_no_head_to_head_without_the_baseline(report_dir):
    out, summary = report_dir
    assert summary["head_to_head"] == []
    assert "## Head to head" not in (out / "report.md").read_text()


def test_no_dense_runs_is_a_clear_error(tmp_path):
    fill(tmp_path, {"btt": (scaling_law(2.0), 1)}, widths=(16,))
    with pytest.raises(ValueError, match="no dense runs"):
        write_report(tmp_path, n_bootstrap=5)
    assert not (tmp_path / "summary.json").exists()


def test_missing_and_empty_store(tmp_path):
    with pytest.raises(FileNotFoundError, match="results.sqlite"):
        write_report(tmp_path)
    ResultStore(tmp_path / "results.sqlite").close()
    with pytest.raises(ValueError, match="no runs"):
        write_report(tmp_path)


def test_structure_without_a_window_is_na(tmp_path):
    fill(tmp_path, {"dense": (scaling_law(1.0), 2)}, widths=(16, 23, 32))
    with ResultStore(tmp_path / "results.sqlite") as st:
        st.record(make_scaling_result("monarch", 32, 0, scaling_law(1.5)))  # one width only
    summary = write_report(tmp_path, n_bootstrap=10)
    row = next(r for r in summary["structures"] if r["name"] == "monarch")
    assert row["compute_multiplier"] is None and row["diagnostics"]["notes"]
    assert "**monarch**: no multiplier" in reading(tmp_path)
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
    assert "all dense runs diverged" in (tmp_path / "report.md").read_text()
    for name in PLOT_NAMES:
        assert (tmp_path / name).read_bytes().startswith(PNG_MAGIC)


def test_several_tasks_need_a_choice(tmp_path):
    fill(tmp_path, {"dense": (scaling_law(1.0), 1)}, widths=(16, 23))
    fill(tmp_path, {"dense": (scaling_law(1.0), 1)}, widths=(16, 23), task="charlm")
    with pytest.raises(ValueError, match="several tasks"):
        write_report(tmp_path, n_bootstrap=5)
    summary = write_report(tmp_path, task="charlm", n_bootstrap=5)
    assert summary["task"] == "charlm" and [r["name"] for r in summary["structures"]] == ["dense"]


def test_dominant_width_is_warned_about(tmp_path):
    """A width logged far more densely than the others owns most of the frontier: the
    diagnostics say so in summary.json and in the report."""
    with ResultStore(tmp_path / "results.sqlite") as st:
        for name, m in (("dense", 1.0), ("btt", 2.0)):
            for w in (16, 23, 32):
                for s in range(2):
                    st.record(make_scaling_result(name, w, s, scaling_law(m),
                                                  n_points=150 if w == 32 else 24))
    summary = write_report(tmp_path, n_bootstrap=0)
    btt = next(r for r in summary["structures"] if r["name"] == "btt")
    per_width = btt["diagnostics"]["frontier_points_per_width"]
    assert per_width["32"] > sum(per_width.values()) / 2
    (warning, *_) = btt["diagnostics"]["warnings"]
    assert "width 32 makes up" in warning
    diag = (tmp_path / "report.md").read_text().split("## Diagnostics", 1)[1]
    assert "**btt** (warning): width 32 makes up" in diag


def test_runs_with_different_mup_base_widths_are_noted(tmp_path):
    """A dense width added by a second sweep defaults to its own smallest width as muP's base:
    the report says the store holds two parametrizations."""
    import dataclasses

    from fake_runs import FakeConfig

    @dataclasses.dataclass(frozen=True)
    class BasedConfig(FakeConfig):
        base_width: int = 16

    laws = {"dense": (scaling_law(1.0), 3), "btt": (scaling_law(2.0), 3)}
    with ResultStore(tmp_path / "results.sqlite") as st:
        for name, (law, seeds) in laws.items():
            for w in WIDTHS:
                for s in range(seeds):
                    r = make_scaling_result(name, w, s, law)
                    base = 64 if (name, w) == ("dense", 64) else 16
                    r = dataclasses.replace(r, config=BasedConfig(**dataclasses.asdict(r.config), base_width=base))
                    st.record(r)
    summary = write_report(tmp_path, n_bootstrap=0)
    assert any("different muP base widths [16, 64]" in n for n in summary["notes"])
    fill(tmp_path / "one", laws=laws)  # no base widths recorded: no note
    assert not any("base widths" in n for n in write_report(tmp_path / "one", n_bootstrap=0)["notes"])
