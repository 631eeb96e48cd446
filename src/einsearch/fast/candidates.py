"""The candidate programs the planner chooses among (docs/design.md section 8).

Every candidate computes ``einsum_linear_reference(x, a, b, plan)`` (same values and
gradients) for the plans it applies to:

* ``layout``: the layout-search program (``fast/layout.py``); what ``estimate`` mode runs.
* ``block_transpose``: the plain block-transpose formulation (``fast/blocktranspose.py``);
  plans whose two cores both carry parameters. ``block_transpose_staged``: the same with each
  copy that moves the innermost axis done in cache-friendly steps.
* ``reference``: the two ``torch.einsum`` calls of ``functional.einsum_linear_reference``.
* ``compiled_reference``: the reference through ``torch.compile`` (only in ``patient`` mode,
  and only where a C++ compiler runs; compiling costs tens of seconds per plan on a small CPU
  and the compiled backward does not support double backward).
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..functional import einsum_linear_reference
from ..plan import EinsumPlan
from . import blocktranspose, layout

__all__ = ["Candidate", "candidates", "candidate", "compiler_available", "NAMES"]

log = logging.getLogger("einsearch.fast")

NAMES = ("layout", "block_transpose", "block_transpose_staged", "reference", "compiled_reference")


@dataclass(frozen=True)
class Candidate:
    """One way to run a plan: ``run(x, a, b, plan) -> y`` with (n, d_in) -> (n, d_out)."""

    name: str
    run: Callable[[Tensor, Tensor, Tensor, EinsumPlan], Tensor]
    description: str


@functools.lru_cache(maxsize=1)
def compiler_available() -> bool:
    """Whether a C++ compiler runs here (checked once: ``$CXX``, g++, c++ or clang++ --version)."""
    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        path = shutil.which(name) if name else None
        if not path:
            continue
        try:
            ok = subprocess.run([path, "--version"], capture_output=True, timeout=10).returncode == 0
        except (OSError, subprocess.SubprocessError):
            ok = False
        if ok:
            return True
    return False


_COMPILED: dict[EinsumPlan, Callable] = {}


def _compiled_reference(plan: EinsumPlan) -> Callable:
    fn = _COMPILED.get(plan)
    if fn is None:
        def ref(x: Tensor, a: Tensor, b: Tensor) -> Tensor:
            return einsum_linear_reference(x, a, b, plan)
        fn = _COMPILED[plan] = torch.compile(ref, dynamic=False)
    return fn


def _run_compiled(x: Tensor, a: Tensor, b: Tensor, plan: EinsumPlan) -> Tensor:
    return _compiled_reference(plan)(x, a, b)


_ALL = {
    "layout": Candidate("layout", layout.run, "layout search (estimated copy costs)"),
    "block_transpose": Candidate("block_transpose", blocktranspose.run,
                                 "block transpose: x->(g,n,q,p), bmm, copy, bmm, transpose back"),
    "block_transpose_staged": Candidate("block_transpose_staged", blocktranspose.run_staged,
                                        "block transpose, copies that move the innermost axis in cached steps"),
    "reference": Candidate("reference", einsum_linear_reference, "two torch.einsum calls"),
    "compiled_reference": Candidate("compiled_reference", _run_compiled, "torch.compile of the two einsums"),
}


def candidate(name: str) -> Candidate:
    """The candidate called ``name`` (one of ``NAMES``)."""
    if name not in _ALL:
        raise ValueError(f"candidate must be one of {NAMES}, got {name!r}")
    return _ALL[name]


def candidates(plan: EinsumPlan, compiled: bool = False) -> list[Candidate]:
    """The candidates that apply to ``plan`` (estimate-mode choice first)."""
    if plan.trivial_a and plan.trivial_b:
        return [_ALL["reference"]]
    out = [_ALL["layout"]]
    if blocktranspose.applies(plan):
        out += [_ALL["block_transpose"], _ALL["block_transpose_staged"]]
    out.append(_ALL["reference"])
    if compiled and compiler_available():
        out.append(_ALL["compiled_reference"])
    return out
