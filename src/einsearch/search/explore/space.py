"""The search space of ``einsearch explore``: five numbers per trial <-> a theta, and which
named structure a theta is (see the parametrisation in :mod:`einsearch.search.explore`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

__all__ = ["PARAM_NAMES", "theta_from_params", "params_from_theta", "named_as"]

PARAM_NAMES = ("in_1", "in_2", "out_1", "out_2", "rho")


def theta_from_params(params: Mapping[str, float], grid: int = 8):
    """The Theta of a trial's five numbers, snapped to multiples of 1/``grid`` (see module)."""
    from einsearch import Theta

    k = {n: int(round(float(params[n]) * grid)) for n in PARAM_NAMES}
    for n, v in k.items():
        if not 0 <= v <= grid:
            raise ValueError(f"trial parameter {n} = {params[n]!r} is outside [0, 1]")
    a, b = sorted((k["in_1"], k["in_2"]))
    c, d = sorted((k["out_1"], k["out_2"]))
    return Theta(a / grid, (b - a) / grid, (grid - b) / grid, c / grid, (d - c) / grid,
                 (grid - d) / grid, k["rho"] / grid)


def params_from_theta(theta) -> dict[str, float]:
    """Five numbers that map back to ``theta`` (the inverse of :func:`theta_from_params`)."""
    return {"in_1": theta.alpha, "in_2": theta.alpha + theta.beta, "out_1": theta.delta,
            "out_2": theta.delta + theta.epsilon, "rho": theta.rho}


_FAMILIES = (("dense", "dense"), ("low_rank", "low_rank"), ("tensor_train", "kronecker"),
             ("btt", "monarch"), ("low_rank_btt", None))


def named_as(theta) -> str | None:
    """The named structure a theta is (``"btt(0.125)"``, ``"monarch"``), or None if none.

    Two thetas are the same structure when their canonical forms agree; a family with a rank
    parameter matches any rho (its rho=0 member by its own name: kronecker, monarch)."""
    from einsearch import NAMED_STRUCTURES
    from einsearch.theta import _format_number

    canon = theta.canonical().as_tuple()
    for family, at_zero in _FAMILIES:
        ref = NAMED_STRUCTURES[family]() if family == "dense" else NAMED_STRUCTURES[family](0.0)
        for t in (ref, ref.swapped()):
            head = dataclasses.replace(t, rho=canon[6]).canonical().as_tuple()
            if all(abs(x - y) < 1e-9 for x, y in zip(head, canon)):
                if family == "dense":
                    return "dense" if canon[6] == 0 else None
                if canon[6] == 0 and at_zero:
                    return at_zero
                return f"{family}({_format_number(canon[6])})"
    return None
