"""The measured planner (einsearch.fast.planner): choices, cache on disk, modes, bounded cost."""

import json
import subprocess
import sys
import time

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from einsearch import EinsumLinear, Theta, fast, make_plan
from einsearch.fast.cache import SCHEMA, PlanCache, machine_info, machine_key
from einsearch.fast.planner import Planner, PlannerConfig


@pytest.fixture(autouse=True)
def _memory_only_global_planner():
    fast.configure(mode="measure", use_disk=False, budget_s=0.05, reps=1)
    yield
    fast.configure(mode="measure", use_disk=False)


def _planner(tmp_path, **kw) -> Planner:
    return Planner(PlannerConfig(cache_dir=tmp_path, **{"budget_s": 0.2, "reps": 2, **kw}))


def test_bucket_is_the_next_power_of_two():
    assert [fast.bucket(n) for n in (1, 2, 3, 512, 513, 2048)] == [1, 2, 4, 512, 1024, 2048]


def test_measure_times_every_candidate_and_writes_the_cache(tmp_path):
    plan = make_plan(Theta.monarch(), 64, 64)
    planner = _planner(tmp_path)
    rec = planner.plan(plan, tokens=100)
    assert rec.source == "measured" and rec.tokens == 128
    assert set(rec.times_ms) == {c.name for c in fast.candidates(plan)} >= {"layout", "block_transpose", "reference"}
    assert rec.choice == min(rec.times_ms, key=rec.times_ms.get)
    assert planner.timed_runs > 0 and rec.planning_s > 0
    data = json.loads(planner.cache.path.read_text())
    assert planner.cache.path.parent == tmp_path and planner.cache.path.name.startswith("planner-")
    assert data["schema"] == SCHEMA and data["key"] == planner.cache.key
    assert data["entries"][rec.entry]["choice"] == rec.choice
    assert planner.report()[-1]["choice"] == rec.choice


def test_a_new_process_reads_the_choice_instead_of_timing(tmp_path):
    plan = make_plan(Theta.btt(0.25), 64, 64)
    first = _planner(tmp_path).plan(plan, tokens=32)
    again = _planner(tmp_path)
    rec = again.plan(plan, tokens=32)
    assert rec.source == "disk" and rec.choice == first.choice and again.timed_runs == 0
    assert rec.planning_s == 0.0 and rec.times_ms == first.times_ms
    # another bucket, dtype or inference is another entry: measured
    assert again.plan(plan, tokens=64).source == "measured"
    assert again.plan(plan, tokens=32, dtype=torch.float64).source == "measured"
    assert again.plan(plan, tokens=32, train=False).source == "measured"


def test_cache_of_another_machine_or_schema_is_ignored(tmp_path):
    plan = make_plan(Theta.monarch(), 64, 64)
    planner = _planner(tmp_path)
    rec = planner.plan(plan, tokens=16)
    other = PlanCache(tmp_path, key="some-other-cpu")
    assert other.get(rec.entry) is None  # another machine key: another file
    # a file under our name but recorded for another key or schema is not trusted
    path = planner.cache.path
    data = json.loads(path.read_text())
    for bad in ({**data, "schema": SCHEMA + 1}, {**data, "key": "some-other-cpu"}):
        path.write_text(json.dumps(bad))
        assert PlanCache(tmp_path).get(rec.entry) is None
    path.write_text("{not json")
    assert PlanCache(tmp_path).get(rec.entry) is None
    assert _planner(tmp_path).plan(plan, tokens=16).source == "measured"  # and it is rewritten
    assert json.loads(path.read_text())["schema"] == SCHEMA


def test_machine_key_changes_with_torch_version_and_cpu():
    info = machine_info()
    assert machine_key(info) == machine_key(dict(info))
    assert machine_key({**info, "torch": "0.0.1"}) != machine_key(info)
    assert machine_key({**info, "flags_sha1": "0" * 12}) != machine_key(info)
    assert machine_key({**info, "cpu": "Some Other CPU"}) != machine_key(info)


def test_cache_dir_honours_override_then_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("EINSEARCH_CACHE_DIR", str(tmp_path / "a"))
    assert fast.cache_dir() == tmp_path / "a"
    monkeypatch.delenv("EINSEARCH_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert fast.cache_dir() == tmp_path / "xdg" / "einsearch"


def test_estimate_mode_does_no_timing(tmp_path, monkeypatch):
    monkeypatch.setenv("EINSEARCH_PLANNER", "estimate")
    planner = fast.configure(cache_dir=tmp_path)
    assert planner.config.mode == "estimate"

    def boom(*args, **kwargs):
        raise AssertionError("estimate mode must not time anything")

    monkeypatch.setattr(Planner, "_measure", boom)
    layer = EinsumLinear(64, 64, Theta.monarch())
    layer(torch.randn(8, 64)).sum().backward()
    rec = fast.planner_report()[-1]
    assert rec["mode"] == "estimate" and rec["choice"] == "layout" and rec["times_ms"] == {}
    assert planner.timed_runs == 0 and not list(tmp_path.iterdir())


def test_mode_is_read_once_not_per_forward(monkeypatch):
    monkeypatch.setenv("EINSEARCH_PLANNER", "estimate")
    planner = fast.configure(use_disk=False)
    monkeypatch.setenv("EINSEARCH_PLANNER", "measure")
    layer = EinsumLinear(32, 32, Theta.monarch())
    layer(torch.randn(4, 32))
    assert fast.get_planner() is planner and planner.config.mode == "estimate" and planner.timed_runs == 0


def test_bad_mode_is_rejected_with_its_name(monkeypatch):
    monkeypatch.setenv("EINSEARCH_PLANNER", "fastest")
    with pytest.raises(ValueError, match="EINSEARCH_PLANNER.*fastest"):
        fast.configure()
    with pytest.raises(ValueError, match="budget_s"):
        PlannerConfig(budget_s=0)
    with pytest.raises(ValueError, match="tokens"):
        Planner(PlannerConfig(use_disk=False)).plan(make_plan(Theta.monarch(), 16, 16), tokens=0)


def test_planning_time_is_bounded(tmp_path):
    plan = make_plan(Theta.btt(0.25), 512, 512)
    planner = _planner(tmp_path, budget_s=0.3, reps=50)
    rec = planner.plan(plan, tokens=512)
    one_pass_s = sum(rec.times_ms.values()) / 1e3
    assert 1 <= rec.rounds < 50
    assert rec.planning_s <= max(0.3, 0) + 3 * one_pass_s + 0.5


def test_forward_plans_once_per_key_then_only_looks_up():
    planner = fast.get_planner()
    layer = EinsumLinear(64, 64, Theta.monarch())
    layer(torch.randn(8, 64)).sum().backward()
    runs = planner.timed_runs
    n_records = len(planner.report())
    for n in (5, 8):  # the same bucket (8)
        layer(torch.randn(n, 64)).sum().backward()
    assert planner.timed_runs == runs and len(planner.report()) == n_records
    with torch.no_grad():  # inference is its own key
        layer(torch.randn(8, 64))
    assert len(planner.report()) == n_records + 1


def test_no_timing_under_flop_counter():
    """FlopCounterMode's count must be the layer's FLOPs, not those of the planner's timing runs."""
    planner = fast.get_planner()
    layer = EinsumLinear(128, 128, Theta.btt(0.25), bias=False)
    x = torch.randn(8, 128)
    with FlopCounterMode(display=False) as counter:
        layer(x)
    assert counter.get_total_flops() == layer.cost().flops * 8
    assert planner.timed_runs == 0 and planner.report() == []


def test_planning_leaves_the_global_rng_alone():
    plan = make_plan(Theta.monarch(), 64, 64)
    torch.manual_seed(3)
    want = torch.rand(3)
    torch.manual_seed(3)
    Planner(PlannerConfig(use_disk=False, budget_s=0.05, reps=1)).plan(plan, tokens=16)
    torch.testing.assert_close(torch.rand(3), want)


def test_import_does_not_touch_malloc(tmp_path):
    """Importing einsearch and running a planned forward/backward calls no mallopt, sets no env."""
    code = """
import ctypes, os
import torch  # torch itself loads its libraries through ctypes: patch after it
real = ctypes.CDLL
def refuse(name, *a, **k):
    if name is None or 'libc' in str(name):
        raise AssertionError('libc loaded through ctypes')
    return real(name, *a, **k)
ctypes.CDLL = refuse
env = dict(os.environ)
import einsearch
from einsearch import EinsumLinear, Theta
layer = EinsumLinear(64, 64, Theta.monarch())
layer(torch.randn(16, 64)).sum().backward()
assert not [k for k in os.environ if k.startswith('MALLOC_')] and dict(os.environ) == env
print('ok')
"""
    env = {"EINSEARCH_CACHE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_planner_report_lists_planning_cost():
    layer = EinsumLinear(64, 64, Theta.kronecker())
    t0 = time.perf_counter()
    layer(torch.randn(4, 64)).sum().backward()
    elapsed = time.perf_counter() - t0
    rec = fast.planner_report()[-1]
    assert rec["source"] == "measured" and 0 < rec["planning_s"] <= elapsed
    assert rec["structure"] == str(Theta.kronecker()) and rec["choice"] in rec["times_ms"]
