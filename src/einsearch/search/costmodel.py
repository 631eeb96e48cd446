"""The cost model: training FLOPs per token of a (task, structure, width), and compute-matched widths.

A leaf of the pipeline: sweep specs (``einsearch.search.spec``), the run table and the learning
rate check (``einsearch.search.runplan``) and ``einsearch explore`` all size runs with it, and it
imports none of them.

Compute-matched widths (``match_compute: true`` in a spec; docs/design.md section 6)
---------------------------------------------------------------------------------------
A structured layer is cheaper per width than a dense one, so the same width grid gives a
structure's frontier far less training compute than dense's and the two loss ranges barely
overlap. With ``match_compute`` each structure without widths of its own gets, for every dense
width ``w_d``, the candidate width ``w`` whose training FLOPs per token ``F_S(w)`` is closest to
dense's in log:

    w_S(w_d) = argmin_{w in candidates} | log F_S(w) - log F_dense(w_d) |

so every structure's runs span the same FLOPs-per-token window as dense's (and, with the same
steps and batch, the same training-compute window). ``F`` is exactly what the trainer's ledger
records (3 x the forward FLOPs counted by ``FlopCounterMode`` on the model as built): the dense
model is counted on the meta device and each structured layer's dense cost is replaced by its
plan's (``einsearch.make_plan(theta, d_in, d_out).flops``), which equals the counter's figure for
an ``EinsumLinear``; structures that are not a single theta (mixtures of experts) are built and
counted for real. Candidates: the widths ``m * 2**k`` (m = 4..7) that are multiples of 16, plus
16, 32, 48, i.e. at most 25% apart above 64, that the task can build (``charlm`` needs
multiples of the head size 64 from 64 up), from 16 to ``max_width_factor`` x the largest dense
width. Two dense widths that land on the same width give that structure one run, not two.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["flops_per_token", "width_candidates", "match_width", "task_for", "memory_per_run", "MODEL_OPTIONS",
           "TRAIN_BYTES_PER_PARAM"]

#: TrainConfig fields that change a model's FLOPs per token (besides task, structure, width)
MODEL_OPTIONS = ("depth", "block_size", "data", "num_experts", "top_k", "einsum_norm", "task_options")


def width_candidates(max_width: int, multiple: int = 16) -> list[int]:
    """Candidate widths up to ``max_width``: 16, 32, 48 and m * 2**k (m = 4..7) divisible by
    ``multiple``; consecutive candidates are at most 25% apart above 64."""
    out = {w for w in (16, 32, 48) if w <= max_width}
    k = 4
    while 4 * 2 ** k <= max_width:
        out.update(m * 2 ** k for m in (4, 5, 6, 7) if m * 2 ** k <= max_width)
        k += 1
    return sorted(w for w in out if w % multiple == 0)


def task_for(task: str, train: Mapping[str, Any] | None = None) -> Any:
    """The task a sweep's runs use: ``task`` built with the options its ``train`` settings give
    (``TrainConfig.task_kwargs``), cached."""
    from .config import TrainConfig

    model_opts = {k: v for k, v in (train or {}).items() if k in MODEL_OPTIONS}
    options = TrainConfig(task=task, **model_opts).task_kwargs()
    return _get_task(task, tuple(sorted(options.items())))


@functools.lru_cache(maxsize=8)
def _get_task(task: str, options: tuple) -> Any:
    from .tasks import get_task

    return get_task(task, **dict(options))


def _example_input(task: Any, device: str = "meta") -> Any:
    """One example's input (zeros) on ``device``: FLOP counts depend only on its shape."""
    import torch

    shape = tuple(1 if d == -1 else d for d in task.input_spec.shape)
    dtype = torch.int64 if task.input_spec.dtype.startswith("int") else torch.get_default_dtype()
    return torch.zeros(shape, dtype=dtype, device=device)


def _moe_forward_flops(cfg: Any, task: Any) -> int:
    """Forward FLOPs of one example through ``cfg``'s MoE model, without making its weights.

    Routing decides how many tokens each expert gets, which the meta device cannot show, and a
    real model at a GPU preset's widths holds billions of expert weights (minutes to build on a
    CPU). So the model is built on the meta device, each MoE module is swapped for a stand-in
    that only shapes its output, the rest is counted there, and each MoE module adds its active
    FLOPs per token (router + top_k experts), which is what ``FlopCounterMode`` counts on a real
    forward (tests/search/test_costmodel.py compares the two)."""
    import torch
    from torch import nn

    from einsearch.moe import BTTMoELinear, MoEFFN
    from einsearch.replace import set_submodule

    from .train import build_model, count_forward_flops

    class _Shaped(nn.Module):
        def __init__(self, d_out: int) -> None:
            super().__init__()
            self.d_out = d_out

        def forward(self, x):
            return x.new_zeros(*x.shape[:-1], self.d_out)

    with torch.device("meta"):
        _, model = build_model(cfg, task)
    moe = [(name, m) for name, m in model.named_modules() if isinstance(m, (BTTMoELinear, MoEFFN))]
    active = 0
    for name, module in moe:
        active += module.flops_per_token() * task.tokens_per_example
        set_submodule(model, name, _Shaped(module.d_out if isinstance(module, BTTMoELinear) else module.width))
    return count_forward_flops(model, _example_input(task)) + active


@functools.lru_cache(maxsize=4096)
def _flops_cached(task_name: str, structure: str, width: int, options: tuple) -> float:
    import torch
    from torch import nn

    from einsearch import make_plan, resolve_structure

    from .config import TrainConfig
    from .train import count_forward_flops

    opts = {k: json.loads(v) if k == "task_options" else v for k, v in options}
    task = task_for(task_name, opts)
    try:
        theta = resolve_structure(structure)
    except (ValueError, TypeError):
        theta = None
    if theta is None:  # not one point of the space: a mixture of experts
        cfg = TrainConfig(task=task_name, structure=structure, width=width, **opts)
        fwd = _moe_forward_flops(cfg, task)
    else:
        with torch.device("meta"):
            model = task.build_model(width, seed=0)
        fwd = count_forward_flops(model, _example_input(task))
        for name, module in model.named_modules():
            if isinstance(module, nn.Linear) and task.structured_select(name, module):
                d_in, d_out = module.in_features, module.out_features
                # per token; the example holds tokens_per_example of them
                fwd += ((make_plan(theta, d_in, d_out).flops - 2 * d_in * d_out)
                        * task.tokens_per_example)
    x_tokens = task.tokens_per_example
    return 3.0 * fwd / x_tokens


def flops_per_token(task: str, structure: str, width: int,
                    train: Mapping[str, Any] | None = None) -> float:
    """Training FLOPs per token (3 x forward) of ``structure`` at ``width`` on ``task``, as the
    trainer's ledger counts them; ``train`` holds the model options (depth, block_size, ...).

    Raises ValueError (naming the structure and width) when the task cannot build that width.
    """
    train = dict(train or {})
    # hashable for the cache: a mapping (task_options) as its sorted JSON
    options = tuple(sorted((k, json.dumps(train[k], sort_keys=True) if isinstance(train[k], Mapping) else train[k])
                           for k in MODEL_OPTIONS if k in train))
    try:
        return _flops_cached(task, structure, int(width), options)
    except (ValueError, TypeError, RuntimeError) as err:
        raise ValueError(f"widths: structure {structure!r} cannot be built at width {width} on "
                         f"task {task!r}: {err}") from None


def match_width(target: float, cost: Callable[[int], float], candidates: list[int]) -> int:
    """The candidate whose ``cost`` is closest to ``target`` in log (``cost`` increasing in
    width; candidates it cannot build, ``cost`` raising ValueError, are skipped)."""
    values: dict[int, float | None] = {}

    def value(i: int) -> float | None:
        if i not in values:
            try:
                values[i] = cost(candidates[i])
            except ValueError:
                values[i] = None
        return values[i]

    # bisect for where cost crosses the target, stepping right past unbuildable widths
    lo, hi = 0, len(candidates) - 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        j = mid
        while value(j) is None and j < hi - 1:
            j += 1
        v = value(j)
        if v is None:
            hi = mid
        elif v >= target:
            hi = j
        else:
            lo = j
    usable = [(candidates[i], v) for i in range(max(0, lo - 2), min(len(candidates), hi + 3))
              if (v := value(i)) is not None and v > 0]
    if not usable:
        usable = [(candidates[i], v) for i in range(len(candidates))
                  if (v := value(i)) is not None and v > 0]
    if not usable:
        raise ValueError(f"widths: no candidate width in {candidates[0]}..{candidates[-1]} "
                         "can be built")
    return min(usable, key=lambda wv: (abs(math.log(wv[1] / target)), wv[0]))[0]


# ------------------------------------------------------------------------------------------
# memory: is a planned run going to fit on its device?

#: bytes per parameter while training with AdamW in float32: weight, gradient, two moments
TRAIN_BYTES_PER_PARAM = 16


def memory_per_run(task: str, structure: str, width: int, train: Mapping[str, Any] | None = None) -> int:
    """Estimated peak bytes of one training run: parameters, gradients and AdamW's moments
    (16 bytes per parameter) plus the activations autograd keeps, estimated as the outputs of
    every leaf module in a forward on one example (measured on the CPU at batch 1, counting
    elements, so MoE routing and padding are included) times the batch size, at 2 bytes per
    element in bf16/fp16 and 4 in fp32. An estimate for a go / no-go check before a sweep, not
    an allocator's figure: it leaves out workspaces and fragmentation.
    """
    import torch

    from .config import TrainConfig
    from .train import build_model

    train = dict(train or {})
    opts = {k: train[k] for k in (*MODEL_OPTIONS, "precision") if k in train}
    cfg = TrainConfig(task=task, structure=structure, width=int(width), **opts)
    built, model = build_model(cfg, task_for(task, train))
    params = sum(p.numel() for p in model.parameters())
    elements = [0]

    def count(module: Any, inputs: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor):
            elements[0] += output.numel()

    # modules that compute: leaves, and modules with weights of their own (a BTT-MoE layer's
    # output; its router is a leaf)
    computing = [m for m in model.modules() if not list(m.children()) or list(m.parameters(recurse=False))]
    handles = [m.register_forward_hook(count) for m in computing]
    try:
        with torch.no_grad():
            model(_example_input(built, "cpu"))
    finally:
        for h in handles:
            h.remove()
    batch = int(train.get("batch_size", TrainConfig.batch_size))
    per_element = 2 if cfg.precision in ("bf16", "fp16") else 4
    return TRAIN_BYTES_PER_PARAM * params + elements[0] * batch * per_element
