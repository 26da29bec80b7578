"""Gurobi through gurobipy's matrix API: LP, MILP, QP, QCP and their mixed-integer versions.

The standard form is handed over whole (``addMVar``, ``addMConstr``, ``setMObjective``), never
constraint by constraint. The pip package carries a size-limited licence; a model beyond it is
refused with a message that says so.
"""

from __future__ import annotations

import functools
import time

import numpy as np
import scipy.sparse as sp

from oamip.backends.base import (
    CAREFUL_TOLERANCE,
    Backend,
    Capabilities,
    SolveOptions,
    SolveResult,
    Status,
    stop_requested,
)
from oamip.backends.standard_form import QuadraticRow, StandardForm
from oamip.errors import (
    BackendUnavailableError,
    InvalidInputError,
    LicenceLimitError,
    SolverError,
)

INSTALL_HINT = "pip install gurobipy"
PIP_LICENCE_LIMIT = 2000
"""Most variables, and most constraints, that the size-limited licence of the pip package
solves."""
_SIZE_LIMIT_EXCEEDED = 10010
_SENSE = {"==": "=", "<=": "<", ">=": ">"}
"""Gurobi's constraint senses (``GRB.EQUAL``, ``GRB.LESS_EQUAL``, ``GRB.GREATER_EQUAL``)."""


class GurobiBackend(Backend):
    """Commercial; the pip licence only covers small models, so it is never the default."""

    name = "gurobi"
    capabilities = Capabilities(
        integer=True,
        quadratic_objective=True,
        quadratic_constraints=True,
        mixed_integer_quadratic=True,
        warm_start=True,
        interrupt=True,
    )
    install_hint = INSTALL_HINT
    python_module = "gurobipy"

    def solve_form(
        self, form: StandardForm, options: SolveOptions, warm_start: bool
    ) -> SolveResult:
        gp = self.import_solver()
        start = time.perf_counter()
        with _environment(gp, options) as env, gp.Model(env=env) as model:
            x = _build(gp, model, form)
            _set_options(gp, model, options)
            start_values = self.start_values(form) if warm_start else None
            if start_values is not None:
                x.Start = start_values
            load_seconds = time.perf_counter() - start
            if stop_requested(options):
                return self.result(form, Status.INTERRUPTED, None, seconds=0.0)
            _optimize(gp, model, form)
            seconds = time.perf_counter() - start - load_seconds
            return self._result(gp, model, x, form, seconds, load_seconds)

    def size_limit(self) -> tuple[int, int] | None:
        """``(PIP_LICENCE_LIMIT, PIP_LICENCE_LIMIT)`` when the licence Gurobi starts with is the
        size-limited one, else None (see :func:`licence_is_size_limited`)."""
        if licence_is_size_limited(self.import_solver()):
            return PIP_LICENCE_LIMIT, PIP_LICENCE_LIMIT
        return None

    def _result(self, gp, model, x, form: StandardForm, seconds: float, load_seconds: float):
        status = _status(gp, model.Status)
        has_solution = model.SolCount > 0 and status != Status.UNBOUNDED
        is_mip = bool(model.IsMIP)
        proved = status in (Status.OPTIMAL, Status.TIME_LIMIT, Status.INTERRUPTED)
        return self.result(
            form,
            status,
            np.asarray(x.X, dtype=float) if has_solution else None,
            seconds=seconds,
            dual_bound=float(model.ObjBound) if is_mip and proved else None,
            nodes=int(model.NodeCount) if is_mip else None,
            load_seconds=load_seconds,
        )


@functools.cache
def licence_is_size_limited(gp) -> bool:
    """Whether Gurobi refuses a model one variable over ``PIP_LICENCE_LIMIT``: gurobipy names no
    licence type, so an empty model of that many variables is optimised once per process
    (a fraction of a second); a size-limited licence refuses it with error 10010."""
    with _environment(gp, SolveOptions()) as env, gp.Model(env=env) as model:
        model.addMVar(PIP_LICENCE_LIMIT + 1)
        try:
            model.optimize()
        except gp.GurobiError as exc:
            if exc.errno == _SIZE_LIMIT_EXCEEDED:
                return True
            raise SolverError(f"gurobi failed on an empty model: {exc.message}") from exc
    return False


def _environment(gp, options: SolveOptions):
    """A started environment; quiet unless ``verbose`` (so no licence banner either)."""
    env = gp.Env(empty=True)
    env.setParam("OutputFlag", int(options.verbose))
    try:
        env.start()
    except gp.GurobiError as exc:
        env.dispose()
        raise BackendUnavailableError(
            f"gurobipy is installed but Gurobi could not start: {exc.message}"
        ) from exc
    return env


def _set_options(gp, model, options: SolveOptions) -> None:
    model.setParam("MIPGap", float(options.mip_gap))
    if options.time_limit is not None:
        model.setParam("TimeLimit", float(options.time_limit))
    if options.threads is not None:
        model.setParam("Threads", int(options.threads))
    if options.seed is not None:
        model.setParam("Seed", int(options.seed))
    if not options.heuristics:
        model.setParam("Heuristics", 0.0)
        model.setParam("RINS", 0)
    if options.careful:
        model.setParam("Presolve", 0)
        model.setParam("NumericFocus", 3)
        model.setParam("IntFeasTol", CAREFUL_TOLERANCE)
        model.setParam("FeasibilityTol", CAREFUL_TOLERANCE)
    for key, value in options.solver_options.items():
        try:
            model.setParam(key, value)
        except gp.GurobiError as exc:
            raise InvalidInputError(
                f"Gurobi rejects the option {key}={value!r}: {exc.message}"
            ) from exc


def _build(gp, model, form: StandardForm):
    grb = gp.GRB
    vtype = np.where(form.integer, grb.INTEGER, grb.CONTINUOUS)
    x = model.addMVar(form.num_cols, lb=form.col_lower, ub=form.col_upper, vtype=vtype)
    _add_linear_rows(model, x, form)
    for row in form.quadratic_rows:
        _add_quadratic_row(model, x, row, form.num_cols)
    sense = grb.MAXIMIZE if form.maximize else grb.MINIMIZE
    model.setMObjective(_objective_matrix(form), form.c, form.c0, sense=sense)
    return x


def _add_linear_rows(model, x, form: StandardForm) -> None:
    """Equalities, then the finite upper sides, then the finite lower sides."""
    lower, upper = form.row_lower, form.row_upper
    equal = lower == upper
    parts = [
        (equal, "=", upper),
        (~equal & np.isfinite(upper), "<", upper),
        (~equal & np.isfinite(lower), ">", lower),
    ]
    A = form.A.tocsr()
    for rows, sense, rhs in parts:
        if rows.any():
            model.addMConstr(A[rows], x, sense, rhs[rows])


def _add_quadratic_row(model, x, row: QuadraticRow, n: int) -> None:
    Q = sp.coo_matrix((row.quad_coef, (row.quad_i, row.quad_j)), shape=(n, n)).tocsr()
    c = np.zeros(n)
    np.add.at(c, row.lin_index, row.lin_coef)
    for sense, rhs in row.sides():
        model.addMQConstr(Q, c, _SENSE[sense], rhs, xQ_L=x, xQ_R=x, xc=x)


def _objective_matrix(form: StandardForm) -> sp.csr_matrix | None:
    if not form.has_quadratic_objective:
        return None
    n = form.num_cols
    return sp.coo_matrix((form.q_coef, (form.q_i, form.q_j)), shape=(n, n)).tocsr()


def _optimize(gp, model, form: StandardForm) -> None:
    """Optimise; an infeasible-or-unbounded answer is settled by a second run."""
    try:
        model.optimize()
        if model.Status == gp.GRB.INF_OR_UNBD:
            model.setParam("DualReductions", 0)
            model.reset()
            model.optimize()
    except gp.GurobiError as exc:
        if exc.errno == _SIZE_LIMIT_EXCEEDED:
            raise LicenceLimitError(_licence_message(model, form)) from exc
        raise SolverError(f"gurobi failed: {exc.message}") from exc


def _licence_message(model, form: StandardForm) -> str:
    model.update()
    constraints = model.NumConstrs + model.NumQConstrs
    return (
        f"Gurobi's free pip licence stops at {PIP_LICENCE_LIMIT} variables or "
        f"{PIP_LICENCE_LIMIT} constraints, and this model has {form.num_cols} variables and "
        f"{constraints} constraints. Solve it with backend 'highs' or 'scip' instead, "
        "or install a full Gurobi licence."
    )


def _status(gp, code: int) -> Status:
    grb = gp.GRB
    limits = {
        grb.TIME_LIMIT,
        grb.NODE_LIMIT,
        grb.SOLUTION_LIMIT,
        grb.ITERATION_LIMIT,
        grb.WORK_LIMIT,
        grb.USER_OBJ_LIMIT,
    }
    if code == grb.OPTIMAL:
        return Status.OPTIMAL
    if code == grb.INTERRUPTED:
        return Status.INTERRUPTED
    if code in limits:
        return Status.TIME_LIMIT
    if code in (grb.INFEASIBLE, grb.INF_OR_UNBD):
        return Status.INFEASIBLE
    if code == grb.UNBOUNDED:
        return Status.UNBOUNDED
    return Status.ERROR
