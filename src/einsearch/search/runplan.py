"""Which runs a sweep trains: compute-matched widths, the run table and the learning-rate check.

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

The learning-rate check (``einsearch search --lr-check``)
--------------------------------------------------------
muP transfers one base learning rate across widths and structures; the check tests that
instead of assuming it. Each structure is trained at its middle width (its own, compute-matched
one) with the transferred rate x ``LR_CHECK_FACTORS`` = (1/3, 1, 3) (half a decade each way,
symmetric in log), first seed only, for ``LR_CHECK_FRACTION`` of the sweep's steps, into its own
store ``OUT/lr_check/``. A structure whose lowest final held-out loss is not at the transferred
rate is flagged. The table and the losses go to ``OUT/lr_check/lr_check.json``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .sweep import SweepSpec

__all__ = ["flops_per_token", "width_candidates", "match_width", "run_table", "format_run_table",
           "lr_check", "format_lr_check", "LR_CHECK_FACTORS", "LR_CHECK_FRACTION",
           "MODEL_OPTIONS"]

log = logging.getLogger(__name__)

#: multipliers of the transferred learning rate that ``--lr-check`` tries
LR_CHECK_FACTORS = (1 / 3, 1.0, 3.0)
#: fraction of the sweep's steps that each ``--lr-check`` run trains
LR_CHECK_FRACTION = 0.25
#: TrainConfig fields that change a model's FLOPs per token (besides task, structure, width)
MODEL_OPTIONS = ("depth", "block_size", "data", "num_experts", "top_k", "einsum_norm")


def width_candidates(max_width: int, multiple: int = 16) -> list[int]:
    """Candidate widths up to ``max_width``: 16, 32, 48 and m * 2**k (m = 4..7) divisible by
    ``multiple``; consecutive candidates are at most 25% apart above 64."""
    out = {w for w in (16, 32, 48) if w <= max_width}
    k = 4
    while 4 * 2 ** k <= max_width:
        out.update(m * 2 ** k for m in (4, 5, 6, 7) if m * 2 ** k <= max_width)
        k += 1
    return sorted(w for w in out if w % multiple == 0)


def _task_options(train: Mapping[str, Any], task: str) -> dict[str, Any]:
    from .tasks import task_options

    accepted = task_options(task)
    opts: dict[str, Any] = {k: train[k] for k in ("depth", "data", "block_size")
                            if k in accepted and train.get(k) is not None}
    return opts


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


@functools.lru_cache(maxsize=4096)
def _flops_cached(task_name: str, structure: str, width: int, options: tuple) -> float:
    import torch
    from torch import nn

    from einsearch import make_plan, resolve_structure

    from .train import TrainConfig, build_model, count_forward_flops

    opts = dict(options)
    task = _get_task(task_name, tuple(sorted(_task_options(opts, task_name).items())))
    try:
        theta = resolve_structure(structure)
    except (ValueError, TypeError):
        theta = None
    if theta is None:  # not one point of the space (an MoE): build it for real and count
        cfg = TrainConfig(task=task_name, structure=structure, width=width, **opts)
        _, model = build_model(cfg, task)
        x = _example_input(task, "cpu")
        fwd = count_forward_flops(model, x)
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
    options = tuple(sorted((k, train[k]) for k in MODEL_OPTIONS if k in train))
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
# the run table (``einsearch search --dry-run``)


def run_table(spec: SweepSpec) -> list[dict[str, Any]]:
    """One row per (structure, width): FLOPs/token, steps, batch, tokens, compute per run,
    seeds, lrs and the number of runs. Computing it checks that every width can be built."""
    from .train import TrainConfig

    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    train = {**defaults, **spec.train}
    steps, batch = train["steps"], train["batch_size"]
    task = _get_task(spec.task, tuple(sorted(_task_options(train, spec.task).items())))
    tokens = steps * batch * task.tokens_per_example
    rows = []
    for s in spec.structures:
        for w in spec.widths_for(s):
            f = flops_per_token(spec.task, s, w, spec.train)
            rows.append({"structure": s, "width": w, "flops_per_token": f, "steps": steps,
                         "batch_size": batch, "tokens": tokens, "compute": f * tokens,
                         "seeds": list(spec.seeds), "lrs": spec.lrs_for(s),
                         "runs": len(spec.seeds) * len(spec.lrs_for(s))})
    return rows


def format_run_table(spec: SweepSpec) -> str:
    """The run table as text, with totals (what ``--dry-run`` prints)."""
    rows = run_table(spec)
    dense = [r["flops_per_token"] for r in rows if r["structure"] == spec.reference_structure()]
    lines = [f"task {spec.task}: {len(rows)} (structure, width) pairs, "
             f"{sum(r['runs'] for r in rows)} runs; base_width {spec.base_width()}; "
             f"widths {'compute-matched to dense' if spec.match_compute else 'as given'}",
             f"{'structure':<34} {'width':>6} {'FLOPs/token':>12} {'x dense':>8} {'steps':>6} "
             f"{'batch':>6} {'compute/run':>12}  seeds  lrs"]
    for r in rows:
        near = min(dense, key=lambda d: abs(math.log(r["flops_per_token"] / d))) if dense else None
        ratio = f"{r['flops_per_token'] / near:8.2f}" if near else f"{'':>8}"
        lines.append(f"{r['structure']:<34} {r['width']:>6} {r['flops_per_token']:>12.4g} {ratio} "
                     f"{r['steps']:>6} {r['batch_size']:>6} {r['compute']:>12.3g}  "
                     f"{','.join(map(str, r['seeds'])):<5}  "
                     f"{','.join(f'{x:g}' for x in r['lrs'])}")
    total = sum(r["compute"] * r["runs"] for r in rows)
    lines.append(f"total training compute {total:.3g} FLOPs ('x dense': FLOPs/token over the "
                 "closest dense width's)")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------
# the learning-rate check


def _middle(widths: list[int]) -> int:
    return sorted(widths)[(len(widths) - 1) // 2]


def _transferred(lrs: list[float]) -> float:
    """The lr a check centres on: the middle of the sweep's (lower middle for an even count)."""
    return sorted(lrs)[(len(lrs) - 1) // 2]


def lr_check_spec(spec: SweepSpec, *, factors: tuple[float, ...] = LR_CHECK_FACTORS,
                  fraction: float = LR_CHECK_FRACTION
                  ) -> tuple[SweepSpec, dict[str, float], dict[str, int]]:
    """The check's own spec, each structure's transferred lr and its check width."""
    from .sweep import SweepSpec
    from .train import TrainConfig

    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    transferred = {s: _transferred(spec.lrs_for(s)) for s in spec.structures}
    widths = {s: _middle(spec.widths_for(s)) for s in spec.structures}
    steps = max(1, round(spec.train.get("steps", defaults["steps"]) * fraction))
    warmup = min(steps - 1, round(spec.train.get("warmup_steps", defaults["warmup_steps"])
                                  * fraction))
    train = {**spec.train, "steps": steps, "warmup_steps": max(0, warmup),
             "base_width": spec.base_width()}
    if train.get("log_points") is None:
        train["log_every"] = max(1, min(train.get("log_every", defaults["log_every"]), steps))
    check = SweepSpec(task=spec.task, structures=list(spec.structures),
                      widths={s: [w] for s, w in widths.items()}, seeds=spec.seeds[:1],
                      lrs={s: [lr * f for f in factors] for s, lr in transferred.items()},
                      train=train, include_dense=False,
                      description=f"lr check of: {spec.description}".strip())
    return check, transferred, widths


def lr_check(spec: SweepSpec, out_dir: str | os.PathLike[str], *, jobs: int = 1,
             show_progress: bool = True, train_fn: Callable | None = None,
             factors: tuple[float, ...] = LR_CHECK_FACTORS,
             fraction: float = LR_CHECK_FRACTION) -> dict[str, Any]:
    """Train each structure at ``factors`` x its transferred learning rate (see the module
    docstring) into ``out_dir/lr_check`` and return (and write to ``lr_check.json`` there) per
    structure: width, transferred lr, the lrs tried, loss per lr, best lr and ``flagged``
    (best is not the transferred lr)."""
    from .store import ResultStore
    from .sweep import run_sweep

    check, transferred, widths = lr_check_spec(spec, factors=factors, fraction=fraction)
    check.check_buildable()
    folder = Path(out_dir) / "lr_check"
    outcome = run_sweep(check, folder, jobs=jobs, show_progress=show_progress,
                        train_fn=train_fn, report=False)
    rows: dict[str, dict[int, float]] = {}
    with ResultStore(folder / "results.sqlite") as store:
        wanted = {c.run_id() for c in check.configs()}
        for run in store.runs(task=check.task):
            if run.run_id not in wanted:
                continue
            loss = run.final_eval_loss
            if run.status == "finished" and loss is None:
                pts = store.points(run.run_id)
                loss = pts[-1].train_loss if pts else None
            if run.status != "finished" or loss is None or not math.isfinite(loss):
                loss = math.inf
            rows.setdefault(run.structure, {})[_lr_key(run.lr, check.lrs_for(run.structure))] = loss
    common = set(transferred.values())
    result: dict[str, Any] = {"task": check.task,
                              "transferred_lr": next(iter(common)) if len(common) == 1 else None,
                              "factors": list(factors), "steps": check.train["steps"],
                              "seed": check.seeds[0], "base_width": check.train["base_width"],
                              "failed": outcome.failed, "structures": []}
    if len(common) == 1:
        result["lrs"] = check.lrs_for(check.structures[0])
    for s in check.structures:
        lrs = check.lrs_for(s)
        losses = rows.get(s, {})
        per_lr = [losses.get(i) for i in range(len(lrs))]
        known = [(x, i) for i, x in enumerate(per_lr) if x is not None]
        best = min(known)[1] if known and min(known)[0] < math.inf else None
        ref = lrs.index(min(lrs, key=lambda x: abs(math.log(x / transferred[s]))))
        result["structures"].append({
            "name": s, "width": widths[s], "transferred_lr": transferred[s], "lrs": lrs,
            "losses": [None if x is None or not math.isfinite(x) else x for x in per_lr],
            "best_lr": None if best is None else lrs[best],
            "flagged": best is None or best != ref})
    (folder / "lr_check.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    return result


def _lr_key(lr: float | None, lrs: list[float]) -> int:
    if lr is None:
        return -1
    return min(range(len(lrs)), key=lambda i: abs(math.log(lr / lrs[i])))


def format_lr_check(result: Mapping[str, Any]) -> str:
    """The check as a table: final held-out loss per lr (columns by factor of each
    structure's transferred lr), best lr, FLAG where the best is not the transferred one."""
    factors = result["factors"]
    common = result.get("transferred_lr")
    if common is not None:
        head = "".join(f"{f'lr {common * f:.3g}':>13}" for f in factors)
        about = f"transferred lr {common:g}"
    else:
        head = "".join(f"{f'x {f:.3g}':>13}" for f in factors)
        about = "each structure's transferred lr (column 'lr')"
    lines = [f"lr check: {about} (base_width {result['base_width']}), x "
             f"{', '.join(f'{f:.3g}' for f in factors)}, {result['steps']} steps, seed "
             f"{result['seed']}; final held-out loss (* = lowest)",
             f"{'structure':<34} {'width':>6}" + (f"{'lr':>9}" if common is None else "")
             + f"{head}  verdict"]
    flagged = 0
    for row in result["structures"]:
        cells = "" if common is not None else f"{row['transferred_lr']:>9.3g}"
        for x, lr in zip(row["losses"], row["lrs"]):
            mark = "*" if row["best_lr"] is not None and lr == row["best_lr"] else " "
            cells += f"{'diverged' if x is None else f'{x:.4g}':>12}{mark}"
        verdict = "ok" if not row["flagged"] else (
            "FLAG: no run finished" if row["best_lr"] is None
            else f"FLAG: best lr {row['best_lr']:.3g} is not the transferred one")
        flagged += row["flagged"]
        lines.append(f"{row['name']:<34} {row['width']:>6}{cells}  {verdict}")
    lines.append(f"{flagged} of {len(result['structures'])} structures flagged")
    return "\n".join(lines)
