"""Training speed measured side by side: seconds per training FLOP of every (structure, width) of
a store, for ``einsearch report --time-from-bench``.

When a sweep's runs shared the machine (``--jobs`` above the free cores, or unknown load), their
recorded training times are indicative only. Instead, each (structure, width) model of the store
is rebuilt here from its recorded config and timed for a few training steps (forward, backward,
AdamW) in this one process, interleaved round by round as ``make bench`` does, so machine load
hits every model alike. A run's time curve is then its compute curve times its model's seconds
per FLOP: T(step) = C(step) x s_(S, w).
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch

from .analysis import Curve
from .config import RunOptions, TrainConfig
from .store import RunRow

__all__ = ["seconds_per_flop", "time_curves", "BENCH_ROUNDS"]

log = logging.getLogger(__name__)

#: timed rounds per model (after one warm-up step); the median is kept
BENCH_ROUNDS = 5


def _config(row: RunRow) -> TrainConfig:
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in row.config.items() if k in known})


def seconds_per_flop(runs: Sequence[RunRow], rounds: int = BENCH_ROUNDS,
                     device: str = "cpu") -> dict[tuple[str, int], float]:
    """Median seconds per training FLOP of one training step of each (structure, width) among the
    finished ``runs`` (their first seed's config), all models timed round-robin on ``device``."""
    from .train import prepare

    configs: dict[tuple[str, int], TrainConfig] = {}
    for r in runs:
        if r.status == "finished" and r.width is not None:
            configs.setdefault((r.structure, int(r.width)), _config(r))
    states = {key: prepare(cfg, RunOptions(device=device)) for key, cfg in sorted(configs.items())}

    def step(state: Any) -> None:
        state.optimizer.zero_grad(set_to_none=True)
        state.task.loss(state.forward_model, state.first_batch).backward()
        state.optimizer.step()

    for state in states.values():  # warm-up: planning, first-touch
        step(state)
    times: dict[tuple[str, int], list[float]] = {key: [] for key in states}
    for _ in range(rounds):
        for key, state in states.items():
            if state.device.type == "cuda":
                torch.cuda.synchronize(state.device)
            t0 = time.perf_counter()
            step(state)
            if state.device.type == "cuda":
                torch.cuda.synchronize(state.device)
            times[key].append(time.perf_counter() - t0)
    out = {}
    for key, state in states.items():
        flops = state.flops_per_token * state.tokens_per_step
        out[key] = statistics.median(times[key]) / flops
        log.info("%s width %d: %.3g s per step, %.3g s per GFLOP", key[0], key[1], statistics.median(times[key]),
                 1e9 * out[key])
    return out


def time_curves(curves: Sequence[Curve], speed: dict[tuple[str, int], float]) -> list[Curve]:
    """Each curve with its compute axis turned into seconds at its model's measured speed."""
    return [dataclasses.replace(c, compute=c.compute * speed[(c.structure, int(c.width))])
            for c in curves if (c.structure, int(c.width)) in speed]
