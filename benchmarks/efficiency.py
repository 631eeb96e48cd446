"""Efficiency of structured layers against nn.Linear, forward + backward, side by side.

    efficiency = (t_dense / t_struct) / (FLOPs_dense / FLOPs_struct)

1.0 means the structured layer turns every FLOP it saves into saved wall-clock time. For each
width d, ``nn.Linear(d, d)``, the fast path (``EinsumLinear(fast=True)``) and the plain
two-einsum reference (``fast=False``) of every structure run round-robin in one process; the
reported figures are medians over rounds, and efficiencies are medians of per-round ratios.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from einsearch import EinsumLinear, Theta, fast
from einsearch.plan import make_plan

import roofline
import stages
from common import interleaved, median, paired_ratio, progress, repeats_for, wait_for_quiet


@dataclass(frozen=True)
class Structure:
    name: str
    theta: Theta
    targets: dict[int, float]  # d -> efficiency target; empty: only "faster than the reference"


def structures(d: int) -> list[Structure]:
    """The structures of the issue (with targets), plus a few others that must beat the reference."""
    rank4 = math.log(4) / math.log(d)
    out = [
        Structure("monarch", Theta.monarch(), {1024: 0.35, 4096: 0.6}),
        Structure("btt_rank4", Theta.btt(rank4), {1024: 0.5, 4096: 0.6}),
        Structure("low_rank_0.75", Theta.low_rank(0.75), {1024: 0.95, 4096: 0.95}),
        Structure("kronecker", Theta.kronecker(), {1024: 0.5, 4096: 0.5}),
        Structure("tensor_train_0.25", Theta.tensor_train(0.25), {}),
        Structure("low_rank_btt_0.25", Theta.low_rank_btt(0.25), {}),
        Structure("(0.5|0.25|0.25|0.25|0.5|0.25|0)", Theta.parse("(0.5|0.25|0.25|0.25|0.5|0.25|0)"), {}),
        Structure("monarch_B_first", Theta.monarch().swapped(), {}),
    ]
    plan = make_plan(out[1].theta, d, d)
    assert plan.sizes.rho == 4 or d < 64, plan.sizes  # BTT rank 4 really has n_rho = 4
    return out


def _fwd_bwd(module: nn.Module, x: torch.Tensor, dy: torch.Tensor):
    params = [p for p in module.parameters() if p.requires_grad]

    def step():
        y = module(x)
        torch.autograd.grad(y, [x, *params], dy)
    return step


def measure(d: int, tokens: int, quick: bool, budget_s: float, compile_too: bool = False) -> dict:
    """Time dense, fast and reference paths of every structure at width d; efficiency table rows."""
    torch.manual_seed(0)
    x = torch.randn(tokens, d, requires_grad=True)
    dy = torch.randn(tokens, d)
    dense = nn.Linear(d, d, bias=False)
    fns = {"dense": _fwd_bwd(dense, x, dy)}
    layers = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for s in structures(d):
            layer = EinsumLinear(d, d, s.theta, bias=False)
            with torch.no_grad():  # zero-init would be fine for timing; random is more honest
                for p in layer.parameters():
                    p.normal_(0.0, 0.02)
            ref = EinsumLinear(d, d, s.theta, bias=False, fast=False)
            with torch.no_grad():  # (not load_state_dict: a theta like btt(log 4 / log d) does
                for p, q in zip(ref.parameters(), layer.parameters()):  # not survive str -> parse)
                    p.copy_(q)
            layers[s.name] = (s, layer)
            fns[f"{s.name}/fast"] = _fwd_bwd(layer, x, dy)
            fns[f"{s.name}/ref"] = _fwd_bwd(ref, x, dy)
            if compile_too:
                fns[f"{s.name}/fast+compile"] = _compiled(_fwd_bwd(layer, x, dy))

    quiet = wait_for_quiet(max_wait_s=0 if quick else 120)
    progress(f"  d={d}: warm-up ({len(fns)} candidates)")
    t0 = time.perf_counter()
    interleaved(fns, repeats=1, warmup=1 if not compile_too else 2)
    per_round = (time.perf_counter() - t0) / (2 if compile_too else 1)
    repeats = repeats_for(per_round, budget_s, lo=3, hi=5 if quick else 15)
    progress(f"  d={d}: {repeats} interleaved rounds of ~{per_round:.1f} s")
    times = interleaved(fns, repeats=repeats, warmup=0)

    t_dense = median(times["dense"])
    dense_flops = 3 * 2 * tokens * d * d
    gemm_rate = dense_flops / t_dense
    bandwidth = roofline.measure_bandwidth(tokens * d)
    rows = []
    for name, (s, layer) in layers.items():
        plan = layer.plan
        frac = plan.flops / plan.dense_flops
        tf, tr = median(times[f"{name}/fast"]), median(times[f"{name}/ref"])
        eff_fast = paired_ratio(times["dense"], times[f"{name}/fast"]) * frac
        eff_ref = paired_ratio(times["dense"], times[f"{name}/ref"]) * frac
        speedup = paired_ratio(times[f"{name}/ref"], times[f"{name}/fast"])
        roof = roofline.ceiling(plan, tokens, gemm_rate, bandwidth)
        row = {
            "structure": name, "theta": str(s.theta), "d": d, "tokens": tokens,
            "sizes": plan.describe(), "program": fast.describe(plan),
            "flop_fraction": frac, "dense_ms": 1e3 * t_dense, "fast_ms": 1e3 * tf, "ref_ms": 1e3 * tr,
            "eff_fast": eff_fast, "eff_ref": eff_ref, "fast_vs_ref_speedup": speedup,
            "roofline_ceiling": roof["ceiling"], "roofline_ceiling_without_permutes": roof["ceiling_without_permutes"],
            "roofline_model_ms": roof["model_ms"], "roofline_stages": roof["stages"],
            "target": s.targets.get(d), "repeats": repeats,
            "fast_is_reference_gemms": fast.program(plan).is_chain or fast.program(plan).kind == "mm",
        }
        if compile_too:
            row["fast_compile_ms"] = 1e3 * median(times[f"{name}/fast+compile"])
            row["eff_fast_compile"] = paired_ratio(times["dense"], times[f"{name}/fast+compile"]) * frac
        row["breakdown"] = stages.breakdown(fns[f"{name}/fast"], 3 * plan.flops * tokens)
        row["status"] = _status(row)
        row["why"] = stages.explain(row, gemm_rate / 1e9) if row["status"].startswith("SHORT") else ""
        rows.append(row)
    quiet_after = wait_for_quiet(max_wait_s=0)
    return {"d": d, "tokens": tokens, "dense_ms": 1e3 * t_dense, "cpu_busy_before": quiet["busy_fraction"],
            "cpu_busy_after_by_others": quiet_after["busy_fraction"], "gemm_gflops": gemm_rate / 1e9,
            "copy_bandwidth_gbs": bandwidth / 1e9, "repeats": repeats, "rows": rows}


def _compiled(step):
    """The same step with fast's permutes compiled (program cache is keyed by the flag)."""
    def run():
        fast.set_compile(True)
        try:
            step()
        finally:
            fast.set_compile(False)
    return run


def _status(row: dict) -> str:
    if row["target"] is not None:
        gap = row["eff_fast"] - row["target"]
        return "MET" if gap >= 0 else f"SHORT by {-gap:.2f}"
    if row["fast_is_reference_gemms"]:
        # both paths are the same plain GEMM calls (low rank): there is nothing to speed up,
        # and the measured ratio is noise around 1.0
        return f"EQUAL (same GEMMs as ref, {row['fast_vs_ref_speedup']:.2f}x)"
    return "MET (faster than ref)" if row["fast_vs_ref_speedup"] > 1 else "SHORT (slower than ref)"


def print_table(result: dict, compile_too: bool = False) -> None:
    d = result["d"]
    print(f"\nd={d}, {result['tokens']} tokens, float32, fwd+bwd, {result['repeats']} rounds: "
          f"nn.Linear {result['dense_ms']:.1f} ms ({result['gemm_gflops']:.0f} GFLOP/s), "
          f"copy bandwidth {result['copy_bandwidth_gbs']:.0f} GB/s"
          + (f"; other processes kept {100 * result['cpu_busy_before']:.0f}% of the CPUs busy before timing"
             if (result.get("cpu_busy_before") or 0) > 0.15 else ""))
    head = (f"  {'structure':34s} {'FLOPs':>7s} {'fast ms':>8s} {'ref ms':>8s} {'fast/ref':>8s} "
            f"{'eff':>6s} {'eff ref':>7s} {'roof':>5s} {'target':>6s}  status")
    if compile_too:
        head = head.replace("  status", f" {'eff+c':>6s}  status")
    print(head)
    for r in result["rows"]:
        target = f"{r['target']:.2f}" if r["target"] is not None else "  >ref"
        line = (f"  {r['structure']:34s} {r['flop_fraction']:7.4f} {r['fast_ms']:8.2f} {r['ref_ms']:8.2f} "
                f"{r['fast_vs_ref_speedup']:7.2f}x {r['eff_fast']:6.3f} {r['eff_ref']:7.3f} "
                f"{r['roofline_ceiling']:5.2f} {target:>6s}")
        if compile_too:
            line += f" {r.get('eff_fast_compile', float('nan')):6.3f}"
        print(line + f"  {r['status']}")
    for r in result["rows"]:
        if r.get("why"):
            print(f"    why {r['structure']}: {r['why']}")


def print_stages(result: dict, names: tuple[str, ...] = ("monarch", "btt_rank4", "kronecker")) -> None:
    """Per-stage roofline of a few structures (bytes and FLOPs of every GEMM and permute)."""
    for r in result["rows"]:
        if r["structure"] not in names:
            continue
        print(f"  roofline stages of {r['structure']} at d={r['d']} (model {r['roofline_model_ms']:.2f} ms, "
              f"measured {r['fast_ms']:.2f} ms; ceiling {r['roofline_ceiling']:.2f}, "
              f"{r['roofline_ceiling_without_permutes']:.2f} without permutes):")
        for s in r["roofline_stages"]:
            print(f"    {s['name']:44s} {s['flops'] / 1e9:8.3f} GFLOP {s['bytes'] / 1e6:9.1f} MB {s['ms']:7.2f} ms")
