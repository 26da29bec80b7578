"""The SPR layer models (oamip.formulations.spr): closed forms, bounds and backend refusals."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import lsq_linear

from oamip import backends
from oamip.errors import CapabilityError, InvalidInputError
from oamip.formulations.spr import SPRParams, build_spr_model, reconstruction_loss
from oamip.training.spr import penalty

PARAMS = SPRParams(a=0.5, b=1.0, M=1.5)
TIGHT = backends.SolveOptions(mip_gap=1e-8)


def layer_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """8 samples, 3 inputs, 3 units: a strong, a weak and a near-dead unit, plus noise."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(8, 3))
    W_true = np.array([[1.0, -0.8, 0.5], [0.3, 0.2, -0.1], [0.02, 0.0, 0.01]])
    return X, X @ W_true.T + 0.05 * rng.normal(size=(8, 3))


@pytest.fixture(scope="module")
def scip():
    if "scip" not in backends.available():
        pytest.skip("the SCIP backend is not available")
    return backends.get("scip")


def solve(backend, perspective: bool, relaxed: bool, params: SPRParams = PARAMS):
    X, Y = layer_data()
    spr = build_spr_model(X, Y, params, perspective=perspective, relaxed=relaxed)
    result = backend.solve(spr.model, TIGHT)
    assert result.status == backends.Status.OPTIMAL
    return spr, result


def test_highs_solves_the_big_m_relaxation_in_closed_form():
    spr, result = solve(backends.get("highs"), perspective=False, relaxed=True)
    X, Y = layer_data()
    W = spr.weights()
    ni = np.abs(W).max(axis=1)
    np.testing.assert_allclose(spr.keep(), ni / PARAMS.M, atol=1e-7)
    big_m_penalty = PARAMS.a * (W * W).sum(axis=1) + PARAMS.b * ni / PARAMS.M
    expected = reconstruction_loss(W, X, Y) + big_m_penalty.sum()
    assert result.objective == pytest.approx(expected, rel=1e-7)


@pytest.mark.parametrize(
    ("perspective", "relaxed", "missing"),
    [
        (False, False, "mixed_integer_quadratic"),
        (True, False, "quadratic_constraints"),
        (True, True, "quadratic_constraints"),
    ],
)
def test_highs_refuses_models_it_cannot_solve(perspective, relaxed, missing):
    X, Y = layer_data()
    spr = build_spr_model(X, Y, PARAMS, perspective=perspective, relaxed=relaxed)
    with pytest.raises(CapabilityError, match=missing):
        backends.get("highs").solve(spr.model)
    assert all(v.value == 0.0 for v in spr.W.values())


def test_models_have_the_documented_variables():
    X, Y = layer_data()
    mip = build_spr_model(X, Y, PARAMS, perspective=True, relaxed=False)
    relaxation = build_spr_model(X, Y, PARAMS, perspective=False, relaxed=True)
    assert mip.shape == relaxation.shape == (3, 3)
    assert all(v.is_binary() for v in mip.z.values())
    assert not any(v.is_integer() for v in relaxation.z.values())
    assert len(mip.t) == 3 and relaxation.t is None
    assert all(v.bounds == (-1.5, 1.5) for v in mip.W.values())


def test_params_from_lam_alpha_and_validation():
    assert SPRParams.from_lam_alpha(2.0, 0.25, 1.0) == SPRParams(a=0.5, b=1.5, M=1.0)
    with pytest.raises(InvalidInputError, match="alpha"):
        SPRParams.from_lam_alpha(1.0, -0.1, 1.0)
    with pytest.raises(InvalidInputError, match="M > 0"):
        SPRParams(a=1.0, b=1.0, M=0.0)
    with pytest.raises(InvalidInputError, match="same N"):
        build_spr_model(np.zeros((4, 2)), np.zeros((3, 2)), PARAMS)


def test_perspective_relaxation_optimum_is_loss_plus_penalty(scip):
    spr, result = solve(scip, perspective=True, relaxed=True)
    X, Y = layer_data()
    W = spr.weights()
    closed_form = reconstruction_loss(W, X, Y) + penalty(W, PARAMS.a, PARAMS.b, PARAMS.M)
    assert result.objective == pytest.approx(closed_form, rel=1e-6)


def test_perspective_relaxation_is_tighter_than_big_m(scip):
    _, big_m = solve(backends.get("highs"), perspective=False, relaxed=True)
    _, persp = solve(scip, perspective=True, relaxed=True)
    assert persp.bound >= big_m.objective + 1e-3


def best_subset_value(params: SPRParams) -> float:
    """The MIP optimum by brute force: units are independent, so keep each one iff it pays."""
    X, Y = layer_data()
    stacked = np.vstack([X, np.sqrt(params.a) * np.eye(X.shape[1])])
    total = 0.0
    for y in Y.T:
        target = np.concatenate([y, np.zeros(X.shape[1])])
        fit = lsq_linear(stacked, target, bounds=(-params.M, params.M), tol=1e-12)
        total += min(float(y @ y), 2 * fit.cost + params.b)
    return total


@pytest.mark.parametrize("perspective", [False, True])
def test_mips_reach_the_best_subset(scip, perspective):
    spr, result = solve(scip, perspective=perspective, relaxed=True)
    relaxation = result.objective
    spr, result = solve(scip, perspective=perspective, relaxed=False)
    assert result.objective == pytest.approx(best_subset_value(PARAMS), rel=1e-6)
    assert result.objective >= relaxation - 1e-6
    assert set(spr.keep().tolist()) <= {0.0, 1.0}
