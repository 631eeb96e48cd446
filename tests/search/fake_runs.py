"""Synthetic runs for the store / report / sweep tests (no torch training involved).

``FakeConfig`` mirrors the fields of ``einsearch.search.train.TrainConfig`` that the store reads, and
``make_result`` builds a RunResult-like object whose loss follows a known law:

    L(C) = 2 * (m * C) ** -0.1 + floor(width)

so a structure with multiplier ``m`` needs 1/m of dense's compute for the same loss (up to the
width-limited floor, which the frontier removes).
"""

from __future__ import annotations

import dataclasses
import time
import zlib
from dataclasses import dataclass, field

import numpy as np

from einsearch.search.train import Point, TrainConfig


@dataclass(frozen=True)
class FakeConfig:
    task: str = "regression"
    structure: str = "dense"
    width: int = 64
    seed: int = 0
    lr: float = 3e-3
    steps: int = 40
    warmup_steps: int = 0
    log_every: int = 1

    # the real config's id scheme, so fake and real runs are keyed alike
    to_dict = TrainConfig.to_dict
    identity = TrainConfig.identity
    run_id = TrainConfig.run_id


@dataclass
class FakeResult:
    config: FakeConfig
    status: str
    params: int
    flops_per_token: float
    points: list = field(default_factory=list)
    wall_time_s: float = 0.01
    final_eval_loss: float | None = None


# The fields and defaults of the real TrainConfig, without its validation: the fake trainer
# reads its instructions (sleep, fail, diverge) from ``data``, which regression would reject.
FakeTrainConfig = dataclasses.make_dataclass(
    "FakeTrainConfig",
    [(f.name, f.type, dataclasses.field(default=f.default) if f.default is not dataclasses.MISSING
      else dataclasses.field(default_factory=f.default_factory, hash=False))
     for f in dataclasses.fields(TrainConfig)],
    frozen=True,
    namespace={"to_dict": TrainConfig.to_dict, "identity": TrainConfig.identity, "run_id": TrainConfig.run_id},
)
FakeTrainConfig.__module__ = __name__  # picklable for the sweep's worker processes


MULTIPLIERS = {"dense": 1.0, "btt": 2.0, "low_rank": 0.5, "kronecker": 0.7}


def make_result(structure: str = "dense", width: int = 64, seed: int = 0, steps: int = 40,
                multiplier: float | None = None, noise: float = 0.0, diverge_at: int | None = None,
                task: str = "regression", lr: float = 3e-3) -> FakeResult:
    m = MULTIPLIERS.get(structure, 1.0) if multiplier is None else multiplier
    cfg = FakeConfig(task=task, structure=structure, width=width, seed=seed, steps=steps, lr=lr)
    params = 4 * width * width
    fpt = 6.0 * params
    rng = np.random.default_rng(zlib.crc32(f"{structure}|{width}|{seed}".encode()))  # stable across runs
    tokens_per_step = 128
    points = []
    floor = 0.4 * width ** -0.5
    for step in range(1, steps + 1):
        tokens = step * tokens_per_step
        c = fpt * tokens
        loss = 2.0 * (m * c) ** -0.1 + floor
        loss *= float(np.exp(rng.normal(0.0, noise))) if noise else 1.0
        if diverge_at is not None and step >= diverge_at:
            loss = float("nan")
        points.append(Point(step, tokens, c, loss, loss if step % 5 == 0 else None))
    status = "diverged" if diverge_at is not None else "finished"
    final = None if diverge_at is not None else points[-1].train_loss
    return FakeResult(cfg, status, params, fpt, points, 0.01, final)


def fake_train(config, options=None, progress=None):
    """A stand-in for ``einsearch.search.train.train``; ``config.data`` steers it in tests:
    ``"boom"`` raises, ``"die"`` kills the (worker) process, ``"sleep:S"`` sleeps S seconds,
    ``"diverge"`` returns a diverged run."""
    import os

    data = getattr(config, "data", None) or ""
    if data == "boom" or (data == "boom-btt" and config.structure == "btt"):
        raise RuntimeError("synthetic failure")
    if data == "die" and config.structure == "btt":
        os._exit(3)
    if data.startswith("sleep:"):
        time.sleep(float(data.split(":", 1)[1]))
    r = make_result(config.structure, config.width, config.seed, steps=min(config.steps, 40),
                    task=config.task, lr=config.lr,
                    diverge_at=5 if data == "diverge" and config.structure == "btt" else None)
    r.config = config
    if progress is not None:
        progress(config.steps, r.points[-1].train_loss)
    return r


def counting_train(config, options=None, progress=None):
    """``fake_train`` that appends the run id to the file named by ``config.data`` ("count:PATH")
    and takes 0.3 s: counts how often each run is trained across processes."""
    path = (getattr(config, "data", None) or "").split(":", 1)[1]
    with open(path, "a") as fh:
        fh.write(config.run_id() + "\n")
    time.sleep(0.3)
    return fake_train(config, options, progress)


# ------------------------------------------------------------------------------------------
# runs in the compute-optimal regime, for the report's estimator (analysis.analyze)

#: dense's law in the scaling fakes: L_dense(C) = LAW_A * C ** -LAW_B
LAW_A, LAW_B = 16.0, 0.15


def scaling_law(m: float = 1.0, b: float = LAW_B, pivot_loss: float | None = None) -> dict:
    """A structure's law ``{"a", "b", "cost"}`` with multiplier ``m`` over dense.

    ``b == LAW_B``: parallel laws, m(L) = m at every loss (a = LAW_A m^-b). Otherwise m is
    ``m`` at ``pivot_loss`` and m(L) = C_dense(L) / C_S(L) varies with L (see :func:`true_m`).
    ``cost`` (FLOPs per token relative to dense at equal width) is ``m``, so S's runs sit where
    a structure m times cheaper per width would.
    """
    if b == LAW_B or pivot_loss is None:
        return {"a": LAW_A * m ** -b, "b": b, "cost": m}
    c_dense = (pivot_loss / LAW_A) ** (-1.0 / LAW_B)
    c_s = c_dense / m
    return {"a": pivot_loss * c_s ** b, "b": b, "cost": m}


def true_m(law: dict, loss: float) -> float:
    """m(L) = C_dense(L) / C_S(L) of a :func:`scaling_law`."""
    return (loss / LAW_A) ** (-1.0 / LAW_B) / (loss / law["a"]) ** (-1.0 / law["b"])


def make_scaling_result(structure: str, width: int, seed: int, law: dict, *, steps: int = 400,
                        n_points: int = 24, sigma_seed: float = 0.02, sigma_point: float = 0.004,
                        transient: float = 1.0, task: str = "regression",
                        lr: float = 3e-3, seconds_per_flop: float | None = None) -> FakeResult:
    """One run whose curve, once its transient has died, lies on ``law`` (:func:`scaling_law`):

        C_t = 6 * 4 width^2 / cost * 128 t,
        L_t = a C_t^-b * (1 + transient * exp(-t / (0.05 steps))) * exp(sigma_seed z + sigma_point z_t)

    logged (train and eval) on ``n_points`` log-spaced steps, z ~ N(0, 1) drawn from a stable
    per-(structure, width, seed) generator. The frontier over widths is then the law itself.
    With ``seconds_per_flop`` each point records ``elapsed_s = C_t * seconds_per_flop`` (a known
    speed, so the time multiplier is m x dense's seconds per FLOP / this one's).
    """
    cfg = FakeConfig(task=task, structure=structure, width=width, seed=seed, steps=steps, lr=lr)
    params = int(4 * width * width / law.get("cost", 1.0))
    fpt = 6.0 * 4 * width * width / law.get("cost", 1.0)
    rng = np.random.default_rng(zlib.crc32(f"scaling|{structure}|{width}|{seed}".encode()))
    shift = float(rng.normal(0.0, sigma_seed))
    log_steps = np.unique(np.round(np.geomspace(1, steps, n_points)).astype(int))
    points = []
    for step in log_steps:
        tokens = int(step) * 128
        c = fpt * tokens
        loss = law["a"] * c ** -law["b"] * (1.0 + transient * np.exp(-step / (0.05 * steps)))
        loss *= float(np.exp(shift + rng.normal(0.0, sigma_point)))
        elapsed = None if seconds_per_flop is None else c * seconds_per_flop
        points.append(Point(int(step), tokens, c, loss, loss, elapsed))
    return FakeResult(cfg, "finished", params, fpt, points, 0.01, points[-1].eval_loss)
