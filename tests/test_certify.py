"""The certificate (oamip.solve.loop.certify): a solver's claims are checked against the exact
objective of its scores and every feasible point known, never taken on trust."""

from __future__ import annotations

import threading
from dataclasses import replace

import numpy as np
import pytest

from oamip import backends
from oamip.adapters import extract
from oamip.backends import SolveOptions, SolveResult, Status, compile_model
from oamip.formulations import ImportanceSettings, build_importance_model
from oamip.solve.loop import FEASIBLE, STALL_ROUNDS, certify, solve_certified
from tests.nets import mlp


@pytest.fixture
def im():
    model = mlp(3, (5, 4, 3, 3))
    x = np.random.default_rng(3).uniform(0, 1, size=(4, 5))
    network = extract(model, x).network
    settings = ImportanceSettings(loss="hinge", lam=2.0, scores="binary")
    return build_importance_model(network, x, np.array([0, 1, 2, 0]), settings)


def _answer(im, scores, status=Status.OPTIMAL, objective=None, bound=None) -> SolveResult:
    """A solver's answer holding ``scores`` (the model's variables set to them)."""
    im.assign(scores)
    form = compile_model(im.model)
    exact = im.objective_at(scores)
    objective = exact if objective is None else objective
    return SolveResult(
        backend="test",
        status=status,
        objective=objective,
        bound=objective if bound is None else bound,
        seconds=0.0,
        solution=form.start_values(),
    )


def _start(im):
    """A feasible start better than keeping every unit: one unit kept per layer."""
    return {i: np.eye(1, len(ids))[0] for i, ids in im.score_ids.items()}


def test_a_worse_answer_than_the_start_keeps_the_start_and_drops_its_bound(im):
    start, everything = _start(im), im.all_ones()
    assert im.objective_at(start) < im.objective_at(everything)
    result = _answer(im, everything)
    solution = certify(im, result, start, (), 1e-4)
    assert solution.kept_start
    assert solution.objective == pytest.approx(im.objective_at(start))
    assert solution.bound is None
    assert solution.status == FEASIBLE
    assert "above a known feasible objective" in solution.note


def test_a_claimed_optimum_below_the_exact_objective_is_not_proven(im):
    """HiGHS's presolve-offset case: optimal at a value its own scores do not reach."""
    start = _start(im)
    exact = im.objective_at(start)
    result = _answer(im, start, objective=exact - 0.25, bound=exact - 0.25)
    solution = certify(im, result, start, (), 1e-4)
    assert solution.status == FEASIBLE
    assert solution.objective == pytest.approx(exact)
    assert solution.bound == pytest.approx(exact - 0.25)
    assert "do not prove" in solution.note


def test_a_solver_that_gives_up_on_a_feasible_problem_returns_the_start(im):
    start = _start(im)
    result = SolveResult("test", Status.ERROR, None, 123.0, 0.0)
    solution = certify(im, result, start, (), 1e-4)
    assert solution.status == FEASIBLE and solution.bound is None
    assert solution.objective == pytest.approx(im.objective_at(start))


def test_a_bound_above_another_known_point_is_dropped(im):
    start = _start(im)
    exact = im.objective_at(start)
    result = _answer(im, start)
    solution = certify(im, result, start, (exact - 1.0,), 1e-4)
    assert solution.bound is None and solution.status == FEASIBLE


def test_an_answer_whose_bound_proves_it_is_optimal(im):
    start = _start(im)
    exact = im.objective_at(start)
    solution = certify(im, _answer(im, start, bound=exact - 1e-9), start, (), 1e-4)
    assert solution.status == str(Status.OPTIMAL)
    assert solution.bound <= solution.objective


def test_logits_that_disagree_with_the_exact_forward_pass_void_the_bound(im, monkeypatch):
    start = _start(im)
    result = _answer(im, start)
    real = im.logit_values
    monkeypatch.setattr(im, "logit_values", lambda: real() + 1.0)
    solution = certify(im, result, start, (), 1e-4)
    assert solution.bound is None and not solution.logits_agree
    assert solution.status == FEASIBLE


def test_the_cut_loop_stops_when_its_cuts_make_no_progress(monkeypatch):
    """Cuts that change nothing (a backend ignoring them) end the loop after STALL_ROUNDS, even
    without a time limit, with an honest status."""
    model = mlp(4, (5, 4, 3, 3))
    x = np.random.default_rng(4).uniform(0, 1, size=(4, 5))
    network = extract(model, x).network
    settings = ImportanceSettings(loss="ce", lam=2.0, scores="binary")
    im = build_importance_model(network, x, np.array([0, 1, 2, 0]), settings)
    monkeypatch.setattr(im, "add_cuts", lambda points, samples: None)
    calls = []
    solver = backends.get("highs")
    real = solver.solve

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(solver, "solve", counting)
    im.table.set_values(im.loss_ids, np.zeros(len(im.loss_ids)))
    solution = solve_certified(solver, im, SolveOptions(), None, _start(im))
    assert len(calls) <= 3 * (STALL_ROUNDS + 2)
    assert solution.objective == pytest.approx(im.objective_at(solution.scores))
    assert solution.bound is None or solution.bound <= solution.objective


def test_a_cut_round_stopped_before_its_own_bound_keeps_the_bound_of_the_round_before(
    monkeypatch,
):
    """Ctrl-C in the second cut round, before the solver has a bound: the first round's
    proven optimum still bounds the exact loss, so the interrupted answer keeps it."""
    model = mlp(4, (5, 4, 3, 3))
    x = np.random.default_rng(4).uniform(0, 1, size=(4, 5))
    network = extract(model, x).network
    settings = ImportanceSettings(loss="ce", lam=2.0, scores="binary")
    im = build_importance_model(network, x, np.array([0, 1, 2, 0]), settings)
    solver = backends.get("highs")
    real, rounds = solver.solve, []
    stop = threading.Event()

    def stopped_in_round_two(model, options, warm_start):
        rounds.append(real(model, options, warm_start))
        if len(rounds) == 1:
            return rounds[0]
        stop.set()
        return replace(rounds[-1], status=Status.INTERRUPTED, bound=None)

    monkeypatch.setattr(solver, "solve", stopped_in_round_two)
    solution = solve_certified(solver, im, SolveOptions(stop=stop), None, _start(im))
    assert len(rounds) == 2 and rounds[0].status == Status.OPTIMAL
    assert solution.status == str(Status.INTERRUPTED)
    assert solution.bound == pytest.approx(min(rounds[0].bound, solution.objective))
    assert solution.objective == pytest.approx(im.objective_at(solution.scores))
