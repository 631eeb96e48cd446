"""One training run as a pure function of a config (docs/design.md section 6).

    config -> task -> model(width, seed) -> structurize(structure) -> AdamW(muP param groups)
           -> warmup + constant (or cosine) LR -> (compute, loss) logged along the whole curve

``train(config)`` never raises for a run that blows up: a non-finite loss, or (after warmup) a
batch loss above ``divergence_factor`` x the initial loss, ends the run with status
``"diverged"``. Invalid configs raise ``ValueError`` when the ``TrainConfig`` is built.

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
about ``log_points`` log-spaced steps (:func:`log_spaced_steps`, the last step included), so a
log-log frontier gets evenly spread points instead of most of them at the end. ``Point.train_loss`` is the mean
batch loss over the steps since the previous point; ``Point.eval_loss`` is measured on the
task's fixed held-out set right after that step's update.

Determinism: the model (and its structured cores) are initialised under a forked RNG seeded
with ``seed``; the data stream is the task's stream for ``seed`` (see ``tasks.base``). The
same config gives the same numbers in the same environment (thread count included).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from einsearch import StructureConfig, aux_loss, param_groups, parse_structure, structure_kinds, structurize
from einsearch._checks import check_non_negative_float, check_non_negative_int, check_positive_float, check_positive_int

from .tasks import Task, get_task, task_names, task_options

__all__ = ["TrainConfig", "Point", "RunResult", "train", "build_model", "count_forward_flops", "log_spaced_steps",
           "lr_factor", "make_optimizer", "SCHEDULES"]

logger = logging.getLogger(__name__)

SCHEDULES = ("constant", "cosine")
#: MoE structures: "btt_moe" = a BTTMoELinear in every structured layer, "moe" = the dense model
#: with a standard FFN MoE (``einsearch.moe.MoEFFN``) in every transformer block
MOE_STRUCTURES = tuple(k for k in structure_kinds() if parse_structure(k).is_moe)
#: experts of an MoE structure when ``TrainConfig.num_experts`` is None
DEFAULT_NUM_EXPERTS = 8
#: cosine decays the LR from its peak to this fraction of it at the last step
COSINE_FINAL_FRACTION = 0.1


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines one training run (and, hashed, its ``run_id``).

    Fields:
        task: registered task name (``"regression"``, ``"charlm"``).
        structure: a structure name (``"dense"``, ``"monarch"``, ``"btt(0.25)"``,
            ``"low_rank(0.5)"``) or theta text ``"(a|b|g|d|e|f|r)"``.
        width: model width; base_width: width at which ``lr`` is the dense layer's rate (muP).
        depth: model depth (residual blocks / transformer layers); ``None`` = task default.
        seed: initialisation and data-stream seed.
        lr, weight_decay: AdamW base learning rate and weight decay.
        steps, batch_size: optimizer updates and examples per update.
        warmup_steps, schedule: linear warmup over ``warmup_steps`` updates, then ``"constant"``
            or ``"cosine"`` (to 10% of the peak at the last step).
        einsum_norm: normalise structured cores (docs/design.md section 4).
        log_every, eval_batches: logging period in steps; held-out batches per eval (0 = none).
        log_points: ``None`` (log every ``log_every`` steps) or the number of log-spaced steps
            to log on (>= 2, the last step included; replaces ``log_every``).
        data, block_size: corpus path and context length (``charlm`` only).
        structure may also be ``"btt_moe"`` or ``"moe"`` (``MOE_STRUCTURES``).
        num_experts, top_k, aux_loss_weight: MoE settings, used by the MoE structures only:
            experts (``None`` = 8), active experts per token, and the weight of the mean
            auxiliary loss of the MoE layers in the training loss.
        divergence_factor: after warmup, a batch loss above this x the initial loss = diverged.
    """

    task: str = "regression"
    structure: str = "dense"
    width: int = 64
    depth: int | None = None
    base_width: int = 64
    seed: int = 0
    lr: float = 3e-3
    steps: int = 500
    batch_size: int = 128
    warmup_steps: int = 50
    schedule: str = "constant"
    weight_decay: float = 0.0
    einsum_norm: bool = True
    log_every: int = 25
    log_points: int | None = None
    eval_batches: int = 4
    data: str | None = None
    block_size: int = 128
    num_experts: int | None = None
    top_k: int = 2
    aux_loss_weight: float = 0.01
    divergence_factor: float = 4.0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field, its value and what was expected."""

        def bad(name: str, expected: str) -> ValueError:
            return ValueError(f"TrainConfig.{name} must be {expected}, got {getattr(self, name)!r}")

        if not isinstance(self.task, str) or self.task not in task_names():
            raise ValueError(f"TrainConfig.task must be one of {', '.join(task_names())}, got {self.task!r}")
        if not isinstance(self.structure, str):
            raise bad("structure", "a structure name or theta text '(a|b|g|d|e|f|r)'")
        try:
            parse_structure(self.structure)
        except (ValueError, TypeError) as err:
            raise ValueError(f"TrainConfig.structure={self.structure!r} is not a valid structure: {err}") from None
        for name in ("width", "base_width", "steps", "batch_size", "log_every", "block_size", "top_k"):
            check_positive_int(getattr(self, name), f"TrainConfig.{name}")
        for name in ("seed", "warmup_steps", "eval_batches"):
            check_non_negative_int(getattr(self, name), f"TrainConfig.{name}")
        if self.log_points is not None and (not _is_int(self.log_points) or self.log_points < 2):
            raise bad("log_points", "None (log every log_every steps) or an integer >= 2")
        if self.depth is not None and (not _is_int(self.depth) or self.depth < 1):
            raise bad("depth", "None (task default) or a positive integer")
        check_positive_float(self.lr, "TrainConfig.lr")
        for name in ("weight_decay", "aux_loss_weight"):
            check_non_negative_float(getattr(self, name), f"TrainConfig.{name}")
        if not _is_num(self.divergence_factor) or not self.divergence_factor > 1:
            raise bad("divergence_factor", "a number > 1")
        if self.schedule not in SCHEDULES:
            raise bad("schedule", f"one of {', '.join(SCHEDULES)}")
        if not isinstance(self.einsum_norm, bool):
            raise bad("einsum_norm", "True or False")
        if self.data is not None:
            if not isinstance(self.data, str) or not self.data:
                raise bad("data", "None or a non-empty path string")
            if "data" not in task_options(self.task):
                raise ValueError(f"TrainConfig.data is only used by tasks that read a corpus; "
                                 f"task {self.task!r} takes none, got data={self.data!r}")
        if self.num_experts is not None:
            if not _is_int(self.num_experts) or self.num_experts < 1:
                raise bad("num_experts", "None (no MoE) or a positive integer")
            if self.top_k > self.num_experts:
                raise ValueError(f"TrainConfig.top_k must be <= num_experts={self.num_experts}, got {self.top_k!r}")

    def structure_config(self) -> StructureConfig:
        """``structure`` as a typed config; an MoE kind gets ``num_experts`` (None: 8) and ``top_k``."""
        config = parse_structure(self.structure)
        if config.is_moe:
            config = parse_structure(config, num_experts=self.num_experts or DEFAULT_NUM_EXPERTS, top_k=self.top_k)
        return config

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def log_steps(self) -> list[int]:
        """The updates after which a point is logged (step 0 is always logged too)."""
        if self.log_points is not None:
            return log_spaced_steps(self.steps, self.log_points)
        return sorted({*range(self.log_every, self.steps + 1, self.log_every), self.steps})

    def run_id(self) -> str:
        """Stable 16-hex-digit id: blake2b of the sorted JSON of every field."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


@dataclass
class Point:
    """One logged point of a run's curve."""

    step: int
    tokens: int
    compute: float
    train_loss: float
    eval_loss: float | None


@dataclass
class RunResult:
    """What a run produced. ``status`` is ``"finished"`` or ``"diverged"``.

    ``params``: trainable parameters of the model as trained; ``flops_per_token``: training
    FLOPs per token (3 x the measured forward); ``final_eval_loss``: the eval loss at the last
    step (``None`` when the run diverged or evaluation is off); ``diverged_step``: the update at
    which divergence was detected.
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


# ---------------------------------------------------------------------------------- helpers
def log_spaced_steps(steps: int, n: int) -> list[int]:
    """About ``n`` distinct steps in ``1..steps``, log-spaced, always including ``steps``.

    Step k of ``n`` is ``round(steps ** (k / (n - 1)))`` for k = 0..n-1; early steps that round
    to the same integer are merged, so short runs get fewer than ``n``.
    """
    if not _is_int(steps) or steps < 1:
        raise ValueError(f"log_spaced_steps: steps must be a positive integer, got {steps!r}")
    if not _is_int(n) or n < 2:
        raise ValueError(f"log_spaced_steps: n must be an integer >= 2, got {n!r}")
    return sorted({max(1, min(steps, round(steps ** (k / (n - 1))))) for k in range(n)} | {steps})


def _task_for(config: TrainConfig) -> Task:
    accepted = task_options(config.task)
    options: dict = {}
    if config.depth is not None:
        options["depth"] = config.depth
    if config.data is not None:
        options["data"] = config.data
    if "block_size" in accepted:
        options["block_size"] = config.block_size
    return get_task(config.task, **options)


def build_model(config: TrainConfig, task: Task | None = None) -> tuple[Task, nn.Module]:
    """The task and its model for ``config``, structured and initialised from ``config.seed``.

    Every structure goes through ``structurize`` (``"dense"`` included), so init scales,
    ``einsum_norm`` and learning-rate rules are the same code path for every structure.
    """
    task = task if task is not None else _task_for(config)
    model = task.build_model(config.width, seed=config.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        # the structure's handler: EinsumLinear layers, BTT-MoE layers, or FFN experts + dense layers
        structurize(model, config.structure_config(), select=task.structured_select, einsum_norm=config.einsum_norm)
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
    """AdamW over ``einsearch.param_groups`` (muP rates) and a ``LambdaLR`` that scales each
    group's own rate by ``lr_factor``."""
    groups = param_groups(model, config.lr, base_width=config.base_width)
    optimizer = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: lr_factor(k, config))
    return optimizer, scheduler


def _to_model(batch: tuple[Tensor, Tensor], dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    return tuple(t.to(dtype) if t.is_floating_point() else t for t in batch)  # type: ignore[return-value]


# ------------------------------------------------------------------------------------ train
def train(config: TrainConfig, progress: Callable[[int, float], None] | None = None) -> RunResult:
    """Train one model as ``config`` says and return its curve.

    ``progress(step, batch_loss)`` is called after every optimizer update (for progress bars).
    """
    t0 = time.perf_counter()
    config.validate()
    task, model = build_model(config)
    dtype = next(model.parameters()).dtype
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)

    optimizer, scheduler = make_optimizer(model, config)

    stream = torch.Generator().manual_seed(config.seed)
    tokens_per_step = config.batch_size * task.tokens_per_example
    first = _to_model(task.batch(0, config.batch_size, stream), dtype)
    fwd_per_token = count_forward_flops(model, first[0]) / (first[0].shape[0] * task.tokens_per_example)
    flops_per_token = 3.0 * fwd_per_token

    def evaluate() -> float | None:
        if config.eval_batches == 0:
            return None
        return task.eval_loss(model, num_batches=config.eval_batches, batch_size=config.batch_size)

    logger.info("run %s: task=%s structure=%s width=%d params=%d train FLOPs/token=%.4g steps=%d",
                config.run_id(), config.task, config.structure, config.width, params, flops_per_token, config.steps)

    log_at = set(config.log_steps())
    is_moe = config.structure_config().is_moe  # MoE layers add their auxiliary loss
    points: list[Point] = []
    status, diverged_step = "finished", None
    initial_loss: float | None = None
    window: list[float] = []
    model.train()
    for step in range(1, config.steps + 1):
        batch = first if step == 1 else _to_model(task.batch(step - 1, config.batch_size, stream), dtype)
        loss = task.loss(model, batch)
        value = float(loss.detach())
        if initial_loss is None:
            initial_loss = value
            points.append(Point(0, 0, 0.0, value, evaluate()))
        past_warmup = step > config.warmup_steps
        if not math.isfinite(value) or (past_warmup and value > config.divergence_factor * initial_loss):
            status, diverged_step = "diverged", step
            logger.warning("run %s diverged at step %d: batch loss %.4g (initial %.4g, factor %g)",
                           config.run_id(), step, value, initial_loss, config.divergence_factor)
            break
        optimizer.zero_grad(set_to_none=True)
        if is_moe:
            loss = loss + config.aux_loss_weight * aux_loss(model)
        loss.backward()
        optimizer.step()
        scheduler.step()
        window.append(value)
        if progress is not None:
            progress(step, value)
        if step in log_at:
            eval_loss = evaluate()
            if eval_loss is not None and not math.isfinite(eval_loss):
                status, diverged_step = "diverged", step
                logger.warning("run %s diverged at step %d: eval loss %s", config.run_id(), step, eval_loss)
                break
            tokens = step * tokens_per_step
            points.append(Point(step, tokens, flops_per_token * tokens, sum(window) / len(window), eval_loss))
            window = []
            logger.info("run %s step %d: train %.4f eval %s", config.run_id(), step, points[-1].train_loss,
                        "-" if eval_loss is None else f"{eval_loss:.4f}")

    final = points[-1].eval_loss if status == "finished" and points else None
    wall = time.perf_counter() - t0
    logger.info("run %s %s in %.1fs (%.1f steps/s)", config.run_id(), status, wall,
                (diverged_step or config.steps) / max(wall, 1e-9))
    return RunResult(config=config, status=status, params=params, flops_per_token=flops_per_token,
                     points=points, wall_time_s=wall, final_eval_loss=final,
                     diverged_step=diverged_step, forward_flops_per_token=fwd_per_token)
