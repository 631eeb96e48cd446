"""Roofline of a structured layer's fast path: bytes moved and FLOPs of every stage.

Each stage of ``einsearch.fast``'s program for a plan (the six GEMMs of forward + backward,
every permute copy, the per-token core-gradient temporaries) is charged
``max(FLOPs / gemm_rate, bytes / bandwidth)``: the time it would take if it ran either at the
measured dense GEMM rate or at the measured copy bandwidth, whichever binds. The ceiling on
efficiency is then ``(structured FLOPs / gemm_rate) / sum of stage times``: small blocks move
many bytes per FLOP, and the permutes move bytes with no FLOPs at all.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from einsearch import fast
from einsearch.plan import EinsumPlan

from common import interleaved, median

F32 = 4


@dataclass
class Stage:
    name: str
    flops: float
    bytes: float

    def seconds(self, gemm_rate: float, bandwidth: float) -> float:
        return max(self.flops / gemm_rate, self.bytes / bandwidth)


def measure_bandwidth(numel: int, repeats: int = 10) -> float:
    """Copy bandwidth (bytes/s, read + write) for an activation-sized float32 tensor."""
    src = torch.randn(numel)
    dst = torch.empty_like(src)
    t = median(interleaved({"copy": lambda: dst.copy_(src)}, repeats, warmup=2)["copy"])
    return 2 * F32 * numel / t


def stages(plan: EinsumPlan, tokens: int) -> list[Stage]:
    """Forward + backward stages of the fast path for ``plan`` with ``tokens`` rows."""
    prog = fast.program(plan)
    n = tokens
    if prog.kind in ("mm", "identity", "reference"):
        macs = plan.d_in_padded * plan.d_out_padded if prog.kind == "mm" else plan.macs
        x, y, w = n * plan.d_in_padded, n * plan.d_out_padded, plan.d_in_padded * plan.d_out_padded
        return [Stage("fwd y = x W", 2 * n * macs, F32 * (x + w + y)),
                Stage("bwd dx = dy W^T", 2 * n * macs, F32 * (y + w + x)),
                Stage("bwd dW = x^T dy", 2 * n * macs, F32 * (x + y + w))]
    size = dict(prog.sizes)
    size["n"] = n
    numel = lambda axes: math.prod(size[ax] for ax in axes)  # noqa: E731
    key = tuple(sorted((ax, 2048 if ax == "n" else v) for ax, v in size.items()))
    out: list[Stage] = []

    def permute(label: str, src: str, dst: str) -> None:
        if src == dst:
            return
        _, path = fast._relayout_path(src, dst, key, prog.compiled)
        for s, d in zip(path[:-1], path[1:]):
            out.append(Stage(f"{label} permute {s}->{d}", 0.0, 2 * F32 * numel(s)))

    def gemm(label: str, spec: fast.GemmSpec) -> None:
        b, m, k, nn = (numel(g) if g else 1 for g in (spec.batch, spec.m, spec.k, spec.n_))
        core = (b if spec.batch != "n" else 1) * k * nn
        out.append(Stage(f"{label} GEMM [{spec.batch or '-'}:{spec.m}x{spec.k}x{spec.n_}]",
                         2 * b * m * k * nn, F32 * (b * m * k + core + b * m * nn)))

    def core_grad(label: str, spec: fast.GemmSpec, out_axes: str) -> None:
        b, m, k, nn = (numel(g) if g else 1 for g in (spec.batch, spec.m, spec.k, out_axes))
        temp = b * k * nn if spec.batch == "n" else 0  # per-token partial products, written + read
        out.append(Stage(f"{label} core grad", 2 * b * m * k * nn,
                         F32 * (b * m * k + b * m * nn + (b if spec.batch != "n" else 1) * k * nn + 2 * temp)))

    f1, f2, b1, b2 = prog.f1, prog.f2, prog.b1, prog.b2
    permute("fwd x", prog.x_axes, f1.l_layout)
    gemm("fwd step1", f1)
    permute("fwd z", f1.o_layout, prog.z2_layout)
    gemm("fwd step2", f2)
    permute("fwd y", f2.o_layout, prog.y_axes)
    permute("bwd dy", prog.y_axes, b2.l_layout)
    core_grad("bwd step2", f2, f2.n_)
    gemm("bwd step2 dz", b2)
    permute("bwd dz", b2.o_layout, prog.dz1_layout)
    core_grad("bwd step1", f1, f1.n_)
    gemm("bwd step1 dx", b1)
    permute("bwd dx", b1.o_layout, prog.x_axes)
    return out


def ceiling(plan: EinsumPlan, tokens: int, gemm_rate: float, bandwidth: float) -> dict:
    """Efficiency ceiling of the fast path and of an ideal fusion (GEMM traffic only)."""
    st = stages(plan, tokens)
    useful = 3 * 2 * tokens * plan.macs / gemm_rate  # fwd + bwd FLOPs at the dense rate
    total = sum(s.seconds(gemm_rate, bandwidth) for s in st)
    fused = sum(s.seconds(gemm_rate, bandwidth) for s in st if "permute" not in s.name)
    return {
        "ceiling": min(1.0, useful / total) if total else 1.0,  # (rounding can land a hair above 1)
        "ceiling_without_permutes": min(1.0, useful / fused) if fused else 1.0,
        "model_ms": 1e3 * total,
        "stages": [dict(asdict(s), ms=1e3 * s.seconds(gemm_rate, bandwidth)) for s in st],
    }
