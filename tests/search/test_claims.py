"""Several drivers on one output folder: every run trained exactly once, dead drivers' claims
taken over."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from einsearch.search.store import ResultStore

TESTS = Path(__file__).parent

_DRIVER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    import einsearch.search.spec as sp
    import einsearch.search.sweep as sw
    from fake_runs import FakeTrainConfig, counting_train
    sp._train_config_cls = lambda: FakeTrainConfig
    spec = sp.SweepSpec(structures=["dense", "btt", "monarch", "kronecker"], widths=[16, 32, 48],
                        train={{"steps": 20, "warmup_steps": 0, "log_every": 1, "data": "count:{log}"}})
    out = sw.run_sweep(spec, {out!r}, show_progress=False, train_fn=counting_train, report=False)
    print("finished", out.finished, "elsewhere", out.elsewhere, "skipped", out.skipped)
""")


def test_two_drivers_a_second_apart_train_every_run_exactly_once(tmp_path, fake_config):
    log = tmp_path / "trained.log"
    code = _DRIVER.format(tests=str(TESTS), log=str(log), out=str(tmp_path / "out"))
    first = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    time.sleep(1.0)
    second = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    outs = [p.communicate(timeout=120)[0] for p in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, outs
    trained = log.read_text().split()
    assert len(trained) == 12 and len(set(trained)) == 12  # 12 runs, each trained once
    finished = [int(o.split()[1]) for o in outs]
    assert sum(finished) == 12 and min(finished) > 0, outs  # both drivers did part of the work
    with ResultStore(tmp_path / "out" / "results.sqlite") as st:
        assert len(st.finished_run_ids()) == 12 and st.claims() == {}


def test_claims_of_a_dead_or_silent_driver_are_taken_over(tmp_path):
    with ResultStore(tmp_path / "results.sqlite") as st:
        host = socket.gethostname()
        assert st.claim("a", f"{host}:{2**22 + 1}:x", ttl_s=60)       # a process that does not exist
        assert st.claim("a", "me", ttl_s=60)                          # ... so its claim is free
        assert st.claim("b", "elsewhere:1:y", ttl_s=60)               # alive as far as we can tell
        assert not st.claim("b", "me", ttl_s=60)
        st._conn.execute("UPDATE claims SET heartbeat = heartbeat - 120 WHERE run_id = 'b'")
        assert st.claim("b", "me", ttl_s=60)                          # silent for longer than the TTL
        st.release("me")
        assert st.claims() == {}
