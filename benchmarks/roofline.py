"""Roofline ceiling of a structured layer from this machine's measured reused-buffer rates.

The schedule is the block-transpose formulation (``einsearch.fast.blocktranspose.Layouts``):
six GEMMs (two forward; per step an activation gradient and a core gradient) and the copies
between them that actually move data (a copy whose permutation keeps every axis of size > 1
in place is a view). Each GEMM is *timed* here at its exact batched shape with ``out=`` into a
reused buffer (so no first-touch page faults), in the faster of its two memory orders; each
copy is charged at the measured copy
bandwidth into a reused buffer. Then, with efficiency = (t_dense / t) / (FLOPs_dense / FLOPs):

    ceiling            = t_dense * (FLOPs / FLOPs_dense) / (t_gemms + t_copies)
    ceiling_gemm_only  = t_dense * (FLOPs / FLOPs_dense) / t_gemms        (copies fused away)
"""

from __future__ import annotations

import torch
from common import interleaved, median

from einsearch.fast.blocktranspose import layouts
from einsearch.plan import EinsumPlan

F32 = 4


def measure_bandwidth(numel: int, repeats: int = 10) -> float:
    """Copy bandwidth (bytes/s, read + write) into a reused activation-sized float32 buffer."""
    src = torch.randn(numel)
    dst = torch.zeros_like(src)
    t = median(interleaved({"copy": lambda: dst.copy_(src)}, repeats, warmup=2)["copy"])
    return 2 * F32 * numel / t


def _gemm_shapes(plan: EinsumPlan, n: int) -> list[tuple[str, int, int, int, int]]:
    """(label, batch, M, K, N) of the six GEMMs of the block-transpose schedule."""
    lay = layouts(plan)
    g, f = lay.size["g"], lay.size["f"]
    m1 = n * lay.numel(lay.q)
    k1, n1 = lay.numel(lay.p), lay.numel(lay.c1_3[2])
    m2 = n * lay.numel(lay.o1)
    k2, n2 = lay.numel(lay.c2_3[1]), lay.numel(lay.o2)
    return [("fwd step 1", g, m1, k1, n1), ("fwd step 2", f, m2, k2, n2),
            ("bwd dz", f, m2, n2, k2), ("bwd dC2", f, k2, m2, n2),
            ("bwd dC1", g, k1, m1, n1), ("bwd dx'", g, m1, n1, k1)]


def _copies(plan: EinsumPlan, n: int) -> list[tuple[str, int]]:
    """(label, elements) of the schedule's copies that move data."""
    lay = layouts(plan)
    pairs = [("x -> x'", lay.x, lay.xp), ("z1 -> z2", lay.z1, lay.z2), ("y' -> y", lay.yp, lay.y)]
    out = []
    for label, src, dst in pairs:
        if not lay.is_view(src, dst):
            out += [(f"fwd {label}", lay.numel(src.replace("n", ""), 1) * n),
                    (f"bwd {label} (mirror)", lay.numel(src.replace("n", ""), 1) * n)]
    return out


def gemm_seconds(batch: int, m: int, k: int, nn: int, repeats: int = 5) -> float:
    """Median seconds of one batched GEMM of that shape, ``out=`` into a reused buffer; the
    faster of the two memory orders (row-major [B, M, N], or its transpose [B, N, M] with the
    token axis innermost, as a layout-search program may store it)."""
    left, right = torch.randn(batch, m, k), torch.randn(batch, k, nn)
    out = torch.zeros(batch, m, nn)
    left_t, right_t = left.mT.contiguous(), right.mT.contiguous()
    out_t = torch.zeros(batch, nn, m)
    times = interleaved({"row": lambda: torch.bmm(left, right, out=out),
                         "transposed": lambda: torch.bmm(right_t, left_t, out=out_t)}, repeats, warmup=2)
    return min(median(ts) for ts in times.values())


def ceiling(plan: EinsumPlan, tokens: int, t_dense: float, bandwidth: float) -> dict:
    """Efficiency ceilings (with and without the copies) and the per-stage model."""
    stages = []
    for label, b, m, k, nn in _gemm_shapes(plan, tokens):
        t = gemm_seconds(b, m, k, nn)
        stages.append({"name": f"GEMM {label} [{b}x{m}x{k}x{nn}]", "flops": 2 * b * m * k * nn, "bytes": 0,
                       "ms": 1e3 * t, "gflops": 2 * b * m * k * nn / t / 1e9})
    for label, numel in _copies(plan, tokens):
        stages.append({"name": f"copy {label}", "flops": 0, "bytes": 2 * F32 * numel,
                       "ms": 1e3 * 2 * F32 * numel / bandwidth})
    t_gemm = sum(s["ms"] for s in stages if s["flops"]) / 1e3
    t_copy = sum(s["ms"] for s in stages if s["bytes"]) / 1e3
    frac = plan.flops / plan.dense_flops
    gemm_flops = sum(s["flops"] for s in stages)
    return {"ceiling": t_dense * frac / (t_gemm + t_copy), "ceiling_gemm_only": t_dense * frac / t_gemm,
            "model_ms": 1e3 * (t_gemm + t_copy), "gemm_ms": 1e3 * t_gemm, "copy_ms": 1e3 * t_copy,
            "block_gemm_gflops": gemm_flops / t_gemm / 1e9, "stages": stages}
