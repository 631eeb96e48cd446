"""einsearch explore: the theta parametrisation, canonical duplicates, resume after an
interruption without retraining, bad input before anything is written, and one small real run.
Most tests train with a fake trainer whose multiplier depends on theta."""

from __future__ import annotations

import json
import math
import socket
import sys
from pathlib import Path

import pytest

from einsearch import Theta
from einsearch.search.explore import (
    explore,
    load_explore_spec,
    named_as,
    params_from_theta,
    theta_from_params,
)
from einsearch.search.store import ResultStore

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))
from fake_runs import make_result  # noqa: E402

SPEC = """\
task: regression
widths: [16, 32]
seeds: [0]
lrs: [0.003]
train: {steps: 40, warmup_steps: 0, log_every: 1, eval_batches: 1}
grid: 4
min_widths: 1
loss: train
n_bootstrap: 0
n_startup_trials: 2
"""


def fake_multiplier(structure: str) -> float:
    """A smooth landscape over theta: best near gamma = phi = 1/2 (the BTT corner), rank costs."""
    if structure == "dense":
        return 1.0
    t = Theta.parse(structure)
    return 2.0 ** (1.5 - 2 * abs(t.gamma - 0.5) - 2 * abs(t.phi - 0.5) - t.rho)


def theta_train(config, options=None, progress=None):
    r = make_result(config.structure, config.width, config.seed, steps=min(config.steps, 40),
                    multiplier=fake_multiplier(config.structure), task=config.task, lr=config.lr)
    r.config = config
    return r


@pytest.fixture
def spec_file(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC)
    return path


def _json(out: Path) -> dict:
    """explore.json without the WAITING trials (enqueued references not yet run)."""
    data = json.loads((out / "explore.json").read_text())
    data["trials"] = [r for r in data["trials"] if r["state"] != "WAITING"]
    return data


# ------------------------------------------------------------------------------------------
# the space


def test_params_cover_the_simplex_and_invert(named_theta):
    t = theta_from_params(params_from_theta(named_theta), grid=1000)
    assert t.as_tuple() == pytest.approx(named_theta.as_tuple(), abs=1e-3)
    # sorted uniforms: swapping the pair gives the same point
    p = {"in_1": 0.75, "in_2": 0.25, "out_1": 1.0, "out_2": 0.0, "rho": 0.5}
    assert str(theta_from_params(p, 4)) == "(0.25|0.5|0.25|0|1|0|0.5)"


def test_named_as_folds_equivalent_thetas():
    assert named_as(Theta.monarch()) == "monarch"
    assert named_as(Theta.monarch().swapped()) == "monarch"
    assert named_as(Theta.btt(0.125)) == "btt(0.125)"
    assert named_as(Theta.kronecker()) == "kronecker"
    assert named_as(Theta.dense()) == "dense"
    assert named_as(Theta.parse("(0.25|0.5|0.25|0.25|0.75|0|0)")) is None


def test_presets_load():
    for name in ("tiny", "regression", "charlm"):
        spec, key = load_explore_spec(name)
        assert key == name and spec.configs(["dense"])
    assert load_explore_spec("explore_tiny")[1] == "tiny"


@pytest.mark.parametrize("text, match", [
    ("grid: 3", r"grid: exponents k/3 must be exact"),
    ("grid: 0", r"grid must be an integer in \[1, 1000\]"),
    ("degenerate: keep", r"degenerate must be one of"),
    ("references: [dense]", r"dense is the baseline"),
    ("references: [nope]", r"unknown structure 'nope'"),
    ("widths: [0]", r"widths"),
    ("min_widths: 3", r"min_widths must be an integer in \[1, 2\]"),
    ("colour: red", r"unknown key 'colour'"),
])
def test_bad_spec_values_are_named(tmp_path, text, match):
    path = tmp_path / "bad.yaml"
    path.write_text(SPEC + text + "\n")
    with pytest.raises(ValueError, match=match):
        load_explore_spec(path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("kwargs, match", [
    (dict(trials=0), r"trials must be an integer"),
    (dict(trials=2, executor="spark"), r"unknown executor 'spark'"),
    (dict(trials=2, storage="sqlite:////nonexistent/dir/x.db"),
     r"cannot open the Optuna storage"),
    (dict(trials=2, storage="not a url"), r"storage must be an Optuna storage URL"),
    (dict(trials=2, timeout=-1), r"timeout must be a positive number"),
    (dict(trials=2, objective="speed"), r"objective must be one of"),
    (dict(trials=2, executor="ray", address="PORT"), r"unreachable"),
])
def test_bad_input_fails_before_anything_is_written(tmp_path, spec_file, kwargs, match):
    if match == "unreachable":
        kwargs["address"], match = f"127.0.0.1:{_free_port()}", "cannot reach a Ray cluster"
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=match):
        explore(spec_file, out, train_fn=theta_train, show_progress=False, **kwargs)
    assert not out.exists()


# ------------------------------------------------------------------------------------------
# the search


def test_explore_resumes_without_retraining(tmp_path, spec_file):
    out = tmp_path / "out"
    first = explore(spec_file, out, trials=3, train_fn=theta_train, show_progress=False)
    rows = _json(out)["trials"]
    assert len(rows) == 3 and first.trials_total == 3
    # the named structures are the first trials; dense's reference runs are in the store
    assert [r["named"] for r in rows] == ["monarch", "low_rank(0.5)", "kronecker"]
    assert all(r["state"] in ("COMPLETE", "PRUNED") for r in rows)
    with ResultStore(out / "results.sqlite") as st:
        before = {r.run_id: r.finished_at for r in st.runs()}
        assert {r.structure for r in st.runs()} >= {"dense", "(0.5|0|0.5|0|0.5|0.5|0)"}
    assert first.runs_trained == len(before)

    again = explore(spec_file, out, trials=5, train_fn=theta_train, show_progress=False)
    rows = _json(out)["trials"]
    assert len(rows) == 5 and again.trials_run == 2
    assert [r["number"] for r in rows] == list(range(5))
    with ResultStore(out / "results.sqlite") as st:
        after = {r.run_id: r.finished_at for r in st.runs()}
    # no finished run trained again: old rows untouched, only the new trials' runs added
    assert {k: after[k] for k in before} == before
    assert again.runs_trained == len(after) - len(before)
    done = explore(spec_file, out, trials=5, train_fn=theta_train, show_progress=False)
    assert done.trials_run == 0 and done.runs_trained == 0
    md = (out / "explore.md").read_text()
    assert "## Best thetas" in md and "omega" in md
    assert (out / "explore_objective.png").stat().st_size > 0
    assert (out / "explore_taxonomy.png").stat().st_size > 0


def test_a_killed_drivers_trials_are_requeued(tmp_path, spec_file):
    import optuna

    spec_file.write_text(spec_file.read_text() + "references: [monarch]\n")
    out = tmp_path / "out"
    explore(spec_file, out, trials=1, train_fn=theta_train, show_progress=False)
    storage = optuna.storages.RDBStorage(f"sqlite:///{out / 'explore.db'}")
    study = optuna.load_study(study_name="einsearch-explore-spec", storage=storage)
    # a trial a dead process left RUNNING (pid 2**22 + 1 does not exist on Linux)
    trial = study.ask()
    trial.set_user_attr("driver", f"{socket.gethostname()}:{2**22 + 1}")
    trial.set_user_attr("structure", "btt")
    explore(spec_file, out, trials=3, train_fn=theta_train, show_progress=False)
    rows = {r["number"]: r for r in _json(out)["trials"]}
    assert rows[1]["state"] == "FAIL"
    retry = [r for r in rows.values() if r.get("retry_of") == 1]
    assert len(retry) == 1 and retry[0]["state"] in ("COMPLETE", "PRUNED")
    assert retry[0]["named"] == "btt(0.25)"


def test_canonical_duplicates_and_degenerate_thetas_cost_no_training(tmp_path, spec_file):
    text = spec_file.read_text() + "references: [monarch, \"(0|0.5|0.5|0.5|0|0.5|0)\", " \
                                   "\"(1|0|0|0|1|0|0.75)\"]\n"
    spec_file.write_text(text)
    out = tmp_path / "out"
    res = explore(spec_file, out, trials=3, train_fn=theta_train, show_progress=False)
    rows = _json(out)["trials"]
    # trial 1 is monarch with the cores swapped: same canonical theta, same value, no runs
    assert rows[1]["canonical_theta"] == rows[0]["canonical_theta"]
    assert rows[1]["duplicate_of"] == 0 and rows[1]["value"] == rows[0]["value"]
    assert rows[2]["degenerate"] is False and rows[2]["named"] == "low_rank(0.75)"
    with ResultStore(out / "results.sqlite") as st:
        structures = {r.structure for r in st.runs()}
    assert structures == {"dense", rows[0]["canonical_theta"], rows[2]["canonical_theta"]}
    assert res.runs_trained == 2 * 3


def test_degenerate_thetas_are_pruned_untrained(tmp_path, spec_file):
    spec_file.write_text(spec_file.read_text()
                         + "references: [\"(0.5|0.25|0.25|0.25|0.25|0.5|0.75)\"]\n")
    out = tmp_path / "out"
    res = explore(spec_file, out, trials=1, train_fn=theta_train, show_progress=False)
    (row,) = _json(out)["trials"]
    assert row["degenerate"] is True and row["state"] == "PRUNED"
    assert row["pruned_because"].startswith("degenerate")
    assert res.runs_trained == 2  # dense's reference runs only


def test_pareto_objective(tmp_path, spec_file):
    out = tmp_path / "out"
    explore(spec_file, out, trials=3, train_fn=theta_train, show_progress=False,
            objective="multiplier+params")
    data = _json(out)
    assert data["directions"] == ["maximize", "minimize"] and data["pareto_front"]
    assert all(len(r["values"]) == 2 for r in data["trials"] if r["state"] == "COMPLETE")
    assert "cannot prune" in (out / "explore.md").read_text()


@pytest.mark.slow
def test_tiny_preset_real_training(tmp_path):
    out = tmp_path / "out"
    res = explore("tiny", out, trials=2, show_progress=False)
    rows = _json(out)["trials"]
    assert len(rows) == 2 and res.runs_failed == 0
    with ResultStore(out / "results.sqlite") as st:
        assert {r.status for r in st.runs()} <= {"finished", "diverged"}
        assert len(st.runs(structure="dense")) == 2
    assert math.isfinite(rows[0]["value"] or 1.0)


# ------------------------------------------------------------------------------------------
# compute-matched widths


THETA = "(0.5|0.25|0.25|0.25|0.5|0.25|0)"


@pytest.mark.parametrize("structure", ["monarch", "low_rank", "btt", THETA])
def test_trial_widths_are_the_sweeps_compute_matching(structure):
    """A trial's theta trains, per dense width, at the width the sweep's match_compute picks
    for it against the same dense widths; every run shares dense's muP base and run ids."""
    from einsearch import resolve_structure
    from einsearch.search.explore import ExploreSpec
    from einsearch.search.spec import SweepSpec

    key = str(resolve_structure(structure).canonical())
    train = {"steps": 40, "warmup_steps": 0, "log_every": 1, "eval_batches": 1}
    spec = ExploreSpec(widths=[32, 16, 48], seeds=[0, 1], lrs=[0.01], train=train)
    sweep = SweepSpec(structures=["dense", key], widths=[16, 32, 48], seeds=[0, 1], lrs=[0.01],
                      train=train, match_compute=True)
    assert spec.widths == [16, 32, 48]
    assert spec.widths_for(key) == sweep.matched_widths(key)
    assert sorted(set(spec.widths_for(key))) == sweep.widths_for(key)
    assert max(spec.widths_for(key)) > 48  # a structured layer is cheaper per width
    # the same runs, ids included, as the sweep that trains dense and the theta together
    ids = {c.run_id() for c in spec.configs(["dense"]) + spec.configs([key])}
    assert ids == {c.run_id() for c in sweep.configs()}
    assert {c.base_width for c in spec.configs([key])} == {16}
    # the pruning steps go in dense's width order: step i = the theta at its i-th width
    for i, w in enumerate(spec.widths_for(key)):
        assert {c.width for c in spec.configs([key], step=i)} == {w}
    assert {c.width for c in spec.configs(["dense"], step=1)} == {32}
    # without matching, the theta trains at dense's widths
    off = ExploreSpec(widths=[16, 32, 48], seeds=[0], lrs=[0.01], train=train,
                      match_compute=False)
    assert off.widths_for(key) == [16, 32, 48]
    assert {c.base_width for c in off.configs([key], step=2)} == {16}


def test_sweep_without_dense_matches_against_dense_widths():
    from einsearch.search.spec import SweepSpec

    alone = SweepSpec(structures=["monarch"], widths=[16, 32], match_compute=True,
                      include_dense=False)
    with_dense = SweepSpec(structures=["dense", "monarch"], widths=[16, 32], match_compute=True)
    assert alone.structures == ["monarch"]
    assert alone.widths_for("monarch") == with_dense.widths_for("monarch") != [16, 32]
    assert alone.base_width() == with_dense.base_width() == 16


TRAINED: list = []


def recording_train(config, options=None, progress=None):
    TRAINED.append(config)
    return theta_train(config, progress)


def test_dense_reference_runs_are_shared_across_trials(tmp_path, spec_file):
    spec_file.write_text(spec_file.read_text()
                         + "references: [monarch, btt, low_rank, tensor_train]\n")
    spec, _ = load_explore_spec(spec_file)
    out = tmp_path / "out"
    TRAINED.clear()
    explore(spec_file, out, trials=3, train_fn=recording_train, show_progress=False)
    ids = [c.run_id() for c in TRAINED]
    assert len(ids) == len(set(ids))  # nothing trained twice
    dense = [c for c in TRAINED if c.structure == "dense"]
    assert sorted(c.width for c in dense) == [16, 32]  # once per study, not per trial
    assert {c.run_id() for c in dense} == {c.run_id() for c in spec.configs(["dense"])}
    assert {c.base_width for c in TRAINED} == {16}
    rows = _json(out)["trials"]
    assert len(rows) == 3 and all(r["state"] in ("COMPLETE", "PRUNED") for r in rows)
    for r in rows:  # each theta at its compute-matched widths, not dense's
        mine = sorted(c.width for c in TRAINED if c.structure == r["canonical_theta"])
        assert mine and set(mine) <= set(spec.widths_for(r["canonical_theta"]))
    assert any(r["value"] is not None for r in rows)
    TRAINED.clear()
    explore(spec_file, out, trials=4, train_fn=recording_train, show_progress=False)
    # the 4th trial (tensor_train) trains its own runs only: dense's come from the store
    assert TRAINED and {c.structure for c in TRAINED} == {_json(out)["trials"][3]["canonical_theta"]}


@pytest.mark.parametrize("value", ["maybe", "1", "null", "[true]"])
def test_bad_match_compute_fails_before_anything_is_written(tmp_path, spec_file, value):
    spec_file.write_text(spec_file.read_text() + f"match_compute: {value}\n")
    with pytest.raises(ValueError, match=r"match_compute must be true or false, got"):
        load_explore_spec(spec_file)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"match_compute must be true or false"):
        explore(spec_file, out, trials=2, train_fn=theta_train, show_progress=False)
    assert not out.exists()
