"""Fast forward/backward for EinsumLinear: a measured planner over candidate programs.

``einsum_linear(x, a, b, plan)`` equals ``functional.einsum_linear_reference`` (values and
gradients w.r.t. x, a, b) for every plan. Each call runs the program the planner chose for its
(plan, dtype, device, token-count bucket, threads, training/inference) key, timing the
candidates on first use and caching the choice per machine (docs/design.md section 8):

* ``candidates.py``: the candidate programs (layout search, block transpose, the two-einsum
  reference, ``torch.compile`` variants in patient mode);
* ``layout.py`` / ``blocktranspose.py``: the programs themselves (relayouts, GEMMs, autograd
  Functions);
* ``planner.py``: timing and choice (``EINSEARCH_PLANNER=estimate|measure|patient``);
* ``cache.py``: the on-disk cache (``EINSEARCH_CACHE_DIR``);
* ``buffers.py``: the reused-buffer pool (no process-wide allocator change on import).

Under autocast (a structured layer casts to the autocast dtype and calls in with autocast off,
so this is only a direct call under autocast), for mixed or non-floating dtypes, non-2-D
inputs, zero tokens, on the ``meta`` device (sizing a model allocates nothing and times
nothing), inside ``torch.compile`` tracing or a ``torch.func`` transform (vmap, grad), the
reference path runs.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..base import autocast_dtype
from ..functional import einsum_linear_reference
from ..plan import EinsumPlan
from .alloc import tune_cpu_allocator
from .buffers import POOL, BufferPool
from .cache import PlanCache, cache_dir, machine_key
from .candidates import Candidate, candidate, candidates, compiler_available
from .layout import GemmSpec, Program, describe, program
from .planner import MODES, Planner, PlannerConfig, PlanRecord, bucket, configure, get_planner, planner_report
from .tune import format_records, tune

__all__ = [
    "einsum_linear", "program", "describe", "Program", "GemmSpec",
    "Planner", "PlannerConfig", "PlanRecord", "configure", "get_planner", "planner_report", "bucket", "MODES",
    "Candidate", "candidate", "candidates", "compiler_available",
    "PlanCache", "cache_dir", "machine_key", "BufferPool", "POOL", "clear_buffers", "tune_cpu_allocator",
    "tune", "format_records",
]


def einsum_linear(x: Tensor, a: Tensor, b: Tensor, plan: EinsumPlan) -> Tensor:
    """(n, d_in) -> (n, d_out); same contract (values and gradients) as ``einsum_linear_reference``."""
    if (x.dim() != 2 or x.shape[0] == 0 or x.dtype != a.dtype or x.dtype != b.dtype
            or not x.dtype.is_floating_point or autocast_dtype(x) is not None
            or torch.compiler.is_compiling() or x.device.type == "meta" or _functorch_active()):
        return einsum_linear_reference(x, a, b, plan)
    return get_planner().select(plan, x, a, b).run(x, a, b, plan)


def _functorch_active() -> bool:
    """Inside a ``torch.func`` transform (vmap, grad, jacrev, ...): the planner would time its
    candidates on random data inside the transform, and the programs' autograd Functions are not
    written for batching rules; the reference path is plain einsums, which every transform takes."""
    check = getattr(torch._C, "_are_functorch_transforms_active", None)
    return bool(check()) if check is not None else False


def clear_buffers() -> int:
    """Release the pooled buffers nobody holds (bytes released)."""
    return POOL.clear()
