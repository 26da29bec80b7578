"""``score_neurons``: a torch model and a batch in, neuron-importance scores out.

The pipeline is extract (this adapter) -> bounds and Pyomo model (formulations) -> certified
solve or sweep (:mod:`oamip.solve`) -> check the returned scores against the masked PyTorch
forward pass. The reported objective always uses the exact loss.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pyomo.environ as pyo
from typing_extensions import Unpack

from oamip import backends, checks
from oamip.adapters.decompose import (
    check_decomposition,
    combined_scores,
    decomposed_pieces,
    overall_status,
)
from oamip.adapters.extract import Extracted, extract
from oamip.adapters.masks import scored_logits
from oamip.bounds import interval_bounds
from oamip.errors import InvalidInputError, OamipError, VerificationError
from oamip.formulations import ImportanceModel, build_importance_model, sparsity_term
from oamip.solve.decompose import Piece, PieceResult, open_executor, run_pieces
from oamip.solve.options import (
    DEFAULT_THRESHOLD,
    ScoringKeywords,
    ScoringOptions,
    check_resources,
)
from oamip.solve.root_cuts import add_root_cuts
from oamip.solve.sweep import SweepPoint, sweep

VERIFY_ATOL = 1e-5
VERIFY_RTOL = 1e-6
"""PyTorch's masked forward pass must match the network description's within
``VERIFY_ATOL + VERIFY_RTOL * max|z|``."""


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
    """Largest difference between the solver's logits and PyTorch's masked forward pass (0 for
    a result not taken from the solver: a kept start or a weight proven by concavity)."""
    cut_rounds: int
    nodes: int | None
    formulation: ImportanceModel | None = field(repr=False)
    """The importance model solved (None for a decomposed solve: each piece built its own)."""
    start_objective: float | None = None
    by_concavity: bool = False
    """True for a ``score_sweep`` weight proven without a solve of its own (see there)."""
    solver_status: str | None = None
    """What the solver itself said; ``status`` is what the package certifies."""
    note: str = ""
    """Why ``status`` or ``bound`` differ from the solver's claim, if they do."""
    coefficient_range: tuple[float, float] | None = None
    """Smallest and largest absolute nonzero of the constraint matrix solved (numerics)."""
    subproblems: list[PieceResult] = field(default_factory=list)
    """With ``decompose``: one record per piece (layer, label, samples, status, objective,
    bound, seconds, scores, head_accuracy, resumed, error)."""
    lam: float | None = None
    """The loss weight these scores were solved at (one per weight of ``score_sweep``)."""

    @property
    def model(self) -> pyo.ConcreteModel | None:
        """The Pyomo model that was solved (None for a decomposed solve)."""
        return None if self.formulation is None else self.formulation.model

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


@checks.with_options(ScoringOptions)
def score_neurons(
    model,
    x,
    y,
    options: ScoringOptions | None = None,
    *,
    aux_data: tuple | None = None,
    executor: Any = None,
    **changes: Unpack[ScoringKeywords],
) -> ScoreResult:
    """Solve the neuron-importance MIP of ``model`` on the batch ``(x, y)``.

    ``x`` and ``y`` may be numpy arrays or tensors (any device). The model is never modified.
    Options come as an ``options`` object, keywords, or both (keywords win). ``root_cuts``
    rounds of ideal ReLU cuts tighten the relaxation before branching; they never change the
    optimum. The solver starts from an incumbent found by greedy removal and local search
    (:mod:`oamip.solve.warm_start`), with its own primal heuristics off unless
    ``solver_heuristics``. ``time_limit`` covers the whole call. The result is certified
    (:func:`oamip.solve.loop.certify`): "optimal" only when proven. Ctrl-C stops the solve
    within seconds and returns its best solution, status "interrupted" with its bound; a second
    Ctrl-C raises KeyboardInterrupt (:mod:`oamip.solve.interrupt`).

    With ``decompose`` the MIP is cut into independent pieces (per scored layer with auxiliary
    heads fit on ``aux_data``, per class, or both; :mod:`oamip.adapters.decompose`), run here,
    on ``n_jobs`` processes or on a Dask ``executor``, saved to ``checkpoint`` as they finish.
    Each layer's scores are the mean over its pieces; ``time_limit`` then covers each piece;
    ``subproblems`` lists the pieces; the status is "optimal" only if every piece is; the
    objective is the whole network's at the combined scores, with no bound.
    """
    options = _options(options, changes, aux_data, executor)
    if options.decompose is not None:
        return score_decomposed(model, x, y, options, [options.lam], None, aux_data, executor)[0]
    return _score(model, x, y, [options.lam], options)[0]


@checks.with_options(ScoringOptions)
def score_sweep(
    model,
    x,
    y,
    lams,
    options: ScoringOptions | None = None,
    on_solved: Callable[[SweepPoint], None] | None = None,
    *,
    aux_data: tuple | None = None,
    executor: Any = None,
    **changes: Unpack[ScoringKeywords],
) -> list[ScoreResult]:
    """``score_neurons`` for each loss weight in ``lams`` (results in that order), on one model.

    Weights between solved ones may be proven optimal with no solve of their own, by the
    concavity of the optimal value in ``lam`` (``by_concavity``; see :mod:`oamip.solve.sweep`).
    ``time_limit`` applies to each solve, the first one's including building the model. The
    results share one Pyomo model, which holds the last weight solved; ``lam`` in the options
    is ignored. ``on_solved`` is called with each weight's :class:`oamip.solve.sweep.SweepPoint`
    as soon as its solve ends (``oamip.solve.sweep.point_line`` makes it a line of progress).

    With ``decompose`` each result is the decomposed solve of ``score_neurons`` at its weight:
    the pieces and their heads are cut once, and every (weight, piece) pair is solved as its own
    piece (no concavity shortcut), all in one run on the executor and checkpoint given.
    """
    options = _options(options, changes, aux_data, executor)
    if options.decompose is not None:
        return score_decomposed(model, x, y, options, _weights(lams), None, aux_data, executor)
    return _score(model, x, y, _weights(lams), options, on_solved)


def _options(
    options: ScoringOptions | None, changes: dict, aux_data: Any, executor: Any
) -> ScoringOptions:
    """A checked copy of ``options`` with ``changes`` applied (the caller's is not modified),
    and the resources given beside it checked against it."""
    if options is not None and not isinstance(options, ScoringOptions):
        raise InvalidInputError(
            f"options must be an oamip.ScoringOptions, got {type(options).__name__}"
        )
    merged = replace(options.scoring() if options is not None else ScoringOptions(), **changes)
    merged.validate()
    check_resources(merged, aux_data, executor)
    return merged


def _score(
    model,
    x,
    y,
    lams: list[float],
    options: ScoringOptions,
    on_solved: Callable[[SweepPoint], None] | None = None,
) -> list[ScoreResult]:
    started = time.perf_counter()
    solver = backends.get(options.backend)
    x, y = _as_numpy(x, "x"), _as_numpy(y, "y")
    extracted = extract(model, x, options.residual)
    im = build_importance_model(extracted.network, x, y, replace(options, lam=min(lams)))
    if options.root_cuts:
        add_root_cuts(im, solver, max_rounds=options.root_cuts, time_budget=options.time_limit)
    points = sweep(im, solver, options, lams, started, on_solved)
    return [_result(p, extracted, im, x, solver.name) for p in points]


def score_decomposed(
    model,
    x,
    y,
    options: ScoringOptions,
    lams: list[float],
    on_done: Callable[[PieceResult, int], None] | None = None,
    aux_data: tuple | None = None,
    executor: Any = None,
) -> list[ScoreResult]:
    """The pieces of ``options.decompose`` (checked options, with ``aux_data`` and ``executor``
    as :func:`oamip.solve.options.check_resources` takes them) solved for each weight in
    ``lams``, their scores combined and checked against PyTorch on the whole batch; one result
    per weight, in that order.

    The pieces (and their auxiliary heads) are cut once; every (weight, piece) pair is then an
    independent solve, all run together (here, on ``n_jobs`` processes or on the executor), so
    each result's ``solve_seconds`` is the wall time of that one run. ``on_done`` is called with
    each finished piece and the number of pieces in all."""
    started = time.perf_counter()
    solver = backends.get(options.backend)
    x, y = _as_numpy(x, "x"), _as_numpy(y, "y")
    extracted = extract(model, x, options.residual)
    network = extracted.network
    aux = aux_data
    if aux is not None:
        aux = (_as_numpy(aux[0], "aux_data's inputs"), _as_numpy(aux[1], "aux_data's labels"))
    aux = check_decomposition(network, x, y, options, aux)
    with open_executor(executor) as executor:
        cut = decomposed_pieces(network, x, y, options, aux)
        pieces = [_at_weight(piece, lam) for lam in lams for piece in cut]
        build_seconds = time.perf_counter() - started
        report = None if on_done is None else (lambda result: on_done(result, len(pieces)))
        results = run_pieces(pieces, executor, options.n_jobs, options.checkpoint, report)
    solve_seconds = time.perf_counter() - started - build_seconds
    failed = [r for r in results if r.error is not None]
    if len(failed) == len(results):
        raise OamipError(f"every piece of the decomposition failed; the first: {failed[0].error}")
    combined = _Combined(extracted, x, y, options, solver.name, build_seconds, solve_seconds)
    return [
        combined.result(lam, results[k * len(cut) : (k + 1) * len(cut)])
        for k, lam in enumerate(lams)
    ]


def _at_weight(piece: Piece, lam: float) -> Piece:
    """``piece`` with loss weight ``lam`` (the same piece when it already has it)."""
    return (
        piece
        if piece.options.lam == lam
        else replace(piece, options=replace(piece.options, lam=lam))
    )


@dataclass
class _Combined:
    """What the combined results of a decomposed solve share: the network, the batch and the
    run's timings."""

    extracted: Extracted
    x: np.ndarray
    y: np.ndarray
    options: ScoringOptions
    backend: str
    build_seconds: float
    solve_seconds: float

    def result(self, lam: float, results: list[PieceResult]) -> ScoreResult:
        """The pieces' scores for weight ``lam`` combined; the objective is the whole
        network's at those scores."""
        network, x = self.extracted.network, self.x
        scores = combined_scores(network, results)
        big_m = interval_bounds(network, network.check_input(x)).big_m
        by_name = self.extracted.scores_by_name(scores)
        exact = network.forward(x, scores, big_m)
        error = _verify(exact, scored_logits(self.extracted, x, by_name, big_m))
        loss_fn = self.options.loss_fn
        labels = self.y.astype(np.int64)
        targets = loss_fn.targets(labels, network.forward(x)) if loss_fn.reference else labels
        loss = float(np.mean(loss_fn.values(exact, targets)))
        failed = [r for r in results if r.error is not None]
        notes = [f"piece {r.layer}/{r.label} failed: {r.error}" for r in failed]
        return ScoreResult(
            scores=by_name,
            objective=sparsity_term(network, scores, self.options.sparsity) + lam * loss,
            bound=None,
            status=overall_status(results),
            solve_seconds=self.solve_seconds,
            build_seconds=self.build_seconds,
            backend=self.backend,
            min_keep=self.options.min_keep,
            big_m=self.extracted.scores_by_name(big_m),
            logit_error=error,
            cut_rounds=0,
            nodes=None,
            formulation=None,
            note="; ".join(
                [f"decomposed ({self.options.decompose}) into {len(results)} pieces", *notes]
            ),
            subproblems=results,
            lam=lam,
        )


def _result(point: SweepPoint, extracted, im: ImportanceModel, x, backend: str) -> ScoreResult:
    """The sweep's point as a ScoreResult, its scores checked against PyTorch."""
    by_name = extracted.scores_by_name(point.scores)
    torch_logits = scored_logits(extracted, x, by_name, im.big_m)
    _verify(im.forward(point.scores), torch_logits)
    solution = point.solution
    from_solver = solution is not None and not solution.kept_start
    return ScoreResult(
        scores=by_name,
        objective=point.objective,
        bound=point.bound,
        status=point.status,
        solve_seconds=solution.seconds if solution else 0.0,
        build_seconds=point.build_seconds,
        backend=backend,
        min_keep=im.settings.min_keep,
        big_m=extracted.scores_by_name(im.big_m),
        logit_error=solution.solver_logit_error if from_solver else 0.0,
        cut_rounds=solution.rounds if solution else 0,
        nodes=solution.nodes if solution else 0,
        formulation=im,
        start_objective=solution.start_objective if solution else point.objective,
        by_concavity=point.by_concavity,
        solver_status=solution.solver_status if solution else None,
        note=solution.note if solution else "",
        coefficient_range=solution.coefficient_range if solution else None,
        lam=point.lam,
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


def _as_numpy(values, what: str) -> np.ndarray:
    if hasattr(values, "detach"):
        values = values.detach().cpu()
        values = (values.double() if values.is_floating_point() else values).numpy()
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


def _verify(exact_logits: np.ndarray, torch_logits: np.ndarray) -> float:
    """The largest difference between the network description's forward pass and PyTorch's
    masked one at the same scores; a VerificationError (a bug to report) beyond tolerance."""
    error = float(np.max(np.abs(exact_logits - torch_logits)))
    tol = VERIFY_ATOL + VERIFY_RTOL * float(np.max(np.abs(torch_logits)))
    if not error <= tol:
        raise VerificationError(
            f"the logits of oamip's forward pass differ from PyTorch's masked forward pass by "
            f"{error:.3g} "
            f"(tolerance {tol:.3g}) at the scores found; the result is not trusted. Please "
            "report this model"
        )
    return error
