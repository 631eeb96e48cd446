"""Timing helpers shared by the benchmark sections: interleaved repeats, medians, paired ratios."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Run every function once per round, ``repeats`` rounds; return seconds per call.

    Interleaving makes a drift in machine load (other processes) hit every candidate alike,
    so ratios taken round by round stay meaningful even when absolute times wander.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def paired_ratio(num: list[float], den: list[float]) -> float:
    """Median over rounds of num[i] / den[i] (both measured in the same round)."""
    return statistics.median(a / b for a, b in zip(num, den))


def repeats_for(seconds_per_round: float, budget_s: float, lo: int, hi: int) -> int:
    """How many rounds fit in ``budget_s`` (at least ``lo``, at most ``hi``)."""
    if seconds_per_round <= 0:
        return hi
    return max(lo, min(hi, int(budget_s / seconds_per_round)))


def progress(msg: str) -> None:
    print(msg, flush=True)


def cpu_busy_fraction(seconds: float = 1.0) -> float | None:
    """Fraction of all CPUs busy over ``seconds`` (Linux /proc/stat; None elsewhere)."""
    def snap():
        with open("/proc/stat") as f:
            vals = [int(v) for v in f.readline().split()[1:]]
        idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
        return idle, sum(vals)
    try:
        i0, t0 = snap()
        time.sleep(seconds)
        i1, t1 = snap()
    except (OSError, ValueError, IndexError):
        return None
    return 1.0 - (i1 - i0) / max(1, t1 - t0)


def wait_for_quiet(max_wait_s: float, threshold: float = 0.15) -> dict:
    """Wait (up to ``max_wait_s``) until other processes leave the CPUs mostly idle.

    Multi-threaded timings on a small machine collapse when anything else runs: a parallel
    region waits for its slowest thread, and a thread sharing a core loses whole time slices.
    Structured layers run many short parallel regions, so they suffer far more than one long
    dense GEMM. Returns what was observed, for the record.
    """
    start = time.perf_counter()
    busy = cpu_busy_fraction()
    while busy is not None and busy > threshold and time.perf_counter() - start < max_wait_s:
        time.sleep(2.0)
        busy = cpu_busy_fraction()
    waited = time.perf_counter() - start
    quiet = busy is None or busy <= threshold
    if not quiet:
        progress(f"  warning: other processes keep {100 * busy:.0f}% of the CPUs busy; timings will be noisy")
    return {"busy_fraction": busy, "waited_s": waited, "quiet": quiet}
