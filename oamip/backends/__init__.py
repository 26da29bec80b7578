"""Solver backends: one module per solver, chosen by name at solve time.

``get(name)`` returns a ready backend, ``available()`` lists the installed ones and
``register(cls)`` adds a new one (one module plus one registration). Backends that other
packages declare in the entry-point group ``oamip.backends`` (``name = "module:Class"``) are
found too, without any import by the user: the first call of ``known``, ``available`` or
``get`` loads them, once.
"""

from __future__ import annotations

import warnings
from importlib.metadata import entry_points

from oamip.backends.base import Backend, Capabilities, SolveOptions, SolveResult, Status
from oamip.backends.cbc import CbcBackend
from oamip.backends.export import write_lp, write_mps
from oamip.backends.gurobi import GurobiBackend
from oamip.backends.highs import HighsBackend
from oamip.backends.scip import ScipBackend
from oamip.backends.standard_form import StandardForm, compile_model, relaxation
from oamip.errors import BackendUnavailableError, InvalidInputError

ENTRY_POINT_GROUP = "oamip.backends"

_REGISTRY: dict[str, type[Backend]] = {}
_BROKEN: dict[str, str] = {}
"""Entry points that could not be loaded: name -> what went wrong."""
_discovered = False


def register(cls: type[Backend]) -> type[Backend]:
    """Make a backend class available under ``cls.name`` (usable as a class decorator)."""
    if not (isinstance(cls, type) and issubclass(cls, Backend)) or not cls.name:
        raise InvalidInputError(
            f"register() takes a subclass of oamip.backends.Backend with a name, got {cls!r}"
        )
    _REGISTRY[cls.name] = cls
    return cls


def known() -> list[str]:
    """Every backend name, installed or not (entry points that failed to load included, so
    that asking for one says why it failed)."""
    _discover()
    return sorted({*_REGISTRY, *_BROKEN})


def available() -> list[str]:
    """The registered backends whose solver is installed on this machine."""
    _discover()
    return [name for name in sorted(_REGISTRY) if _installed(_REGISTRY[name])]


def _installed(cls: type[Backend]) -> bool:
    """``cls.is_installed()``; a backend whose check fails counts as not installed (with a
    warning saying why), so that one package cannot break the listing of the others."""
    try:
        return bool(cls.is_installed())
    except Exception as exc:
        warnings.warn(
            f"backend '{cls.name}' cannot tell whether it is installed "
            f"({type(exc).__name__}: {exc}); it is left out of oamip.backends.available()",
            RuntimeWarning,
            stacklevel=3,
        )
        return False


def get(name: str | Backend) -> Backend:
    """The backend called ``name``; a clear error if it is unknown or not installed."""
    if isinstance(name, Backend):
        return name
    _discover()
    cls = _REGISTRY.get(name)
    if cls is None and name in _BROKEN:
        raise BackendUnavailableError(_BROKEN[name])
    if cls is None:
        raise BackendUnavailableError(
            f"unknown backend '{name}'; known backends: {', '.join(known())} "
            f"(installed here: {', '.join(available()) or 'none'})"
        )
    if not cls.is_installed():
        raise BackendUnavailableError(
            f"backend '{name}' is not installed; install it with: {cls.install_hint}"
        )
    return cls()


def _discover() -> None:
    """Register the backends declared in the entry-point group, once. One that cannot be
    loaded is remembered with the reason (and a warning), never raised here: listing the
    backends must not fail because of another package."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    for point in entry_points(group=ENTRY_POINT_GROUP):
        problem = _load(point)
        if problem is not None:
            _BROKEN[point.name] = problem
            warnings.warn(problem, RuntimeWarning, stacklevel=3)


def _load(point) -> str | None:
    """Register the backend of one entry point; what went wrong, or None."""
    where = f"the backend entry point '{point.name} = {point.value}' (group {ENTRY_POINT_GROUP})"
    try:
        cls = point.load()
    except Exception as exc:
        return f"{where} cannot be loaded: {type(exc).__name__}: {exc}"
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        return f"{where} does not name a subclass of oamip.backends.Backend"
    if cls.name != point.name:
        return f"{where} names a backend called '{cls.name}'; the two names must agree"
    if _REGISTRY.get(cls.name, cls) is not cls:
        return f"{where} clashes with the backend '{cls.name}' already registered"
    register(cls)
    return None


register(HighsBackend)
register(ScipBackend)
register(GurobiBackend)
register(CbcBackend)

__all__ = [
    "ENTRY_POINT_GROUP",
    "Backend",
    "Capabilities",
    "SolveOptions",
    "SolveResult",
    "StandardForm",
    "Status",
    "available",
    "compile_model",
    "get",
    "known",
    "register",
    "relaxation",
    "write_lp",
    "write_mps",
]
