"""Where a structured layer's fast path spends its time: measured, stage by stage.

The roofline (``roofline.py``) says what the schedule *should* cost; this module says what it
*does* cost. It wraps the three kinds of work in ``einsearch.fast`` (activation GEMMs, core
gradient GEMMs, permute copies) with wall-clock timers for the duration of a ``with`` block,
runs forward + backward a few times, and reports milliseconds per step and the GEMM rate the
structured GEMMs reached. The wrapping is benchmark instrumentation only: ``fast`` runs the
same calls, and every call is synchronous on the CPU, so the timers see real kernel time.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from typing import Callable, Iterator

from einsearch import fast

# (function in einsearch.fast, stage kind)
_WRAPPED = (("_gemm", "gemm"), ("_core_gemm", "gemm"), ("_relayout", "permute"))


@contextlib.contextmanager
def _timed(acc: dict[str, float]) -> Iterator[None]:
    originals = {}
    for name, kind in _WRAPPED:
        fn = originals[name] = getattr(fast, name)

        def timed(*args, _fn=fn, _kind=kind, **kwargs):
            t0 = time.perf_counter()
            out = _fn(*args, **kwargs)
            acc[_kind] += time.perf_counter() - t0
            return out

        setattr(fast, name, timed)
    try:
        yield
    finally:
        for name, fn in originals.items():
            setattr(fast, name, fn)


def breakdown(step: Callable[[], object], gemm_flops: float, steps: int = 5) -> dict[str, float]:
    """Milliseconds per step in GEMMs, permutes and everything else, and the GEMMs' GFLOP/s.

    ``step`` runs one forward + backward of a fast-path layer; ``gemm_flops`` is the FLOPs of
    that step (3 x the forward FLOPs).
    """
    step()  # warm caches and the program cache
    acc: dict[str, float] = defaultdict(float)
    with _timed(acc):
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        total = (time.perf_counter() - t0) / steps
    gemm, permute = acc["gemm"] / steps, acc["permute"] / steps
    return {"total_ms": 1e3 * total, "gemm_ms": 1e3 * gemm, "permute_ms": 1e3 * permute,
            "other_ms": 1e3 * max(0.0, total - gemm - permute),
            "gemm_gflops": gemm_flops / gemm / 1e9 if gemm > 0 else float("nan")}


def explain(row: dict, dense_gflops: float) -> str:
    """One line on why a row falls short, from its measured breakdown."""
    b = row.get("breakdown")
    if not b:
        return ""
    share = lambda ms: 100 * ms / b["total_ms"]  # noqa: E731
    if b["gemm_ms"] == 0:  # a plain GEMM chain (low rank): autograd's own mm calls, nothing else
        rate = row["flop_fraction"] * 3 * 2 * row["tokens"] * row["d"] ** 2 / (1e-3 * b["total_ms"]) / 1e9
        return (f"plain GEMMs only (no permutes), the same calls as the reference, at {rate:.0f} GFLOP/s "
                f"vs dense {dense_gflops:.0f}: BLAS runs GEMMs with a short side (the rank, "
                f"{row['sizes'].rsplit('rho=', 1)[-1]}) below its square-GEMM rate")
    parts = [f"GEMMs {b['gemm_ms']:.1f} ms ({share(b['gemm_ms']):.0f}%) at {b['gemm_gflops']:.0f} GFLOP/s "
             f"vs dense {dense_gflops:.0f}"]
    if b["permute_ms"] > 0.05 * b["total_ms"]:
        parts.append(f"permutes {b['permute_ms']:.1f} ms ({share(b['permute_ms']):.0f}%)")
    if b["other_ms"] > 0.1 * b["total_ms"]:
        parts.append(f"other {b['other_ms']:.1f} ms ({share(b['other_ms']):.0f}%)")
    return "; ".join(parts)
