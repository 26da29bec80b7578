"""What every solver backend shares: declared capabilities, one options set, one result type.

A backend solves a Pyomo model and nothing else: it never knows which formulation built it. Models
are compiled once to standard-form matrices (:mod:`oamip.backends.standard_form`) and each backend
hands those matrices to its solver.
"""

from __future__ import annotations

import abc
import importlib.util
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any

import numpy as np
import pyomo.environ as pyo

from oamip.backends.standard_form import StandardForm, compile_model, lp_relaxation
from oamip.errors import CapabilityError

DEFAULT_MIP_GAP = 1e-4


class Status(str, Enum):
    """How a solve ended."""

    OPTIMAL = "optimal"
    TIME_LIMIT = "time_limit"
    INFEASIBLE = "infeasible"
    UNBOUNDED = "unbounded"
    ERROR = "error"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Capabilities:
    """What a backend can solve; checked against a model before the solver starts."""

    integer: bool = False
    quadratic_objective: bool = False
    quadratic_constraints: bool = False
    mixed_integer_quadratic: bool = False
    nonlinear: bool = False
    warm_start: bool = False


@dataclass
class SolveOptions:
    """One options set, mapped by each backend onto its solver's own parameters."""

    time_limit: float | None = None
    mip_gap: float = DEFAULT_MIP_GAP
    threads: int | None = None
    seed: int | None = None
    verbose: bool = False
    heuristics: bool = True
    """False: the solver runs none of the primal heuristics it lets us switch off (sub-MIPs
    such as RINS and RENS among them), so its time goes to the proof; for when the start it is
    given is already good. ``solver_options`` are applied after this and may override it."""
    solver_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class SolveResult:
    """The outcome of one solve. ``solution`` is in the column order of the standard form."""

    backend: str
    status: Status
    objective: float | None
    bound: float | None
    seconds: float
    nodes: int | None = None
    solution: np.ndarray | None = None
    load_seconds: float = 0.0

    @property
    def has_solution(self) -> bool:
        return self.solution is not None

    @property
    def gap(self) -> float | None:
        """Relative gap ``|objective - bound| / max(1, |objective|)``, or None without both."""
        if self.objective is None or self.bound is None:
            return None
        if math.isinf(self.bound):
            return math.inf
        return abs(self.objective - self.bound) / max(1.0, abs(self.objective))


class Backend(abc.ABC):
    """A solver: declares its capabilities, solves standard forms, reports one result type."""

    name: str = ""
    capabilities: Capabilities = Capabilities()
    install_hint: str = ""

    python_module: str = ""

    @classmethod
    def is_installed(cls) -> bool:
        """Whether the solver can be used on this machine: by default, whether the Python module
        named ``python_module`` can be found."""
        return bool(cls.python_module) and importlib.util.find_spec(cls.python_module) is not None

    def solve(
        self,
        model: pyo.ConcreteModel | StandardForm,
        options: SolveOptions | None = None,
        warm_start: bool = False,
    ) -> SolveResult:
        """Solve ``model`` and, if a solution exists, load it into the model's variables.

        With ``warm_start`` the current values of the model's variables are offered to the
        solver as a starting solution (where the solver supports it).
        """
        form = model if isinstance(model, StandardForm) else compile_model(model)
        self.check(form)
        result = self.solve_form(form, options or SolveOptions(), warm_start)
        if result.solution is not None:
            form.load_solution(result.solution)
        return result

    def check(self, form: StandardForm) -> None:
        """Refuse, before the solver starts, a model that needs a capability we lack."""
        integer = bool(form.integer.any())
        quadratic = form.has_quadratic_objective or bool(form.quadratic_rows)
        needs = {
            "integer": integer,
            "quadratic_objective": form.has_quadratic_objective,
            "quadratic_constraints": bool(form.quadratic_rows),
            "mixed_integer_quadratic": integer and quadratic,
        }
        caps = self.capabilities
        missing = [need for need, used in needs.items() if used and not getattr(caps, need)]
        if missing:
            raise CapabilityError(
                f"backend '{self.name}' cannot solve this model: it needs {', '.join(missing)}. "
                f"Choose a backend with these capabilities (see oamip.backends.available())."
            )

    def column_ranges(
        self, form: StandardForm, columns: np.ndarray, options: SolveOptions, deadline: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """The smallest and largest value of each of ``columns`` over the continuous relaxation
        of ``form`` (integrality dropped, objective ignored): two LPs per column, for bound
        tightening. Stops at ``deadline`` (a ``time.perf_counter()`` value); columns not done,
        or whose LP did not end optimal, get ``-inf``/``inf``."""
        lower = np.full(len(columns), -np.inf)
        upper = np.full(len(columns), np.inf)
        minimise = self.lp_minimiser(lp_relaxation(form), options, deadline)
        for n, column in enumerate(np.asarray(columns).tolist()):
            for sign, out in ((1.0, lower), (-1.0, upper)):
                if time.perf_counter() >= deadline:
                    return lower, upper
                value = minimise(column, sign)
                if value is not None:
                    out[n] = sign * value
        return lower, upper

    def lp_minimiser(
        self, relaxed: StandardForm, options: SolveOptions, deadline: float
    ) -> Callable[[int, float], float | None]:
        """A function giving ``min sign * x[column]`` over the LP ``relaxed`` (None unless
        solved to optimality) within ``deadline``. This default solves each LP from scratch;
        backends that can re-solve with a changed objective override it."""
        self.check(relaxed)

        def minimise(column: int, sign: float) -> float | None:
            cost = np.zeros(relaxed.num_cols)
            cost[column] = sign
            left = max(deadline - time.perf_counter(), 1e-3)
            result = self.solve_form(
                replace(relaxed, c=cost), replace(options, time_limit=left), False
            )
            return result.objective if result.status == Status.OPTIMAL else None

        return minimise

    @abc.abstractmethod
    def solve_form(
        self, form: StandardForm, options: SolveOptions, warm_start: bool
    ) -> SolveResult:
        """Hand the standard form to the solver and translate its answer."""
