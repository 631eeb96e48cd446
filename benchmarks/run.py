"""einsearch benchmarks (``make bench``): do structured layers turn FLOP savings into wall-clock?

Sections, all measured side by side in this one process:

1. Efficiency table: (t_dense / t_struct) / (FLOPs_dense / FLOPs_struct), forward + backward,
   float32, 2048 tokens, 2 threads, d in {1024, 4096}: einsearch (the program its measured
   planner chose), the plain two-einsum reference and, for Monarch / BTT, the plain
   block-transpose kernel written in the bench (``baseline.py``), next to ``nn.Linear``; the
   roofline ceiling from this machine's reused-buffer GEMM rates and copy bandwidth; every
   target of issue 13 MET or SHORT with the reason.
2. Training throughput (tokens/s) of a small GPT-like stack, dense vs structured at equal
   FLOPs per token.
3. BTT-MoE (``benchmarks/moe.py``), when present.

Everything lands in ``benchmarks/results/bench.json``. Medians of interleaved rounds.

    python benchmarks/run.py                 # full run (a few minutes on 2 cores)
    python benchmarks/run.py --quick         # smoke run: small sizes, few repeats
    python benchmarks/run.py --device cuda   # the accelerator section (``device.py``) on a GPU

The process calls ``einsearch.fast.tune_cpu_allocator()`` first and says so (glibc keeps freed
blocks above 32 MiB instead of unmapping them; it helps nn.Linear and the reference as much as
einsearch, whose own buffers are pooled anyway); ``--no-tune-alloc`` skips it. The planner
caches its choices per machine (``EINSEARCH_CACHE_DIR``); ``--planner-budget`` sets its timing
budget per plan.
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

import efficiency  # noqa: E402
import throughput  # noqa: E402
import torch  # noqa: E402
from common import progress  # noqa: E402

from einsearch import fast  # noqa: E402


def _parse(argv):
    p = argparse.ArgumentParser(description="einsearch benchmarks: structured vs dense wall-clock efficiency")
    p.add_argument("--quick", action="store_true", help="small sizes and few repeats (smoke run)")
    p.add_argument("--sizes", type=lambda s: [int(v) for v in s.split(",") if v],
                   help="comma-separated widths d (default 1024,4096; quick: 256,512)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--tokens", type=int, help="rows per batch (default 2048; quick: 512)")
    p.add_argument("--planner-mode", choices=("measure", "patient", "estimate"), default="measure",
                   help="how einsearch's planner chooses programs (patient adds torch.compile variants)")
    p.add_argument("--planner-budget", type=float, default=4.0, help="planner timing seconds per plan")
    p.add_argument("--extra", action="store_true", help="also untargeted structures (tensor train, ...)")
    p.add_argument("--no-tune-alloc", action="store_true", help="leave glibc's allocator at its defaults")
    p.add_argument("--skip-train", action="store_true", help="skip the training-throughput section")
    p.add_argument("--skip-moe", action="store_true", help="skip the BTT-MoE section")
    p.add_argument("--out", type=Path, default=HERE / "results" / "bench.json", help="where to write the JSON")
    p.add_argument("--device", default="cpu",
                   help="cpu (the CPU sections, default) or cuda / cuda:N (the accelerator section, device.py)")
    p.add_argument("--device-section", action="store_true",
                   help="run the accelerator section on --device even when it is the CPU (a smoke run of its code)")
    return p.parse_args(argv)


def _device_main(args) -> dict:
    import device as device_section  # noqa: PLC0415

    started = time.perf_counter()
    progress(f"einsearch benchmarks on {args.device}: torch {torch.__version__}")
    res = device_section.run(args.device, quick=args.quick)
    device_section.print_result(res)
    res["seconds"] = time.perf_counter() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2, default=str))
    progress(f"\nwrote {args.out} ({res['seconds']:.0f} s)")
    return res


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
    if args.device != "cpu" or args.device_section:
        return _device_main(args)
    tuned = False if args.no_tune_alloc else fast.tune_cpu_allocator()
    planner = fast.configure(mode=args.planner_mode, budget_s=args.planner_budget)
    sizes = args.sizes or ([256, 512] if args.quick else [1024, 4096])
    tokens = args.tokens or (512 if args.quick else 2048)
    budget = 4.0 if args.quick else 25.0  # seconds of timing per width
    started = time.perf_counter()
    env = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
           "machine": platform.processor() or platform.machine(), "allocator_tuned": tuned,
           "planner_mode": args.planner_mode, "planner_cache": str(planner.cache.path if planner.cache else None),
           "quick": args.quick, "tokens": tokens, "sizes": sizes}
    progress(f"einsearch benchmarks: torch {env['torch']}, {env['threads']} threads, {tokens} tokens, "
             f"float32, sizes {sizes}; glibc allocator tuned by the bench (mallopt): {tuned}; "
             f"planner {args.planner_mode}, cache {env['planner_cache']}")
    result: dict = {"env": env, "efficiency": [], "throughput": None, "moe": None}

    progress("\n[1/3] efficiency: nn.Linear vs einsearch vs two-einsum reference vs block-transpose baseline")
    for d in sizes:
        res = efficiency.measure(d, tokens, args.quick, budget, extra=args.extra)
        result["efficiency"].append(res)
        efficiency.print_table(res)
    result["planner"] = fast.planner_report()
    fast.clear_buffers()  # the efficiency section's pooled buffers are of no use to the next

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
    checks = [(r, c) for r in rows for c in r["checks"]]
    print("\nSummary (targets of issue 13):")
    for r, c in checks:
        print(f"  {r['structure']:16s} d={r['d']:5d}  {c['what']:36s} {'MET' if c['met'] else 'SHORT':5s} {c['why']}")
    met = sum(c["met"] for _, c in checks)
    busy = [res.get("cpu_busy_before") or 0 for res in result["efficiency"]]
    if busy and max(busy) > 0.15:
        print(f"  (other processes kept up to {100 * max(busy):.0f}% of the CPUs busy: timings are noisy)")
    planning = sum(p.get("planning_s", 0.0) for p in result.get("planner", []))
    print(f"  planner: {len(result.get('planner', []))} decisions, {planning:.1f} s of timing in all")
    result["summary"] = {"targets_met": met, "targets": len(checks), "rows": len(rows)}
    print(f"  targets met: {met}/{len(checks)}")


if __name__ == "__main__":
    main()
