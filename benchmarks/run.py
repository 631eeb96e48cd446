"""einsearch benchmarks (``make bench``): do structured layers turn FLOP savings into wall-clock?

Sections, all measured side by side in this one process:

1. Efficiency table: (t_dense / t_struct) / (FLOPs_dense / FLOPs_struct), forward + backward,
   float32, 2048 tokens, for d in {1024, 2048, 4096}: the fast path and the plain two-einsum
   reference of each structure next to ``nn.Linear``, each row MET / SHORT against its target,
   with the roofline ceiling of the fast path's schedule (bytes and FLOPs per stage, charged
   at the measured GEMM rate and copy bandwidth).
2. Training throughput (tokens/s) of a small GPT-like stack, dense vs structured at equal
   FLOPs per token.
3. BTT-MoE (``benchmarks/moe.py``), when present.

Everything lands in ``benchmarks/results/bench.json``.

    python benchmarks/run.py                 # full run (a few minutes on 2 cores)
    python benchmarks/run.py --quick         # smoke run: small sizes, few repeats
    python benchmarks/run.py --sizes 1024 --threads 2 --compile

By default the process calls ``einsearch.fast.tune_cpu_allocator()`` first (glibc keeps freed
activation-sized blocks instead of returning them to the OS and faulting them in again on the
next allocation); it applies to dense and structured alike. ``--no-tune-alloc`` skips it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402

from einsearch import fast  # noqa: E402

import efficiency  # noqa: E402
import throughput  # noqa: E402
from common import progress  # noqa: E402


def _parse(argv):
    p = argparse.ArgumentParser(description="einsearch benchmarks: structured vs dense wall-clock efficiency")
    p.add_argument("--quick", action="store_true", help="small sizes and few repeats (smoke run)")
    p.add_argument("--sizes", type=lambda s: [int(v) for v in s.split(",") if v],
                   help="comma-separated widths d (default 1024,2048,4096; quick: 256,512)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--tokens", type=int, help="rows per batch (default 2048; quick: 512)")
    p.add_argument("--compile", action="store_true",
                   help="also time the fast path with torch.compile'd permute kernels")
    p.add_argument("--no-tune-alloc", action="store_true", help="leave glibc's allocator at its defaults")
    p.add_argument("--skip-train", action="store_true", help="skip the training-throughput section")
    p.add_argument("--skip-moe", action="store_true", help="skip the BTT-MoE section")
    p.add_argument("--out", type=Path, default=HERE / "results" / "bench.json", help="where to write the JSON")
    return p.parse_args(argv)


def _moe_section(quick: bool) -> dict | None:
    if not (HERE / "moe.py").exists():
        return None
    try:
        import moe  # noqa: PLC0415  (another engineer's section, optional)
    except Exception as exc:  # pragma: no cover - keep the rest of the benchmark alive
        progress(f"  moe section unavailable: {exc!r}")
        return {"error": repr(exc)}
    if not callable(getattr(moe, "run", None)):
        return None
    try:
        return moe.run(quick=quick)
    except Exception as exc:  # pragma: no cover
        progress(f"  moe section failed: {exc!r}")
        return {"error": repr(exc)}


def main(argv: list[str] | None = None) -> dict:
    args = _parse(argv)
    torch.set_num_threads(args.threads)
    tuned = False if args.no_tune_alloc else fast.tune_cpu_allocator()
    sizes = args.sizes or ([256, 512] if args.quick else [1024, 2048, 4096])
    tokens = args.tokens or (512 if args.quick else 2048)
    budget = 4.0 if args.quick else 25.0  # seconds of timing per width
    started = time.perf_counter()
    env = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
           "machine": platform.processor() or platform.machine(), "allocator_tuned": tuned,
           "compile_column": args.compile, "quick": args.quick, "tokens": tokens, "sizes": sizes}
    progress(f"einsearch benchmarks: torch {env['torch']}, {env['threads']} threads, {tokens} tokens, "
             f"float32, sizes {sizes}, allocator tuned: {tuned}")
    result: dict = {"env": env, "efficiency": [], "throughput": None, "moe": None}

    progress("\n[1/3] efficiency: nn.Linear vs fast path vs two-einsum reference (fwd + bwd)")
    for d in sizes:
        res = efficiency.measure(d, tokens, args.quick, budget, compile_too=args.compile)
        result["efficiency"].append(res)
        efficiency.print_table(res, compile_too=args.compile)
    if result["efficiency"]:
        print()
        efficiency.print_stages(result["efficiency"][-1])

    if not args.skip_train:
        progress("\n[2/3] training throughput at equal FLOPs")
        result["throughput"] = throughput.run(quick=args.quick)
        throughput.print_result(result["throughput"])

    if not args.skip_moe:
        progress("\n[3/3] BTT-MoE")
        result["moe"] = _moe_section(args.quick)
        if result["moe"] is None:
            progress("  (benchmarks/moe.py with run(quick) not found: skipped)")

    _summary(result)
    result["env"]["seconds"] = time.perf_counter() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=float))
    progress(f"\nwrote {args.out} ({result['env']['seconds']:.0f} s)")
    return result


def _summary(result: dict) -> None:
    rows = [r for res in result["efficiency"] for r in res["rows"]]
    targeted = [r for r in rows if r["target"] is not None]
    print("\nSummary:")
    for r in targeted:
        print(f"  {r['structure']:16s} d={r['d']:5d}  efficiency {r['eff_fast']:.3f} (target {r['target']:.2f}, "
              f"roofline ceiling {r['roofline_ceiling']:.2f})  {r['status']}")
        if r.get("why"):
            print(f"      {r['why']}")
    others = [r for r in rows if r["target"] is None]
    slower = [r for r in rows if r["fast_vs_ref_speedup"] <= 1 and not r["fast_is_reference_gemms"]]
    same = [r for r in rows if r["fast_is_reference_gemms"]]
    not_faster = ", ".join(f"{r['structure']}@{r['d']}" for r in slower)
    print(f"  fast path faster than the two-einsum reference in {len(rows) - len(slower) - len(same)}/{len(rows)} rows"
          + (f" (not: {not_faster})" if slower else "")
          + (f"; the same plain GEMMs as the reference in {len(same)} (low rank)" if same else ""))
    met = sum(r["status"] == "MET" for r in targeted)
    result["summary"] = {"targets_met": met, "targets": len(targeted),
                         "faster_than_reference": len(rows) - len(slower) - len(same),
                         "same_gemms_as_reference": len(same), "rows": len(rows),
                         "untargeted_rows": len(others)}
    print(f"  targets met: {met}/{len(targeted)}")


if __name__ == "__main__":
    main()
