"""Number and text formatting shared by the report's prose and plots."""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["fmt", "fmt_params", "md", "ci_text"]


def fmt(x: float | None, digits: int = 3) -> str:
    if x is None or not math.isfinite(x):
        return "n/a"
    return f"{x:.{digits}g}"


def fmt_params(params: list[int]) -> str:
    def one(p: int) -> str:
        for div, suf in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
            if p >= div:
                return f"{p / div:.3g}{suf}"
        return str(p)

    if not params:
        return "n/a"
    return one(params[0]) if len(params) == 1 else f"{one(params[0])}–{one(params[-1])}"


def md(text: object) -> str:
    """Text safe inside a Markdown table cell (theta text contains '|')."""
    return str(text).replace("|", "\\|")


def ci_text(ci: Sequence[float | None] | None) -> str:
    return f"[{fmt(ci[0])}, {fmt(ci[1])}]" if ci is not None and None not in ci else ""
