"""A pool of reused activation buffers, safe under autograd by construction.

On CPU a fresh multi-MB tensor pays first-touch page faults on every step (docs/design.md
section 8: a fresh copy of an 8-32 MB activation ran at 4-7 GB/s, a copy into an already
allocated buffer at 40-47 GB/s; a batched GEMM's output likewise). The fast path therefore writes
activations, intermediates and activation gradients into buffers taken from this pool.

Safety rule: a buffer is handed out again only when nothing but the pool references its
storage (the storage's reference count is 1). A tensor saved for backward, an output the
caller still holds, a view of either, a gradient kept in ``.grad`` or handed to numpy: each
holds a reference, so its storage is never overwritten while it lives. That holds in a plain
training loop, for two forwards before one backward, for two layers of the same shape in one
graph, under activation checkpointing, and across threads (acquisition takes a lock). Buffers
come back as fresh tensors (``set_`` on the storage), never as views, so callers may modify a
returned output in place.

The pool keeps at most ``max_per_size`` buffers per (element count, dtype, device) and at most
``max_bytes`` in all (default: an eighth of physical memory, at most 4 GiB): when full it first
drops free buffers of other sizes, and otherwise allocates plainly (correct, just not reused).
``clear()`` (``einsearch.fast.clear_buffers()``) drops every buffer nobody else holds. Nothing
here changes the process-wide allocator (no ``mallopt``, no environment variable).
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["BufferPool", "POOL"]

_use_count = getattr(torch._C, "_storage_Use_Count", None)


def _default_max_bytes() -> int:
    """An eighth of physical memory, at most 4 GiB (1 GiB where it cannot be read)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return 1 << 30
    return int(min(4 << 30, total // 8))


class BufferPool:
    """Buffers keyed by (numel, dtype, device), reused only when no one else holds them."""

    def __init__(self, max_per_size: int = 64, max_bytes: int | None = None) -> None:
        max_bytes = _default_max_bytes() if max_bytes is None else max_bytes
        if max_per_size < 0 or max_bytes < 0:
            raise ValueError(f"max_per_size and max_bytes must be >= 0, got {max_per_size}, {max_bytes}")
        self.max_per_size = max_per_size
        self.max_bytes = max_bytes
        self.enabled = _use_count is not None
        self._free: dict[tuple, list] = {}
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def _in_use(storage) -> bool:
        return _use_count is None or _use_count(storage._cdata) > 1

    def empty(self, shape: Sequence[int], dtype: torch.dtype, device: torch.device | str) -> Tensor:
        """An uninitialized contiguous tensor of ``shape`` (a reused buffer when one is free)."""
        shape = tuple(int(s) for s in shape)
        numel = math.prod(shape)
        if not self.enabled or numel == 0 or torch.is_inference_mode_enabled():
            return torch.empty(shape, dtype=dtype, device=device)
        device = torch.device(device)
        key = (numel, dtype, device)
        with self._lock:
            ring = self._free.setdefault(key, [])
            storage = next((st for st in ring if not self._in_use(st)), None)
            if storage is not None:
                self.hits += 1
            else:
                self.misses += 1
                nbytes = numel * torch.empty((), dtype=dtype).element_size()
                if self._bytes + nbytes > self.max_bytes:
                    self._evict(nbytes)
                if len(ring) >= self.max_per_size or self._bytes + nbytes > self.max_bytes:
                    return torch.empty(shape, dtype=dtype, device=device)
                storage = torch.empty(numel, dtype=dtype, device=device).untyped_storage()
                ring.append(storage)
                self._bytes += nbytes
            out = torch.empty(0, dtype=dtype, device=device)
            stride, acc = [], 1
            for s in reversed(shape):
                stride.append(acc)
                acc *= max(s, 1)
            return out.set_(storage, 0, shape, tuple(reversed(stride)))

    def _evict(self, nbytes: int) -> None:
        """Drop free buffers (of any size) until ``nbytes`` more fit under ``max_bytes`` (lock held)."""
        for ring in self._free.values():
            for st in [st for st in ring if not self._in_use(st)]:
                if self._bytes + nbytes <= self.max_bytes:
                    return
                ring.remove(st)
                self._bytes -= st.nbytes()

    def clear(self) -> int:
        """Drop every buffer nobody else references; returns the bytes released."""
        released = 0
        with self._lock:
            for key, ring in list(self._free.items()):
                keep = [st for st in ring if self._in_use(st)]
                released += sum(st.nbytes() for st in ring if not self._in_use(st))
                self._free[key] = keep
            self._bytes -= released
        return released

    def stats(self) -> dict[str, int]:
        """Buffers and bytes held, and how many requests were served from the pool (hits)."""
        with self._lock:
            return {"buffers": sum(len(r) for r in self._free.values()), "bytes": self._bytes,
                    "hits": self.hits, "misses": self.misses}


#: the pool every fast-path program draws from
POOL = BufferPool()
