"""Argument checks shared by the library and the pipeline.

Each check returns the (normalized) value or raises before any work starts, with a message
``"<where>: <name> must be <expected>, got <value!r>"`` (``where`` omitted when empty).
A value of the wrong type raises :class:`ArgumentTypeError`, which is both a ``TypeError``
and a ``ValueError``, so callers that catch either keep working.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["ArgumentTypeError", "check_positive_int", "check_non_negative_int", "check_int",
           "check_positive_float", "check_non_negative_float", "check_probability", "check_bool"]


class ArgumentTypeError(TypeError, ValueError):
    """An argument of the wrong type (catchable as TypeError or ValueError)."""


def _message(value: Any, name: str, where: str, expected: str) -> str:
    prefix = f"{where}: " if where else ""
    return f"{prefix}{name} must be {expected}, got {value!r}"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_int(value: Any, name: str, where: str = "", *, minimum: int | None = None,
              expected: str = "an integer") -> int:
    """``value`` if it is an int (not a bool) and, when given, >= ``minimum``."""
    if not _is_int(value):
        raise ArgumentTypeError(_message(value, name, where, expected))
    if minimum is not None and value < minimum:
        raise ValueError(_message(value, name, where, expected))
    return value


def check_positive_int(value: Any, name: str, where: str = "") -> int:
    """``value`` if it is an int >= 1 (bools rejected)."""
    return check_int(value, name, where, minimum=1, expected="a positive integer")


def check_non_negative_int(value: Any, name: str, where: str = "") -> int:
    """``value`` if it is an int >= 0 (bools rejected)."""
    return check_int(value, name, where, minimum=0, expected="a non-negative integer")


def check_positive_float(value: Any, name: str, where: str = "", *, coerce: bool = False) -> float:
    """``float(value)`` if it is a finite number > 0 (bools rejected).

    ``coerce=True`` also accepts anything ``float()`` parses (e.g. the string ``"3e-3"``).
    """
    expected = "a positive finite number"
    if coerce and not isinstance(value, bool) and not _is_number(value):
        try:
            value_f = float(value)
        except (TypeError, ValueError):
            raise ArgumentTypeError(_message(value, name, where, expected)) from None
    elif not _is_number(value):
        raise ArgumentTypeError(_message(value, name, where, expected))
    else:
        value_f = float(value)
    if not math.isfinite(value_f) or value_f <= 0:
        raise ValueError(_message(value, name, where, expected))
    return value_f


def check_non_negative_float(value: Any, name: str, where: str = "") -> float:
    """``float(value)`` if it is a finite number >= 0 (bools rejected)."""
    expected = "a non-negative finite number"
    if not _is_number(value):
        raise ArgumentTypeError(_message(value, name, where, expected))
    if not math.isfinite(value) or value < 0:
        raise ValueError(_message(value, name, where, expected))
    return float(value)


def check_probability(value: Any, name: str, where: str = "") -> float:
    """``float(value)`` if it is a number in [0, 1] (bools rejected)."""
    expected = "a number in [0, 1]"
    if not _is_number(value):
        raise ArgumentTypeError(_message(value, name, where, expected))
    if not 0.0 <= value <= 1.0:
        raise ValueError(_message(value, name, where, expected))
    return float(value)


def check_bool(value: Any, name: str, where: str = "") -> bool:
    """``value`` if it is exactly True or False."""
    if not isinstance(value, bool):
        raise ArgumentTypeError(_message(value, name, where, "True or False"))
    return value
