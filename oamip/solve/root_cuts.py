"""Strengthen an importance MIP before branching: rounds of ideal ReLU cuts at the root.

Each round solves the continuous relaxation with the chosen backend, separates the most violated
ideal cut of every big-M unit (:mod:`oamip.formulations.ideal_cuts`) and adds them to the model.
The cuts are valid for the MIP, so the problem and its optimum are unchanged; only the
relaxation, and with it the bound the solver proves, gets tighter.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from oamip.backends import Backend, SolveOptions, Status, compile_model, relaxation
from oamip.formulations import ImportanceModel

ROOT_ROUNDS = 8
MIN_IMPROVEMENT = 1e-3
"""Stop adding rounds when the relaxation bound improves by less than this (relative)."""


@dataclass
class RootCutStats:
    """What the root rounds did: cuts added and the relaxation bound after each round."""

    rounds: int = 0
    cuts: int = 0
    bounds: list[float] = field(default_factory=list)
    seconds: float = 0.0


def add_root_cuts(
    im: ImportanceModel,
    solver: Backend,
    max_rounds: int = ROOT_ROUNDS,
    time_budget: float | None = None,
) -> RootCutStats:
    """Add rounds of ideal cuts at the relaxation's solutions until they stop paying off."""
    stats = RootCutStats()
    start = time.perf_counter()
    while stats.rounds < max_rounds:
        left = None if time_budget is None else time_budget - (time.perf_counter() - start)
        if left is not None and left <= 0:
            break
        bound, values = _relaxation(im, solver, left)
        if values is None:
            break
        stats.bounds.append(bound)
        if _stalled(stats.bounds):
            break
        added = im.add_ideal_cuts(values)
        stats.rounds += 1
        stats.cuts += added
        if added == 0:
            break
    stats.seconds = time.perf_counter() - start
    return stats


def _stalled(bounds: list[float]) -> bool:
    if len(bounds) < 2:
        return False
    return bounds[-1] - bounds[-2] < MIN_IMPROVEMENT * max(1.0, abs(bounds[-1]))


def _relaxation(im: ImportanceModel, solver: Backend, time_limit: float | None):
    """The relaxation's optimal value and every variable's value there (by global id)."""
    form = compile_model(im.model)
    options = SolveOptions(time_limit=time_limit)
    result = solver.solve_form(relaxation(form), options, warm_start=False)
    if result.status != Status.OPTIMAL or result.solution is None:
        return None, None
    cols = form.columns_of(im.table.variables, missing=-1)
    values = np.where(cols >= 0, result.solution[np.maximum(cols, 0)], 0.0)
    return result.objective, values
