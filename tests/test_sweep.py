"""``score_sweep``: one model for many loss weights, each result as good as a fresh solve."""

from __future__ import annotations

import numpy as np
import pytest

import oamip
from oamip.adapters import extract
from oamip.formulations import ImportanceSettings, build_importance_model
from oamip.solve import sweep as solve_sweep
from tests.nets import mlp


def test_sweep_matches_independent_solves_at_every_lam():
    model = mlp(31, (6, 6, 5, 3))
    x = np.random.default_rng(31).uniform(size=(6, 6))
    y = np.array([0, 1, 2, 0, 1, 2])
    lams = [0.2, 1.0, 5.0]
    sweep = oamip.score_sweep(model, x, y, lams, loss="ce", scores="binary", mip_gap=1e-9)
    for lam, res in zip(lams, sweep):
        alone = oamip.score_neurons(model, x, y, loss="ce", lam=lam, scores="binary", mip_gap=1e-9)
        assert res.status == alone.status == "optimal"
        assert res.objective == pytest.approx(alone.objective, abs=1e-6)
    assert sweep[0].model is sweep[-1].model


def test_an_empty_sweep_is_refused():
    with pytest.raises(oamip.InvalidInputError, match="lams is empty"):
        oamip.score_sweep(mlp(0), np.zeros((1, 6)), [0], [])


def test_weights_between_solves_with_one_optimal_mask_are_proven_without_a_solve():
    """Concavity of the optimal value in lam: a fine sweep needs a solve only near the
    weights where the optimal mask changes, and every result matches a fresh solve."""
    model = mlp(0, (6, 6, 5, 3))
    x = np.random.default_rng(0).uniform(size=(6, 6))
    y = np.array([0, 1, 2, 0, 1, 2])
    lams = np.round(np.geomspace(0.05, 20.0, 12), 4).tolist()
    common = dict(loss="hinge", scores="binary", mip_gap=1e-9)
    sweep = oamip.score_sweep(model, x, y, lams, **common)
    proven = [r for r in sweep if r.by_concavity]
    assert proven, "some weights should be proven from their neighbours"
    assert len({sum(int(m.sum()) for m in r.masks().values()) for r in sweep}) > 1
    for lam, res in zip(lams, sweep):
        alone = oamip.score_neurons(model, x, y, lam=lam, **common)
        assert res.status == "optimal"
        assert res.objective == pytest.approx(alone.objective, abs=1e-7)
        assert res.bound <= alone.objective + 1e-7
        assert res.objective - res.bound <= 1e-9 * abs(res.objective) + 1e-12
    for res in proven:
        assert res.solve_seconds == 0.0 and res.logit_error < 1e-9


def _net(seed: int):
    model = mlp(seed, (6, 6, 5, 3))
    x = np.random.default_rng(seed).uniform(size=(6, 6))
    return model, x, np.array([0, 1, 2, 0, 1, 2])


def test_later_solves_start_from_local_search_around_the_solutions_known(monkeypatch):
    """Greedy removal from the trained network runs once; every later solve starts from local
    search around each solution known (deduplicated), never from anything worse than them."""
    model, x, y = _net(31)
    greedy, searched = [], {}
    warm_start_scores, local_search = solve_sweep.warm_start_scores, solve_sweep.local_search

    def counting(im, budget):
        greedy.append(im.settings.lam)
        return warm_start_scores(im, budget)

    def recording(im, scores, budget):
        searched.setdefault(im.settings.lam, []).append(scores)
        return local_search(im, scores, budget)

    monkeypatch.setattr(solve_sweep, "warm_start_scores", counting)
    monkeypatch.setattr(solve_sweep, "local_search", recording)
    lams = [0.2, 1.0, 5.0]
    sweep = oamip.score_sweep(model, x, y, lams, loss="hinge", scores="binary", mip_gap=1e-9)
    assert greedy == [0.2]
    solved = [lam for lam, r in zip(lams, sweep) if not r.by_concavity]
    assert sorted(searched) == solved[1:]
    extracted = extract(model, x)
    first = extracted.scores_by_layer(sweep[0].scores)
    im = build_importance_model(
        extracted.network, x, y, ImportanceSettings("hinge", scores="binary")
    )
    for lam, starts in searched.items():
        im.set_lam(lam)
        keys = [tuple(np.concatenate(list(s.values()))) for s in starts]
        assert len(set(keys)) == len(keys), "each solution known is searched from once"
        assert any(all(np.array_equal(s[i], first[i]) for i in s) for s in starts)
        best = min(im.objective_at(s) for s in starts)
        assert sweep[lams.index(lam)].start_objective <= best + 1e-12


def test_a_fractional_solution_known_is_kept_as_start_when_local_search_cannot_beat_it():
    """With continuous scores a solved weight may leave a fractional solution better than
    every binary one; local search needs binary scores, so the start is the better of both."""
    model, x, y = _net(3)
    common = dict(loss="hinge", lam=1.0, mip_gap=1e-9)
    fractional = oamip.score_neurons(model, x, y, **common)
    binary = oamip.score_neurons(model, x, y, scores="binary", **common)
    assert fractional.objective < binary.objective - 1e-4
    extracted = extract(model, x)
    im = build_importance_model(extracted.network, x, y, ImportanceSettings("hinge", lam=1.0))
    sweep = solve_sweep._Known([1.0], 1e-9)
    binary_line = solve_sweep._line(im, extracted.scores_by_layer(binary.scores))
    sweep.add_solved(0.5, binary, 0.0, [binary_line])
    assert im.objective_at(solve_sweep._start(im, sweep, 1.0, 1.0)) <= binary.objective + 1e-9
    fractional_line = solve_sweep._line(im, extracted.scores_by_layer(fractional.scores))
    sweep.add_solved(2.0, fractional, 0.0, [fractional_line])
    start = solve_sweep._start(im, sweep, 1.0, 1.0)
    assert im.objective_at(start) == pytest.approx(fractional.objective, abs=1e-9)
