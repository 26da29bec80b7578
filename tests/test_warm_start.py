"""The greedy incumbent: feasible, never worse than the trained network, never below the optimum."""

from __future__ import annotations

import numpy as np

import oamip
from oamip.adapters import extract
from oamip.formulations import ImportanceSettings, build_importance_model
from oamip.formulations.warm_start import greedy_scores
from tests.nets import mlp


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
    assert best.start_objective == im.objective_at(start)


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
