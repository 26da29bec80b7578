"""``score_neurons``: a torch model and a batch in, neuron-importance scores out.

The pipeline is extract (torch adapter) -> bounds and Pyomo model (formulations) -> solve
(backend) -> check the solution against the masked PyTorch forward pass. Cross-entropy is handled
by adding tangent planes of ``logsumexp`` until every sample's loss is approximated to
``CE_CUT_TOL``; the reported objective always uses the exact loss.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pyomo.environ as pyo

from oamip import backends, checks
from oamip.adapters import extract, scored_logits
from oamip.backends import SolveOptions, Status
from oamip.backends.base import DEFAULT_MIP_GAP
from oamip.errors import InvalidInputError, SolverError, VerificationError
from oamip.formulations import ImportanceModel, ImportanceSettings, build_importance_model
from oamip.formulations.importance import sparsity_term
from oamip.solve.root_cuts import add_root_cuts
from oamip.solve.warm_start import is_binary, local_search, warm_start_scores

CE_CUT_TOL = 1e-6
"""Largest gap allowed between a sample's cross-entropy and its cut approximation."""

VERIFY_ATOL = 1e-5
VERIFY_RTOL = 1e-6
"""The solver's logits must match PyTorch's within ``VERIFY_ATOL + VERIFY_RTOL * max|z|``."""

DEFAULT_THRESHOLD = 0.1

WARM_START_SECONDS = 10.0
WARM_START_SHARE = 0.25
"""The warm start (greedy removal, then local search) gets at most WARM_START_SECONDS, and at
most this share of a time limit."""

MIN_SOLVE_SECONDS = 0.01
"""The solver always gets at least this long, even when building used up the time limit."""


@dataclass
class ScoreResult:
    """Scores per scored module, the objective they reach and how the solve went."""

    scores: dict[str, np.ndarray]
    objective: float
    bound: float | None
    status: str
    solve_seconds: float
    build_seconds: float
    backend: str
    min_keep: int
    big_m: dict[str, np.ndarray]
    logit_error: float
    cut_rounds: int
    nodes: int | None
    formulation: ImportanceModel = field(repr=False)
    start_objective: float | None = None
    by_concavity: bool = False
    """True for a ``score_sweep`` weight proven without a solve of its own (see there)."""

    @property
    def model(self) -> pyo.ConcreteModel:
        """The Pyomo model that was solved."""
        return self.formulation.model

    @property
    def gap(self) -> float | None:
        """Relative gap between the objective and the proven bound."""
        if self.bound is None:
            return None
        return max(0.0, self.objective - self.bound) / max(1.0, abs(self.objective))

    def masks(self, threshold: float = DEFAULT_THRESHOLD) -> dict[str, np.ndarray]:
        """True = keep (score >= threshold); at least ``min_keep`` units per layer, the best."""
        threshold = checks.real("threshold", threshold, 0.0, 1.0)
        return {name: _keep(s, threshold, self.min_keep) for name, s in self.scores.items()}


def _keep(scores: np.ndarray, threshold: float, min_keep: int) -> np.ndarray:
    keep = scores >= threshold
    if keep.sum() < min_keep:
        best = np.argsort(-scores, kind="stable")[:min_keep]
        keep[best] = True
    return keep


def score_neurons(
    model,
    x,
    y,
    *,
    backend: str = "highs",
    loss: str = "ce",
    margin: float = 1.0,
    lam: float = 5.0,
    scores: str = "continuous",
    min_keep: int = 1,
    time_limit: float | None = None,
    mip_gap: float = DEFAULT_MIP_GAP,
    threads: int | None = None,
    verbose: bool = False,
    root_cuts: int = 0,
    solver_heuristics: bool = False,
) -> ScoreResult:
    """Solve the neuron-importance MIP of ``model`` on the batch ``(x, y)``.

    ``x`` and ``y`` may be numpy arrays or tensors (any device). The model is never modified.
    ``root_cuts`` rounds of ideal ReLU cuts (:mod:`oamip.solve.root_cuts`) tighten the relaxation
    before branching; they never change the optimum. The solver starts from an incumbent found
    by greedy removal and local search (:mod:`oamip.solve.warm_start`), with its own
    primal heuristics off unless ``solver_heuristics`` (they mostly repeat that search, and
    cost small problems most of their solve time). ``time_limit`` covers the whole call.
    """
    return score_sweep(
        model,
        x,
        y,
        [checks.real("lam", lam, 0.0)],
        backend=backend,
        loss=loss,
        margin=margin,
        scores=scores,
        min_keep=min_keep,
        time_limit=time_limit,
        mip_gap=mip_gap,
        threads=threads,
        verbose=verbose,
        root_cuts=root_cuts,
        solver_heuristics=solver_heuristics,
    )[0]


def score_sweep(
    model,
    x,
    y,
    lams,
    *,
    backend: str = "highs",
    loss: str = "ce",
    margin: float = 1.0,
    scores: str = "continuous",
    min_keep: int = 1,
    time_limit: float | None = None,
    mip_gap: float = DEFAULT_MIP_GAP,
    threads: int | None = None,
    verbose: bool = False,
    root_cuts: int = 0,
    solver_heuristics: bool = False,
) -> list[ScoreResult]:
    """``score_neurons`` for each loss weight in ``lams`` (results in that order), on one model.

    The optimal value ``V(lam) = min_s sparsity(s) + lam * loss(s)`` is a minimum of functions
    linear in ``lam``, hence concave: between two solved weights the chord of their proven
    bounds is a lower bound, and every solution found is an upper bound at every weight. A
    weight where the best solution meets that chord within ``mip_gap`` is proven optimal with
    no solve of its own (``by_concavity``; typically weights that share their optimal mask
    with both neighbours). The smallest and largest weights are solved first, then always
    the weight with the largest gap left. The first solve starts from greedy removal and local
    search (:mod:`oamip.solve.warm_start`), every later one from local search around the
    solutions known (or the best of them at its weight); each keeps the cross-entropy cuts found
    so far.
    ``time_limit`` applies to each solve, the first one's including building the model. The
    results share one Pyomo model, which holds the last weight solved.
    """
    start = time.perf_counter()
    lams = _weights(lams)
    _check_options(time_limit, mip_gap, threads, root_cuts)
    solver = backends.get(backend)
    settings = ImportanceSettings(loss, margin, min(lams), scores, min_keep)
    settings.validate()
    extracted, im, x = _prepare(model, x, y, settings, solver, root_cuts, time_limit)
    options = SolveOptions(
        mip_gap=mip_gap, threads=threads, verbose=verbose, heuristics=solver_heuristics
    )
    budget = _warm_start_budget(time_limit)
    sweep = _Sweep(sorted(set(lams)), mip_gap)
    while (lam := sweep.next_to_solve()) is not None:
        im.set_lam(lam)
        if sweep.solved:
            start = time.perf_counter()
        start_scores = _start(im, sweep, lam, budget)
        result = _solve(extracted, im, x, solver, options, time_limit, start, start_scores)
        found = extracted.scores_by_layer(result.scores)
        sweep.add_solved(lam, result, [_line(im, start_scores), _line(im, found)])
    return [sweep.result(lam, extracted, im, x, solver.name) for lam in lams]


@dataclass
class _Line:
    """A solution's objective as a function of ``lam``: ``sparsity + lam * loss``."""

    sparsity: float
    loss: float
    scores: dict[int, np.ndarray]

    def at(self, lam: float) -> float:
        return self.sparsity + lam * self.loss

    def same(self, other: _Line) -> bool:
        return all(np.array_equal(s, other.scores[i]) for i, s in self.scores.items())


def _start(im: ImportanceModel, sweep: _Sweep, lam: float, budget: float) -> dict:
    """Greedy removal and local search for the first solve; after that, local search around
    every binary solution known (every start is one), the budget shared, or the best solution
    known at ``lam`` if that is better (with continuous scores it may be fractional). Local
    search from the best solution at ``lam`` alone can stay far from the optimum: masks much
    smaller than the optimal one, found at small weights, are local optima at larger ones."""
    if not sweep.lines:
        return warm_start_scores(im, budget)
    binary = [line.scores for line in sweep.lines if is_binary(line.scores)]
    found = [local_search(im, s, budget / len(binary)) for s in binary]
    return min([*found, sweep.best_at(lam).scores], key=im.objective_at)


def _line(im: ImportanceModel, scores: dict[int, np.ndarray]) -> _Line:
    loss = float(np.mean(im.losses_at(im.forward(scores))))
    return _Line(sparsity_term(im.network, scores), loss, scores)


class _Sweep:
    """Which weights are solved, which are proven by concavity, and what is known."""

    def __init__(self, lams: list[float], mip_gap: float) -> None:
        self.lams = lams
        self.mip_gap = mip_gap
        self.lines: list[_Line] = []
        self.solved: dict[float, ScoreResult] = {}

    def add_solved(self, lam: float, result: ScoreResult, lines: list[_Line]) -> None:
        """A solve at ``lam``, with the solutions it saw (each an upper bound everywhere)."""
        self.solved[lam] = result
        for line in lines:
            if not any(line.same(other) for other in self.lines):
                self.lines.append(line)

    def best_at(self, lam: float) -> _Line:
        return min(self.lines, key=lambda line: line.at(lam))

    def lower_bound(self, lam: float) -> float:
        """The best bound at ``lam`` from the solved weights: ``V`` is nondecreasing (losses
        are >= 0) and concave, so a bound to the left and chords across ``lam`` hold."""
        bounds = {v: r.bound for v, r in self.solved.items() if r.bound is not None}
        left = [(v, b) for v, b in bounds.items() if v <= lam]
        right = [(v, b) for v, b in bounds.items() if v > lam]
        best = max((b for _, b in left), default=-np.inf)
        for (va, ba), (vb, bb) in itertools.product(left, right):
            best = max(best, ba + (lam - va) * (bb - ba) / (vb - va))
        return best

    def gap(self, lam: float) -> float:
        upper = self.best_at(lam).at(lam)
        return (upper - self.lower_bound(lam)) / max(abs(upper), 1e-12)

    def next_to_solve(self) -> float | None:
        """The smallest weight, then the largest, then the open weight with the largest gap;
        None once every weight is solved or proven."""
        for end in (self.lams[0], self.lams[-1]):
            if end not in self.solved:
                return end
        open_gaps = {v: self.gap(v) for v in self.lams if v not in self.solved}
        open_gaps = {v: g for v, g in open_gaps.items() if g > self.mip_gap}
        return max(open_gaps, key=open_gaps.get) if open_gaps else None

    def result(self, lam: float, extracted, im: ImportanceModel, x, backend: str) -> ScoreResult:
        """The solve at ``lam``, or the best known solution with its concavity bound."""
        if lam in self.solved:
            return self.solved[lam]
        line = self.best_at(lam)
        by_name = extracted.scores_by_name(line.scores)
        torch_logits = scored_logits(extracted, x, by_name, im.big_m)
        return ScoreResult(
            scores=by_name,
            objective=line.at(lam),
            bound=self.lower_bound(lam),
            status=str(Status.OPTIMAL),
            solve_seconds=0.0,
            build_seconds=0.0,
            backend=backend,
            min_keep=im.settings.min_keep,
            big_m=extracted.scores_by_name(im.big_m),
            logit_error=_verify(im.forward(line.scores), torch_logits),
            cut_rounds=0,
            nodes=0,
            formulation=im,
            start_objective=line.at(lam),
            by_concavity=True,
        )


def _prepare(model, x, y, settings, solver, root_cuts: int, time_limit):
    """Extract the network and build (and optionally strengthen) its importance MIP."""
    x, y = _as_numpy(x, "x"), _as_numpy(y, "y")
    extracted = extract(model, x)
    im = build_importance_model(extracted.network, x, y, settings)
    if root_cuts:
        add_root_cuts(im, solver, max_rounds=root_cuts, time_budget=time_limit)
    return extracted, im, x


def _solve(extracted, im, x, solver, options, time_limit, start: float, start_scores):
    """Solve from ``start_scores``, check against PyTorch and wrap up the result."""
    build_seconds = time.perf_counter() - start
    remaining = None if time_limit is None else max(time_limit - build_seconds, MIN_SOLVE_SECONDS)
    result, rounds, solve_seconds = _solve_with_cuts(solver, im, options, remaining, start_scores)
    found = im.score_values()
    by_name = extracted.scores_by_name(found)
    torch_logits = scored_logits(extracted, x, by_name, im.big_m)
    error = _verify(im.logit_values(), torch_logits)
    return ScoreResult(
        scores=by_name,
        objective=im.objective_at(found),
        bound=result.bound,
        status=str(result.status),
        solve_seconds=solve_seconds,
        build_seconds=build_seconds,
        backend=solver.name,
        min_keep=im.settings.min_keep,
        big_m=extracted.scores_by_name(im.big_m),
        logit_error=error,
        cut_rounds=rounds,
        nodes=result.nodes,
        formulation=im,
        start_objective=im.objective_at(start_scores),
    )


def _weights(lams) -> list[float]:
    """The loss weights as floats, or a clear error (a string is not a list of weights)."""
    if hasattr(lams, "tolist"):
        lams = lams.tolist()
    if isinstance(lams, str | bytes) or not isinstance(lams, Iterable):
        raise InvalidInputError(f"lams must be a list of loss weights, got {lams!r}")
    weights = [checks.real("every loss weight in lams", v, 0.0) for v in lams]
    if not weights:
        raise InvalidInputError("lams is empty: give at least one loss weight")
    return weights


def _check_options(time_limit, mip_gap, threads, root_cuts) -> None:
    if time_limit is not None:
        checks.real("time_limit (seconds)", time_limit, 0.0, open_low=True)
    checks.real("mip_gap", mip_gap, 0.0, 1.0)
    if threads is not None:
        checks.whole("threads", threads, 1)
    checks.whole("root_cuts", root_cuts, 0)


def _as_numpy(values, what: str) -> np.ndarray:
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    try:
        values = np.asarray(values)
    except ValueError:
        raise InvalidInputError(
            f"{what} is ragged: give one array whose samples all have the same shape"
        ) from None
    if values.dtype.kind not in "biuf":
        raise InvalidInputError(
            f"{what} must be a real numeric array or tensor, got dtype {values.dtype}"
        )
    if values.size and np.issubdtype(values.dtype, np.floating) and not np.isfinite(values).all():
        raise InvalidInputError(f"{what} contains NaN or infinite values")
    return values


def _warm_start_budget(time_limit: float | None) -> float:
    if time_limit is None:
        return WARM_START_SECONDS
    return min(WARM_START_SECONDS, WARM_START_SHARE * time_limit)


def _solve_with_cuts(solver, im: ImportanceModel, options: SolveOptions, time_limit, start):
    """Solve from ``start``; for cross-entropy add violated tangent planes and solve again
    until every sample's loss is approximated to ``CE_CUT_TOL``."""
    im.assign(start)
    deadline = None if time_limit is None else time.perf_counter() + time_limit
    started = time.perf_counter()
    rounds = 0
    while True:
        rounds += 1
        options.time_limit = None if deadline is None else max(deadline - time.perf_counter(), 1e-3)
        result = solver.solve(im.model, options, warm_start=True)
        if not result.has_solution:
            raise SolverError(
                f"backend '{solver.name}' found no solution (status: {result.status}); "
                "give it more time (time_limit) or check the model"
            )
        if im.settings.loss != "ce" or result.status != Status.OPTIMAL:
            break
        found = im.score_values()
        logits = im.forward(found)
        gap = im.losses_at(logits) - im.table.values(im.loss_ids)
        violated = np.flatnonzero(gap > CE_CUT_TOL)
        if len(violated) == 0:
            break
        im.add_cuts(logits, violated)
        im.assign(found)
    return result, rounds, time.perf_counter() - started


def _verify(mip_logits: np.ndarray, torch_logits: np.ndarray) -> float:
    """The largest logit difference; a VerificationError if it exceeds the tolerance."""
    error = float(np.max(np.abs(mip_logits - torch_logits)))
    tol = VERIFY_ATOL + VERIFY_RTOL * float(np.max(np.abs(torch_logits)))
    if not error <= tol:
        raise VerificationError(
            f"the solver's logits differ from PyTorch's masked forward pass by {error:.3g} "
            f"(tolerance {tol:.3g}); the solution is not trusted. Tighten the solver's "
            "feasibility tolerances or report this model"
        )
    return error
