"""HiGHS through highspy: LP, MILP and convex QP, loaded straight from the standard form."""

from __future__ import annotations

import ctypes
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

import numpy as np
import scipy.sparse as sp

from oamip.backends.base import (
    CAREFUL_TOLERANCE,
    Backend,
    Capabilities,
    SolveOptions,
    SolveResult,
    Status,
)
from oamip.backends.standard_form import StandardForm
from oamip.errors import InvalidInputError, SolverError

_INF = 1e30
POLL_SECONDS = 0.05
"""How often a stoppable solve checks ``SolveOptions.stop`` (HiGHS then stops at its next
interrupt check, a fraction of a second)."""
PRESOLVE_MAX_NONZEROS = 1_000_000
"""Under a time limit, a MIP with more constraint nonzeros than this is solved without HiGHS's
presolve: presolve does not check the time limit (ERGO-Code/HiGHS#1501) and, on the
importance MIPs measured, it ran past the whole limit and gave no bound, while the solve
without it kept the limit better and ended at the same solution (20 s limits: LeNet-5 on 55
samples, 13.0M nonzeros, 130-143 s against 50 s; an MLP 784-300-100-10 on 300 samples, 3.4M,
48 s against 16 s; LeNet-5 on 10 samples, 2.3M, 28 s against 9-17 s; the MLP on 10 samples,
0.1M, kept its presolve, its limit and its bounds). ``solver_options`` still win."""


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
        interrupt=True,
    )
    install_hint = "pip install highspy"
    python_module = "highspy"

    def solve_form(
        self, form: StandardForm, options: SolveOptions, warm_start: bool
    ) -> SolveResult:
        highspy = self.import_solver()
        start = time.perf_counter()
        h = new_highs(highspy, options.verbose)
        _set_options(highspy, h, options, form.A.nnz if form.integer.any() else 0)
        pass_model(highspy, h, form)
        if warm_start:
            _offer_start(highspy, h, self.start_values(form))
        load_seconds = time.perf_counter() - start
        _run(h, options.stop)
        seconds = time.perf_counter() - start - load_seconds
        return self._result(h, form, seconds, load_seconds)

    def lp_minimiser(
        self, relaxed: StandardForm, options: SolveOptions, deadline: float
    ) -> Callable[[int, float], float | None]:
        """Loads the LP once; each call changes one cost and re-solves from the previous basis
        (see :meth:`Backend.lp_minimiser`)."""
        highspy = self.import_solver()
        h = new_highs(highspy, options.verbose)
        _set_options(highspy, h, options)
        pass_model(highspy, h, relaxed)

        def minimise(column: int, sign: float) -> float | None:
            h.changeColCost(column, sign)
            left = max(deadline - time.perf_counter(), 1e-3)
            h.setOptionValue("time_limit", h.getRunTime() + left)  # HiGHS's clock adds up
            h.run()
            solved = h.getModelStatus() == highspy.HighsModelStatus.kOptimal
            value = h.getInfo().objective_function_value
            h.changeColCost(column, 0.0)  # after reading: a change resets the status
            return value if solved else None

        return minimise

    def _result(self, h, form: StandardForm, seconds: float, load_seconds: float) -> SolveResult:
        info = h.getInfo()
        sol = h.getSolution()
        has_solution = info.primal_solution_status == 2 and len(sol.col_value) == form.num_cols
        integer = bool(form.integer.any())
        dual_bound = float(info.mip_dual_bound) if integer else None
        return self.result(
            form,
            _STATUS.get(h.getModelStatus().name, Status.ERROR),
            np.asarray(sol.col_value, dtype=float) if has_solution else None,
            seconds=seconds,
            dual_bound=-dual_bound if dual_bound is not None and form.maximize else dual_bound,
            nodes=int(info.mip_node_count) if integer else None,
            load_seconds=load_seconds,
        )


_banner = threading.Lock()
_banner_printed = False


def new_highs(highspy, verbose: bool):
    """A new ``highspy.Highs``. HiGHS prints its banner ("Running HiGHS ...: Copyright ...") on
    the C library's stdout at the first construction in a process, before any option can be
    set, and never again: unless ``verbose``, that first construction runs with file
    descriptor 1 sent to the null device (every later one is left alone)."""
    global _banner_printed
    with _banner:
        if _banner_printed or verbose:
            _banner_printed = True
            return highspy.Highs()
        with stdout_silenced():
            h = highspy.Highs()
        _banner_printed = True
        return h


@contextmanager
def stdout_silenced() -> Iterator[None]:
    """Send file descriptor 1 to the null device while the block runs, and put it back even on
    an exception. Python's buffered output is flushed first, C's before fd 1 is put back; with
    no fd 1 to redirect the block runs unchanged."""
    if sys.stdout is not None:
        sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:
        yield
        return
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        yield
    finally:
        _flush_c_streams()
        os.dup2(saved, 1)
        os.close(saved)
        os.close(null)


def _flush_c_streams() -> None:
    """``fflush(NULL)``: what the C library still buffers goes where fd 1 points now."""
    with suppress(OSError, AttributeError, TypeError):
        ctypes.CDLL(None).fflush(None)


def _run(h, stop: threading.Event | None) -> None:
    """Solve; with a ``stop`` event, in highspy's solver thread while this one (the main
    thread, where signal handlers run) polls the event and cancels the solve once it is set.
    Any exception here (a second Ctrl-C) cancels the solve too before it goes on."""
    if stop is None:
        h.run()
        return
    h.HandleUserInterrupt = True
    h.startSolve()
    try:
        while not h.wait(POLL_SECONDS)[0]:
            if stop.is_set():
                h.cancelSolve()
    except BaseException:
        h.cancelSolve()
        raise


HEURISTICS_OFF = {
    "mip_heuristic_effort": 0.0,
    "mip_heuristic_run_rins": False,
    "mip_heuristic_run_rens": False,
    "mip_heuristic_run_root_reduced_cost": False,
    "mip_heuristic_run_zi_round": False,
    "mip_heuristic_run_shifting": False,
    "mip_heuristic_run_feasibility_jump": False,
}
"""``heuristics=False``. The effort alone does not stop HiGHS's RINS and RENS sub-MIPs, which
took three quarters of the solve time of small importance MIPs started from a good incumbent."""


CAREFUL = {
    "presolve": "off",
    "mip_feasibility_tolerance": CAREFUL_TOLERANCE,
    "primal_feasibility_tolerance": CAREFUL_TOLERANCE,
}
"""``careful=True``: HiGHS can read a start in presolve's reduced space without the objective
offset presolve removed, and then "prove" that start optimal at the wrong value."""


def _set_options(highspy, h, options: SolveOptions, mip_nonzeros: int = 0) -> None:
    """Every option of ``options``; presolve off for a MIP of more than
    :data:`PRESOLVE_MAX_NONZEROS` under a time limit; ``solver_options`` last."""
    h.setOptionValue("output_flag", bool(options.verbose))
    h.setOptionValue("mip_rel_gap", float(options.mip_gap))
    if options.time_limit is not None:
        h.setOptionValue("time_limit", float(options.time_limit))
    if options.threads is not None:
        h.resetGlobalScheduler(True)
        h.setOptionValue("threads", int(options.threads))
    if options.seed is not None:
        h.setOptionValue("random_seed", int(options.seed))
    if not options.heuristics:
        for key, value in HEURISTICS_OFF.items():
            h.setOptionValue(key, value)
    if options.careful:
        for key, value in CAREFUL.items():
            h.setOptionValue(key, value)
    if options.time_limit is not None and mip_nonzeros > PRESOLVE_MAX_NONZEROS:
        h.setOptionValue("presolve", "off")
    for key, value in options.solver_options.items():
        _set_solver_option(highspy, h, key, value)


def _set_solver_option(highspy, h, key: str, value) -> None:
    """HiGHS answers an unknown option or a bad value with an error status, not an
    exception: refused here, as the other backends refuse a misspelt option."""
    if h.setOptionValue(key, value) == highspy.HighsStatus.kError:
        raise InvalidInputError(
            f"HiGHS rejects the option {key}={value!r}; check its name and value against "
            "the options in HiGHS's documentation"
        )


def _finite(values: np.ndarray) -> np.ndarray:
    return np.clip(values, -_INF, _INF)


def pass_model(highspy, h, form: StandardForm) -> None:
    """Hand the standard form to ``h`` through highspy's array ``passModel`` (no per-column
    Python objects: integrality goes over as an int32 array)."""
    sign = -1.0 if form.maximize else 1.0
    A = form.A.tocsc()
    lp = (
        form.num_cols,
        A.shape[0],
        A.nnz,
        int(highspy.MatrixFormat.kColwise),
        int(highspy.ObjSense.kMinimize),
        sign * form.c0,
        sign * form.c,
        _finite(form.col_lower),
        _finite(form.col_upper),
        _finite(form.row_lower),
        _finite(form.row_upper),
    )
    matrix = (A.indptr.astype(np.int32), A.indices.astype(np.int32), A.data.astype(float))
    integrality = form.integer.astype(np.int32)
    if not form.has_quadratic_objective:
        status = h.passModel(*lp, *matrix, integrality)
    else:
        q = _hessian(form, sign)
        status = h.passModel(
            *lp[:3],
            q.nnz,
            lp[3],
            int(highspy.HessianFormat.kTriangular),
            *lp[4:],
            *matrix,
            q.indptr.astype(np.int32),
            q.indices.astype(np.int32),
            q.data.astype(float),
            integrality,
        )
    if status == highspy.HighsStatus.kError:
        raise SolverError("HiGHS refused the model (passModel failed)")


def _hessian(form: StandardForm, sign: float) -> sp.csc_matrix:
    """HiGHS minimises c x + 1/2 x'Qx with Q given as its lower triangle, column-wise."""
    n = form.num_cols
    q = sp.coo_matrix((sign * form.q_coef, (form.q_i, form.q_j)), shape=(n, n)).tocsr()
    lower = sp.tril(q + q.T).tocsc()
    lower.eliminate_zeros()
    lower.sort_indices()
    return lower


def _offer_start(highspy, h, start: np.ndarray | None) -> None:
    if start is None:
        return
    sol = highspy.HighsSolution()
    sol.col_value = start.tolist()
    sol.value_valid = True
    h.setSolution(sol)


_STATUS = {
    "kOptimal": Status.OPTIMAL,
    "kTimeLimit": Status.TIME_LIMIT,
    "kIterationLimit": Status.TIME_LIMIT,
    "kSolutionLimit": Status.TIME_LIMIT,
    "kInterrupt": Status.INTERRUPTED,
    "kInfeasible": Status.INFEASIBLE,
    "kUnbounded": Status.UNBOUNDED,
    "kUnboundedOrInfeasible": Status.INFEASIBLE,
}
