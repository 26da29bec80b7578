"""What every solver backend shares: declared capabilities, one options set, one result type.

A backend solves a Pyomo model and nothing else: it never knows which formulation built it. Models
are compiled once to standard-form matrices (:mod:`oamip.backends.standard_form`) and each backend
hands those matrices to its solver.
"""

from __future__ import annotations

import abc
import importlib
import importlib.util
import math
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any

import numpy as np
import pyomo.environ as pyo

from oamip.backends.standard_form import StandardForm, compile_model, relaxation
from oamip.errors import BackendUnavailableError, CapabilityError

DEFAULT_MIP_GAP = 1e-4
SOLVER_INFINITY = 1e20
"""Bounds at or beyond this size are a solver's infinity (SCIP's is 1e20, HiGHS's 1e30, Gurobi's
1e100): no bound."""


class Status(str, Enum):
    """How a solve ended."""

    OPTIMAL = "optimal"
    TIME_LIMIT = "time_limit"
    INTERRUPTED = "interrupted"
    """Stopped on request (Ctrl-C, ``SolveOptions.stop``): the best solution found so far."""
    INFEASIBLE = "infeasible"
    UNBOUNDED = "unbounded"
    ERROR = "error"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Capabilities:
    """What a backend can solve or use; :meth:`Backend.solve` checks every field before the
    solver starts. ``nonlinear``: terms beyond quadratic, which the standard form leaves out
    (naming them in ``StandardForm.nonlinear``), so a backend declaring it overrides ``solve``.
    ``warm_start``: whether the backend takes a start; one without it is never handed one.
    ``interrupt``: whether a solve stops soon after ``SolveOptions.stop`` is set (or the
    solver is sent SIGINT), keeping its best solution; without it Ctrl-C aborts as usual."""

    integer: bool = False
    quadratic_objective: bool = False
    quadratic_constraints: bool = False
    mixed_integer_quadratic: bool = False
    nonlinear: bool = False
    warm_start: bool = False
    interrupt: bool = False


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
    careful: bool = False
    """True: solve for trust over speed, for a second attempt at an answer the first could not
    certify: no presolve (or preprocessing) and integrality and feasibility tolerances of
    ``CAREFUL_TOLERANCE`` where the solver lets us set them. ``solver_options`` still win."""
    solver_options: dict[str, Any] = field(default_factory=dict)
    stop: threading.Event | None = None
    """Set (by the Ctrl-C handler of :mod:`oamip.solve.interrupt`) to ask for the best solution
    found so far: a solve not yet started returns at once, status ``interrupted``, without
    one; a backend with the ``interrupt`` capability stops a running one (see
    :meth:`Backend.interrupt`)."""


CAREFUL_TOLERANCE = 1e-9
"""Integrality and feasibility tolerance of a careful solve (``SolveOptions.careful``)."""


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
    warm_start_used: bool = False
    """Whether a start was handed to the solver: asked for, a complete one (every variable has
    a value), and the backend has the ``warm_start`` capability. Set by :meth:`Backend.solve`."""
    coefficient_range: tuple[float, float] | None = None
    """Smallest and largest absolute nonzero of the constraint matrix (None if it has none):
    a ratio far above 1e9 warns of numerical trouble. Set by :meth:`Backend.solve`."""
    note: str = ""
    """The solver's own words where it failed (status ``error``), e.g. why its process died."""

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
    """A solver: declares its capabilities, solves standard forms, reports one result type.

    A subclass sets ``name``, ``capabilities``, ``install_hint`` and either ``python_module``
    (a solver used through Python) or ``executable`` (a command-line solver), and implements
    :meth:`solve_form`; the helpers below give it the shared import guard, start vector and
    result (with the one bound rule)."""

    name: str = ""
    capabilities: Capabilities = Capabilities()
    install_hint: str = ""
    python_module: str = ""
    executable: str = ""

    @classmethod
    def is_installed(cls) -> bool:
        """Whether the solver can be used on this machine: the executable ``executable`` is on
        the PATH, or else the Python module ``python_module`` can be found."""
        if cls.executable:
            return shutil.which(cls.executable) is not None
        if not cls.python_module:
            return False
        try:  # a dotted name imports its parent package, which may be missing
            return importlib.util.find_spec(cls.python_module) is not None
        except ModuleNotFoundError:
            return False

    @classmethod
    def import_solver(cls):
        """The module ``python_module``, imported; a clear error saying how to install it."""
        try:
            return importlib.import_module(cls.python_module)
        except ImportError as exc:
            raise BackendUnavailableError(
                f"backend '{cls.name}' needs the {cls.python_module} package: {cls.install_hint}"
            ) from exc

    @classmethod
    def executable_path(cls) -> str:
        """The full path of ``executable``; a clear error saying how to install it."""
        path = shutil.which(cls.executable)
        if path is None:
            raise BackendUnavailableError(
                f"backend '{cls.name}' needs the {cls.executable} executable on the PATH; "
                f"install it with: {cls.install_hint}"
            )
        return path

    def solve(
        self,
        model: pyo.ConcreteModel | StandardForm,
        options: SolveOptions | None = None,
        warm_start: bool = False,
    ) -> SolveResult:
        """Solve ``model`` and, if a solution exists, load it into the model's variables.

        With ``warm_start`` the current values of the model's variables are handed to the
        solver as a starting solution, if every variable has one and the backend takes starts;
        ``SolveResult.warm_start_used`` says whether it was.
        """
        form = model if isinstance(model, StandardForm) else compile_model(model)
        self.check(form)
        options = options or SolveOptions()
        if stop_requested(options):
            return SolveResult(self.name, Status.INTERRUPTED, None, None, 0.0)
        use_start = warm_start and self.capabilities.warm_start and self.has_start(form)
        result = self.solve_form(form, options, use_start)
        result.warm_start_used = use_start
        result.coefficient_range = form.coefficient_range()
        if result.solution is not None:
            form.load_solution(result.solution)
        return result

    def interrupt(self) -> None:
        """Called by the Ctrl-C handler right after it set ``SolveOptions.stop`` of a running
        solve, in the main thread: for a solver that does not watch ``stop`` itself. HiGHS
        watches it; Gurobi and SCIP catch SIGINT themselves while they run; CBC's child is sent
        SIGINT here. The default does nothing."""
        return

    def size_limit(self) -> tuple[int, int] | None:
        """The most (variables, constraints) this installation may solve, for a solver under a
        size-limited licence (so that a model over it is refused before any work); None, the
        default, for no limit."""
        return None

    def check(self, form: StandardForm) -> None:
        """Refuse, before the solver starts, a model that needs a capability we lack."""
        integer = bool(form.integer.any())
        quadratic = form.has_quadratic_objective or bool(form.quadratic_rows)
        needs = {
            "integer": integer,
            "quadratic_objective": form.has_quadratic_objective,
            "quadratic_constraints": bool(form.quadratic_rows),
            "mixed_integer_quadratic": integer and quadratic,
            "nonlinear": bool(form.nonlinear),
        }
        caps = self.capabilities
        missing = [need for need, used in needs.items() if used and not getattr(caps, need)]
        if missing:
            where = f" ({', '.join(form.nonlinear)} beyond quadratic)" if form.nonlinear else ""
            raise CapabilityError(
                f"backend '{self.name}' cannot solve this model: it needs {', '.join(missing)}"
                f"{where}. Choose a backend with these capabilities "
                "(see oamip.backends.available())."
            )

    @staticmethod
    def has_start(form: StandardForm) -> bool:
        """Whether every variable of ``form`` has a value, so that a start can be offered."""
        return all(var.value is not None for var in form.variables)

    @staticmethod
    def start_values(form: StandardForm) -> np.ndarray | None:
        """The variables' current values as a start vector, clipped to the column bounds with
        integer columns rounded; None if a variable has no value."""
        start = form.start_values()
        if start is None:
            return None
        start = np.clip(start, form.col_lower, form.col_upper)
        return np.where(form.integer, np.round(start), start)

    def result(
        self,
        form: StandardForm,
        status: Status,
        solution: np.ndarray | None,
        *,
        seconds: float,
        dual_bound: float | None = None,
        nodes: int | None = None,
        load_seconds: float = 0.0,
    ) -> SolveResult:
        """The result of a solve, built the same way for every backend: the objective computed
        from ``solution`` in the model's own terms (None without a solution), the bound by
        :meth:`bound_for` from the solver's ``dual_bound``, and this backend's name."""
        objective = None if solution is None else form.objective_value(solution)
        return SolveResult(
            backend=self.name,
            status=status,
            objective=objective,
            bound=self.bound_for(form, status, objective, dual_bound),
            seconds=seconds,
            nodes=nodes,
            solution=solution,
            load_seconds=load_seconds,
        )

    @staticmethod
    def bound_for(
        form: StandardForm, status: Status, objective: float | None, dual_bound: float | None
    ) -> float | None:
        """The bound a result reports, one rule for every backend. Nothing unless the solve
        ended optimal, at a limit or interrupted. A model without integer columns: its
        objective when optimal (duality). A mixed-integer one: ``dual_bound``, the solver's
        proven bound in the model's own sense, when finite; an optimal solve whose solver
        reports none is bounded by its objective."""
        if status not in (Status.OPTIMAL, Status.TIME_LIMIT, Status.INTERRUPTED):
            return None
        optimal = objective if status == Status.OPTIMAL else None
        if not form.integer.any():
            return optimal
        if dual_bound is None or not abs(dual_bound) < SOLVER_INFINITY:
            return optimal
        return float(dual_bound)

    def column_ranges(
        self, form: StandardForm, columns: np.ndarray, options: SolveOptions, deadline: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """The smallest and largest value of each of ``columns`` over the continuous relaxation
        of ``form`` (integrality dropped, objective ignored): two LPs per column, for bound
        tightening. Stops at ``deadline`` (a ``time.perf_counter()`` value); columns not done,
        or whose LP did not end optimal, get ``-inf``/``inf``."""
        lower = np.full(len(columns), -np.inf)
        upper = np.full(len(columns), np.inf)
        minimise = self.lp_minimiser(relaxation(form, objective=False), options, deadline)
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


def stop_requested(options: SolveOptions) -> bool:
    """Whether a stop of the solve was asked for (``SolveOptions.stop`` is set)."""
    return options.stop is not None and options.stop.is_set()
