"""Which runs a sweep trains: the run table (``--dry-run``) and the learning-rate check.

Widths and FLOPs per token come from the cost model, :mod:`einsearch.search.costmodel`.

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
import json
import logging
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ._io import atomic_write_text
from .costmodel import flops_per_token, memory_per_run, task_for
from .spec import SweepSpec

__all__ = ["run_table", "format_run_table", "check_memory", "lr_check", "lr_check_spec", "format_lr_check",
           "LR_CHECK_FACTORS", "LR_CHECK_FRACTION"]

log = logging.getLogger(__name__)

#: multipliers of the transferred learning rate that ``--lr-check`` tries
LR_CHECK_FACTORS = (1 / 3, 1.0, 3.0)
#: fraction of the sweep's steps that each ``--lr-check`` run trains
LR_CHECK_FRACTION = 0.25


# ------------------------------------------------------------------------------------------
# the run table (``einsearch search --dry-run``)


def run_table(spec: SweepSpec) -> list[dict[str, Any]]:
    """One row per (structure, width): FLOPs/token, steps, batch, tokens, compute per run,
    seeds, lrs and the number of runs. Computing it checks that every width can be built."""
    from .config import TrainConfig

    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    train = {**defaults, **spec.train}
    steps, batch = train["steps"], train["batch_size"]
    task = task_for(spec.task, spec.settings())
    tokens = steps * batch * task.tokens_per_example
    rows = []
    for s in spec.structures:
        for w in spec.widths_for(s):
            f = flops_per_token(spec.task, s, w, spec.settings())
            rows.append({"structure": s, "width": w, "flops_per_token": f, "steps": steps,
                         "batch_size": batch, "tokens": tokens, "compute": f * tokens,
                         "seeds": list(spec.seeds), "lrs": spec.lrs_for(s),
                         "runs": len(spec.seeds) * len(spec.lrs_for(s))})
    return rows


def format_run_table(spec: SweepSpec) -> str:
    """The run table as text, with totals (what ``--dry-run`` prints)."""
    rows = run_table(spec)
    dense = [r["flops_per_token"] for r in rows if r["structure"] == spec.reference_structure()]
    name_w = max([len("structure"), *(len(r["structure"]) for r in rows)])  # long structure texts stay aligned
    lines = [f"task {spec.task}: {len(rows)} (structure, width) pairs, "
             f"{sum(r['runs'] for r in rows)} runs; base_width {spec.base_width()}; "
             f"widths {'compute-matched to dense' if spec.match_compute else 'as given'}",
             f"{'structure':<{name_w}} {'width':>6} {'FLOPs/token':>12} {'x dense':>8} {'steps':>6} "
             f"{'batch':>6} {'compute/run':>12}  seeds  lrs"]
    for r in rows:
        near = min(dense, key=lambda d: abs(math.log(r["flops_per_token"] / d))) if dense else None
        ratio = f"{r['flops_per_token'] / near:8.2f}" if near else f"{'':>8}"
        lines.append(f"{r['structure']:<{name_w}} {r['width']:>6} {r['flops_per_token']:>12.4g} {ratio} "
                     f"{r['steps']:>6} {r['batch_size']:>6} {r['compute']:>12.3g}  "
                     f"{','.join(map(str, r['seeds'])):<5}  "
                     f"{','.join(f'{x:g}' for x in r['lrs'])}")
    total = sum(r["compute"] * r["runs"] for r in rows)
    lines.append(f"total training compute {total:.3g} FLOPs ('x dense': FLOPs/token over the "
                 "closest dense width's)")
    return "\n".join(lines)


def check_memory(spec: SweepSpec, capacity_bytes: int, where: str, runs_per_device: int = 1) -> dict[str, int]:
    """Raise ValueError, before anything is trained, when a planned run would not fit: each
    structure's largest width is estimated (:func:`einsearch.search.costmodel.memory_per_run`)
    against ``capacity_bytes`` / ``runs_per_device`` (``where`` names the device in the
    message). Returns the estimate per structure."""
    budget = capacity_bytes / runs_per_device
    need = {}
    for s in spec.structures:
        w = max(spec.widths_for(s))
        need[s] = memory_per_run(spec.task, s, w, spec.settings())
        if need[s] > budget:
            shared = f" shared by {runs_per_device} runs" if runs_per_device > 1 else ""
            raise ValueError(f"{s} at width {w} needs about {need[s] / 2**30:.2f} GiB to train (batch_size "
                             f"{spec.train.get('batch_size', 'default')}); {where} has "
                             f"{capacity_bytes / 2**30:.2f} GiB{shared}. Lower the batch size or the widths"
                             + (", or run fewer runs per device" if runs_per_device > 1 else ""))
    return need


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
    from .config import TrainConfig

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
                      train=train, include_dense=False, task_options=dict(spec.task_options),
                      description=f"lr check of: {spec.description}".strip())
    return check, transferred, widths


def lr_check(spec: SweepSpec, out_dir: str | os.PathLike[str], executor: Any | None = None, *,
             options: Any | None = None, show_progress: bool = True, train_fn: Callable | None = None,
             factors: tuple[float, ...] = LR_CHECK_FACTORS,
             fraction: float = LR_CHECK_FRACTION) -> dict[str, Any]:
    """Train each structure at ``factors`` x its transferred learning rate (see the module
    docstring) on ``executor`` (default: this process) into ``out_dir/lr_check`` and return
    (and write to ``lr_check.json`` there) per structure: width, transferred lr, the lrs tried,
    loss per lr, best lr and ``flagged`` (best is not the transferred lr)."""
    from .store import ResultStore
    from .sweep import run_sweep

    check, transferred, widths = lr_check_spec(spec, factors=factors, fraction=fraction)
    check.check_buildable()
    folder = Path(out_dir) / "lr_check"
    outcome = run_sweep(check, folder, executor, options=options, show_progress=show_progress,
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
    atomic_write_text(folder / "lr_check.json", json.dumps(result, indent=2) + "\n")
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
    name_w = max([len("structure"), *(len(row["name"]) for row in result["structures"])])
    lines = [f"lr check: {about} (base_width {result['base_width']}), x "
             f"{', '.join(f'{f:.3g}' for f in factors)}, {result['steps']} steps, seed "
             f"{result['seed']}; final held-out loss (* = lowest)",
             f"{'structure':<{name_w}} {'width':>6}" + (f"{'lr':>9}" if common is None else "")
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
        lines.append(f"{row['name']:<{name_w}} {row['width']:>6}{cells}  {verdict}")
    lines.append(f"{flagged} of {len(result['structures'])} structures flagged")
    return "\n".join(lines)
