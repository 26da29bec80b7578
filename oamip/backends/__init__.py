"""Solver backends: one module per solver, chosen by name at solve time.

``get(name)`` returns a ready backend, ``available()`` lists the installed ones and
``register(cls)`` adds a new one (one module plus one registration).
"""

from __future__ import annotations

from oamip.backends.base import Backend, Capabilities, SolveOptions, SolveResult, Status
from oamip.backends.cbc import CbcBackend
from oamip.backends.export import write_lp, write_mps
from oamip.backends.gurobi import GurobiBackend
from oamip.backends.highs import HighsBackend
from oamip.backends.scip import ScipBackend
from oamip.backends.standard_form import StandardForm, compile_model
from oamip.errors import BackendUnavailableError

_REGISTRY: dict[str, type[Backend]] = {}


def register(cls: type[Backend]) -> type[Backend]:
    """Make a backend class available under ``cls.name`` (usable as a class decorator)."""
    _REGISTRY[cls.name] = cls
    return cls


def known() -> list[str]:
    """Every registered backend name, installed or not."""
    return sorted(_REGISTRY)


def available() -> list[str]:
    """The registered backends whose solver is installed on this machine."""
    return [name for name in known() if _REGISTRY[name].is_installed()]


def get(name: str | Backend) -> Backend:
    """The backend called ``name``; a clear error if it is unknown or not installed."""
    if isinstance(name, Backend):
        return name
    cls = _REGISTRY.get(name)
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


register(HighsBackend)
register(ScipBackend)
register(GurobiBackend)
register(CbcBackend)

__all__ = [
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
    "write_lp",
    "write_mps",
]
