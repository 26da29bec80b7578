"""HiGHS through highspy: LP, MILP and convex QP, loaded straight from the standard form."""

from __future__ import annotations

import time

import numpy as np
import scipy.sparse as sp

from oamip.backends.base import Backend, Capabilities, SolveOptions, SolveResult, Status
from oamip.backends.standard_form import StandardForm
from oamip.errors import BackendUnavailableError

_INF = 1e30


class HighsBackend(Backend):
    """The default backend: open source, shipped as a wheel, no licence."""

    name = "highs"
    capabilities = Capabilities(
        integer=True,
        quadratic_objective=True,
        quadratic_constraints=False,
        mixed_integer_quadratic=False,
        nonlinear=False,
        warm_start=True,
    )
    install_hint = "pip install highspy"

    @classmethod
    def is_installed(cls) -> bool:
        try:
            import highspy  # noqa: F401
        except ImportError:
            return False
        return True

    def solve_form(
        self, form: StandardForm, options: SolveOptions, warm_start: bool
    ) -> SolveResult:
        highspy = _import()
        start = time.perf_counter()
        h = highspy.Highs()
        _set_options(h, options)
        h.passModel(_highs_model(highspy, form))
        if warm_start:
            _offer_start(highspy, h, form)
        load_seconds = time.perf_counter() - start
        h.run()
        seconds = time.perf_counter() - start - load_seconds
        return _result(highspy, h, form, seconds, load_seconds)


def _import():
    try:
        import highspy
    except ImportError as exc:
        raise BackendUnavailableError(
            "backend 'highs' needs the highspy package: pip install highspy"
        ) from exc
    return highspy


def _set_options(h, options: SolveOptions) -> None:
    h.setOptionValue("output_flag", bool(options.verbose))
    h.setOptionValue("mip_rel_gap", float(options.mip_gap))
    if options.time_limit is not None:
        h.setOptionValue("time_limit", float(options.time_limit))
    if options.threads is not None:
        h.resetGlobalScheduler(True)
        h.setOptionValue("threads", int(options.threads))
    if options.seed is not None:
        h.setOptionValue("random_seed", int(options.seed))
    for key, value in options.solver_options.items():
        h.setOptionValue(key, value)


def _finite(values: np.ndarray) -> np.ndarray:
    return np.clip(values, -_INF, _INF)


def _highs_model(highspy, form: StandardForm):
    sign = -1.0 if form.maximize else 1.0
    lp = highspy.HighsLp()
    lp.num_col_ = form.num_cols
    lp.num_row_ = form.A.shape[0]
    lp.col_cost_ = sign * form.c
    lp.offset_ = sign * form.c0
    lp.col_lower_ = _finite(form.col_lower)
    lp.col_upper_ = _finite(form.col_upper)
    lp.row_lower_ = _finite(form.row_lower)
    lp.row_upper_ = _finite(form.row_upper)
    A = form.A.tocsc()
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_ = A.indptr.astype(np.int32)
    lp.a_matrix_.index_ = A.indices.astype(np.int32)
    lp.a_matrix_.value_ = A.data
    if form.integer.any():
        lp.integrality_ = [
            highspy.HighsVarType.kInteger if flag else highspy.HighsVarType.kContinuous
            for flag in form.integer.tolist()
        ]
    model = highspy.HighsModel()
    model.lp_ = lp
    if form.has_quadratic_objective:
        model.hessian_ = _hessian(highspy, form, sign)
    return model


def _hessian(highspy, form: StandardForm, sign: float):
    """HiGHS minimises c x + 1/2 x'Qx with Q given as its lower triangle, column-wise."""
    n = form.num_cols
    q = sp.coo_matrix((sign * form.q_coef, (form.q_i, form.q_j)), shape=(n, n)).toarray()
    full = q + q.T
    lower = sp.csc_matrix(np.tril(full))
    hess = highspy.HighsHessian()
    hess.dim_ = n
    hess.format_ = highspy.HessianFormat.kTriangular
    hess.start_ = lower.indptr.astype(np.int32)
    hess.index_ = lower.indices.astype(np.int32)
    hess.value_ = lower.data
    return hess


def _offer_start(highspy, h, form: StandardForm) -> None:
    start = form.start_values()
    if start is None:
        return
    sol = highspy.HighsSolution()
    sol.col_value = np.clip(start, form.col_lower, form.col_upper).tolist()
    sol.value_valid = True
    h.setSolution(sol)


_STATUS = {
    "kOptimal": Status.OPTIMAL,
    "kTimeLimit": Status.TIME_LIMIT,
    "kIterationLimit": Status.TIME_LIMIT,
    "kSolutionLimit": Status.TIME_LIMIT,
    "kInterrupt": Status.TIME_LIMIT,
    "kInfeasible": Status.INFEASIBLE,
    "kUnbounded": Status.UNBOUNDED,
    "kUnboundedOrInfeasible": Status.INFEASIBLE,
}


def _result(highspy, h, form: StandardForm, seconds: float, load_seconds: float) -> SolveResult:
    model_status = h.getModelStatus()
    status = _STATUS.get(model_status.name, Status.ERROR)
    info = h.getInfo()
    sol = h.getSolution()
    has_solution = info.primal_solution_status == 2 and len(sol.col_value) == form.num_cols
    solution = np.asarray(sol.col_value, dtype=float) if has_solution else None
    objective = form.objective_value(solution) if has_solution else None
    bound = _bound(info, form, objective, status)
    nodes = int(info.mip_node_count) if form.integer.any() else None
    return SolveResult(
        backend="highs",
        status=status,
        objective=objective,
        bound=bound,
        seconds=seconds,
        nodes=nodes,
        solution=solution,
        load_seconds=load_seconds,
    )


def _bound(info, form: StandardForm, objective: float | None, status: Status) -> float | None:
    if not form.integer.any():
        return objective if status == Status.OPTIMAL else None
    bound = float(info.mip_dual_bound)
    if not np.isfinite(bound) or abs(bound) >= _INF:
        return None
    return -bound if form.maximize else bound
