"""What a run is (``TrainConfig``, hashed into its ``run_id``) and how it executes (``RunOptions``).

The split (docs/design.md section 10): a run's result depends on its identity — task and its
options, structure, width, seed, learning rate, steps, batch, precision, recipe settings —
and never on where or how it executes. ``TrainConfig`` holds the identity; ``RunOptions``
holds the device, the torch thread count, ``torch.compile`` and the checkpoint folder and
interval, none of which enter the run id, so a run started on a CPU can be resumed on a GPU
and a store keeps its ids whatever the machine.

Run ids of existing stores. ``run_id`` is the blake2b hash of the sorted JSON of the identity
fields. Fields added after the first store schema (``FIELDS_SINCE_V1``, e.g. ``precision``)
enter that JSON only when they differ from their default, so every run id written before they
existed is unchanged, and a store written by an earlier release resumes with nothing retrained.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
from dataclasses import dataclass, field
from typing import Any

from einsearch import ROUTER_GATES, ROUTER_LRS, StructureConfig, parse_structure, structure_kinds
from einsearch._checks import (
    check_bool,
    check_non_negative_float,
    check_non_negative_int,
    check_positive_float,
    check_positive_int,
)
from einsearch.structures import structure_options

from .device import PRECISIONS
from .tasks import get_task_factory, is_import_path, task_names
from .tasks import task_options as accepted_options

__all__ = ["TrainConfig", "RunOptions", "SCHEDULES", "MOE_STRUCTURES", "DEFAULT_NUM_EXPERTS",
           "FIELDS_SINCE_V1", "DEFAULT_CHECKPOINT_EVERY_S", "log_spaced_steps", "MOE_FIELDS",
           "ROUTER_INIT_CHOICES"]

SCHEDULES = ("constant", "cosine")
#: MoE structures: "btt_moe" = a BTTMoELinear in every structured layer, "moe" = the dense model
#: with a standard FFN MoE (``einsearch.moe.MoEFFN``) in every transformer block
MOE_STRUCTURES = tuple(k for k in structure_kinds() if parse_structure(k).is_moe)
#: experts of an MoE structure when ``TrainConfig.num_experts`` is None
DEFAULT_NUM_EXPERTS = 8
#: identity fields added after store schema 1, with the value every older run had: at that
#: value a field stays out of the hash (see the module docstring)
FIELDS_SINCE_V1: dict[str, Any] = {"precision": "fp32", "task_options": {}, "router_lr": "plain",
                                   "router_init": "zero", "dense_norm": True, "beta1": 0.9, "beta2": 0.999,
                                   "grad_clip": 0.0, "depth_mup": False, "qk_norm": True, "router_gate": "topk"}
#: MoE recipe fields: they change nothing in a run that is not a mixture of experts
MOE_FIELDS = ("router_lr", "router_init", "router_gate")
#: MoE fields hashed since store schema 1: a run without experts is hashed at these values
#: whatever it was given, so a sweep that varies them retrains the mixtures, not dense
#: (``num_experts`` is not among them: presets set it for every run, and those ids must not move)
MOE_FIELDS_V1 = {"aux_loss_weight": 0.01, "top_k": 2}
#: router initialisations: the structure's own ("auto": zero for BTT-MoE, N(0, 1/d) for FFN-MoE)
ROUTER_INIT_CHOICES = ("auto", "zero", "normal")
#: seconds between mid-run checkpoints when a checkpoint folder is set (``--checkpoint-every``)
DEFAULT_CHECKPOINT_EVERY_S = 300.0

#: TrainConfig fields handed to the task's factory when it takes them
_TASK_FIELDS = ("depth", "data", "block_size", "depth_mup", "qk_norm")
#: task fields added since store schema 1, with their defaults (an error on a task that does not take them)
_TASK_RECIPE = {"depth_mup": False, "qk_norm": True}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _takes_any_option(task: str) -> bool:
    """Whether the task's factory takes ``**kwargs`` (then any option goes through)."""
    params = inspect.signature(get_task_factory(task)).parameters.values()
    return any(p.kind == p.VAR_KEYWORD for p in params)


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


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines one training run (and, hashed, its ``run_id``).

    Fields:
        task: registered task name (``"regression"``, ``"charlm"``, ``"tokens"``) or the import
            path of a task factory, ``"package.module:factory"`` (imported where the run executes).
        task_options: further keyword options of the task's factory (JSON values).
        structure: a structure name (``"dense"``, ``"monarch"``, ``"btt(0.25)"``,
            ``"low_rank(0.5)"``) or theta text ``"(a|b|g|d|e|f|r)"``; also the MoE kinds
            ``"btt_moe"`` and ``"moe"`` (``MOE_STRUCTURES``).
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
        num_experts, top_k, aux_loss_weight: MoE settings, used by the MoE structures only:
            experts (``None`` = 8), active experts per token, and the weight of the mean
            auxiliary loss of the MoE layers in the training loss.
        divergence_factor: after warmup, a batch loss above this x the initial loss = diverged.
        precision: ``"fp32"``, or mixed precision ``"bf16"`` / ``"fp16"`` (torch autocast,
            float32 parameters; docs/design.md section 11).

    The training recipe (docs/design.md section 5; the authors' values in brackets):
        router_lr: MoE routers' rate, ``"mup"`` (lr x the width multiplier of the router's fan-in)
            [mup] or ``"plain"`` (the base lr at every width; einsearch before 0.3).
        router_init: ``"auto"`` (BTT-MoE zero, FFN-MoE N(0, 1/d)) [auto], ``"zero"``, ``"normal"``.
        router_gate: ``"topk"`` (softmax over the k kept logits; 1 at k = 1, so the router then
            learns from the balancing loss alone) [topk] or ``"switch"`` (the kept experts'
            probabilities under the softmax over all E, as the Switch Transformer).
        dense_norm: dense layers carry the einsum norm too (einsearch's default) [False: plain].
        beta1, beta2, grad_clip: AdamW betas [0.9, 0.95] and the gradient-norm clip (0: none) [1.0].
        depth_mup: GPT residual branches scaled by sqrt(3 / depth) [True]; qk_norm: LayerNorm on
            each head's queries and keys [True] (charlm / tokens tasks).
    Recipe fields that cannot change a run (MoE settings of a run without experts) stay out of
    its identity.
    """

    task: str = "regression"
    task_options: dict[str, Any] = field(default_factory=dict, hash=False)
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
    precision: str = "fp32"
    router_lr: str = "mup"
    router_init: str = "auto"
    router_gate: str = "topk"
    dense_norm: bool = True
    beta1: float = 0.9
    beta2: float = 0.999
    grad_clip: float = 0.0
    depth_mup: bool = False
    qk_norm: bool = True

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field, its value and what was expected."""

        def bad(name: str, expected: str) -> ValueError:
            return ValueError(f"TrainConfig.{name} must be {expected}, got {getattr(self, name)!r}")

        if not isinstance(self.task, str) or not (self.task in task_names() or is_import_path(self.task)):
            raise ValueError(f"TrainConfig.task must be one of {', '.join(task_names())} or an import path "
                             f"'package.module:factory', got {self.task!r}")
        accepted = accepted_options(self.task)  # imports a task named by its path: errors name it
        self._check_task_options(accepted)
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
        if self.precision not in PRECISIONS:
            raise bad("precision", f"one of {', '.join(PRECISIONS)}")
        if self.router_lr not in ROUTER_LRS:
            raise bad("router_lr", f"one of {', '.join(ROUTER_LRS)}")
        if self.router_init not in ROUTER_INIT_CHOICES:
            raise bad("router_init", f"one of {', '.join(ROUTER_INIT_CHOICES)}")
        if self.router_gate not in ROUTER_GATES:
            raise bad("router_gate", f"one of {', '.join(ROUTER_GATES)}")
        for name in ("dense_norm", "depth_mup", "qk_norm"):
            if not isinstance(getattr(self, name), bool):
                raise bad(name, "True or False")
        for name in ("beta1", "beta2"):
            value = getattr(self, name)
            if not _is_num(value) or not 0 <= value < 1:
                raise bad(name, "a number in [0, 1)")
        check_non_negative_float(self.grad_clip, "TrainConfig.grad_clip")
        for name, default in _TASK_RECIPE.items():
            if getattr(self, name) != default and name not in accepted_options(self.task):
                raise ValueError(f"TrainConfig.{name} is a setting of the GPT tasks; task {self.task!r} "
                                 f"takes none, got {name}={getattr(self, name)!r}")
        if self.data is not None:
            if not isinstance(self.data, str) or not self.data:
                raise bad("data", "None or a non-empty path string")
            if "data" not in accepted_options(self.task):
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
            settings: dict[str, Any] = {"num_experts": self.num_experts or DEFAULT_NUM_EXPERTS, "top_k": self.top_k,
                                        "router_lr": self.router_lr, "router_gate": self.router_gate}
            if self.router_init != "auto":
                settings["router_init"] = self.router_init
            written = structure_options(self.structure)  # "btt_moe(num_experts=4, top_k=1)" wins over the fields
            config = parse_structure(config, **{k: v for k, v in settings.items() if k not in written})
        return config

    def layer_norm(self) -> bool:
        """Whether the structured layers carry the einsum norm: ``einsum_norm``, except for dense
        layers with ``dense_norm`` off."""
        return self.einsum_norm and (self.dense_norm or not parse_structure(self.structure).has_dense_layers)

    def _check_task_options(self, accepted: set[str]) -> None:
        opts = self.task_options
        if not isinstance(opts, dict) or not all(isinstance(k, str) for k in opts):
            raise ValueError(f"TrainConfig.task_options must be a mapping of option names to values, got {opts!r}")
        try:
            json.dumps(opts, sort_keys=True)
        except (TypeError, ValueError):
            raise ValueError(f"TrainConfig.task_options must hold JSON values (they are part of the run's "
                             f"identity), got {opts!r}") from None
        clash = sorted(set(opts) & set(_TASK_FIELDS))
        if clash:
            raise ValueError(f"TrainConfig.task_options: set {clash} as TrainConfig fields (train: section), not "
                             "task_options")
        if not _takes_any_option(self.task):
            unknown = sorted(set(opts) - accepted)
            if unknown:
                raise ValueError(f"TrainConfig.task_options: task {self.task!r} does not take {unknown}; it takes "
                                 f"{sorted(accepted) or 'no options'}")

    def task_kwargs(self) -> dict[str, Any]:
        """The keyword options of ``get_task(self.task, ...)``: the fields the task takes and that
        are set, and ``task_options``."""
        accepted = accepted_options(self.task)
        fields = {k: getattr(self, k) for k in _TASK_FIELDS if k in accepted and getattr(self, k) is not None}
        return {**fields, **self.task_options}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def identity(self) -> dict[str, Any]:
        """What ``run_id`` hashes: every field, less the recipe fields that cannot change this
        run (MoE settings without experts, ``dense_norm`` without dense layers; ``MOE_FIELDS_V1`` are
        hashed at their defaults there) and less
        ``FIELDS_SINCE_V1`` at their old values."""
        d = self.to_dict()
        config = parse_structure(self.structure)
        if not config.is_moe:
            for name in MOE_FIELDS:
                d.pop(name, None)
            d.update(MOE_FIELDS_V1)
        if not config.has_dense_layers:
            d.pop("dense_norm", None)
        for name, old in FIELDS_SINCE_V1.items():
            if d.get(name) == old:
                d.pop(name, None)
        return d

    def log_steps(self) -> list[int]:
        """The updates after which a point is logged (step 0 is always logged too)."""
        if self.log_points is not None:
            return log_spaced_steps(self.steps, self.log_points)
        return sorted({*range(self.log_every, self.steps + 1, self.log_every), self.steps})

    def run_id(self) -> str:
        """Stable 16-hex-digit id: blake2b of the sorted JSON of :meth:`identity`."""
        text = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


@dataclass(frozen=True)
class RunOptions:
    """How a run executes; none of it enters the run id.

    Fields:
        device: a resolved device text (``"cpu"``, ``"cuda:0"``; see
            :func:`einsearch.search.device.resolve_device`). Executors may pin each worker to
            its own GPU by replacing it.
        threads: torch CPU threads (None: leave torch's setting).
        compile: run the model through ``torch.compile`` (meant for GPUs: on a 2-core CPU with
            torch 2.13 it made a 150-step dense charlm run 3.4x slower, 46 s against 13.5 s, and a
            structured GPT's compiled backward crashed with heap corruption after ~20 steps;
            the CLI refuses it on the CPU).
        checkpoint_dir: folder for mid-run checkpoints (None: none); each run writes
            ``<checkpoint_dir>/<run_id>.pt`` and removes it when it ends.
        checkpoint_every: seconds of training between checkpoints (0: only ``checkpoint_dir``'s
            resume, never a new checkpoint).
    """

    device: str = "cpu"
    threads: int | None = None
    compile: bool = False
    checkpoint_dir: str | None = None
    checkpoint_every: float = DEFAULT_CHECKPOINT_EVERY_S

    def __post_init__(self) -> None:
        if not isinstance(self.device, str) or not self.device:
            raise ValueError(f"RunOptions.device must be a device text such as 'cpu' or 'cuda:0', "
                             f"got {self.device!r}")
        if self.threads is not None:
            check_positive_int(self.threads, "threads", "RunOptions")
        check_bool(self.compile, "compile", "RunOptions")
        if self.checkpoint_dir is not None and (not isinstance(self.checkpoint_dir, str) or not self.checkpoint_dir):
            raise ValueError(f"RunOptions.checkpoint_dir must be None or a folder path, got {self.checkpoint_dir!r}")
        check_non_negative_float(self.checkpoint_every, "checkpoint_every", "RunOptions")

    def replace(self, **changes: Any) -> "RunOptions":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
