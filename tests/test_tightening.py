"""LP-based bound tightening: tighter bounds that still hold for every score vector, and the
same optimum."""

from __future__ import annotations

import numpy as np
import pytest

from oamip import backends
from oamip.adapters import extract
from oamip.bounds import interval_bounds
from oamip.errors import InvalidInputError
from oamip.formulations import ImportanceSettings, build_importance_model
from oamip.network import AffineLayer
from oamip.solve.tightening import tighten_bounds
from tests.nets import convnet, mlp


def _setup(seed: int = 0):
    model = mlp(seed, (6, 6, 5, 4, 3))
    x = np.random.default_rng(seed).uniform(size=(3, 6))
    y = np.array([0, 1, 2])
    return model, x, y, extract(model, x).network


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tightened_bounds_hold_for_every_score_vector_and_keep_M(seed):
    _, x, y, network = _setup(seed)
    plain = interval_bounds(network, x)
    result = tighten_bounds(network, x, y, time_budget=30)
    assert result.entries and result.lps > 0
    rng = np.random.default_rng(seed)
    for _ in range(200):
        binary = rng.random() < 0.5
        scores = {
            i: (
                rng.integers(0, 2, network.layers[i].n_units)
                if binary
                else rng.uniform(0, 1, network.layers[i].n_units)
            ).astype(float)
            for i in network.scored
        }
        trace = network.trace(x, scores, plain.big_m)
        for layer, values, b in zip(network.layers, trace, result.bounds.layers):
            seen = values.pre if isinstance(layer, AffineLayer) else values.out
            assert np.all(seen >= b.lower - 1e-9) and np.all(seen <= b.upper + 1e-9)
    for tight, loose in zip(result.bounds.layers, plain.layers):
        assert np.all(tight.lower >= loose.lower) and np.all(tight.upper <= loose.upper)
    for i, m in plain.big_m.items():
        np.testing.assert_array_equal(result.bounds.big_m[i], m)


def test_deeper_layers_get_tighter():
    _, x, y, network = _setup(0)
    result = tighten_bounds(network, x, y, time_budget=30)
    assert result.width_after[2] < result.width_before[2]


def test_the_layer_after_the_first_scored_one_is_already_exact():
    """Its interval bounds are exact over the first layer's box: the LPs cannot move them."""
    _, x, y, network = _setup(1)
    result = tighten_bounds(network, x, y, time_budget=30, layers=[1])
    assert result.width_after[1] == pytest.approx(result.width_before[1], rel=1e-5)


@pytest.mark.parametrize("scores", ["binary", "continuous"])
def test_the_optimum_does_not_change(scores):
    model = convnet(3, channels=(1, 2, 2), size=6)
    x = np.random.default_rng(3).uniform(size=(2, 1, 6, 6))
    y = np.array([0, 2])
    network = extract(model, x).network
    settings = ImportanceSettings("hinge", lam=1.0, scores=scores)
    tight = tighten_bounds(network, x, y, settings, time_budget=30)
    assert tight.entries
    optima = []
    for bounds in (None, tight.bounds):
        im = build_importance_model(network, x, y, settings, bounds)
        result = backends.get("highs").solve(im.model, backends.SolveOptions(mip_gap=1e-9))
        assert result.status == "optimal"
        optima.append(result.objective)
    assert optima[1] == pytest.approx(optima[0], abs=1e-7)


def test_bad_arguments_are_refused():
    _, x, y, network = _setup(0)
    with pytest.raises(InvalidInputError, match="time_budget"):
        tighten_bounds(network, x, y, time_budget=0)
    with pytest.raises(InvalidInputError, match="not an affine layer"):
        tighten_bounds(network, x, y, layers=[17])


def test_the_budget_is_respected():
    _, x, y, network = _setup(0)
    result = tighten_bounds(network, x, y, time_budget=1e-4)
    assert result.seconds < 5.0


def test_every_lp_backend_gives_the_same_ranges():
    """The default ``column_ranges`` (one LP per bound) agrees with HiGHS's re-solves."""
    _, x, y, network = _setup(0)
    highs = tighten_bounds(network, x[:1], y[:1], time_budget=30, layers=[2])
    for name in sorted(set(backends.available()) - {"highs"}):
        other = tighten_bounds(network, x[:1], y[:1], time_budget=60, layers=[2], backend=name)
        for a, b in zip(highs.bounds.layers, other.bounds.layers):
            np.testing.assert_allclose(a.lower, b.lower, atol=1e-5)
            np.testing.assert_allclose(a.upper, b.upper, atol=1e-5)
