"""The Ray executor on a real local cluster bound to 127.0.0.1 (started once per session with
``ray start --head``, stopped with ``ray stop --force``, usage stats off): a tiny sweep gives
the same stored losses as the local executor, and a tiny explore runs on it."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from einsearch.search.executors import LocalExecutor, RayExecutor  # noqa: E402
from einsearch.search.spec import SweepSpec  # noqa: E402
from einsearch.search.store import ResultStore  # noqa: E402
from einsearch.search.sweep import run_sweep  # noqa: E402

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))
from fake_runs import FakeTrainConfig, fake_train  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    """ADDRESS of a 2-CPU Ray head on 127.0.0.1; its workers can import the test helpers."""
    exe = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")
    if exe is None:
        pytest.skip("the ray command is not installed")
    port = _free_port()
    temp = tmp_path_factory.mktemp("ray")
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0",
               PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    start = [exe, "start", "--head", "--num-cpus", "2", "--node-ip-address", "127.0.0.1",
             "--port", str(port), "--include-dashboard=false", "--disable-usage-stats",
             f"--temp-dir={temp}"]
    proc = subprocess.run(start, env=env, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        subprocess.run([exe, "stop", "--force"], env=env, capture_output=True, timeout=60)
        pytest.fail(f"ray start failed:\n{proc.stdout}\n{proc.stderr}")
    address = f"127.0.0.1:{port}"
    try:
        # one driver connection for the session (each connect costs seconds); executors
        # find it initialised and leave it open
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
        yield address
    finally:
        if ray.is_initialized():
            ray.shutdown()
        subprocess.run([exe, "stop", "--force"], env=env, capture_output=True, timeout=60)



def _losses(path: Path) -> dict:
    with ResultStore(path) as st:
        return {r.run_id: [(p.step, p.train_loss) for p in pts] for r, pts in st.load()}


def test_ray_sweep_matches_local(tmp_path, ray_cluster, fake_config):
    spec = SweepSpec(task="regression", structures=["dense", "btt"], widths=[16, 32],
                     train={"steps": 20, "warmup_steps": 0, "log_every": 1})
    with RayExecutor(ray_cluster) as ex:
        assert ex.concurrency == 2
        out = run_sweep(spec, tmp_path / "ray", show_progress=False, train_fn=fake_train,
                        executor=ex, report=False)
    assert (out.finished, out.failed) == (4, 0)
    run_sweep(spec, tmp_path / "local", show_progress=False, train_fn=fake_train,
              report=False)
    ray_losses = _losses(tmp_path / "ray" / "results.sqlite")
    assert ray_losses and ray_losses == _losses(tmp_path / "local" / "results.sqlite")


def test_ray_real_training_matches_local(tmp_path, ray_cluster):
    """The real trainer, one run: bit-identical losses from a Ray worker and a local one."""
    spec = SweepSpec(task="regression", structures=["monarch"], widths=[16], include_dense=False,
                     train={"steps": 4, "batch_size": 16, "warmup_steps": 1, "log_every": 1,
                            "eval_batches": 1})
    with RayExecutor(ray_cluster) as ex:
        (r,) = list(ex.run(spec.configs()))
    (lo,) = list(LocalExecutor(2).run(spec.configs()))
    assert r.status == lo.status == "ok", (r.payload, lo.payload)
    assert [p.train_loss for p in r.payload.points] == [p.train_loss for p in lo.payload.points]


def test_ray_task_error_is_a_failed_outcome(ray_cluster):
    cfg = FakeTrainConfig(structure="dense", width=16, steps=5, data="boom")
    with RayExecutor(ray_cluster) as ex:
        (out,) = list(ex.run([cfg], fake_train))
    assert out.status == "failed" and "synthetic failure" in out.payload


def test_ray_explore(tmp_path, ray_cluster):
    from test_explore import SPEC, theta_train

    from einsearch.search.explore import explore

    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    res = explore(spec, tmp_path / "out", trials=3, executor="ray", address=ray_cluster,
                  train_fn=theta_train, show_progress=False)
    assert res.trials_total == 3 and res.runs_failed == 0
    # the same study on the local executor gives the same values
    local = explore(spec, tmp_path / "local", trials=3, train_fn=theta_train, show_progress=False)
    assert local.summary is not None and res.summary is not None

    def values(summary):
        return {r["canonical_theta"]: r.get("value") for r in summary["trials"]
                if r["state"] == "COMPLETE"}

    assert values(res.summary) == values(local.summary)


def test_a_task_from_an_import_path_trains_alike_on_ray(tmp_path, ray_cluster, monkeypatch):
    """The Ray workers import the user's task module through the runtime environment (the
    driver's sys.path), and store the same losses as local worker processes."""
    from test_user_task import SPEC, USER_TASK, losses

    from einsearch.search.spec import load_spec

    monkeypatch.syspath_prepend(str(USER_TASK))
    (tmp_path / "spec.yaml").write_text(SPEC)
    spec = load_spec(tmp_path / "spec.yaml")
    with RayExecutor(ray_cluster) as ex:
        out = run_sweep(spec, tmp_path / "ray", ex, show_progress=False, report=False)
    assert (out.finished, out.failed) == (4, 0), out.failures
    run_sweep(spec, tmp_path / "local", LocalExecutor(2), show_progress=False, report=False)
    assert losses(tmp_path / "ray") == losses(tmp_path / "local")
