"""Stores written by an earlier release keep working: same run ids, resumed with nothing retrained.

``data/store_v1`` was written by einsearch 0.2.0 as it landed before the run-identity split (store
schema 1, run ids that hash every TrainConfig field of that release): ``run_sweep`` of the spec
beside it, 6 regression runs.
"""

from __future__ import annotations

import dataclasses
import shutil
import sqlite3
from pathlib import Path

from einsearch.search.config import FIELDS_SINCE_V1, TrainConfig
from einsearch.search.spec import load_spec
from einsearch.search.store import SCHEMA_VERSION, ResultStore
from einsearch.search.sweep import run_sweep

V1 = Path(__file__).parent / "data" / "store_v1"


def refuse_to_train(config, options=None, progress=None):
    raise AssertionError(f"run {config.run_id()} ({config.structure} w={config.width}) was retrained")


def _v1_ids() -> set[str]:
    with sqlite3.connect(V1 / "results.sqlite") as conn:
        assert conn.execute("SELECT value FROM einsearch_meta WHERE key='schema_version'").fetchone() == ("1",)
        return {r[0] for r in conn.execute("SELECT run_id FROM runs")}


def test_run_ids_of_the_first_release_are_unchanged():
    spec = load_spec(V1 / "spec.yaml")
    assert {c.run_id() for c in spec.configs()} == _v1_ids()


def test_a_field_added_since_enters_the_id_only_away_from_its_old_value():
    cfg = TrainConfig(steps=6)
    # at their old values, or (MoE settings of a dense run) unable to change the run: not hashed
    assert not set(FIELDS_SINCE_V1) & set(cfg.identity())
    assert dataclasses.replace(cfg, precision="bf16").run_id() != cfg.run_id()
    assert dataclasses.replace(cfg, precision="bf16").identity()["precision"] == "bf16"


def test_a_first_release_store_resumes_with_nothing_retrained(tmp_path):
    out = tmp_path / "out"
    shutil.copytree(V1, out)
    spec = load_spec(out / "spec.yaml")
    outcome = run_sweep(spec, out, show_progress=False, train_fn=refuse_to_train, report=False)
    assert (outcome.total, outcome.skipped, outcome.finished, outcome.failed) == (6, 6, 0, 0)
    with ResultStore(out / "results.sqlite") as store:  # migrated in place to the current schema
        assert store.schema_version == SCHEMA_VERSION == 2
        runs = store.runs()
        assert {r.run_id for r in runs} == _v1_ids() and all(r.status == "finished" for r in runs)
        assert {r.run_precision for r in runs} == {"fp32"} and {r.device for r in runs} == {None}
        points = store.all_points()
        assert all(len(points[r.run_id]) == 4 for r in runs)  # steps 0, 2, 4, 6
        assert all(p.elapsed_s is None for pts in points.values() for p in pts)
    outcome = run_sweep(spec, out, show_progress=False, train_fn=refuse_to_train, report=True)
    assert outcome.report_error is None and (out / "summary.json").is_file()
