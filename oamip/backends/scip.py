"""SCIP through pyscipopt: LP, MILP, and quadratic objectives and constraints, integer or not.

Rows are created empty and filled coefficient by coefficient (``addCoefLinear``), which skips
pyscipopt's expression objects and stays fast on large sparse matrices. SCIP's objective must be
linear, so a quadratic objective moves into a constraint on an auxiliary variable ``t``.
"""

from __future__ import annotations

import operator
import time

import numpy as np

from oamip.backends.base import (
    Backend,
    Capabilities,
    SolveOptions,
    SolveResult,
    Status,
    stop_requested,
)
from oamip.backends.standard_form import QuadraticRow, StandardForm
from oamip.errors import InvalidInputError

INSTALL_HINT = "pip install pyscipopt"
_SIDES = {"==": (operator.eq, ""), "<=": (operator.le, "_up"), ">=": (operator.ge, "_lo")}
"""A one-sided quadratic row's comparison and the suffix of its constraint's name."""


class ScipBackend(Backend):
    """SCIP: open source, solves mixed-integer quadratic models that HiGHS cannot."""

    name = "scip"
    capabilities = Capabilities(
        integer=True,
        quadratic_objective=True,
        quadratic_constraints=True,
        mixed_integer_quadratic=True,
        warm_start=True,
        interrupt=True,
    )
    install_hint = INSTALL_HINT
    python_module = "pyscipopt"

    def solve_form(
        self, form: StandardForm, options: SolveOptions, warm_start: bool
    ) -> SolveResult:
        pyscipopt = self.import_solver()
        start = time.perf_counter()
        model = pyscipopt.Model()
        _set_options(pyscipopt, model, options)
        x, t = _build(pyscipopt, model, form)
        start_values = self.start_values(form) if warm_start else None
        if start_values is not None:
            _offer_start(model, x, t, form, start_values)
        load_seconds = time.perf_counter() - start
        if stop_requested(options):
            return self.result(form, Status.INTERRUPTED, None, seconds=0.0)
        model.optimize()
        seconds = time.perf_counter() - start - load_seconds
        return self._result(model, x, form, seconds, load_seconds)

    def _result(self, model, x: list, form: StandardForm, seconds: float, load_seconds: float):
        status = _STATUS.get(model.getStatus(), Status.ERROR)
        best = model.getBestSol() if model.getNSols() > 0 else None
        solution = None
        if best is not None and status != Status.UNBOUNDED:
            solution = np.array([model.getSolVal(best, var) for var in x], dtype=float)
        return self.result(
            form,
            status,
            solution,
            seconds=seconds,
            dual_bound=model.getDualbound(),
            nodes=int(model.getNNodes()) if form.integer.any() else None,
            load_seconds=load_seconds,
        )


SCIP_CAREFUL_FEASTOL = 1e-7
"""SCIP's careful feasibility tolerance: below it SCIP asks SoPlex for LP tolerances under
1e-10, which SoPlex refuses without GMP (and says so on stdout)."""


def _set_options(pyscipopt, model, options: SolveOptions) -> None:
    """SCIP's search is single-threaded: ``threads`` goes to its LP solver."""
    if not options.verbose:
        model.hideOutput()
    model.setParam("limits/gap", float(options.mip_gap))
    if options.time_limit is not None:
        model.setParam("limits/time", float(options.time_limit))
    if options.threads is not None:
        model.setParam("lp/threads", int(options.threads))
    if options.seed is not None:
        model.setParam("randomization/randomseedshift", int(options.seed))
    if not options.heuristics:
        model.setHeuristics(pyscipopt.SCIP_PARAMSETTING.OFF)
    if options.careful:
        model.setPresolve(pyscipopt.SCIP_PARAMSETTING.OFF)
        model.setParam("numerics/feastol", SCIP_CAREFUL_FEASTOL)
    for key, value in options.solver_options.items():
        _set_solver_option(model, key, value)


def _set_solver_option(model, key: str, value) -> None:
    try:
        model.setParam(key, value)
    except (LookupError, ValueError, TypeError) as exc:
        raise InvalidInputError(
            f"SCIP rejects the option {key}={value!r} ({exc}); SCIP parameters look like "
            "'limits/nodes' or 'presolving/maxrounds'"
        ) from exc


def _bound_or_none(value: float) -> float | None:
    return None if np.isinf(value) else value


def _build(pyscipopt, model, form: StandardForm):
    """Columns, rows and objective; returns the columns and the auxiliary variable (or None)."""
    x = [
        model.addVar(
            name=f"x{j}",
            vtype="I" if integer else "C",
            lb=_bound_or_none(lo),
            ub=_bound_or_none(up),
            obj=cost,
        )
        for j, (lo, up, integer, cost) in enumerate(
            zip(
                form.col_lower.tolist(),
                form.col_upper.tolist(),
                form.integer.tolist(),
                form.c.tolist(),
                strict=True,
            )
        )
    ]
    _add_linear_rows(pyscipopt, model, x, form)
    for k, row in enumerate(form.quadratic_rows):
        _add_quadratic_row(pyscipopt, model, x, row, f"q{k}")
    if form.c0 != 0:
        model.addObjoffset(form.c0)
    t = _quadratic_objective(pyscipopt, model, x, form) if form.has_quadratic_objective else None
    if form.maximize:
        model.setMaximize()
    return x, t


def _add_linear_rows(pyscipopt, model, x: list, form: StandardForm) -> None:
    A = form.A.tocsr()
    indptr, indices, data = A.indptr.tolist(), A.indices.tolist(), A.data.tolist()
    lower, upper = form.row_lower.tolist(), form.row_upper.tolist()
    for i in range(A.shape[0]):
        row = model.addCons(pyscipopt.Expr() <= 0.0, name=f"r{i}")
        model.chgRhs(row, _bound_or_none(upper[i]))
        model.chgLhs(row, _bound_or_none(lower[i]))
        for k in range(indptr[i], indptr[i + 1]):
            model.addCoefLinear(row, x[indices[k]], data[k])


def _quadratic_expression(pyscipopt, x: list, q_i, q_j, q_coef):
    return pyscipopt.quicksum(
        coef * x[i] * x[j]
        for i, j, coef in zip(q_i.tolist(), q_j.tolist(), q_coef.tolist(), strict=True)
    )


def _add_quadratic_row(pyscipopt, model, x: list, row: QuadraticRow, name: str) -> None:
    linear = pyscipopt.quicksum(
        coef * x[j] for j, coef in zip(row.lin_index.tolist(), row.lin_coef.tolist(), strict=True)
    )
    body = linear + _quadratic_expression(pyscipopt, x, row.quad_i, row.quad_j, row.quad_coef)
    for sense, rhs in row.sides():
        compare, suffix = _SIDES[sense]
        model.addCons(compare(body, rhs), name=name + suffix)


def _quadratic_objective(pyscipopt, model, x: list, form: StandardForm):
    """``t`` with cost 1 and ``t >= x'Qx`` (``<=`` when maximising): the same optimum."""
    t = model.addVar(name="quadratic_objective", lb=None, ub=None, obj=1.0)
    quadratic = _quadratic_expression(pyscipopt, x, form.q_i, form.q_j, form.q_coef)
    model.addCons(quadratic <= t if not form.maximize else quadratic >= t, name="epigraph")
    return t


def _offer_start(model, x: list, t, form: StandardForm, start: np.ndarray) -> None:
    """Hand SCIP ``start`` as a complete solution (with ``t`` at its quadratic value)."""
    sol = model.createSol()
    for var, value in zip(x, start.tolist(), strict=True):
        model.setSolVal(sol, var, value)
    if t is not None:
        quadratic = float(np.sum(form.q_coef * start[form.q_i] * start[form.q_j]))
        model.setSolVal(sol, t, quadratic)
    model.addSol(sol)


_STATUS = {
    "optimal": Status.OPTIMAL,
    "gaplimit": Status.OPTIMAL,
    "timelimit": Status.TIME_LIMIT,
    "nodelimit": Status.TIME_LIMIT,
    "totalnodelimit": Status.TIME_LIMIT,
    "stallnodelimit": Status.TIME_LIMIT,
    "sollimit": Status.TIME_LIMIT,
    "bestsollimit": Status.TIME_LIMIT,
    "userinterrupt": Status.INTERRUPTED,
    "infeasible": Status.INFEASIBLE,
    "inforunbd": Status.INFEASIBLE,
    "unbounded": Status.UNBOUNDED,
}
