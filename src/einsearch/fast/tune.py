"""Plan ahead (``einsearch tune``): measure the candidates of some layers now, not on first use."""

from __future__ import annotations

import torch

from ..plan import make_plan
from ..theta import Theta
from .planner import PlanRecord, get_planner

__all__ = ["tune", "format_records"]

_DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16,
           "float16": torch.float16}


def tune(thetas: dict[str, Theta], sizes: list[int], tokens: list[int], dtype: str = "float32",
         train: bool = True, force: bool = False) -> list[PlanRecord]:
    """Plan every (structure, d x d, token count) with the process-wide planner; the records.

    ``dtype`` names a floating dtype (float32, float64, bfloat16, float16).
    """
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    for name, values in (("sizes", sizes), ("tokens", tokens)):
        if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
            raise ValueError(f"{name} must be a non-empty list of positive integers, got {values!r}")
    planner = get_planner()
    out = []
    for name, theta in thetas.items():
        for d in sizes:
            plan = make_plan(theta, d, d)
            for n in tokens:
                rec = planner.plan(plan, n, _DTYPES[dtype], "cpu", train=train, force=force)
                rec.structure = f"{name} d={d}"
                out.append(rec)
    return out


def format_records(records: list[PlanRecord]) -> str:
    """A table: structure, token bucket, chosen program, each candidate's time, planning cost."""
    names = sorted({k for r in records for k in r.times_ms})
    head = f"{'structure':28s} {'tokens':>6s} {'chosen':16s} " + " ".join(f"{n[:16]:>16s}" for n in names)
    lines = [head + f" {'planning':>9s}  source"]
    for r in records:
        cells = " ".join(f"{r.times_ms[n]:13.2f} ms" if n in r.times_ms else f"{'-':>16s}" for n in names)
        plan_s = f"{r.planning_s:8.2f}s" if r.planning_s else f"{'-':>9s}"
        lines.append(f"{r.structure[:28]:28s} {r.tokens:6d} {r.choice:16s} {cells} {plan_s}  {r.source}")
    total = sum(r.planning_s for r in records)
    lines.append(f"planning time {total:.1f} s in all")
    return "\n".join(lines)
