"""``score_sweep``: one model for many loss weights, each result as good as a fresh solve."""

from __future__ import annotations

import numpy as np
import pytest

import oamip
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
