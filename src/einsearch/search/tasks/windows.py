"""Random context windows of a token sequence: the batches of the language-model tasks
(``charlm``, ``tokens``).

A batch is ``batch_size`` windows of ``block_size + 1`` consecutive tokens at start positions
drawn from the step's generator (``tasks.base.step_generator``), so it is a pure function of
(seed, step): the same for every structure and width, and for a run resumed from a checkpoint.
The sequence may be a numpy array or a read-only ``np.memmap`` of a multi-GB token file: only
the windows' pages are read.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["random_windows"]


def random_windows(data: np.ndarray, block_size: int, batch_size: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """(inputs, targets), each (batch_size, block_size) int64: windows of ``data`` and the same
    windows shifted by one token."""
    starts = torch.randint(0, len(data) - block_size, (batch_size,), generator=g).numpy()
    w = torch.from_numpy(np.asarray(data[starts[:, None] + np.arange(block_size + 1)], dtype=np.int64))
    return w[:, :-1], w[:, 1:]
