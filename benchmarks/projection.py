"""Closed-form projection (einsearch.projection.project_cores) against the Adam fit (fit_to_dense).

For each named structure at d x d, on a random Gaussian matrix and on a matrix the structure
can express exactly, in float32 and float64, on one torch thread: seconds and relative
Frobenius error of both. The Adam fit is skipped for the rest of the run once one call
exceeds ``--adam-limit`` seconds (it is slow).

    python benchmarks/projection.py            # d = 1024
    python benchmarks/projection.py --quick    # d = 256, a few seconds
"""

from __future__ import annotations

import argparse
import time

import torch

from einsearch import EinsumLinear, fit_to_dense, make_plan, resolve_structure
from einsearch.functional import materialize
from einsearch.projection import project_cores

STRUCTURES = ["dense", "low_rank(0.5)", "kronecker", "tensor_train(0.25)", "btt(0.25)", "monarch"]


def _representable(plan, dtype, gen):
    a = torch.ones(plan.shape_a) if plan.trivial_a else torch.randn(plan.shape_a, generator=gen)
    b = torch.ones(plan.shape_b) if plan.trivial_b else torch.randn(plan.shape_b, generator=gen)
    return materialize(a.double(), b.double(), plan).to(dtype)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="d=256 and a short Adam fit")
    parser.add_argument("--d", type=int, default=None, help="width (default 1024, 256 with --quick)")
    parser.add_argument("--adam-steps", type=int, default=None, help="Adam steps (default 1000, 200 quick)")
    parser.add_argument("--adam-limit", type=float, default=60.0, help="skip Adam after a call this slow (s)")
    args = parser.parse_args(argv)
    d = args.d or (256 if args.quick else 1024)
    steps = args.adam_steps or (200 if args.quick else 1000)
    torch.set_num_threads(1)
    adam_on = True
    print(f"d={d}, 1 torch thread, Adam fit_to_dense steps<={steps}")
    print("| structure | matrix | dtype | project s | project err | method | Adam s | Adam err |")
    print("|---|---|---|---:|---:|---|---:|---:|")
    for name in STRUCTURES:
        theta = resolve_structure(name)
        plan = make_plan(theta, d, d)
        for kind in ("random", "representable"):
            for dtype in (torch.float32, torch.float64):
                gen = torch.Generator().manual_seed(0)
                w = (torch.randn(d, d, generator=gen).to(dtype) / d ** 0.5 if kind == "random"
                     else _representable(plan, dtype, gen))
                project_cores(w, plan)  # warm-up (LAPACK workspace, einsum paths)
                res = project_cores(w, plan)
                adam_s = adam_err = "skipped"
                if adam_on:
                    layer = EinsumLinear(d, d, theta, bias=False, dtype=dtype)
                    t0 = time.perf_counter()
                    err = fit_to_dense(layer, w, steps=steps)
                    elapsed = time.perf_counter() - t0
                    adam_s, adam_err = f"{elapsed:.2f}", f"{err:.2e}"
                    if elapsed > args.adam_limit:
                        adam_on = False
                        adam_s += " (over limit: Adam skipped from here)"
                print(f"| {name} | {kind} | {str(dtype).split('.')[-1]} | {res.seconds:.4f} | "
                      f"{res.relative_error:.2e} | {res.method} | {adam_s} | {adam_err} |", flush=True)


if __name__ == "__main__":
    main()
