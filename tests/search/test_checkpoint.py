"""Mid-run checkpoints: a stopped run resumes from its checkpoint and logs the curve an
uninterrupted run logs (docs/design.md section 11)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from einsearch.search.callbacks import Callback
from einsearch.search.checkpoint import Checkpointer, checkpoint_path
from einsearch.search.config import RunOptions, TrainConfig
from einsearch.search.train import train

TINY = dict(task="regression", width=32, base_width=32, steps=40, batch_size=64, warmup_steps=4,
            log_every=8, eval_batches=1, lr=1e-2, structure="monarch")


def _curve(result):
    return [(p.step, p.tokens, p.compute, p.train_loss, p.eval_loss) for p in result.points]


class _Stop(Exception):
    pass


class StopAt(Callback):
    """Simulates a kill right after the checkpoint of ``step`` was written."""

    def __init__(self, step: int):
        self.step = step

    def on_step(self, state) -> None:
        if state.step == self.step:
            raise _Stop


@pytest.mark.parametrize("stop_at", [5, 8, 21])  # mid-window, right at a log point, later
def test_a_resumed_run_logs_the_uninterrupted_curve(tmp_path, stop_at):
    cfg = TrainConfig(**TINY)
    whole = train(cfg)
    options = RunOptions(checkpoint_dir=str(tmp_path), checkpoint_every=1e-9)  # a checkpoint every step
    with pytest.raises(_Stop):
        train(cfg, options, callbacks=[StopAt(stop_at)])
    assert checkpoint_path(tmp_path, cfg.run_id()).is_file()
    resumed = train(cfg, options)
    assert resumed.resumed_from == stop_at and resumed.status == "finished"
    assert _curve(resumed) == _curve(whole)
    assert resumed.final_eval_loss == whole.final_eval_loss
    assert not checkpoint_path(tmp_path, cfg.run_id()).exists()  # removed when the run ended
    times = [p.elapsed_s for p in resumed.points]
    assert times[0] == 0.0 and all(b >= a for a, b in zip(times, times[1:]))


def test_checkpoint_every_zero_resumes_but_never_saves(tmp_path):
    cfg = TrainConfig(**{**TINY, "steps": 10})
    ckpt = Checkpointer(tmp_path, every_s=0)
    train(cfg, RunOptions(checkpoint_dir=str(tmp_path), checkpoint_every=0), callbacks=[ckpt])
    assert ckpt.saves == 0 and not any(tmp_path.iterdir())


def test_a_checkpoint_of_another_run_is_ignored(tmp_path, caplog):
    a, b = TrainConfig(**TINY), TrainConfig(**{**TINY, "seed": 1})
    options = RunOptions(checkpoint_dir=str(tmp_path), checkpoint_every=1e-9)
    with pytest.raises(_Stop):
        train(a, options, callbacks=[StopAt(5)])
    os.replace(checkpoint_path(tmp_path, a.run_id()), checkpoint_path(tmp_path, b.run_id()))
    result = train(b, options)
    assert result.resumed_from is None and "belongs to another run" in caplog.text
    assert _curve(result) == _curve(train(b))


def test_a_torn_checkpoint_starts_the_run_over(tmp_path, caplog):
    cfg = TrainConfig(**{**TINY, "steps": 10})
    checkpoint_path(tmp_path, cfg.run_id()).write_bytes(b"not a checkpoint")
    result = train(cfg, RunOptions(checkpoint_dir=str(tmp_path), checkpoint_every=0))
    assert result.resumed_from is None and "unreadable checkpoint" in caplog.text
    assert _curve(result) == _curve(train(cfg))


_KILLABLE = textwrap.dedent("""
    import sys
    from einsearch.search.config import RunOptions, TrainConfig
    from einsearch.search.train import train
    cfg = TrainConfig(**{cfg!r})
    train(cfg, RunOptions(checkpoint_dir={folder!r}, checkpoint_every=0.2, threads=1))
    print("finished", flush=True)
""")


@pytest.mark.slow
def test_a_run_killed_halfway_resumes_and_stores_the_same_curve(tmp_path):
    """The issue's check: SIGKILL at about half the run's time, then the same command again."""
    torch.set_num_threads(1)
    cfg = dict(TINY, steps=160, width=48, batch_size=256, log_every=16)
    t0 = time.perf_counter()
    whole = train(TrainConfig(**cfg))
    full_s = time.perf_counter() - t0
    folder = tmp_path / "ckpt"
    proc = subprocess.Popen([sys.executable, "-c", _KILLABLE.format(cfg=cfg, folder=str(folder))],
                            stdout=subprocess.PIPE, text=True)
    path = checkpoint_path(folder, TrainConfig(**cfg).run_id())
    deadline = time.monotonic() + 120
    while not path.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.5 * full_s)  # about half the run's training time after its first checkpoint
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert path.exists(), "the killed run left no checkpoint"
    t0 = time.perf_counter()
    resumed = train(TrainConfig(**cfg), RunOptions(checkpoint_dir=str(folder), checkpoint_every=0.2, threads=1))
    resumed_s = time.perf_counter() - t0
    assert resumed.resumed_from is not None and resumed.resumed_from >= 0.3 * cfg["steps"]
    assert resumed_s < 0.85 * full_s, f"the resumed run took {resumed_s:.2f} s of a full {full_s:.2f} s"
    assert _curve(resumed) == _curve(whole)


class _DieAt(Callback):
    def __init__(self, step: int):
        self.step = step

    def on_step(self, state) -> None:
        if state.step == self.step:
            os._exit(9)  # the worker process is lost mid-run


def die_midway_train(config, options=None, progress=None):
    """Kills its worker at step 11 on the first attempt (no marker file yet), then trains."""
    marker = os.path.join(options.checkpoint_dir, f"{config.run_id()}.died")
    if not os.path.exists(marker):
        open(marker, "w").close()
        return train(config, options, progress, callbacks=[_DieAt(11)])
    return train(config, options, progress)


def test_a_worker_lost_mid_run_resumes_from_the_checkpoint(tmp_path):
    from einsearch.search.executors import LocalExecutor

    configs = [TrainConfig(**{**TINY, "steps": 24, "seed": s}) for s in (0, 1)]
    options = RunOptions(checkpoint_dir=str(tmp_path), checkpoint_every=1e-9, threads=1)
    with LocalExecutor(2, threads_per_run=1) as ex:
        outs = {o.config.seed: o for o in ex.run(configs, die_midway_train, options=options)}
    # uninterrupted references, one thread each as in the workers (here: in this process)
    whole = {cfg.seed: train(cfg, RunOptions(threads=1)) for cfg in configs}
    # the worker that died at step 11 breaks the pool: the run beside it is lost too, mid-way
    # (it resumes from its own checkpoint) or before its first step (it starts over)
    resumed = sorted((o.payload.resumed_from or 0) for o in outs.values())
    assert resumed[-1] == 11 and 0 <= resumed[0] <= 11
    for cfg in configs:
        out = outs[cfg.seed]
        assert out.status == "ok" and out.attempts >= 2, out.payload
        assert _curve(out.payload) == _curve(whole[cfg.seed])
