"""Checks of scalar arguments, shared by every layer: each returns the value in its plain type
or raises an InvalidInputError that names the argument, what it must be and what it got; and
the two helpers that let one options dataclass define a function's keyword options."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import numbers
from collections.abc import Callable

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


def options_doc(cls) -> str:
    """One line per field of the dataclass ``cls``: name, default and the field's ``doc``."""
    lines = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else "(required)"
        doc = f.metadata.get("doc", "")
        lines.append(f"    {f.name} = {default!r}: {doc}".rstrip(": "))
    return "\n".join(lines)


def option(default, doc: str):
    """A dataclass field with a default and a one-line doc shown by :func:`with_options`."""
    return dataclasses.field(default=default, metadata={"doc": doc})


def with_options(cls) -> Callable[[Callable], Callable]:
    """Decorate ``func(..., **options)``, whose signature types its keyword options with the
    keyword form of the options dataclass ``cls`` (``Unpack[...Keywords]``): an unknown option
    name is refused with a clear error instead of a TypeError deep inside, and ``help()`` lists
    every option with its default and doc."""

    def decorate(func: Callable) -> Callable:
        own = {
            p.name for p in inspect.signature(func).parameters.values() if p.kind != p.VAR_KEYWORD
        }
        options = [f.name for f in dataclasses.fields(cls) if f.name not in own]

        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            unknown = sorted(set(kwargs) - own - set(options))
            if unknown:
                raise InvalidInputError(
                    f"{func.__name__}() got unknown option(s) {', '.join(unknown)}; "
                    f"its options are: {', '.join(options)}"
                )
            return func(*args, **kwargs)

        wrapper.__doc__ = f"{func.__doc__ or ''}\n\nOptions ({cls.__name__}):\n{options_doc(cls)}\n"
        return wrapper

    return decorate
