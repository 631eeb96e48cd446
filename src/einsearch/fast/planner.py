"""The measured planner: time the candidate programs once, keep the fastest (docs/design.md section 8).

Like FFTW's planner and cuDNN's benchmark mode. For each (plan, dtype, device, token-count
bucket, torch threads, training or inference) the first call plans: in ``measure`` mode it
times every candidate of ``fast/candidates.py`` (forward + backward when training) on synthetic
inputs of the bucket's size, interleaved round by round, and keeps the lowest median; the
choice is cached in memory and on disk (``fast/cache.py``), so later processes on the same
machine skip the timing. Token counts are bucketed by powers of two (n in (512, 1024] plans
at 1024 tokens).

Modes (``EINSEARCH_PLANNER``, read once, when the first plan is made; or ``configure``):

* ``estimate``: no timing; the layout search's pick (an estimated copy cost, see layout.py).
* ``measure`` (default): time the candidates; one warm-up and one probe each (the probe, free
  of one-time first-touch costs, decides who races), then at most ``reps`` timed rounds within
  ``budget_s`` seconds per plan, only for candidates whose probe took at most 3x the best
  one's (at least one timed round always runs, so the bound is
  ``max(budget_s, two passes of every candidate + one of the contenders)``).
* ``patient``: as ``measure``, plus ``torch.compile`` variants where a C++ compiler works
  (compiling costs tens of seconds per plan; meant for ``einsearch tune``).

On a GPU every timed call is bracketed by ``torch.cuda.synchronize``, and a choice is keyed by
the GPU's model and compute capability (``device_label``), in bf16 and fp32 alike (the dtype
is part of the key). Planning is skipped (the estimate is used, and not cached) inside ``torch.compile`` tracing or
under a dispatch mode such as ``FlopCounterMode``, whose counts must not include the timing
runs. Every decision is logged (logger ``einsearch.fast``) and listed by ``planner_report()``.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import re
import statistics
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor
from torch.utils._python_dispatch import _get_current_dispatch_mode

from ..plan import EinsumPlan
from .cache import PlanCache
from .candidates import Candidate, candidate, candidates

__all__ = ["Planner", "PlannerConfig", "PlanRecord", "get_planner", "configure", "planner_report",
           "bucket", "MODES"]

log = logging.getLogger("einsearch.fast")

MODES = ("estimate", "measure", "patient")


def bucket(n: int) -> int:
    """The power of two at or above ``n`` (the token count a choice is planned for)."""
    return 1 << max(0, int(n) - 1).bit_length()


@dataclass(frozen=True)
class PlannerConfig:
    """How the planner chooses: ``mode`` (see module doc), timed ``reps`` and ``budget_s`` per
    plan, and where the cache lives (``cache_dir``; ``use_disk=False`` keeps it in memory)."""

    mode: str = "measure"
    reps: int = 5
    budget_s: float = 2.0
    cache_dir: Path | None = None
    use_disk: bool = True

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if isinstance(self.reps, bool) or not isinstance(self.reps, int) or self.reps < 1:
            raise ValueError(f"reps must be a positive integer, got {self.reps!r}")
        if not (isinstance(self.budget_s, (int, float)) and self.budget_s > 0 and math.isfinite(self.budget_s)):
            raise ValueError(f"budget_s must be a positive number of seconds, got {self.budget_s!r}")

    @classmethod
    def from_env(cls, **overrides) -> PlannerConfig:
        """Defaults, then ``EINSEARCH_PLANNER`` (mode) and ``EINSEARCH_CACHE_DIR``, then overrides."""
        kw: dict = {}
        mode = os.environ.get("EINSEARCH_PLANNER", "").strip().lower()
        if mode:
            if mode not in MODES:
                raise ValueError(f"EINSEARCH_PLANNER must be one of {MODES}, got {mode!r}")
            kw["mode"] = mode
        kw.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**kw)


@dataclass
class PlanRecord:
    """One planning decision: what was chosen, from what timings, at what cost."""

    entry: str
    structure: str
    choice: str
    mode: str
    source: str                      # "measured" | "estimate" | "disk" | "only candidate"
    tokens: int
    times_ms: dict[str, float] = field(default_factory=dict)
    rounds: int = 0
    planning_s: float = 0.0
    failed: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def _entry(plan: EinsumPlan, dtype: torch.dtype, device: torch.device, tokens: int, threads: int,
           train: bool) -> str:
    s = plan.sizes
    sizes = "x".join(str(v) for v in (s.alpha, s.beta, s.gamma, s.delta, s.epsilon, s.phi, s.rho))
    return (f"{sizes}|{plan.first}|{plan.d_in}x{plan.d_out}|{str(dtype).replace('torch.', '')}"
            f"|{device_label(device)}|n{tokens}|t{threads}|{'train' if train else 'infer'}")


@functools.lru_cache(maxsize=16)
def device_label(device: torch.device) -> str:
    """The device part of a cache entry: ``cpu`` (the cache file is per CPU model already), or
    for a GPU its model and compute capability (``cuda[NVIDIA-H100-80GB-HBM3;sm90]``), so one
    cache shared by machines with different GPUs keeps a choice per GPU model."""
    if device.type != "cuda":
        return device.type
    props = torch.cuda.get_device_properties(device)
    name = re.sub(r"[^A-Za-z0-9]+", "-", props.name).strip("-")
    return f"cuda[{name};sm{props.major}{props.minor}]"


def _sync(device: torch.device) -> None:
    """Wait for ``device``'s queued work (CUDA kernels run asynchronously: a timer read without
    this measures the launch, not the kernel)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Planner:
    """Chooses and remembers the program of each (plan, dtype, device, bucket, threads, mode)."""

    def __init__(self, config: PlannerConfig | None = None) -> None:
        self.config = config or PlannerConfig()
        self.cache = PlanCache(self.config.cache_dir) if self.config.use_disk else None
        self._choice: dict[tuple, Candidate] = {}
        self._records: dict[str, PlanRecord] = {}
        self._lock = threading.RLock()
        self.timed_runs = 0  # candidate calls made for timing (0 in estimate mode)

    # ------------------------------------------------------------------ hot path
    def select(self, plan: EinsumPlan, x: Tensor, a: Tensor, b: Tensor) -> Candidate:
        """The program for this call (plans on the first call of its key)."""
        train = torch.is_grad_enabled() and (x.requires_grad or a.requires_grad or b.requires_grad)
        key = (plan, x.dtype, x.device, bucket(x.shape[0]), torch.get_num_threads(), train)
        cand = self._choice.get(key)
        if cand is None:
            if _get_current_dispatch_mode() is not None or x.device.type == "meta":
                return candidates(plan)[0]  # never time under FlopCounterMode & co; not cached
            cand = self._plan_key(key)
        return cand

    # ------------------------------------------------------------------ planning
    def plan(self, plan: EinsumPlan, tokens: int, dtype: torch.dtype = torch.float32,
             device: torch.device | str = "cpu", train: bool = True, force: bool = False) -> PlanRecord:
        """Plan ahead (``einsearch tune``): choose for ``tokens``' bucket; returns the record.

        ``force`` measures again even when the choice is known (in memory or on disk)."""
        if not isinstance(plan, EinsumPlan):
            raise TypeError(f"plan must be an EinsumPlan, got {type(plan).__name__}")
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
            raise ValueError(f"tokens must be a positive integer, got {tokens!r}")
        key = (plan, dtype, torch.device(device), bucket(tokens), torch.get_num_threads(), train)
        if force:
            self._choice.pop(key, None)
        self._plan_key(key, force=force)
        return self._records[_entry(plan, dtype, torch.device(device), bucket(tokens), key[4], train)]

    def _plan_key(self, key: tuple, force: bool = False) -> Candidate:
        with self._lock:
            if key in self._choice:
                return self._choice[key]
            plan, dtype, device, tokens, threads, train = key
            entry = _entry(plan, dtype, device, tokens, threads, train)
            cands = candidates(plan, compiled=self.config.mode == "patient")
            names = [c.name for c in cands]
            record = None
            if len(cands) == 1:
                record = PlanRecord(entry, str(plan.theta), names[0], self.config.mode, "only candidate", tokens)
            elif self.config.mode == "estimate":
                record = PlanRecord(entry, str(plan.theta), names[0], "estimate", "estimate", tokens)
            elif self.cache is not None and not force:
                hit = self.cache.get(entry)
                if hit and hit.get("choice") in names and hit.get("mode") in MODES:
                    if self.config.mode != "patient" or hit.get("mode") == "patient":
                        # read, not measured: no planning cost in this process (the stored
                        # timings stay, for the report)
                        record = PlanRecord(**{**hit, "source": "disk", "planning_s": 0.0})
            if record is None:
                record = self._measure(plan, cands, dtype, device, tokens, train, entry)
                if self.cache is not None:
                    stored = {k: v for k, v in record.as_dict().items() if k != "source"}
                    self.cache.put(entry, stored)
                log.info("einsearch planner: %s %dx%d %s n<=%d -> %s (%s) in %.2f s; cache %s",
                         record.structure, plan.d_in, plan.d_out, entry.split("|")[3], tokens, record.choice,
                         ", ".join(f"{k} {v:.2f} ms" for k, v in record.times_ms.items()), record.planning_s,
                         self.cache.path if self.cache is not None else "(memory only)")
            self._records[entry] = record
            cand = candidate(record.choice)
            self._choice[key] = cand
            return cand

    def _measure(self, plan: EinsumPlan, cands: list[Candidate], dtype: torch.dtype, device: torch.device,
                 tokens: int, train: bool, entry: str) -> PlanRecord:
        """Time every candidate (interleaved rounds, medians) within the budget."""
        started = time.perf_counter()
        gen = torch.Generator(device=device).manual_seed(0)  # never touch the caller's RNG
        x = torch.randn(tokens, plan.d_in, generator=gen, dtype=dtype, device=device)
        dy = torch.randn(tokens, plan.d_out, generator=gen, dtype=dtype, device=device)

        def core(shape):
            if math.prod(shape) == 1:
                return torch.ones(shape, dtype=dtype, device=device)
            return (torch.randn(shape, generator=gen, dtype=dtype, device=device) * 0.1).requires_grad_(train)

        a, b = core(plan.shape_a), core(plan.shape_b)
        x.requires_grad_(train)
        inputs = [t for t in (x, a, b) if t.requires_grad]

        def step(c: Candidate) -> None:
            _sync(device)
            if train:
                with torch.enable_grad():
                    torch.autograd.grad(c.run(x, a, b, plan), inputs, dy)
            else:
                with torch.no_grad():
                    c.run(x, a, b, plan)
            _sync(device)

        times: dict[str, list[float]] = {}
        failed: dict[str, str] = {}
        warm: dict[str, float] = {}
        for c in cands:  # warm-up (first-touch, one-time setup) and a guard against failures
            try:
                t0 = time.perf_counter()
                step(c)
                warm[c.name] = time.perf_counter() - t0
                self.timed_runs += 1
            except Exception as exc:  # a candidate that cannot run here is dropped, not fatal
                failed[c.name] = repr(exc)[:200]
                log.warning("einsearch planner: candidate %s failed on %s (%r); skipped", c.name, entry, exc)
        # A probe pass after the warm-up decides who races: the warm-up pays one-time costs
        # (first-touch page faults, the buffer pool filling up) that differ between candidates
        # and would knock out the fastest one. A candidate whose probe took over 3x the best
        # one's is out of the race; its probe time is what is reported. The probe is the first
        # timed sample of every candidate.
        probe: dict[str, float] = {}
        for c in cands:
            if c.name in warm:
                t0 = time.perf_counter()
                step(c)
                probe[c.name] = time.perf_counter() - t0
                self.timed_runs += 1
        best_probe = min(probe.values(), default=0.0)
        live = [c for c in cands if c.name in probe and probe[c.name] <= 3 * best_probe]
        for name, t_probe in probe.items():
            times[name] = [t_probe]
        rounds = 0
        budget = self.config.budget_s
        while live and rounds < self.config.reps:
            t_round = time.perf_counter()
            for c in live:
                t0 = time.perf_counter()
                step(c)
                times[c.name].append(time.perf_counter() - t0)
                self.timed_runs += 1
            rounds += 1
            now = time.perf_counter()
            if now - started + (now - t_round) > budget:
                break
        med = {name: 1e3 * statistics.median(ts) for name, ts in times.items() if ts}
        choice = min(med, key=lambda name: med[name]) if med else "reference"
        return PlanRecord(entry, str(plan.theta), choice, self.config.mode, "measured", tokens, med, rounds,
                          time.perf_counter() - started, failed)

    # ------------------------------------------------------------------ reporting
    def report(self) -> list[dict]:
        """Every decision this planner made or loaded, in order (dicts of ``PlanRecord``)."""
        with self._lock:
            return [r.as_dict() for r in self._records.values()]

    def choice_for(self, plan: EinsumPlan, tokens: int, dtype: torch.dtype = torch.float32,
                   device: torch.device | str = "cpu", train: bool = True) -> str | None:
        """The name of the program chosen for these inputs, if planned already (no planning)."""
        key = (plan, dtype, torch.device(device), bucket(tokens), torch.get_num_threads(), train)
        cand = self._choice.get(key)
        return cand.name if cand is not None else None


_PLANNER: Planner | None = None
_PLANNER_LOCK = threading.Lock()


def get_planner() -> Planner:
    """The process-wide planner, made from the environment on first use."""
    global _PLANNER
    if _PLANNER is None:
        with _PLANNER_LOCK:
            if _PLANNER is None:
                _PLANNER = Planner(PlannerConfig.from_env())
    return _PLANNER


def configure(mode: str | None = None, reps: int | None = None, budget_s: float | None = None,
              cache_dir: Path | str | None = None, use_disk: bool | None = None) -> Planner:
    """Replace the process-wide planner (unset arguments: environment, then defaults)."""
    global _PLANNER
    cfg = PlannerConfig.from_env(mode=mode, reps=reps, budget_s=budget_s,
                                 cache_dir=Path(cache_dir) if cache_dir is not None else None, use_disk=use_disk)
    with _PLANNER_LOCK:
        _PLANNER = Planner(cfg)
    return _PLANNER


def planner_report() -> list[dict]:
    """Every planning decision of this process: chosen program, timings (ms), planning seconds."""
    return get_planner().report()
