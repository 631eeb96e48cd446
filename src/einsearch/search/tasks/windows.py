"""Random context windows of a token sequence, and the language-model task built on them
(``WindowLMTask``: the shared part of ``charlm`` and ``tokens``).

A batch is ``batch_size`` windows of ``block_size + 1`` consecutive tokens at start positions
drawn from the step's generator (``tasks.base.step_generator``), so it is a pure function of
(seed, step): the same for every structure and width, and for a run resumed from a checkpoint.
The sequence may be a numpy array or a read-only ``np.memmap`` of a multi-GB token file: only
the windows' pages are read.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models.gpt import GPT, gpt_heads
from .base import Task, step_generator

__all__ = ["random_windows", "WindowLMTask"]


def random_windows(data: np.ndarray, block_size: int, batch_size: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """(inputs, targets), each (batch_size, block_size) int64: windows of ``data`` and the same
    windows shifted by one token."""
    starts = torch.randint(0, len(data) - block_size, (batch_size,), generator=g).numpy()
    w = torch.from_numpy(np.asarray(data[starts[:, None] + np.arange(block_size + 1)], dtype=np.int64))
    return w[:, :-1], w[:, 1:]


class WindowLMTask(Task):
    """Next-token prediction with the pipeline's GPT on random windows of two token sequences.

    Subclasses set ``name``, ``vocab_size``, ``block_size`` (= ``tokens_per_example``),
    ``depth``, ``depth_mup``, ``qk_norm`` and the splits ``train_tokens`` / ``val_tokens``
    (numpy arrays or memory maps). Training windows come from the run's stream (salt
    ``"<name>-train"``); the held-out windows are fixed (``"<name>-eval"``, seed 0) and cached.
    """

    default_depth = 4
    vocab_size: int
    block_size: int
    depth: int
    depth_mup: bool = False
    qk_norm: bool = True
    train_tokens: np.ndarray
    val_tokens: np.ndarray

    def build_model(self, width: int, *, seed: int) -> nn.Module:
        gpt_heads(width)  # clear error on a bad width before anything is built
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return GPT(width, vocab_size=self.vocab_size, block_size=self.block_size, depth=self.depth,
                       depth_mup=self.depth_mup, qk_norm=self.qk_norm)

    def structured_select(self, name: str, module: nn.Module) -> bool:
        return GPT.is_structured_linear(name, module)

    def batch(self, step: int, batch_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        return random_windows(self.train_tokens, self.block_size, batch_size,
                              step_generator(generator.initial_seed(), step, f"{self.name}-train"))

    def eval_batches(self, num_batches: int, batch_size: int) -> list[tuple[Tensor, Tensor]]:
        cache: dict[tuple[int, int], list[tuple[Tensor, Tensor]]] = self.__dict__.setdefault("_eval_cache", {})
        key = (num_batches, batch_size)
        if key not in cache:
            cache[key] = [random_windows(self.val_tokens, self.block_size, batch_size,
                                         step_generator(0, i, f"{self.name}-eval")) for i in range(num_batches)]
        return cache[key]

    def loss(self, model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
        x, y = batch
        logits = model(x)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
