"""One certified solve of an importance model: warm start, solver, loss cuts, certificate.

The solver is handed the model with a start; for an inexact loss (cross-entropy) violated
tangent planes are added and the model solved again until every sample's loss is approximated
to ``CE_CUT_TOL``, the deadline passes or the cuts stop making progress. The result is then
certified (:func:`certify`): its objective is the exact one of the scores returned, the better
of the start and the solver's answer is kept, a bound is reported only if it is consistent with
every feasible point known, and the status is "optimal" only if that bound proves the objective
within the gap asked for. A stop asked for (``SolveOptions.stop``, set by Ctrl-C through
:mod:`oamip.solve.interrupt`) ends the loop with the solver's best solution, status
"interrupted" unless proven. A solver that crashes (its process dies, its library raises) is
one more doubtful answer (:func:`solver_run`): retried carefully, then without the start, and
if every attempt fails the answer is the start, "feasible", the solver's words in its note.
Nothing here imports torch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np

from oamip.backends import Backend, SolveOptions, SolveResult, Status
from oamip.backends.base import stop_requested
from oamip.errors import LicenceLimitError, OamipError, SolverError
from oamip.formulations import ImportanceModel

CE_CUT_TOL = 1e-6
"""Largest gap allowed between a sample's cross-entropy and its cut approximation."""
STALL_ROUNDS = 3
"""Cut rounds in a row without progress (no rise of the solver's objective, no fewer violated
samples) after which the cut loop stops."""
CERTIFY_RTOL = 1e-6
"""Slack, relative to ``max(1, |objective|)``, for rounding in the certificate's comparisons."""
MIN_SOLVE_SECONDS = 0.01
"""The solver always gets at least this long, even when building used up the time limit."""
LOGIT_ATOL = 1e-5
LOGIT_RTOL = 1e-6
"""The solver's logits must match the exact forward pass of its scores within
``LOGIT_ATOL + LOGIT_RTOL * max|z|``, or its bound is not trusted."""
FEASIBLE = "feasible"
"""Status of an answer that is feasible but not proven optimal, where the solver claimed an
optimum its numbers do not support or gave up (infeasible, error) on a problem that has a
solution: the start."""
NO_BOUND_STATUSES = (Status.INFEASIBLE, Status.UNBOUNDED, Status.ERROR)
CRASH_WORDS = 400
"""Most characters of a crashed solver's message kept in the note (its end, where the reason
is)."""


@dataclass
class Solution:
    """A certified solve: scores by layer index and what can be said about them."""

    scores: dict[int, np.ndarray]
    objective: float
    """The exact objective of ``scores`` (the true loss, not a cut approximation)."""
    bound: float | None
    """A lower bound on the optimum consistent with every known feasible point, or None."""
    status: str
    seconds: float
    rounds: int
    nodes: int | None
    start_objective: float
    solver_status: str
    solver_objective: float | None
    """What the solver itself reported (kept for the record; never trusted on its own)."""
    solver_logit_error: float | None = None
    """Largest difference between the solver's logits and the exact forward pass of its
    scores (None without a solver answer)."""
    coefficient_range: tuple[float, float] | None = None
    """Smallest and largest absolute nonzero of the constraint matrix solved."""
    logits_agree: bool = True
    """Whether the solver's logits match the exact forward pass (its bound is dropped if not)."""
    kept_start: bool = False
    """True when the start was better than the solver's answer and was returned instead."""
    note: str = ""
    """Why the status or bound differs from the solver's claim, if it does."""


def solve_certified(
    solver: Backend,
    im: ImportanceModel,
    options: SolveOptions,
    time_limit: float | None,
    start: dict[int, np.ndarray],
    known: tuple[float, ...] = (),
) -> Solution:
    """Solve ``im`` from ``start`` within ``time_limit`` seconds and certify the answer against
    the start and the objectives ``known`` of other feasible points (at the current lam).

    A doubtful answer (the certificate refuses the solver's claim of an optimum, the solver
    gave up, or its logits do not match the exact forward pass of its scores) is solved again
    carefully (``SolveOptions.careful``: no presolve, tolerances 1e-9), then carefully without
    the start, while the time limit allows and no stop was asked for; the best certified
    answer is returned.
    """
    started = time.perf_counter()
    deadline = None if time_limit is None else started + time_limit
    solution, rounds = None, 0
    for attempt, warm in _attempts(options):
        if solution is not None and (
            not _doubtful(solution) or _past(deadline) or stop_requested(options)
        ):
            break
        result, more = _solve_with_cuts(solver, im, attempt, deadline, start, warm)
        rounds += more
        seen = known if solution is None else (*known, solution.objective)
        found = certify(im, result, start, seen, options.mip_gap)
        solution = found if solution is None else _better(solution, found, warm)
    solution.seconds = time.perf_counter() - started
    solution.rounds = rounds
    im.assign(solution.scores)
    return solution


def _attempts(options: SolveOptions) -> list[tuple[SolveOptions, bool]]:
    """The solve as asked, then carefully from the start, then carefully from scratch."""
    careful = replace(options, careful=True)
    first = [] if options.careful else [(options, True)]
    return [*first, (careful, True), (careful, False)]


def _doubtful(solution: Solution) -> bool:
    """Whether a second, careful solve may do better: the solver claimed an optimum that the
    certificate refused, or its numbers disagree with the exact forward pass."""
    refused = solution.solver_status == str(Status.OPTIMAL) != solution.status
    gave_up = solution.solver_status in {str(s) for s in NO_BOUND_STATUSES}
    return refused or gave_up or not solution.logits_agree


def _better(first: Solution, retry: Solution, warm: bool) -> Solution:
    """After a doubtful solve: the retry if proven or not worse, else the earlier answer with
    the retry's bound (the doubtful solve's numbers are not trusted); the note says so."""
    how = "carefully" + ("" if warm else " without the start")
    note = "; ".join(filter(None, [first.note, f"solved again {how}", retry.note]))
    if retry.status == str(Status.OPTIMAL) or retry.objective <= first.objective:
        retry.note = note
        return retry
    first.bound = None if retry.bound is None else min(retry.bound, first.objective)
    first.note = note
    return first


def _solve_with_cuts(solver, im: ImportanceModel, options, deadline, start, warm: bool):
    """Solve (from ``start`` if ``warm``); for an inexact loss add violated cuts and solve
    again while the deadline allows, no stop is asked for and the cuts make progress. A
    stopped solve is "interrupted": the solver's own optimum, when it was reached, is one of
    the cut approximation."""
    im.assign(start)
    loss = im.settings.loss_fn
    rounds, stalled, last, result = 0, 0, (-np.inf, np.inf), None
    while True:
        rounds += 1
        answer = solver_run(solver, im.model, _with_deadline(options, deadline), warm)
        if answer.status == Status.INTERRUPTED and options.stop is not None:
            options.stop.set()  # Gurobi and SCIP catch SIGINT themselves
        if answer.status == Status.ERROR and result is not None and result.has_solution:
            # crashed after a cut round: the model still holds that round's solution
            return replace(result, status=Status.ERROR, bound=None, note=answer.note), rounds
        if result is not None and stop_requested(options) and not answer.has_solution:
            # stopped before this round found anything: the model still holds the last one's
            return replace(result, status=Status.INTERRUPTED), rounds
        result = _keeping_bound(answer, result)
        if not result.has_solution:
            return result, rounds
        if loss.exact or result.status != Status.OPTIMAL or _past(deadline):
            return result, rounds
        found = im.score_values()
        logits = im.forward(found)
        gap = im.losses_at(logits) - im.table.values(im.loss_ids)
        violated = np.flatnonzero(gap > CE_CUT_TOL)
        if len(violated) == 0:
            return result, rounds
        if stop_requested(options):
            return replace(result, status=Status.INTERRUPTED), rounds
        progress = (result.objective or -np.inf, len(violated))
        stalled = stalled + 1 if progress[0] <= last[0] and progress[1] >= last[1] else 0
        if stalled >= STALL_ROUNDS:
            return result, rounds
        last = progress
        im.add_cuts(logits, violated)
        im.assign(found)


def solver_run(solver: Backend, model, options: SolveOptions, warm: bool) -> SolveResult:
    """One run of ``solver`` on ``model``. A crash (an exception from the solver or its
    library, a solver process that dies or fails) is the result "error" with the solver's words
    in ``note``, so that :func:`solve_certified` retries it as it retries any doubtful answer,
    the same way for every backend. Errors of the input, of a capability or of a licence limit
    are raised: no retry can mend them."""
    try:
        return solver.solve(model, options, warm_start=warm)
    except LicenceLimitError:
        raise
    except SolverError as exc:
        return _crashed(solver, exc)
    except OamipError:
        raise
    except Exception as exc:  # noqa: BLE001 - a solver library's own failure, see above
        return _crashed(solver, exc)


def _crashed(solver: Backend, exc: Exception) -> SolveResult:
    """The result of a solver run that failed with ``exc``: no solution, no bound."""
    words = " ".join(f"{type(exc).__name__}: {exc}".split())
    if len(words) > CRASH_WORDS:
        words = "..." + words[-CRASH_WORDS:]
    return SolveResult(solver.name, Status.ERROR, None, None, 0.0, note=f"it failed ({words})")


def _keeping_bound(answer: SolveResult, earlier: SolveResult | None) -> SolveResult:
    """``answer`` with the larger of its bound and the bound of the round before. Cuts only
    raise the approximation, so a bound of an earlier round bounds every later one (and the
    exact loss): a round stopped before it has a bound of its own keeps the earlier one."""
    bounds = [b for b in (answer.bound, earlier and earlier.bound) if b is not None]
    if not answer.has_solution or not bounds:
        return answer
    return replace(answer, bound=max(bounds))


def _with_deadline(options: SolveOptions, deadline: float | None) -> SolveOptions:
    if deadline is None:
        return replace(options, time_limit=None)
    return replace(options, time_limit=max(deadline - time.perf_counter(), MIN_SOLVE_SECONDS))


def _past(deadline: float | None) -> bool:
    return deadline is not None and time.perf_counter() >= deadline


def certify(
    im: ImportanceModel,
    result: SolveResult,
    start: dict[int, np.ndarray],
    known: tuple[float, ...],
    mip_gap: float,
) -> Solution:
    """Turn a solver's answer into a result the package can stand behind.

    The scores returned are the better (exact objective) of the solver's and the start; a
    solver bound above any known feasible objective is dropped (it cannot be valid); the
    status is "optimal" only if the bound kept proves the objective within ``mip_gap``
    (``(objective - bound) / max(1, |objective|)``, as ``ScoreResult.gap``), otherwise the
    solver's non-optimal status, or "feasible" where the solver claimed an optimum that its
    own numbers do not support. With an inexact loss the solver's bound is a bound of the cut
    approximation, which under-estimates the loss, so it is a valid bound of the exact problem.
    """
    start_objective = im.objective_at(start)
    candidates = [(start_objective, start, True)]
    logit_error, agree = None, True
    if result.has_solution:
        found = im.score_values()
        candidates.append((im.objective_at(found), found, False))
        logit_error, agree = logits_agree(im.logit_values(), im.forward(found))
    objective, scores, kept_start = min(candidates, key=lambda c: (c[0], not c[2]))
    best_known = min([objective, *known])
    slack = CERTIFY_RTOL * max(1.0, abs(best_known))
    bound, notes = result.bound, []
    if result.status in NO_BOUND_STATUSES:
        why = f": {result.note}" if result.note else ""
        notes.append(f"the solver ended '{result.status}' on a feasible problem{why}")
        bound = None
    if not agree:
        notes.append(
            f"the solver's logits differ from the exact forward pass of its scores by "
            f"{logit_error:.3g} (numerics), so its bound is not trusted"
        )
        bound = None
    if bound is not None and not np.isfinite(bound):
        bound = None
    if bound is not None and bound > best_known + slack:
        notes.append(
            f"the solver's bound {bound:.6g} lies above a known feasible objective "
            f"{best_known:.6g}, so it was dropped"
        )
        bound = None
    proven = bound is not None and (objective - bound) <= (
        mip_gap * max(1.0, abs(objective)) + slack
    )
    status = _status(result.status, proven)
    if result.status == Status.OPTIMAL and not proven:
        notes.append(_disagreement(result, objective, bound, kept_start))
    return Solution(
        scores=scores,
        objective=objective,
        bound=None if bound is None else min(bound, objective),
        status=status,
        seconds=0.0,
        rounds=0,
        nodes=result.nodes,
        start_objective=start_objective,
        solver_status=str(result.status),
        solver_objective=result.objective,
        solver_logit_error=logit_error,
        coefficient_range=result.coefficient_range,
        logits_agree=agree,
        kept_start=kept_start,
        note="; ".join(notes),
    )


def _status(solver_status: Status, proven: bool) -> str:
    if proven:
        return str(Status.OPTIMAL)
    if solver_status == Status.OPTIMAL or solver_status in NO_BOUND_STATUSES:
        return FEASIBLE
    return str(solver_status)


def _disagreement(result: SolveResult, objective: float, bound, kept_start: bool) -> str:
    said = "nothing" if result.objective is None else f"{result.objective:.6g}"
    what = "the start (better than its answer)" if kept_start else "its answer"
    return (
        f"the solver claimed an optimum ({said}) that its numbers do not prove: the exact "
        f"objective of {what} is {objective:.6g}, the bound kept is "
        f"{'none' if bound is None else f'{bound:.6g}'}"
    )


def logits_agree(solver_logits: np.ndarray, exact_logits: np.ndarray) -> tuple[float, bool]:
    """The largest difference of ``solver_logits`` from ``exact_logits``, and whether it is
    within ``LOGIT_ATOL + LOGIT_RTOL * max|z|``."""
    error = float(np.max(np.abs(solver_logits - exact_logits), initial=0.0))
    tol = LOGIT_ATOL + LOGIT_RTOL * float(np.max(np.abs(exact_logits), initial=0.0))
    return error, error <= tol
