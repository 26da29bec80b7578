"""The MIP encodes the network exactly: with scores fixed it reproduces PyTorch's logits, and
its bounds contain every value the network takes, whatever the scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oamip import backends
from oamip.adapters import apply_masks, extract, scored_logits
from oamip.bounds import interval_bounds
from oamip.formulations import ImportanceSettings, build_importance_model
from oamip.network import AffineLayer
from tests.nets import FunctionalNet, PoolFirstNet, convnet, deep_pool_net, mlp

SOLVE_ATOL = 1e-6

MODELS = {
    "mlp": (lambda seed: mlp(seed), (6,)),
    "mlp_bn": (lambda seed: mlp(seed, (6, 5, 5, 3), batchnorm=True), (6,)),
    "conv_max": (lambda seed: convnet(seed, pool="max"), (1, 8, 8)),
    "conv_avg": (lambda seed: convnet(seed, pool="avg"), (1, 8, 8)),
    "functional": (FunctionalNet, (1, 6, 6)),
    "pool_first": (PoolFirstNet, (1, 8, 8)),
    "deep_pool": (deep_pool_net, (1, 6, 6)),
}
slow = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _setup(kind: str, seed: int, n: int):
    build, shape = MODELS[kind]
    model = build(seed)
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, size=(n, *shape))
    extracted = extract(model, x)
    return model, x, extracted


def _random_scores(extracted, rng, binary: bool) -> dict[int, np.ndarray]:
    out = {}
    for i in extracted.network.scored:
        n = extracted.network.layers[i].n_units
        out[i] = rng.integers(0, 2, n).astype(float) if binary else rng.uniform(0, 1, n)
    return out


@slow
@given(
    kind=st.sampled_from(sorted(MODELS)),
    seed=st.integers(0, 10_000),
    n=st.integers(1, 3),
    binary=st.booleans(),
    loss=st.sampled_from(["hinge", "ce"]),
)
def test_fixed_scores_reproduce_masked_torch_logits(kind, seed, n, binary, loss):
    _check_fixed_scores(kind, seed, n, binary, loss)


@pytest.mark.parametrize("encoding", ["tight", "big-m"])
@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("kind", sorted(MODELS))
def test_every_layer_kind_is_encoded_exactly(kind, binary, encoding):
    """Both encodings: ours, and the textbook big-M one the benchmarks compare with (a ReLU
    binary on every unit, max pooling over the ReLUs' outputs)."""
    _check_fixed_scores(kind, 1, 2, binary, "hinge", encoding)


def _check_fixed_scores(kind, seed, n, binary, loss, encoding="tight"):
    model, x, extracted = _setup(kind, seed, n)
    y = np.random.default_rng(seed + 1).integers(0, 3, n)
    mode = "binary" if binary else "continuous"
    im = build_importance_model(
        extracted.network,
        x,
        y,
        ImportanceSettings(loss, scores=mode, min_keep=0, encoding=encoding),
    )
    scores = _random_scores(extracted, np.random.default_rng(seed + 2), binary)
    im.fix_scores(scores)
    result = backends.get("highs").solve(im.model)
    assert result.status == "optimal"
    expected = scored_logits(extracted, x, extracted.scores_by_name(scores), im.big_m)
    np.testing.assert_allclose(im.logit_values(), expected, atol=SOLVE_ATOL)
    if binary:
        masks = {k: v > 0.5 for k, v in extracted.scores_by_name(scores).items()}
        with torch.no_grad():
            pruned = apply_masks(model, masks).double()(torch.as_tensor(x)).numpy()
        np.testing.assert_allclose(pruned, expected, atol=1e-9)


@slow
@given(kind=st.sampled_from(sorted(MODELS)), seed=st.integers(0, 10_000), n=st.integers(1, 4))
def test_bounds_contain_every_value_for_every_score_vector(kind, seed, n):
    _, x, extracted = _setup(kind, seed, n)
    network = extracted.network
    bounds = interval_bounds(network, network.check_input(x))
    rng = np.random.default_rng(seed)
    for binary in (True, False, False):
        trace = network.trace(x, _random_scores(extracted, rng, binary), bounds.big_m)
        for layer, values, b in zip(network.layers, trace, bounds.layers):
            seen = values.pre if isinstance(layer, AffineLayer) else values.out
            assert np.all(seen >= b.lower - 1e-9)
            assert np.all(seen <= b.upper + 1e-9)


def test_unscored_network_matches_torch_forward():
    model, x, extracted = _setup("functional", 3, 4)
    with torch.no_grad():
        expected = model.eval().double()(torch.as_tensor(x)).numpy()
    np.testing.assert_allclose(extracted.network.forward(x), expected, atol=1e-10)


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_all_ones_assignment_is_feasible(kind):
    """The trained network (every score 1) is a feasible point of the MIP: the warm start."""
    _, x, extracted = _setup(kind, 0, 2)
    im = build_importance_model(extracted.network, x, np.array([0, 1]))
    im.assign(im.all_ones())
    form = backends.compile_model(im.model)
    values = form.start_values()
    assert np.all(values >= form.col_lower - 1e-9) and np.all(values <= form.col_upper + 1e-9)
    activity = form.A @ values
    assert np.all(activity >= form.row_lower - 1e-7) and np.all(activity <= form.row_upper + 1e-7)
