"""Opt-in glibc allocator tuning (never applied on import; the CLI and the bench call it and say so)."""

from __future__ import annotations

__all__ = ["tune_cpu_allocator"]


def tune_cpu_allocator(mmap_threshold: int = 1 << 30) -> bool:
    """Opt-in, process-wide: keep large freed blocks in glibc's heap instead of unmapping them.

    With glibc's defaults every tensor above 32 MiB is a fresh ``mmap`` whose pages fault in on
    first touch. The fast path does not need this (its buffers are reused, ``fast/buffers.py``);
    it helps the rest of a model (dense layers, elementwise ops). Sets ``M_MMAP_THRESHOLD`` and
    ``M_TRIM_THRESHOLD`` through ``mallopt``. Returns True on success, False without glibc.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        ok = libc.mallopt(m_mmap_threshold, int(mmap_threshold)) == 1
        ok = libc.mallopt(m_trim_threshold, int(2 * mmap_threshold)) == 1 and ok
        return bool(ok)
    except (OSError, AttributeError):
        return False
