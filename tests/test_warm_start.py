"""The warm start: greedy removal and local search give feasible binary scores, never worse than
where they start and never below the optimum; the batched evaluation of moves is exact."""

from __future__ import annotations

import numpy as np
import pytest

import oamip
from oamip.adapters import extract
from oamip.formulations import ImportanceSettings, build_importance_model
from oamip.solve import warm_start
from oamip.solve.warm_start import (
    _evaluate,
    _flips,
    _kick,
    _swaps,
    greedy_scores,
    local_search,
    warm_start_scores,
)
from tests.nets import convnet, mlp


def test_greedy_scores_are_binary_feasible_and_between_optimum_and_trained_network():
    model = mlp(21, (6, 6, 5, 3))
    x = np.random.default_rng(21).uniform(size=(6, 6))
    y = np.array([0, 1, 2, 0, 1, 2])
    extracted = extract(model, x)
    settings = ImportanceSettings("hinge", lam=1.0, scores="binary", min_keep=2)
    im = build_importance_model(extracted.network, x, y, settings)
    start = greedy_scores(im)
    assert all(set(np.unique(s)) <= {0.0, 1.0} and s.sum() >= 2 for s in start.values())
    assert im.objective_at(start) <= im.objective_at(im.all_ones())
    best = oamip.score_neurons(
        model, x, y, loss="hinge", lam=1.0, scores="binary", min_keep=2, mip_gap=1e-9
    )
    assert best.objective <= im.objective_at(start) + 1e-9


def test_per_sample_scores_match_one_forward_per_score_vector():
    model = mlp(22, (5, 4, 4, 3))
    x = np.random.default_rng(22).uniform(size=(3, 5))
    network = extract(model, x).network
    im = build_importance_model(network, x, np.array([0, 1, 2]))
    rng = np.random.default_rng(0)
    vectors = [{i: rng.uniform(size=len(s)) for i, s in im.score_ids.items()} for _ in range(4)]
    rows = {i: np.repeat(np.stack([v[i] for v in vectors]), len(x), axis=0) for i in im.score_ids}
    batched = network.forward(np.concatenate([x] * 4), rows, im.big_m)
    single = np.concatenate([network.forward(x, v, im.big_m) for v in vectors])
    np.testing.assert_allclose(batched, single, atol=1e-12)


def _problem(model, x, y, loss="hinge", min_keep=1):
    network = extract(model, x).network
    settings = ImportanceSettings(loss, lam=1.0, scores="binary", min_keep=min_keep)
    return build_importance_model(network, x, y, settings)


def _one_at_a_time(im, scores, moves):
    values = []
    for layer, off, on in moves:
        changed = {i: s.copy() for i, s in scores.items()}
        if off >= 0:
            changed[layer][off] = 0.0
        if on >= 0:
            changed[layer][on] = 1.0
        values.append(im.objective_at(changed))
    return np.array(values)


@pytest.mark.parametrize("max_values", [warm_start.MAX_VALUES, 1])
def test_batched_move_values_equal_one_forward_per_move(max_values, monkeypatch):
    """Moves are valued many at a time, each layer's from the current trace: the values must
    be those of the full forward pass of each changed score vector (MLP and conv layers; in
    one batch, and one move per batch)."""
    monkeypatch.setattr(warm_start, "MAX_VALUES", max_values)
    rng = np.random.default_rng(3)
    for model, x in (
        (mlp(23, (6, 5, 4, 3)), rng.uniform(size=(4, 6))),
        (convnet(24), rng.uniform(size=(4, 1, 8, 8))),
    ):
        im = _problem(model, x, np.array([0, 1, 2, 0]), loss="ce")
        ones = im.all_ones()
        scores = {i: rng.integers(0, 2, size=len(s)).astype(float) for i, s in ones.items()}
        for s in scores.values():
            s[0] = 1.0
        moves = _flips(scores, 1) + _swaps(scores, 1)
        batched = _evaluate(im, scores, moves, deadline=float("inf"))
        np.testing.assert_allclose(batched, _one_at_a_time(im, scores, moves), atol=1e-12)


def test_local_search_ends_at_a_local_optimum_no_worse_than_its_start():
    model = mlp(25, (6, 8, 6, 3))
    x = np.random.default_rng(25).uniform(size=(6, 6))
    im = _problem(model, x, np.array([0, 1, 2, 0, 1, 2]), min_keep=2)
    start = greedy_scores(im)
    found = local_search(im, start, time_budget=60.0)
    assert all(set(np.unique(s)) <= {0.0, 1.0} and s.sum() >= 2 for s in found.values())
    value = im.objective_at(found)
    assert value <= im.objective_at(start)
    neighbours = _one_at_a_time(im, found, _flips(found, 2) + _swaps(found, 2))
    assert neighbours.min() >= value - 1e-12
    assert all(np.array_equal(start[i], greedy_scores(im)[i]) for i in start)


def test_warm_start_is_reproducible_and_never_below_the_optimum():
    model = mlp(26, (5, 6, 5, 3))
    x = np.random.default_rng(26).uniform(size=(6, 5))
    y = np.array([0, 1, 2, 0, 1, 2])
    im = _problem(model, x, y)
    first = warm_start_scores(im, time_budget=60.0, seed=4)
    again = warm_start_scores(im, time_budget=60.0, seed=4)
    assert all(np.array_equal(first[i], again[i]) for i in first)
    best = oamip.score_neurons(model, x, y, loss="hinge", lam=1.0, scores="binary", mip_gap=1e-9)
    assert best.objective <= im.objective_at(first) + 1e-9
    assert best.start_objective == im.objective_at(warm_start_scores(im, 10.0))


def test_a_kick_flips_at_most_three_units_and_keeps_min_keep():
    rng = np.random.default_rng(0)
    for _ in range(50):
        scores = {0: rng.integers(0, 2, size=6).astype(float), 2: np.array([1.0, 1.0, 0.0])}
        scores[0][:2] = 1.0
        kicked = _kick(scores, rng, keep=2)
        assert all(kicked[i].sum() >= 2 for i in scores)
        assert sum(int((kicked[i] != scores[i]).sum()) for i in scores) <= 3
        assert all(set(np.unique(kicked[i])) <= {0.0, 1.0} for i in scores)


def test_local_search_refuses_fractional_scores():
    im = _problem(mlp(27, (5, 4, 3)), np.random.default_rng(27).uniform(size=(3, 5)), [0, 1, 2])
    scores = im.all_ones()
    scores[0][0] = 0.5
    with pytest.raises(oamip.InvalidInputError, match="binary scores"):
        local_search(im, scores)
