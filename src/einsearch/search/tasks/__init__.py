"""Tasks: the problems a structure is trained on (docs/design.md section 6).

``get_task("regression")`` (the embedded default) and ``get_task("charlm", data=path)``;
``register_task`` adds a new one. See ``base.Task`` for the interface.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from .base import Task, TensorSpec, step_generator
from .charlm import CharLMTask, Corpus, decode, encode, load_corpus
from .regression import RegressionTask

__all__ = [
    "Task", "TensorSpec", "RegressionTask", "CharLMTask", "Corpus", "load_corpus", "encode", "decode",
    "get_task", "register_task", "task_names", "task_options", "step_generator",
]

_REGISTRY: dict[str, Callable[..., Task]] = {}


def register_task(name: str, factory: Callable[..., Task]) -> None:
    """Make ``get_task(name, **options)`` call ``factory(**options)``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"task name must be a non-empty string, got {name!r}")
    _REGISTRY[name] = factory


def task_names() -> list[str]:
    """Names of the registered tasks, sorted."""
    return sorted(_REGISTRY)


def _factory(name: str) -> Callable[..., Task]:
    if name not in _REGISTRY:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(task_names())}")
    return _REGISTRY[name]


def task_options(name: str) -> set[str]:
    """Keyword options accepted by task ``name`` (e.g. ``{"data", "block_size", "depth"}``)."""
    params = inspect.signature(_factory(name)).parameters.values()
    return {p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}


def get_task(name: str, **options: Any) -> Task:
    """Build task ``name`` with ``options``; a ``ValueError`` names an unknown task or option."""
    factory = _factory(name)
    unknown = sorted(set(options) - task_options(name))
    if unknown:
        raise ValueError(
            f"task {name!r} does not take option(s) {', '.join(unknown)}; "
            f"it takes: {', '.join(sorted(task_options(name))) or 'none'}"
        )
    return factory(**options)


register_task("regression", RegressionTask)
register_task("charlm", CharLMTask)
