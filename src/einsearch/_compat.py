"""Optional third-party types, looked up once and in one place."""

from __future__ import annotations

import functools

__all__ = ["conv1d_type"]


@functools.lru_cache(maxsize=1)
def conv1d_type() -> type | None:
    """Hugging Face ``transformers.pytorch_utils.Conv1D`` (GPT-2's linear, weight (in, out)),
    or None when transformers is not installed."""
    try:
        from transformers.pytorch_utils import Conv1D
    except Exception:  # transformers is optional
        return None
    return Conv1D
