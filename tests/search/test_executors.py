"""Executors: local in-process and worker pools give the same outcomes, a worker that dies is
retried (and only its run is lost when it keeps dying), bad executor settings fail before
anything runs, and run_sweep trains through any executor."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

from einsearch.search.executors import LocalExecutor, RayExecutor, check_ray_address, get_executor
from einsearch.search.spec import SweepSpec
from einsearch.search.store import ResultStore
from einsearch.search.sweep import run_sweep

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))
from fake_runs import FakeTrainConfig, fake_train  # noqa: E402

FAST = {"steps": 20, "warmup_steps": 0, "log_every": 1}


def die_once_train(config, options=None, progress=None):
    """Kill the worker process on the first attempt at a run (marker file absent), then train.

    ``config.data`` is ``"die-once:DIR"``; the marker is DIR/<run_id>.
    """
    data = config.data or ""
    if data.startswith("die-once:"):
        marker = Path(data.split(":", 1)[1]) / config.run_id()
        if not marker.exists():
            marker.write_text("died")
            os._exit(7)
    return fake_train(config, options, progress)


def _configs(structures=("dense", "btt", "low_rank"), widths=(16, 32), **train):
    return [FakeTrainConfig(structure=s, width=w, **{**FAST, **train})
            for s in structures for w in widths]


def _losses(outcomes):
    return {o.config.run_id(): [p.train_loss for p in o.payload.points] for o in outcomes}


def test_serial_and_parallel_yield_every_run_with_identical_losses():
    configs = _configs()
    seen = []
    with LocalExecutor(1) as ex:
        serial = list(ex.run(configs, fake_train, lambda cfg, step, loss: seen.append(step)))
    with LocalExecutor(2) as ex:
        parallel = list(ex.run(configs, fake_train, lambda cfg, step, loss: seen.append(-1)))
    for outs in (serial, parallel):
        assert sorted(o.config.run_id() for o in outs) == sorted(c.run_id() for c in configs)
        assert all(o.status == "ok" and o.attempts == 1 for o in outs)
    assert _losses(serial) == _losses(parallel)
    assert seen and -1 not in seen  # progress only from in-process training


def test_worker_that_dies_once_is_retried(tmp_path):
    (cfg,) = _configs(structures=("btt",), widths=(16,), data=f"die-once:{tmp_path}")
    (out,) = LocalExecutor(2).run([cfg], die_once_train)
    assert out.status == "ok", out.payload
    assert (tmp_path / cfg.run_id()).read_text() == "died" and out.attempts == 2


def test_worker_that_always_dies_loses_only_its_run():
    configs = _configs(data="die", widths=(16,))
    outs = {o.config.structure: o for o in LocalExecutor(2, max_retries=1).run(configs,
                                                                             fake_train)}
    assert outs["dense"].status == outs["low_rank"].status == "ok"
    assert outs["btt"].status == "failed" and "worker process died" in outs["btt"].payload
    # with the others, then alone (the death is charged to it), then one retry alone
    assert outs["btt"].attempts == 3


def test_trainer_exception_is_a_failed_outcome_not_retried():
    configs = _configs(structures=("dense",), widths=(16,), data="boom")
    (out,) = LocalExecutor(2).run(configs, fake_train)
    assert out.status == "failed" and "synthetic failure" in out.payload and out.attempts == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("kwargs, match", [
    (dict(name="spark"), r"unknown executor 'spark'; expected one of local, ray"),
    (dict(name="local", jobs=0), r"jobs must be a positive integer, got 0"),
    (dict(name="local", address="127.0.0.1:6379"), r"--address .* is for the ray executor"),
    (dict(name="ray", address="nohost"), r"--address must be 'HOST:PORT'"),
])
def test_bad_executor_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        get_executor(**kwargs)


def test_unreachable_ray_address_fails_fast():
    port = _free_port()  # nothing listens there
    with pytest.raises(ValueError, match=rf"cannot reach a Ray cluster at address "
                                         rf"'127.0.0.1:{port}'"):
        get_executor("ray", address=f"127.0.0.1:{port}")
    with pytest.raises(ValueError, match="cannot reach"):
        check_ray_address(f"ray://127.0.0.1:{port}", timeout=0.5)
    with pytest.raises(ValueError, match="num_cpus must be a positive integer"):
        RayExecutor(num_cpus=0)



def test_run_sweep_through_an_executor_retries_dead_workers(tmp_path, fake_config):
    marks = tmp_path / "marks"
    marks.mkdir()
    spec = SweepSpec(task="regression", structures=["dense", "btt"], widths=[16, 32],
                     train=dict(FAST, data=f"die-once:{marks}"))
    with LocalExecutor(2) as ex:
        out = run_sweep(spec, tmp_path / "run", show_progress=False, train_fn=die_once_train,
                        executor=ex, report=False)
    assert (out.finished, out.failed) == (4, 0)
    with ResultStore(tmp_path / "run" / "results.sqlite") as st:
        assert st.finished_run_ids() == {c.run_id() for c in spec.configs()}


def test_sweep_search_rejects_bad_executor_before_writing(tmp_path):
    from einsearch.search.sweep import search

    with pytest.raises(ValueError, match="unknown executor"):
        search("tiny", tmp_path / "out", executor="dask")
    port = _free_port()
    with pytest.raises(ValueError, match="cannot reach a Ray cluster"):
        search("tiny", tmp_path / "out", executor="ray", address=f"127.0.0.1:{port}")
    assert not (tmp_path / "out").exists()


def pid_then_sleep_train(config, options=None, progress=None):
    """Write this worker's pid to the file named in ``config.data`` ("pid:PATH"), then sleep."""
    import time

    Path(config.data.split(":", 1)[1] + f".{os.getpid()}").write_text("")
    time.sleep(120)
    return fake_train(config, options, progress)


def test_workers_exit_when_the_driver_is_killed(tmp_path):
    import signal
    import subprocess
    import time

    driver = f"""
import sys
sys.path.insert(0, {str(TESTS)!r})
from test_executors import pid_then_sleep_train
from fake_runs import FakeTrainConfig
from einsearch.search.executors import LocalExecutor
configs = [FakeTrainConfig(structure=s, width=16, steps=5, data={f"pid:{tmp_path / 'w'}"!r})
           for s in ("dense", "btt")]
with LocalExecutor(2) as ex:
    list(ex.run(configs, pid_then_sleep_train, None))
"""
    proc = subprocess.Popen([sys.executable, "-c", driver])
    try:
        deadline = time.time() + 60
        while len(list(tmp_path.glob("w.*"))) < 2 and time.time() < deadline:
            time.sleep(0.2)
        pids = [int(p.suffix[1:]) for p in tmp_path.glob("w.*")]
        assert len(pids) == 2, "workers did not start"
    finally:
        proc.send_signal(signal.SIGKILL)  # the driver dies without shutting its pool down
        proc.wait(timeout=30)

    def alive(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True

    deadline = time.time() + 20
    while any(alive(p) for p in pids) and time.time() < deadline:
        time.sleep(0.2)
    leftover = [p for p in pids if alive(p)]
    for p in leftover:
        os.kill(p, signal.SIGKILL)
    assert not leftover, f"workers {leftover} outlived their driver"


# ------------------------------------------------------------------------------------------
# placing runs on accelerators (fake device lists: the placement logic needs no GPU)


def where_train(config, options=None, progress=None):
    """Reports the device its options named and the worker process it ran in."""
    r = fake_train(config, options, progress)
    r.environment = {"device": options.device, "pid": os.getpid()}
    return r


def test_local_workers_are_pinned_to_their_gpus():
    from einsearch.search.config import RunOptions

    configs = _configs(widths=(16, 32, 48, 64), data="sleep:0.05")
    with LocalExecutor(None, devices=["cuda:0", "cuda:1"], runs_per_gpu=2) as ex:
        assert ex.concurrency == 4 and ex.worker_devices() == ["cuda:0", "cuda:0", "cuda:1", "cuda:1"]
        outs = list(ex.run(configs, where_train, options=RunOptions(device="cuda:0")))
    assert all(o.status == "ok" for o in outs) and len(outs) == len(configs)
    device_of: dict[int, set[str]] = {}
    for o in outs:
        device_of.setdefault(o.payload.environment["pid"], set()).add(o.payload.environment["device"])
    assert all(len(d) == 1 for d in device_of.values())  # a worker keeps its GPU for life
    per_gpu: dict[str, int] = {}
    for (d,) in device_of.values():
        per_gpu[d] = per_gpu.get(d, 0) + 1
    assert set(per_gpu) <= {"cuda:0", "cuda:1"} and all(n <= 2 for n in per_gpu.values())


def test_one_gpu_in_process():
    from einsearch.search.config import RunOptions

    with LocalExecutor(None, devices=["cuda:3"]) as ex:
        assert ex.concurrency == 1
        (out,) = list(ex.run(_configs(("dense",), (16,)), where_train, options=RunOptions()))
    assert out.payload.environment["device"] == "cuda:3"


@pytest.mark.parametrize("kwargs, message", [
    (dict(jobs=3, devices=["cuda:0", "cuda:1"]), "set --runs-per-gpu instead of --jobs"),
    (dict(jobs=None, devices=["cpu"]), "CUDA device texts"),
    (dict(jobs=None, devices=["cuda:0"], runs_per_gpu=0), "runs_per_gpu must be a positive integer"),
])
def test_bad_gpu_placement_is_refused(kwargs, message):
    jobs = kwargs.pop("jobs")
    with pytest.raises(ValueError, match=message):
        LocalExecutor(jobs, **kwargs)


def test_ray_tasks_ask_for_their_gpu_share():
    ex = get_executor("ray", None, devices=["cuda:0"], runs_per_gpu=4)
    assert ex.remote_options()["num_gpus"] == 0.25 and ex.remote_options()["num_cpus"] == 1
    assert "num_gpus" not in get_executor("ray", 2).remote_options()
    with pytest.raises(ValueError, match="num_gpus_per_run"):
        RayExecutor(num_gpus_per_run=1.5)
