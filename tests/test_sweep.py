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
