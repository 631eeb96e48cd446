"""The SQLite results store: round trip, idempotence, statuses, crash safety, bad files."""

from __future__ import annotations

import math
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from einsearch.search.store import SCHEMA_VERSION, ResultStore, StoreError

sys.path.insert(0, str(Path(__file__).parent))
from fake_runs import FakeConfig, make_result  # noqa: E402

META = {"theta": "(1|0|0|1|0|0|0)", "omega": 0.0, "psi": 1.0, "nu": 1.0}


def test_round_trip(tmp_path):
    r = make_result("dense", 64, steps=12)
    with ResultStore(tmp_path / "r.sqlite") as st:
        st.record(r, META)
        (row,) = st.runs()
        assert row.run_id == r.config.run_id()
        assert (row.task, row.structure, row.width, row.seed, row.lr) == (
            "regression", "dense", 64, 0, 3e-3)
        assert row.theta == META["theta"] and row.psi == 1.0
        assert row.params == r.params and row.flops_per_token == r.flops_per_token
        assert row.status == "finished" and row.final_eval_loss == pytest.approx(r.final_eval_loss)
        assert row.config["structure"] == "dense" and row.config["steps"] == 12
        pts = st.points(r.config.run_id())
        assert [p.step for p in pts] == list(range(1, 13))
        assert pts[3].compute == r.points[3].compute
        assert pts[3].eval_loss is None and pts[4].eval_loss == pytest.approx(r.points[4].eval_loss)
        assert st.finished_run_ids() == {r.config.run_id()}
        assert st.tasks() == ["regression"]
        [(row2, pts2)] = st.load()
        assert row2 == row and pts2 == pts


def test_meta_defaults_to_theta_and_taxonomy(tmp_path):
    with ResultStore(tmp_path / "r.sqlite") as st:
        st.record(make_result("kronecker", 32, steps=3))
        (row,) = st.runs()
    assert row.theta == "(0.5|0.5|0|0.5|0.5|0|0)"
    assert (row.omega, row.psi, row.nu) == (0.5, 1.0, 0.5)


def test_rerecord_is_idempotent_and_replaces_points(tmp_path):
    path = tmp_path / "r.sqlite"
    with ResultStore(path) as st:
        st.record(make_result("dense", 64, steps=10), META)
        st.record(make_result("dense", 64, steps=10), META)
        run_id = make_result("dense", 64, steps=10).config.run_id()
        assert st.count() == 1 and len(st.points(run_id)) == 10
        shorter = make_result("dense", 64, steps=10)
        shorter.points = shorter.points[:4]
        st.record(shorter, META)
        assert st.count() == 1 and len(st.points(run_id)) == 4
    with ResultStore(path) as st:  # reopen: same content
        assert st.count() == 1 and len(st.points(run_id)) == 4


def test_diverged_is_final_failed_is_retried(tmp_path):
    with ResultStore(tmp_path / "r.sqlite") as st:
        div = make_result("btt", 128, steps=10, diverge_at=6)
        st.record(div, META)
        boom = FakeConfig(structure="dense", width=256)
        st.record_failure(boom, "RuntimeError: out of memory", META)
        rows = {r.status: r for r in st.runs()}
        assert rows["diverged"].final_eval_loss is None
        # NaN losses are stored as NULL, never as NaN
        pts = st.points(div.config.run_id())
        assert pts[-1].train_loss is None and pts[0].train_loss is not None
        assert rows["failed"].error == "RuntimeError: out of memory"
        assert st.points(boom.run_id()) == []
        assert st.finished_run_ids() == {div.config.run_id()}
        assert [r.status for r in st.runs(status=["failed"])] == ["failed"]
        # a retried failed run that finishes replaces the failure
        ok = make_result("dense", 256, steps=5)
        ok.config = boom
        st.record(ok, META)
        assert st.count() == 2
        assert st.finished_run_ids() == {div.config.run_id(), boom.run_id()}
        assert st.run(boom.run_id()).error is None


def test_unknown_status_rejected(tmp_path):
    r = make_result("dense", 32, steps=2)
    r.status = "weird"
    with ResultStore(tmp_path / "r.sqlite") as st, pytest.raises(ValueError, match="status"):
        st.record(r, META)


def test_wal_and_schema_version(tmp_path):
    path = tmp_path / "r.sqlite"
    with ResultStore(path) as st:
        assert st.schema_version == SCHEMA_VERSION
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_not_a_store(tmp_path):
    text = tmp_path / "notes.sqlite"
    text.write_text("hello, this is not a database at all " * 20)
    with pytest.raises(StoreError, match="not an einsearch results store"):
        ResultStore(text)
    other = tmp_path / "other.sqlite"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE customers (id INTEGER)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="customers"):
        ResultStore(other)


def test_newer_schema_rejected(tmp_path):
    path = tmp_path / "r.sqlite"
    ResultStore(path).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE einsearch_meta SET value='99' WHERE key='schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="newer"):
        ResultStore(path)


def test_empty_file_is_adopted(tmp_path):
    path = tmp_path / "r.sqlite"
    path.touch()
    with ResultStore(path) as st:
        assert st.count() == 0


_WRITER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from fake_runs import make_result
    from einsearch.search.store import ResultStore
    st = ResultStore({db!r})
    print("ready", flush=True)
    i = 0
    while True:
        st.record(make_result("dense", 8 + i, steps=300), {{"theta": "t"}})
        i += 1
""")


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_kill_never_leaves_a_half_written_run(tmp_path):
    """SIGKILL a writer at arbitrary moments: every run present has all of its points."""
    db = tmp_path / "r.sqlite"
    code = _WRITER.format(tests=str(Path(__file__).parent), db=str(db))
    for delay in (0.3, 0.45, 0.6):
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        with ResultStore(db) as st:
            runs = st.runs()
            for r in runs:
                pts = st.points(r.run_id)
                assert len(pts) == 300, f"run {r.width} has {len(pts)} points"
            assert len({r.run_id for r in runs}) == len(runs)
    with ResultStore(db) as st:
        assert st.count() >= 1


def test_nan_meta_is_null(tmp_path):
    with ResultStore(tmp_path / "r.sqlite") as st:
        st.record(make_result("dense", 32, steps=2), {"theta": "x", "omega": math.nan})
        assert st.runs()[0].omega is None
