"""The task interface: what a training run needs to know about a problem.

A task owns its data stream, its model family and its loss. ``train.py`` only talks to this
interface, so adding a task (next-pixel prediction, say) never touches the training loop.

Determinism contract: ``batch(step, batch_size, generator)`` is a pure function of
``(generator.initial_seed(), step, batch_size)`` (the generator names the data stream; its
current state is not consumed). Runs that share a seed therefore see exactly the same
examples whatever their structure or width, which makes their losses directly comparable,
lets expensive targets be cached (see ``regression``), and makes a run resumable from any
step. ``eval_loss`` uses a fixed held-out set that does not depend on any seed.
"""

from __future__ import annotations

import abc
import hashlib
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["Task", "TensorSpec", "step_generator"]


@dataclass(frozen=True)
class TensorSpec:
    """Shape and meaning of a model input or output (``-1`` = batch dimension)."""

    shape: tuple[int, ...]
    dtype: str
    description: str

    def __str__(self) -> str:
        dims = ", ".join("B" if d == -1 else str(d) for d in self.shape)
        return f"{self.dtype}[{dims}]: {self.description}"


def step_generator(stream_seed: int, step: int, salt: str = "") -> torch.Generator:
    """A fresh CPU generator for one step of one data stream.

    The seed mixes ``stream_seed``, ``step`` and ``salt`` through a hash, so neighbouring
    seeds and steps give unrelated streams.
    """
    digest = hashlib.blake2b(f"{salt}:{int(stream_seed)}:{int(step)}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") & ((1 << 63) - 1))


class Task(abc.ABC):
    """A learning problem: data stream, model family, loss.

    Subclasses set ``name``, ``tokens_per_example``, ``input_spec`` and ``output_spec`` and
    implement the abstract methods. ``loss`` is the mean over tokens, so losses of different
    batch sizes are comparable.
    """

    name: str = ""
    #: tokens one example contributes to the compute count (1 for regression, T for LM)
    tokens_per_example: int = 1
    input_spec: TensorSpec
    output_spec: TensorSpec
    #: depth used when the caller passes ``depth=None``
    default_depth: int = 1

    @abc.abstractmethod
    def build_model(self, width: int, *, seed: int) -> nn.Module:
        """A fresh model of this width (an attribute ``model.width``), initialised from ``seed``.

        Built under a forked RNG: the global torch RNG is left untouched.
        """

    @abc.abstractmethod
    def structured_select(self, name: str, module: nn.Module) -> bool:
        """Whether ``module`` (called ``name`` in the model) is replaced by a structured layer."""

    @abc.abstractmethod
    def batch(self, step: int, batch_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Training batch ``(inputs, targets)`` for ``step`` of the stream named by ``generator``."""

    @abc.abstractmethod
    def loss(self, model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
        """Scalar training loss of ``model`` on ``batch`` (differentiable)."""

    @abc.abstractmethod
    def eval_batches(self, num_batches: int, batch_size: int) -> list[tuple[Tensor, Tensor]]:
        """The fixed held-out batches (same for every run, every call)."""

    @torch.no_grad()
    def eval_loss(self, model: nn.Module, *, num_batches: int = 4, batch_size: int = 128) -> float:
        """Mean loss over the fixed held-out batches, in eval mode, without gradients, on the
        model's device (under the caller's autocast, if any)."""
        if num_batches < 1 or batch_size < 1:
            raise ValueError(
                f"eval_loss needs num_batches >= 1 and batch_size >= 1, got {num_batches}, {batch_size}"
            )
        was_training = model.training
        model.eval()
        try:
            dtype, device = _param_dtype(model), _param_device(model)
            total = 0.0
            batches = self.eval_batches(num_batches, batch_size)
            for x, y in batches:
                total += float(self.loss(model, (_cast(x, dtype).to(device), _cast(y, dtype).to(device))))
            return total / len(batches)
        finally:
            model.train(was_training)

    def describe(self) -> str:
        return f"{self.name}: input {self.input_spec}; output {self.output_spec}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def _param_dtype(model: nn.Module) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.get_default_dtype()


def _param_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _cast(t: Tensor, dtype: torch.dtype) -> Tensor:
    """Float data follows the model's dtype (tests run in float64); token ids stay integers."""
    return t.to(dtype) if t.is_floating_point() else t
