"""One training run as a pure function of its config (docs/design.md sections 6 and 11).

    config -> task -> model(width, seed) -> structurize(structure) -> AdamW(muP param groups)
           -> warmup + constant (or cosine) LR -> (compute, loss) logged along the whole curve

``train(config, options)`` trains ``config`` (what the run is, ``TrainConfig``) the way
``options`` says (where and how, ``RunOptions``: device, threads, ``torch.compile``,
checkpoints). The loop keeps everything in an explicit :class:`TrainState` and calls
:mod:`callbacks <einsearch.search.callbacks>` at the start, after each update, at log points
and at the end; progress reports and mid-run checkpoints (:mod:`einsearch.search.checkpoint`)
attach there.

``train`` never raises for a run that blows up: a non-finite loss, or (after warmup) a batch
loss above ``divergence_factor`` x the initial loss, ends the run with status ``"diverged"`` at
that step. Invalid configs raise ``ValueError`` when the ``TrainConfig`` is built.

No host synchronisation per step. The batch losses are summed on the device and the
divergence watch (the first bad step) is a device tensor too; both are read back at log points
and every ``SYNC_EVERY`` steps, so an accelerator's queue never drains in between. A diverged
run stops at the next read; its points are exactly those logged before the bad step.

Mixed precision (``TrainConfig.precision``): the forward and the loss run under
``torch.autocast`` (bf16 or fp16, float32 parameters), with a gradient scaler for fp16;
evaluation runs under the same autocast.

FLOP ledger: forward FLOPs per token are measured once with
``torch.utils.flop_counter.FlopCounterMode`` on the model as built (after structurize), on one
training batch, divided by the tokens in that batch. Training FLOPs per token = 3 x forward
(backward = 2 x forward); ``Point.compute`` = training FLOPs per token x tokens seen.
FlopCounterMode counts matrix products (linear layers, einsums, attention), not elementwise
work (norms, activations, softmax, the optimizer). CPU attention
(``aten._scaled_dot_product_flash_attention_for_cpu``), which torch's counter misses, is
counted with torch's own SDPA formula (full T x T, causal mask not discounted).

Logged points: step 0 (before any update: the loss of the first batch and the eval loss at
init), then every ``log_every`` steps and at the last step; or, when ``log_points`` is set, on
about ``log_points`` log-spaced steps (:func:`log_spaced_steps`, the last step included).
``Point.train_loss`` is the mean batch loss over the steps since the previous point;
``Point.eval_loss`` is measured on the task's fixed held-out set right after that step's
update; ``Point.elapsed_s`` is the training time since the first step, evaluation and
checkpoint time excluded (the device is synchronised before the clock is read). On the CPU,
making each batch is excluded too: every structure trains on the same batches, and a task's
synthetic data (the regression teacher's labels, ~10 GFLOPs a batch of 1024) can cost more than
a small model's step, and costs it only in the first run of a process to ask for a batch (the
batch cache), which would make times depend on the order runs ran in. On a GPU the batch is
made while queued kernels run, so it stays timed (pausing the clock without a device sync would
drop that device time).

Determinism: the model (and its structured cores) are initialised under a forked RNG seeded
with ``seed``; the data stream is the task's stream for ``seed`` (see ``tasks.base``). The
same config gives the same numbers in the same environment (thread count included), and a run
resumed from a checkpoint logs the same curve as one that was never stopped.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from einsearch import aux_loss, param_groups, structurize

from .callbacks import Callback, ExpertStatsCallback, ProgressCallback
from .checkpoint import Checkpointer
from .config import (
    DEFAULT_NUM_EXPERTS,
    MOE_STRUCTURES,
    SCHEDULES,
    RunOptions,
    TrainConfig,
    log_spaced_steps,
)
from .device import autocast, device_description, make_grad_scaler
from .tasks import Task, get_task

__all__ = ["TrainConfig", "RunOptions", "Point", "RunResult", "TrainState", "train", "build_model",
           "count_forward_flops", "log_spaced_steps", "lr_factor", "make_optimizer", "SCHEDULES",
           "MOE_STRUCTURES", "DEFAULT_NUM_EXPERTS", "SYNC_EVERY"]

logger = logging.getLogger(__name__)

#: cosine decays the LR from its peak to this fraction of it at the last step
COSINE_FINAL_FRACTION = 0.1
#: steps between reads of the divergence watch when no point is logged in between
SYNC_EVERY = 64


@dataclass
class Point:
    """One logged point of a run's curve (``elapsed_s``: training seconds since the first step;
    ``metrics``: extra named values, e.g. an MoE layer's expert load, stored beside the point)."""

    step: int
    tokens: int
    compute: float
    train_loss: float
    eval_loss: float | None
    elapsed_s: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class RunResult:
    """What a run produced. ``status`` is ``"finished"`` or ``"diverged"``.

    ``params``: trainable parameters of the model as trained; ``flops_per_token``: training
    FLOPs per token (3 x the measured forward); ``final_eval_loss``: the eval loss at the last
    step (``None`` when the run diverged or evaluation is off); ``diverged_step``: the update at
    which divergence was detected; ``device``: where it trained; ``resumed_from``: the step of
    the checkpoint it resumed from (None: it started at step 0); ``environment``: what its
    times were measured under (device name, torch threads, the machine's cores, torch version,
    compile).
    """

    config: TrainConfig
    status: str
    params: int
    flops_per_token: float
    points: list[Point]
    wall_time_s: float
    final_eval_loss: float | None
    diverged_step: int | None = None
    forward_flops_per_token: float = field(default=0.0)
    device: str | None = None
    resumed_from: int | None = None
    environment: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------- helpers
def build_model(config: TrainConfig, task: Task | None = None) -> tuple[Task, nn.Module]:
    """The task and its model for ``config``, structured and initialised from ``config.seed``
    (on the CPU, in float32).

    Every structure goes through ``structurize`` (``"dense"`` included), so init scales,
    ``einsum_norm`` and learning-rate rules are the same code path for every structure.
    """
    task = task if task is not None else get_task(config.task, **config.task_kwargs())
    model = task.build_model(config.width, seed=config.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        # the structure's handler: EinsumLinear layers, BTT-MoE layers, or FFN experts + dense layers
        structurize(model, config.structure_config(), select=task.structured_select, einsum_norm=config.layer_norm())
    return task, model


def _sdpa_cpu_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


_EXTRA_FLOP_FORMULAS = {}
if hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu"):
    _EXTRA_FLOP_FORMULAS[torch.ops.aten._scaled_dot_product_flash_attention_for_cpu] = _sdpa_cpu_flops


def count_forward_flops(model: nn.Module, inputs: Tensor) -> int:
    """Forward FLOPs of ``model(inputs)`` as counted by ``FlopCounterMode`` (no grad, no side effects)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=_EXTRA_FLOP_FORMULAS) as counter:
            model(inputs)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def lr_factor(update: int, config: TrainConfig) -> float:
    """LR multiplier for the ``update``-th optimizer step (0-based): linear warmup, then
    constant or cosine (peak -> ``COSINE_FINAL_FRACTION`` x peak at the last update)."""
    w = config.warmup_steps
    if update < w:
        return (update + 1) / w
    if config.schedule == "constant":
        return 1.0
    span = max(1, config.steps - w - 1)
    progress = min(1.0, (update - w) / span)
    lo = COSINE_FINAL_FRACTION
    return lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * progress))


def make_optimizer(model: nn.Module, config: TrainConfig):
    """AdamW (``beta1``, ``beta2``) over ``einsearch.param_groups`` (muP rates) and a ``LambdaLR``
    that scales each group's own rate by ``lr_factor``."""
    groups = param_groups(model, config.lr, base_width=config.base_width)
    optimizer = torch.optim.AdamW(groups, lr=config.lr, betas=(config.beta1, config.beta2),
                                  weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: lr_factor(k, config))
    return optimizer, scheduler


def _to_model(batch: tuple[Tensor, Tensor], dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
    """Float data in the model's dtype, both on its device (asynchronously where it can)."""
    x, y = ((t.to(dtype) if t.is_floating_point() else t).to(device, non_blocking=True) for t in batch)
    return x, y


# ------------------------------------------------------------------------------------ state
@dataclass
class TrainState:
    """Everything a run carries from one step to the next (what a checkpoint saves).

    ``step``: optimizer updates done; ``points``: the curve so far; ``window_sum`` /
    ``window_count``: batch losses since the last point (``window_sum`` a float64 device
    tensor); ``bad_step``: the first step whose loss diverged (a device tensor, -1: none);
    ``elapsed_s``: training seconds up to the last time the clock was read.
    """

    config: TrainConfig
    options: RunOptions
    task: Task
    model: nn.Module
    forward_model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any
    device: torch.device
    params: int
    forward_flops_per_token: float
    first_batch: tuple[Tensor, Tensor]
    window_sum: Tensor
    bad_step: Tensor
    step: int = 0
    points: list[Point] = field(default_factory=list)
    initial_loss: float | None = None
    window_count: int = 0
    elapsed_s: float = 0.0
    status: str = "running"
    diverged_step: int | None = None
    _clock: float = field(default=0.0, repr=False)

    @property
    def flops_per_token(self) -> float:
        """Training FLOPs per token: 3 x the measured forward."""
        return 3.0 * self.forward_flops_per_token

    @property
    def tokens_per_step(self) -> int:
        return self.config.batch_size * self.task.tokens_per_example

    # -- the clock ------------------------------------------------------------------------
    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def start_clock(self) -> None:
        self._clock = time.perf_counter()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Host-only work that is not training time: the clock stops without a device sync
        (exact on the CPU, where nothing runs behind the host's back)."""
        self.elapsed_s += time.perf_counter() - self._clock
        try:
            yield
        finally:
            self._clock = time.perf_counter()

    @contextlib.contextmanager
    def untimed(self) -> Iterator[None]:
        """Time spent inside is not training time (evaluation, checkpoints). The device is
        synchronised first, so the training time read here is complete."""
        self._sync()
        with self.paused():
            yield

    # -- data and evaluation --------------------------------------------------------------
    def batch(self, step: int) -> tuple[Tensor, Tensor]:
        """The training batch of update ``step`` (1-based) on the model's device."""
        if step == 1:
            return self.first_batch
        raw = self.task.batch(step - 1, self.config.batch_size, torch.Generator().manual_seed(self.config.seed))
        return _to_model(raw, _param_dtype(self.model), self.device)

    def evaluate(self) -> float | None:
        """Held-out loss under the run's precision (None when evaluation is off)."""
        if self.config.eval_batches == 0:
            return None
        with autocast(self.options.device, self.config.precision):
            return self.task.eval_loss(self.forward_model, num_batches=self.config.eval_batches,
                                       batch_size=self.config.batch_size)

    # -- checkpoints ----------------------------------------------------------------------
    def loop_state(self) -> dict[str, Any]:
        """The loop's own variables (a checkpoint adds model, optimizer, scheduler, RNG)."""
        return {"step": self.step, "points": [vars(p).copy() for p in self.points],
                "initial_loss": self.initial_loss, "window_sum": self.window_sum,
                "window_count": self.window_count, "bad_step": self.bad_step, "elapsed_s": self.elapsed_s}

    def load_loop_state(self, saved: dict[str, Any]) -> None:
        self.step = int(saved["step"])
        self.points = [Point(**p) for p in saved["points"]]
        self.initial_loss = saved["initial_loss"]
        self.window_sum = saved["window_sum"].to(self.device)
        self.window_count = int(saved["window_count"])
        self.bad_step = saved["bad_step"].to(self.device)
        self.elapsed_s = float(saved["elapsed_s"])

    def result(self, wall_time_s: float, resumed_from: int | None = None) -> RunResult:
        final = self.points[-1].eval_loss if self.status == "finished" and self.points else None
        environment = {"device": str(self.device), "device_name": device_description(str(self.device)),
                       "threads": torch.get_num_threads(),
                       "cpus": os.cpu_count(),
                       "torch": torch.__version__, "compile": self.options.compile, "resumed_from": resumed_from}
        return RunResult(config=self.config, status=self.status, params=self.params,
                         flops_per_token=self.flops_per_token, points=self.points, wall_time_s=wall_time_s,
                         final_eval_loss=final, diverged_step=self.diverged_step,
                         forward_flops_per_token=self.forward_flops_per_token, device=str(self.device),
                         resumed_from=resumed_from, environment=environment)


def _param_dtype(model: nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype


def prepare(config: TrainConfig, options: RunOptions) -> TrainState:
    """Build the task, the model on its device, the optimizer and the FLOP ledger (nothing trained)."""
    config.validate()
    device = torch.device(options.device)
    task, model = build_model(config)
    model.to(device)
    dtype = _param_dtype(model)
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    optimizer, scheduler = make_optimizer(model, config)
    first = _to_model(task.batch(0, config.batch_size, torch.Generator().manual_seed(config.seed)), dtype, device)
    fwd_per_token = count_forward_flops(model, first[0]) / (first[0].shape[0] * task.tokens_per_example)
    forward_model = cast(nn.Module, torch.compile(model)) if options.compile else model
    return TrainState(config=config, options=options, task=task, model=model, forward_model=forward_model,
                      optimizer=optimizer, scheduler=scheduler,
                      scaler=make_grad_scaler(options.device, config.precision), device=device, params=params,
                      forward_flops_per_token=fwd_per_token, first_batch=first,
                      window_sum=torch.zeros((), dtype=torch.float64, device=device),
                      bad_step=torch.full((), -1, dtype=torch.int64, device=device))


# ------------------------------------------------------------------------------------ train
def train(config: TrainConfig, options: RunOptions | None = None,
          progress: Callable[[int, float], None] | None = None, *,
          callbacks: Sequence[Callback] = ()) -> RunResult:
    """Train one model as ``config`` says, where ``options`` says, and return its curve.

    ``progress(step, train_loss)`` is called at every logged point (for progress bars);
    ``callbacks`` get the loop's events (:mod:`einsearch.search.callbacks`). With
    ``options.checkpoint_dir`` the run resumes from its checkpoint there, if any, and saves one
    every ``options.checkpoint_every`` seconds.
    """
    t0 = time.perf_counter()
    options = options if options is not None else RunOptions()
    if options.threads is not None and torch.get_num_threads() != options.threads:
        torch.set_num_threads(options.threads)
    state = prepare(config, options)
    hooks: list[Callback] = list(callbacks)
    checkpointer = None
    if options.checkpoint_dir is not None:
        checkpointer = Checkpointer(options.checkpoint_dir, options.checkpoint_every)
        hooks.insert(0, checkpointer)
    if progress is not None:
        hooks.append(ProgressCallback(progress))
    if config.structure_config().is_moe:
        hooks.append(ExpertStatsCallback())
    logger.info("run %s: task=%s structure=%s width=%d params=%d train FLOPs/token=%.4g steps=%d on %s (%s)",
                config.run_id(), config.task, config.structure, config.width, state.params,
                state.flops_per_token, config.steps, state.device, config.precision)
    for hook in hooks:
        hook.on_start(state)
    _loop(state, hooks)
    wall = time.perf_counter() - t0
    result = state.result(wall, checkpointer.resumed_from if checkpointer is not None else None)
    logger.info("run %s %s in %.1fs (%.1f steps/s)", config.run_id(), state.status, wall,
                (state.diverged_step or config.steps) / max(wall, 1e-9))
    for hook in hooks:
        hook.on_end(state, result)
    return result


def _loop(state: TrainState, hooks: Sequence[Callback]) -> None:
    """The training loop: from ``state.step + 1`` to ``config.steps``, or until divergence."""
    config = state.config
    log_at = set(config.log_steps())
    is_moe = config.structure_config().is_moe  # MoE layers add their auxiliary loss
    state.model.train()
    fetch_untimed = state.device.type == "cpu"  # module docstring: why only on the CPU
    state.start_clock()
    while state.step < config.steps:
        step = state.step + 1
        with state.paused() if fetch_untimed else contextlib.nullcontext():
            batch = state.batch(step)
        with autocast(state.options.device, config.precision):
            loss = state.task.loss(state.forward_model, batch)
        task_loss = loss.detach().float()
        if state.initial_loss is None:  # step 1: the one read before the first log point
            with state.untimed():
                state.initial_loss = float(task_loss)
                state.points.append(Point(0, 0, 0.0, state.initial_loss, state.evaluate(), 0.0))
        _watch(state, task_loss, step)
        if step == 1 and not math.isfinite(state.initial_loss):
            _diverged(state, step, f"batch loss {state.initial_loss}")
            return
        state.optimizer.zero_grad(set_to_none=True)
        if is_moe:
            loss = loss + config.aux_loss_weight * aux_loss(state.model)
        if state.scaler is not None:
            state.scaler.scale(loss).backward()
            if config.grad_clip > 0:
                state.scaler.unscale_(state.optimizer)
                nn.utils.clip_grad_norm_(state.model.parameters(), config.grad_clip)
            state.scaler.step(state.optimizer)
            state.scaler.update()
        else:
            loss.backward()
            if config.grad_clip > 0:  # a device-side clip: nothing is read back
                nn.utils.clip_grad_norm_(state.model.parameters(), config.grad_clip)
            state.optimizer.step()
        state.scheduler.step()
        state.window_sum += task_loss.double()
        state.window_count += 1
        state.step = step
        if step in log_at or step % SYNC_EVERY == 0:
            bad = int(state.bad_step)
            if bad >= 0:
                _diverged(state, bad, f"batch loss above {config.divergence_factor} x the initial "
                                      f"{state.initial_loss:.4g}, or not finite")
                return
        if step in log_at:
            with state.untimed():
                if not _log_point(state, step, hooks):
                    return
        for hook in hooks:  # after the point: a checkpoint taken here holds it
            hook.on_step(state)
    state.status = "finished"


def _watch(state: TrainState, task_loss: Tensor, step: int) -> None:
    """Record ``step`` in ``state.bad_step`` (on the device, no read) if its loss diverged."""
    config = state.config
    bad = ~torch.isfinite(task_loss)
    if step > config.warmup_steps and state.initial_loss is not None:
        bad = bad | (task_loss.double() > config.divergence_factor * state.initial_loss)
    state.bad_step = torch.where(bad & (state.bad_step < 0), torch.full_like(state.bad_step, step), state.bad_step)


def _log_point(state: TrainState, step: int, hooks: Sequence[Callback]) -> bool:
    """Append the point of ``step`` (False: the eval loss diverged, the run ends)."""
    eval_loss = state.evaluate()
    if eval_loss is not None and not math.isfinite(eval_loss):
        _diverged(state, step, f"eval loss {eval_loss}")
        return False
    tokens = step * state.tokens_per_step
    point = Point(step, tokens, state.flops_per_token * tokens, float(state.window_sum) / state.window_count,
                  eval_loss, state.elapsed_s)
    state.points.append(point)
    state.window_sum.zero_()
    state.window_count = 0
    logger.info("run %s step %d: train %.4f eval %s", state.config.run_id(), step, point.train_loss,
                "-" if eval_loss is None else f"{eval_loss:.4f}")
    for hook in hooks:
        hook.on_log(state, point)
    return True


def _diverged(state: TrainState, step: int, why: str) -> None:
    state.status, state.diverged_step = "diverged", step
    logger.warning("run %s diverged at step %d: %s", state.config.run_id(), step, why)
