"""Deprecated import paths of the pipeline modules that moved to ``einsearch.search``.

``import einsearch.train`` (or ``from einsearch.tasks.charlm import ...``) keeps working: a
meta-path finder maps ``einsearch.<moved>[.<rest>]`` to the very same module object at
``einsearch.search.<moved>[.<rest>]`` (no second copy with its own state) and warns once per
import. Nothing is imported until such a path is asked for.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from collections.abc import Sequence
from types import ModuleType

#: submodules that moved: ``einsearch.<name>`` -> ``einsearch.search.<name>``
MOVED_MODULES = ("train", "store", "sweep", "scaling", "report", "cli", "tasks", "models")


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return importlib.import_module(self.target)

    def exec_module(self, module: ModuleType) -> None:
        """The target module is already executed; the alias only points at it."""


class MovedModuleFinder(importlib.abc.MetaPathFinder):
    """Finds ``einsearch.<moved>...`` and aliases it to ``einsearch.search.<moved>...``."""

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        parts = fullname.split(".")
        if len(parts) < 2 or parts[0] != "einsearch" or parts[1] not in MOVED_MODULES:
            return None
        new = ".".join(["einsearch", "search", *parts[1:]])
        warnings.warn(f"{fullname} moved to {new}; import it from there", DeprecationWarning, stacklevel=2)
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(new))


def install() -> None:
    """Register the finder once (idempotent)."""
    if not any(isinstance(f, MovedModuleFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, MovedModuleFinder())  # before the path finder, which would load a second copy
