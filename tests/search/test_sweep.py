"""Sweep specs (presets, files, overrides, errors) and the sweep driver (resume, failures,
worker processes, report), with a fake trainer; plus one end-to-end ``tiny`` sweep."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

import einsearch.search.sweep as sweep_mod
from einsearch.search.executors import LocalExecutor
from einsearch.search.spec import SweepSpec, load_spec, preset_names
from einsearch.search.store import ResultStore
from einsearch.search.sweep import run_sweep

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))
from fake_runs import fake_train  # noqa: E402

FAST = {"steps": 20, "warmup_steps": 0, "log_every": 1}



def spec_of(**kw) -> SweepSpec:
    base = dict(task="regression", structures=["dense", "btt"], widths=[16, 32], train=dict(FAST))
    base.update(kw)
    return SweepSpec(**base)


# ------------------------------------------------------------------------------------------
# specs


def test_presets_ship_and_load():
    names = preset_names()
    assert {"demo", "tiny", "charlm_small", "moe", "lm"} <= set(names)
    for name in names:
        spec = load_spec(name)
        assert spec.structures[0] == "dense" and spec.widths and spec.configs()
        assert all(type(cfg).__name__ == "TrainConfig" for cfg in spec.configs())
    demo = load_spec("demo")
    assert len(demo.structures) >= 7 and len(demo.widths) >= 3 and len(demo.seeds) >= 3
    assert {"low_rank", "kronecker", "tensor_train", "monarch", "btt"} <= set(demo.structures)
    assert any(s.startswith("(") for s in demo.structures)  # a theta no named structure is
    assert demo.match_compute and demo.train.get("log_points")
    for name in ("moe", "lm"):
        assert load_spec(name).match_compute and len(load_spec(name).seeds) >= 3
    tiny = load_spec("tiny")
    assert tiny.structures == ["dense", "btt"] and len(tiny.configs()) == 4


def test_moe_structures_pass_through():
    from einsearch.search.store import structure_meta
    from einsearch.search.train import MOE_STRUCTURES

    spec = SweepSpec(task="charlm", structures=list(MOE_STRUCTURES), widths=[64])
    assert spec.structures == ["dense", *MOE_STRUCTURES]
    assert [c.structure for c in spec.configs()] == spec.structures
    assert structure_meta(MOE_STRUCTURES[0]) == {"theta": None, "omega": None, "psi": None,
                                                 "nu": None}


def test_unknown_preset_lists_known_ones():
    with pytest.raises(ValueError, match=r"unknown preset 'nope'.*demo.*tiny"):
        load_spec("nope")
    with pytest.raises(FileNotFoundError):
        load_spec("missing/spec.yaml")


@pytest.mark.parametrize("text, match", [
    ("task: regression\nstructures: [dense]\nwidth: [32]\n", "unknown key 'width'"),
    ("structures: [dense]\nsteps: 5\n", "unknown key 'steps'.*under 'train:'"),
    ("structures: [dense]\ntrain: {stepz: 5}\n", "stepz"),
    ("structures: [dense]\ntrain: {width: 5}\n", "'widths' at the top level"),
    ("structures: [dense, not_a_structure]\n", "not_a_structure"),
    ("structures: [dense]\nwidths: [0]\n", "widths"),
    ("- just\n- a list\n", "mapping"),
])
def test_bad_spec_files_are_named(tmp_path, fake_config, text, match):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(ValueError, match=match):
        load_spec(bad)


def test_unknown_override_is_named(fake_config):
    with pytest.raises(ValueError, match="unknown override 'colour'"):
        load_spec("tiny", colour="red")


def test_overrides_and_files(tmp_path, fake_config):
    spec = load_spec("tiny", structures=["monarch", "low_rank(0.5)"], widths=[8],
                     steps=3, jobs=None, task=None)
    assert spec.structures == ["dense", "monarch", "low_rank(0.5)"]  # dense added first
    assert spec.widths == [8] and spec.train["steps"] == 3 and spec.task == "regression"
    assert spec.train["batch_size"] == 32  # the rest of the preset is kept
    cfgs = spec.configs()
    assert len(cfgs) == 3 and {c.steps for c in cfgs} == {3}
    assert {c.structure for c in cfgs} == {"dense", "monarch", "low_rank(0.5)"}
    toml = tmp_path / "s.toml"
    toml.write_text('task = "regression"\nstructures = ["dense", "(0.5|0|0.5|0|0.5|0.5|0.25)"]\n'
                    "widths = [16, 32]\nseeds = [0, 1]\nlrs = [1e-3, 3e-3]\n"
                    "[train]\nsteps = 7\n")
    spec = load_spec(toml)
    assert len(spec.configs()) == 2 * 2 * 2 * 2
    assert len({c.run_id() for c in spec.configs()}) == 16
    # include_dense: False keeps the list as given
    assert SweepSpec(structures=["btt"], include_dense=False).structures == ["btt"]
    # a dense given as theta text is recognised
    assert SweepSpec(structures=["(1|0|0|1|0|0|0)", "btt"]).structures[0] == "(1|0|0|1|0|0|0)"


# ------------------------------------------------------------------------------------------
# running with a fake trainer


def test_sweep_records_reports_and_resumes(tmp_path, fake_config):
    spec = spec_of(structures=["dense", "btt", "low_rank"])
    out = run_sweep(spec, tmp_path, show_progress=False, train_fn=fake_train, n_bootstrap=10)
    assert (out.total, out.skipped, out.finished, out.failed) == (6, 0, 6, 0) and out.ok
    with ResultStore(tmp_path / "results.sqlite") as st:
        assert st.count() == 6 and len(st.finished_run_ids()) == 6
        first = {r.run_id: r.finished_at for r in st.runs()}
    for name in ("summary.json", "report.md", "loss_vs_compute.png", "multipliers.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert json.loads((tmp_path / "summary.json").read_text())["structures"][0]["name"] == "dense"
    # spec.yaml is the resolved spec and loads back to the same spec
    assert load_spec(tmp_path / "spec.yaml") == spec
    text = sweep_mod.format_outcome(out)
    assert "6 finished" in text and "report.md" in text and "btt" in text
    again = run_sweep(spec, tmp_path, show_progress=False, train_fn=fake_train, n_bootstrap=10)
    assert (again.skipped, again.finished) == (6, 0)
    with ResultStore(tmp_path / "results.sqlite") as st:
        assert {r.run_id: r.finished_at for r in st.runs()} == first  # nothing rewritten


def test_a_sweep_reports_its_own_runs_in_a_store_that_holds_others(tmp_path, fake_config):
    """A store copied in to reuse runs may hold runs of the same structure, width, seed and lr
    with other settings; the sweep's report covers the sweep's runs, the store keeps both."""
    from einsearch.search.report import write_report

    run_sweep(spec_of(), tmp_path, show_progress=False, train_fn=fake_train, report=False)
    longer = spec_of(train={**FAST, "steps": 30})
    out = run_sweep(longer, tmp_path, show_progress=False, train_fn=fake_train, n_bootstrap=5)
    assert out.report_error is None and out.finished == 4
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [s["runs"] for s in summary["structures"]] == [2, 2]
    with ResultStore(tmp_path / "results.sqlite") as st:
        assert st.count() == 8
    with pytest.raises(ValueError, match="the store mixes sweeps"):
        write_report(tmp_path, n_bootstrap=5)  # the whole store: two runs per key


def test_exception_between_runs_then_resume(tmp_path, fake_config):
    calls = []

    def flaky(config, options=None, progress=None):
        if len(calls) == 3:
            raise KeyboardInterrupt  # the user presses Ctrl-C during the 4th run
        calls.append(config.run_id())
        return fake_train(config, options, progress)

    spec = spec_of(structures=["dense", "btt", "monarch"])
    with pytest.raises(KeyboardInterrupt):
        run_sweep(spec, tmp_path, show_progress=False, train_fn=flaky)
    with ResultStore(tmp_path / "results.sqlite") as st:
        assert st.finished_run_ids() == set(calls)
    out = run_sweep(spec, tmp_path, show_progress=False, train_fn=fake_train, n_bootstrap=5)
    assert (out.skipped, out.finished) == (3, 3)
    with ResultStore(tmp_path / "results.sqlite") as st:
        ids = [r.run_id for r in st.runs()]
        assert len(ids) == len(set(ids)) == 6
        assert set(ids) == {c.run_id() for c in spec.configs()}


def test_failures_are_recorded_and_retried(tmp_path, fake_config):
    spec = spec_of(train=dict(FAST, data="boom-btt"))
    out = run_sweep(spec, tmp_path, show_progress=False, train_fn=fake_train, n_bootstrap=5)
    assert (out.finished, out.failed) == (2, 2) and not out.ok
    assert all("synthetic failure" in err for _, _, err in out.failures)
    with ResultStore(tmp_path / "results.sqlite") as st:
        failed = st.runs(status="failed")
        assert len(failed) == 2 and "RuntimeError: synthetic failure" in failed[0].error
    assert out.summary is not None  # the report still covers what finished
    out = run_sweep(spec, tmp_path, show_progress=False, train_fn=fake_train, n_bootstrap=5)
    assert (out.skipped, out.failed) == (2, 2)  # failed runs are tried again


def test_diverged_runs_are_not_retried(tmp_path, fake_config):
    spec = spec_of(train=dict(FAST, data="diverge"))
    out = run_sweep(spec, tmp_path, show_progress=False, train_fn=fake_train, n_bootstrap=5)
    assert (out.finished, out.diverged) == (2, 2)
    out = run_sweep(spec, tmp_path, show_progress=False, train_fn=fake_train, n_bootstrap=5)
    assert out.skipped == 4
    btt = next(r for r in out.summary["structures"] if r["name"] == "btt")
    assert btt["diverged_runs"] == 2


def test_no_dense_means_report_error_not_crash(tmp_path, fake_config):
    spec = spec_of(structures=["btt"], include_dense=False, widths=[16])
    out = run_sweep(spec, tmp_path, show_progress=False, train_fn=fake_train)
    assert out.finished == 1 and "no dense runs" in out.report_error and not out.ok


_KILLED = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    import einsearch.search.spec as sp
    import einsearch.search.sweep as sw
    from fake_runs import FakeTrainConfig, fake_train
    sp._train_config_cls = lambda: FakeTrainConfig
    spec = sp.SweepSpec(structures=["dense", "btt", "monarch", "kronecker"], widths=[16, 32],
                        train={{"steps": 20, "warmup_steps": 0, "log_every": 1,
                               "data": "sleep:0.25"}})
    sw.run_sweep(spec, {out!r}, show_progress=False, train_fn=fake_train, report=False)
""")


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_resume_after_sigkill(tmp_path, fake_config):
    code = _KILLED.format(tests=str(TESTS), out=str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-c", code])
    db = tmp_path / "results.sqlite"
    deadline = time.time() + 60
    n = 0
    while time.time() < deadline and proc.poll() is None:
        if db.exists():
            with ResultStore(db) as st:
                n = st.count()
            if n >= 3:
                break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with ResultStore(db) as st:
        before = st.finished_run_ids()
    assert 3 <= len(before) < 8
    spec = SweepSpec(structures=["dense", "btt", "monarch", "kronecker"], widths=[16, 32],
                     train={"steps": 20, "warmup_steps": 0, "log_every": 1, "data": "sleep:0.25"})
    out = run_sweep(spec, tmp_path, show_progress=False, train_fn=fake_train, report=False)
    assert out.skipped == len(before) and out.finished == 8 - len(before)
    with ResultStore(db) as st:
        rows = st.runs()
        assert len(rows) == 8 and len({r.run_id for r in rows}) == 8
        assert st.finished_run_ids() == {c.run_id() for c in spec.configs()}
        assert all(len(st.points(r.run_id)) == 20 for r in rows)


def test_parallel_workers_failures_and_dead_worker(tmp_path, fake_config):
    spec = spec_of(structures=["dense", "btt", "low_rank"], widths=[16],
                   train=dict(FAST, data="die"))
    out = run_sweep(spec, tmp_path, LocalExecutor(2), show_progress=False, train_fn=fake_train,
                    n_bootstrap=5)
    # btt kills its worker (and the pool with it): the runs in flight are retried one at a
    # time, so only btt is recorded as failed and the innocent runs finish
    assert (out.finished, out.failed) == (2, 1)
    assert out.failures[0][0] == "btt" and "worker process died" in out.failures[0][2]
    with ResultStore(tmp_path / "results.sqlite") as st:
        assert len(st.finished_run_ids()) == 2 and st.count() == 3
        assert st.runs(status="failed")[0].structure == "btt"
    assert out.summary is not None


def test_parallel_workers_write_through_the_parent(tmp_path, fake_config):
    spec = spec_of(structures=["dense", "btt"], widths=[16, 32, 64])
    out = run_sweep(spec, tmp_path, LocalExecutor(2), show_progress=False, train_fn=fake_train,
                    n_bootstrap=5)
    assert (out.finished, out.failed) == (6, 0)
    with ResultStore(tmp_path / "results.sqlite") as st:
        assert st.finished_run_ids() == {c.run_id() for c in spec.configs()}


def test_progress_bar_shows_runs_and_loss(tmp_path, fake_config, capsys):
    run_sweep(spec_of(widths=[16]), tmp_path, show_progress=True, train_fn=fake_train,
              report=False)
    err = capsys.readouterr().err
    assert "2/2" in err and "loss=" in err


# ------------------------------------------------------------------------------------------
# end to end with the real trainer


@pytest.mark.slow
def test_tiny_sweep_end_to_end(tmp_path):
    spec = load_spec("tiny")
    out = run_sweep(spec, tmp_path, show_progress=False, n_bootstrap=20)
    assert out.total == 4 and out.failed == 0, out.failures
    assert out.finished + out.diverged == 4 and out.report_error is None
    summary = json.loads((tmp_path / "summary.json").read_text())
    names = [r["name"] for r in summary["structures"]]
    assert names[0] == "dense" and set(names) == {"dense", "btt"}
    with ResultStore(tmp_path / "results.sqlite") as st:
        for r in st.runs():
            pts = st.points(r.run_id)
            assert pts and all(b.compute > a.compute for a, b in zip(pts, pts[1:]))
            assert r.params > 0 and r.flops_per_token > 0
    assert yaml.safe_load((tmp_path / "spec.yaml").read_text())["structures"] == ["dense", "btt"]
    again = run_sweep(spec, tmp_path, show_progress=False, n_bootstrap=20)
    assert again.skipped == 4 and again.finished == 0
