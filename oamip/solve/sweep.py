"""Solving one importance model at several loss weights, proving some by concavity.

The optimal value ``V(lam) = min_s sparsity(s) + lam * loss(s)`` is a minimum of functions
linear in ``lam``, hence concave and nondecreasing: between two solved weights the chord of
their proven bounds is a lower bound, and every solution found is an upper bound at every
weight. A weight where the best solution meets that chord within ``mip_gap`` is proven with no
solve of its own. The smallest and largest weights are solved first, then always the weight with
the largest gap left. Nothing here imports torch.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from oamip.backends import Backend, Status
from oamip.formulations import ImportanceModel, sparsity_term
from oamip.solve.interrupt import interruptible
from oamip.solve.loop import Solution, solve_certified
from oamip.solve.options import ScoringOptions
from oamip.solve.warm_start import is_binary, local_search, warm_start_scores

WARM_START_SECONDS = 10.0
WARM_START_SHARE = 0.25
"""The warm start (greedy removal, then local search) gets at most WARM_START_SECONDS, and at
most this share of a time limit."""


@dataclass
class Line:
    """A solution's objective as a function of ``lam``: ``sparsity + lam * loss``."""

    sparsity: float
    loss: float
    scores: dict[int, np.ndarray]

    def at(self, lam: float) -> float:
        return self.sparsity + lam * self.loss

    def same(self, other: Line) -> bool:
        return all(np.array_equal(s, other.scores[i]) for i, s in self.scores.items())


@dataclass
class SweepPoint:
    """What the sweep established at one weight: a certified solve (``solution``), or the best
    known scores with a bound from concavity (``solution`` None)."""

    lam: float
    scores: dict[int, np.ndarray]
    objective: float
    bound: float | None
    status: str
    build_seconds: float
    solution: Solution | None

    @property
    def by_concavity(self) -> bool:
        return self.solution is None


def point_line(point: SweepPoint) -> str:
    """One line on a weight the sweep solved: its status, objective, bound and seconds."""
    bound = "no bound" if point.bound is None else f"bound {point.bound:.6g}"
    seconds = point.build_seconds + (point.solution.seconds if point.solution else 0.0)
    return (
        f"lam {point.lam:g}: {point.status} (objective {point.objective:.6g}, {bound}, "
        f"{seconds:.1f} s)"
    )


def warm_start_budget(time_limit: float | None) -> float:
    """Seconds for the warm start under ``time_limit``."""
    if time_limit is None:
        return WARM_START_SECONDS
    return min(WARM_START_SECONDS, WARM_START_SHARE * time_limit)


def sweep(
    im: ImportanceModel,
    solver: Backend,
    options: ScoringOptions,
    lams: list[float],
    started: float,
    on_solved: Callable[[SweepPoint], None] | None = None,
    start: dict[int, np.ndarray] | None = None,
    stop: threading.Event | None = None,
) -> list[SweepPoint]:
    """One point per weight of ``lams`` (in that order). ``started`` (a perf_counter value) is
    when the call began: the first solve's time limit covers building the model. ``on_solved``
    is called with each weight's point as soon as its solve ends (e.g. to print
    :func:`point_line`); weights proven by concavity are not solved and not reported. ``start``
    (scores by layer index, e.g. a checkpoint's best) replaces the warm start of the first
    solve, which then never ends worse than it; ``stop`` is the event of
    :func:`oamip.solve.interrupt.interruptible` (None: a new one).

    Ctrl-C (:func:`oamip.solve.interrupt.interruptible`) stops the sweep: the solve running
    keeps its best solution, status "interrupted", and the weights not solved yet get the best
    solution known, "optimal" only where concavity proves it."""
    known = _Known(sorted(set(lams)), options.mip_gap)
    budget = warm_start_budget(options.time_limit)
    given = start
    with interruptible(solver, stop) as stop:
        solve_options = replace(options.solve_options(), stop=stop)
        while (lam := known.next_to_solve()) is not None and not (stop.is_set() and known.solved):
            im.set_lam(lam)
            if known.solved:
                started = time.perf_counter()
            start = _start(im, known, lam, budget) if given is None else given
            given = None
            build_seconds = time.perf_counter() - started
            remaining = None
            if options.time_limit is not None:
                remaining = max(options.time_limit - build_seconds, 0.0)
            others = tuple(line.at(lam) for line in known.lines)
            solution = solve_certified(solver, im, solve_options, remaining, start, others)
            lines = [_line(im, start), _line(im, solution)]
            known.add_solved(lam, solution, build_seconds, lines)
            if on_solved is not None:
                on_solved(known.point(lam))
    return [known.point(lam) for lam in lams]


def _start(im: ImportanceModel, known: _Known, lam: float, budget: float) -> dict:
    """Greedy removal and local search for the first solve; after that, local search around
    every binary solution known (every start is one), the budget shared, or the best solution
    known at ``lam`` if that is better (with continuous scores it may be fractional). Local
    search from the best solution at ``lam`` alone can stay far from the optimum: masks much
    smaller than the optimal one, found at small weights, are local optima at larger ones."""
    if not known.lines:
        return warm_start_scores(im, budget)
    binary = [line.scores for line in known.lines if is_binary(line.scores)]
    found = [local_search(im, s, budget / len(binary)) for s in binary]
    return min([*found, known.best_at(lam).scores], key=im.objective_at)


def _line(im: ImportanceModel, source) -> Line:
    scores = source if isinstance(source, dict) else source.scores
    loss = float(np.mean(im.losses_at(im.forward(scores))))
    return Line(sparsity_term(im.network, scores, im.settings.sparsity), loss, scores)


class _Known:
    """Which weights are solved, which are proven by concavity, and what is known."""

    def __init__(self, lams: list[float], mip_gap: float) -> None:
        self.lams = lams
        self.mip_gap = mip_gap
        self.lines: list[Line] = []
        self.solved: dict[float, tuple[Solution, float]] = {}

    def add_solved(self, lam: float, solution: Solution, build: float, lines: list[Line]) -> None:
        """A solve at ``lam``, with the solutions it saw (each an upper bound everywhere)."""
        self.solved[lam] = (solution, build)
        for line in lines:
            if not any(line.same(other) for other in self.lines):
                self.lines.append(line)

    def best_at(self, lam: float) -> Line:
        return min(self.lines, key=lambda line: line.at(lam))

    def lower_bound(self, lam: float) -> float:
        """The best bound at ``lam`` from the solved weights: ``V`` is nondecreasing (losses
        are >= 0) and concave, so a bound to the left and chords across ``lam`` hold."""
        bounds = {v: s.bound for v, (s, _) in self.solved.items() if s.bound is not None}
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

    def point(self, lam: float) -> SweepPoint:
        """The solve at ``lam``, or the best known solution with its concavity bound: proven
        optimal, unless the sweep was interrupted before it closed the gap."""
        if lam in self.solved:
            solution, build = self.solved[lam]
            return SweepPoint(
                lam,
                solution.scores,
                solution.objective,
                solution.bound,
                solution.status,
                build,
                solution,
            )
        line = self.best_at(lam)
        objective, bound = line.at(lam), self.lower_bound(lam)
        status = Status.OPTIMAL if self.gap(lam) <= self.mip_gap else Status.INTERRUPTED
        finite = min(bound, objective) if math.isfinite(bound) else None
        return SweepPoint(lam, line.scores, objective, finite, str(status), 0.0, None)
