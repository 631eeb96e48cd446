"""Tasks: the problems a structure is trained on (docs/design.md section 6).

``get_task("regression")`` (the embedded default), ``get_task("charlm", data=path)`` and
``get_task("tokens", data=dir)``; ``register_task`` adds one in this process. A task of one's own
can also be named by its import path, ``"package.module:factory"``: the factory is imported
wherever runs execute (this process, local worker processes, Ray workers), so nothing has to be
registered there. See ``base.Task`` for the interface.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable
from typing import Any

from .base import Task, TensorSpec, step_generator
from .charlm import CharLMTask, Corpus, decode, encode, load_corpus
from .regression import RegressionTask
from .tokens import TokenFiles, TokensTask, load_token_files, write_token_files

__all__ = [
    "Task", "TensorSpec", "RegressionTask", "CharLMTask", "Corpus", "load_corpus", "encode", "decode",
    "TokensTask", "TokenFiles", "load_token_files", "write_token_files",
    "get_task", "register_task", "task_names", "task_options", "step_generator", "is_import_path", "get_task_factory",
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


def is_import_path(name: object) -> bool:
    """Whether ``name`` has the form ``package.module:attribute``."""
    if not isinstance(name, str) or name.count(":") != 1:
        return False
    module, attr = name.split(":")
    return bool(module) and bool(attr) and all(p.isidentifier() for p in module.split(".")) and attr.isidentifier()


@functools.lru_cache(maxsize=64)
def _imported(path: str) -> Callable[..., Task]:
    module_name, attr = path.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"task {path!r}: cannot import module {module_name!r} ({err}); is it on PYTHONPATH?") from None
    try:
        factory = getattr(module, attr)
    except AttributeError:
        raise ValueError(f"task {path!r}: module {module_name!r} has no attribute {attr!r}") from None
    if not callable(factory):
        raise ValueError(f"task {path!r}: {attr!r} is not callable (got {type(factory).__name__}); it must be a "
                         "factory returning an einsearch Task")
    return factory


def _factory(name: str) -> Callable[..., Task]:
    if name in _REGISTRY:
        return _REGISTRY[name]
    if is_import_path(name):
        return _imported(name)
    raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(task_names())}, or an import path "
                     "'package.module:factory'")


def get_task_factory(name: str) -> Callable[..., Task]:
    """The factory of task ``name`` (registered, or imported from its path); ValueError if none."""
    return _factory(name)


def task_options(name: str) -> set[str]:
    """Keyword options accepted by task ``name`` (e.g. ``{"data", "block_size", "depth"}``)."""
    params = inspect.signature(_factory(name)).parameters.values()
    return {p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}


def get_task(name: str, **options: Any) -> Task:
    """Build task ``name`` (a registered name or an import path) with ``options``; a
    ``ValueError`` names an unknown task or option, a factory that fails or returns no ``Task``."""
    factory = _factory(name)
    params = inspect.signature(factory).parameters.values()
    takes_any = any(p.kind == p.VAR_KEYWORD for p in params)
    unknown = sorted(set(options) - task_options(name))
    if unknown and not takes_any:
        raise ValueError(
            f"task {name!r} does not take option(s) {', '.join(unknown)}; "
            f"it takes: {', '.join(sorted(task_options(name))) or 'none'}"
        )
    task = factory(**options)
    if not isinstance(task, Task):
        raise ValueError(f"task {name!r}: the factory returned {type(task).__name__}, not an einsearch Task "
                         "(einsearch.search.Task)")
    return task


register_task("regression", RegressionTask)
register_task("charlm", CharLMTask)
register_task("tokens", TokensTask)
