"""``regression``: fit a fixed random teacher MLP (the embedded default task, docs/design.md section 6).

Teacher: input dim 8, 6 hidden layers of width 1024, ReLU x sqrt(2), no biases, weights
N(0, 1/fan_in) from a fixed seed, a scalar output standardized to mean 0, std 1 with constants
estimated once from 16384 fixed-seed inputs. Inputs are fresh N(0, I) draws every step; the
loss is the mean squared error.

Caching (the teacher costs far more than a small student): the teacher itself is built once
per process and kept (``functools.lru_cache``), and every training batch it labels is kept in
a process-wide LRU cache keyed on (teacher, stream seed, step, batch size) holding up to
2**21 examples (~75 MB). A batch is a pure function of that key, so all runs of a sweep that
share a seed and batch size (every structure and width) draw the same stream and pay for the
teacher once per process. The held-out set (seed-independent) is cached the same way.
"""

from __future__ import annotations

import functools
import math
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from einsearch._checks import check_non_negative_int, check_positive_int

from ..models.mlp import ResidualMLP
from .base import Task, TensorSpec, step_generator

__all__ = ["RegressionTask", "Teacher", "get_teacher"]

_STANDARDIZE_SAMPLES = 16384
_CHUNK = 2048
_CACHE_MAX_EXAMPLES = 2**21


@dataclass(frozen=True)
class TeacherSpec:
    seed: int = 0
    d_in: int = 8
    width: int = 1024
    depth: int = 6


class Teacher:
    """The fixed random ReLU network; ``teacher(x)`` gives standardized targets of shape (B, 1)."""

    def __init__(self, spec: TeacherSpec) -> None:
        self.spec = spec
        g = torch.Generator().manual_seed(spec.seed)
        dims = [spec.d_in] + [spec.width] * spec.depth + [1]
        # weights[i] has shape (fan_in, fan_out): h @ W, entries N(0, 1 / fan_in)
        self.weights = [torch.randn(a, b, generator=g) / math.sqrt(a) for a, b in zip(dims[:-1], dims[1:])]
        self.mean = 0.0
        self.std = 1.0
        x = torch.randn(_STANDARDIZE_SAMPLES, spec.d_in, generator=step_generator(spec.seed, 0, "teacher-standardize"))
        raw = self.raw(x).double()
        self.mean = float(raw.mean())
        self.std = float(raw.std())

    @torch.no_grad()
    def raw(self, x: Tensor) -> Tensor:
        """Unstandardized teacher output, shape (B, 1), computed in float32 in chunks, with
        autocast off: the labels define the task, so they must not depend on the precision of
        the run that happens to ask for them first (they are cached and shared)."""
        outs = []
        gain = math.sqrt(2.0)
        with torch.autocast(x.device.type, enabled=False):
            for chunk in x.float().split(_CHUNK):
                h = chunk
                for w in self.weights[:-1]:
                    h = torch.relu(h @ w) * gain
                outs.append(h @ self.weights[-1])
        return torch.cat(outs) if outs else x.new_zeros(0, 1)

    def __call__(self, x: Tensor) -> Tensor:
        return (self.raw(x) - self.mean) / self.std


@functools.lru_cache(maxsize=4)
def get_teacher(seed: int = 0, d_in: int = 8, width: int = 1024, depth: int = 6) -> Teacher:
    """The process-wide teacher for these settings (built once)."""
    return Teacher(TeacherSpec(seed, d_in, width, depth))


class _BatchCache:
    """Thread-safe LRU of (x, y) batches, bounded by the total number of examples held."""

    def __init__(self, max_examples: int) -> None:
        self.max_examples = max_examples
        self._items: OrderedDict[tuple, tuple[Tensor, Tensor]] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get_or_make(self, key: tuple, make: Callable[[], tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
                self.hits += 1
                return item
        item = make()
        with self._lock:
            self.misses += 1
            if key not in self._items:
                self._items[key] = item
                self._size += item[0].shape[0]
            while self._size > self.max_examples and len(self._items) > 1:
                _, (old_x, _) = self._items.popitem(last=False)
                self._size -= old_x.shape[0]
        return item

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._size = 0


BATCH_CACHE = _BatchCache(_CACHE_MAX_EXAMPLES)


class RegressionTask(Task):
    """Regress a fixed random teacher with a residual MLP student.

    Options:
        depth: residual blocks of the student (default 3).
        teacher_seed: seed of the teacher's weights (default 0).
        teacher_width, teacher_depth: teacher shape (defaults 1024 and 6 hidden layers).
    """

    name = "regression"
    tokens_per_example = 1
    default_depth = 3
    D_IN = 8

    def __init__(self, *, depth: int | None = None, teacher_seed: int = 0, teacher_width: int = 1024,
                 teacher_depth: int = 6) -> None:
        self.depth = self.default_depth if depth is None else depth
        for field, value in (("depth", self.depth), ("teacher_width", teacher_width), ("teacher_depth", teacher_depth)):
            check_positive_int(value, field, "regression task")
        check_non_negative_int(teacher_seed, "teacher_seed", "regression task")
        self.teacher_key = (teacher_seed, self.D_IN, teacher_width, teacher_depth)
        self.input_spec = TensorSpec((-1, self.D_IN), "float", "standard Gaussian inputs")
        self.output_spec = TensorSpec((-1, 1), "float", "teacher output, standardized to mean 0, std 1")

    @property
    def teacher(self) -> Teacher:
        return get_teacher(*self.teacher_key)

    def build_model(self, width: int, *, seed: int) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return ResidualMLP(width, d_in=self.D_IN, d_out=1, depth=self.depth)

    def structured_select(self, name: str, module: nn.Module) -> bool:
        return ResidualMLP.is_block_linear(name, module)

    def _labelled(self, stream_seed: int, step: int, batch_size: int, salt: str) -> tuple[Tensor, Tensor]:
        def make() -> tuple[Tensor, Tensor]:
            x = torch.randn(batch_size, self.D_IN, generator=step_generator(stream_seed, step, salt))
            return x, self.teacher(x)

        return BATCH_CACHE.get_or_make((self.teacher_key, salt, stream_seed, step, batch_size), make)

    def batch(self, step: int, batch_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        return self._labelled(generator.initial_seed(), step, batch_size, "train")

    def eval_batches(self, num_batches: int, batch_size: int) -> list[tuple[Tensor, Tensor]]:
        return [self._labelled(0, i, batch_size, "eval") for i in range(num_batches)]

    def loss(self, model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
        x, y = batch
        return F.mse_loss(model(x), y)
