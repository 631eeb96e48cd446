"""Small file, time and number helpers shared by the pipeline (store, sweep, analysis, report, explore)."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

__all__ = ["utc_now_iso", "atomic_write_bytes", "atomic_write_text", "finite_or_none"]


def finite_or_none(x: Any) -> float | None:
    """``float(x)``, or None for None, NaN and infinities (what JSON and the store can hold)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def utc_now_iso() -> str:
    """The current UTC time as ISO 8601 to the second, e.g. ``2026-01-31T12:00:00Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one.

    The bytes go to a temporary file next to ``path`` (flushed and fsync'ed), which then
    replaces ``path`` in one ``os.replace``; a failure removes the temporary file.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> None:
    """``atomic_write_bytes`` of ``text`` encoded with ``encoding``."""
    atomic_write_bytes(path, text.encode(encoding))
