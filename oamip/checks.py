"""Checks of scalar arguments, shared by every layer: each returns the value in its plain type
or raises an InvalidInputError that names the argument, what it must be and what it got."""

from __future__ import annotations

import math
import numbers

from oamip.errors import InvalidInputError


def real(what: str, value, low: float = -math.inf, high: float = math.inf, *, open_low=False):
    """``value`` as a finite float in ``[low, high]`` (``(low, high]`` with ``open_low``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise InvalidInputError(f"{what} must be a finite number, got {value!r}")
    if not low <= value <= high or (open_low and value == low):
        left = "(" if open_low else "["
        raise InvalidInputError(f"{what} must lie in {left}{low:g}, {high:g}], got {value!r}")
    return float(value)


def whole(what: str, value, low: int = 0, high: float = math.inf) -> int:
    """``value`` as an int in ``[low, high]``; whole-valued floats such as ``2.0`` pass."""
    integral = isinstance(value, numbers.Integral) or (
        isinstance(value, numbers.Real) and math.isfinite(value) and float(value).is_integer()
    )
    if isinstance(value, bool) or not integral:
        raise InvalidInputError(f"{what} must be a whole number, got {value!r}")
    if not low <= value <= high:
        top = "inf" if high == math.inf else int(high)
        raise InvalidInputError(f"{what} must lie in [{low}, {top}], got {value!r}")
    return int(value)


def choice(what: str, value, choices) -> str:
    """``value`` if it is one of the strings ``choices``."""
    if not isinstance(value, str) or value not in choices:
        raise InvalidInputError(f"unknown {what} {value!r}; use one of {', '.join(choices)}")
    return value


def flag(what: str, value) -> bool:
    """``value`` if it is True or False (a string such as "no" would read as True)."""
    if not isinstance(value, bool):
        raise InvalidInputError(f"{what} must be True or False, got {value!r}")
    return value
