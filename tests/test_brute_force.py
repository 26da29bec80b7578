"""On tiny networks, the binary-score optimum equals the enumeration of every mask, with the
objective computed by PyTorch on the pruned model."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.special import logsumexp

import oamip
from oamip.adapters import extract, scored_logits
from oamip.bounds import interval_bounds
from tests.nets import convnet, deep_pool_net, mlp


def _pruned_logits(model, x, masks) -> np.ndarray:
    with torch.no_grad():
        return oamip.apply_masks(model, masks).double()(torch.as_tensor(x)).numpy()


def _enumerate_objectives(model, x, y, sizes, loss: str, lam: float) -> np.ndarray:
    """Every mask's objective, by one batched PyTorch forward with docs/mathematics.md (1) hooks
    (the exactness tests show this equals the forward of ``apply_masks``)."""
    masks = list(_all_masks(sizes, 1))
    extracted = extract(model, x)
    big_m = interval_bounds(extracted.network, x).big_m
    repeated = np.concatenate([x] * len(masks))
    scores = {n: np.repeat(np.stack([m[n] for m in masks]), len(x), axis=0) for n in sizes}
    z = scored_logits(extracted, repeated, scores, big_m).reshape(len(masks), len(x), -1)
    dense = _dense_logits(model, x, sizes)
    return np.array([_objective(z[i], y, m, loss, lam, dense) for i, m in enumerate(masks)])


def _dense_logits(model, x, sizes: dict[str, int]) -> np.ndarray:
    return _pruned_logits(model, x, {name: np.ones(n, dtype=bool) for name, n in sizes.items()})


def _objective(z, y, masks, loss: str, lam: float, dense=None, margin: float = 1.0) -> float:
    true = z[np.arange(len(y)), y]
    if loss == "fidelity":
        losses = np.abs(z - dense).max(axis=1)
    elif loss == "hinge":
        other = z.copy()
        other[np.arange(len(y)), y] = -np.inf
        losses = np.maximum(0.0, margin + other.max(axis=1) - true)
    else:
        losses = logsumexp(z, axis=1) - true
    sparsity = sum(m.sum() / len(m) for m in masks.values())
    return float(sparsity + lam * losses.mean())


def _all_masks(sizes: dict[str, int], min_keep: int):
    names = list(sizes)
    per_layer = [
        [
            np.array(bits, dtype=bool)
            for bits in itertools.product([0, 1], repeat=sizes[n])
            if sum(bits) >= min_keep
        ]
        for n in names
    ]
    for combo in itertools.product(*per_layer):
        yield dict(zip(names, combo))


CASES = [
    ("mlp", "hinge", 1.0, 0),
    ("mlp", "ce", 2.0, 1),
    ("mlp", "ce", 0.3, 2),
    ("mlp_bn", "hinge", 3.0, 3),
    ("conv", "ce", 1.0, 4),
    ("conv", "hinge", 0.5, 5),
    ("deep_pool", "ce", 1.0, 6),
    ("deep_pool", "hinge", 2.0, 7),
    ("mlp", "fidelity", 1.0, 8),
    ("mlp_bn", "fidelity", 0.3, 9),
    ("conv", "fidelity", 2.0, 10),
    ("deep_pool", "fidelity", 0.5, 11),
]


@pytest.mark.parametrize("root_cuts", [0, 3])
@pytest.mark.parametrize(("kind", "loss", "lam", "seed"), CASES)
def test_binary_optimum_equals_enumeration_over_all_masks(kind, loss, lam, seed, root_cuts):
    rng = np.random.default_rng(seed)
    if kind == "conv":
        model = convnet(seed, channels=(1, 2, 2), size=6)
        x = rng.uniform(0, 1, size=(3, 1, 6, 6))
    elif kind == "deep_pool":
        model = deep_pool_net(seed)
        x = rng.uniform(0, 1, size=(3, 1, 6, 6))
    else:
        model = mlp(seed, (5, 4, 3, 3), batchnorm=kind == "mlp_bn")
        x = rng.uniform(0, 1, size=(4, 5))
    y = rng.integers(0, 3, len(x))
    res = assert_binary_optimum(model, x, y, loss, lam, root_cuts)
    assert res.bound <= res.objective + 1e-6


def assert_binary_optimum(model, x, y, loss: str, lam: float, root_cuts: int):
    """The binary MIP's optimum equals the best of every mask enumerated, and its own mask's
    pruned forward pass gives that objective; the result."""
    res = oamip.score_neurons(
        model, x, y, loss=loss, lam=lam, scores="binary", mip_gap=1e-9, root_cuts=root_cuts
    )
    assert res.status == "optimal"
    sizes = {name: len(s) for name, s in res.scores.items()}
    best = _enumerate_objectives(model, x, y, sizes, loss, lam).min()
    assert res.objective == pytest.approx(best, abs=1e-6)
    found = {name: s > 0.5 for name, s in res.scores.items()}
    dense = _dense_logits(model, x, sizes)
    pruned = _objective(_pruned_logits(model, x, found), y, found, loss, lam, dense)
    assert pruned == pytest.approx(res.objective, abs=1e-9)
    return res


def test_continuous_optimum_is_at_most_the_binary_one():
    model = mlp(7, (5, 4, 3, 3))
    x = np.random.default_rng(7).uniform(0, 1, size=(4, 5))
    y = np.array([0, 1, 2, 0])
    binary = oamip.score_neurons(model, x, y, loss="hinge", lam=1.0, scores="binary", mip_gap=1e-9)
    relaxed = oamip.score_neurons(model, x, y, loss="hinge", lam=1.0, mip_gap=1e-9)
    assert relaxed.objective <= binary.objective + 1e-7


@pytest.mark.parametrize("loss", ["hinge", "ce"])
def test_root_cuts_do_not_change_the_continuous_optimum(loss):
    model = convnet(8, channels=(1, 2, 2), size=6)
    x = np.random.default_rng(8).uniform(0, 1, size=(2, 1, 6, 6))
    y = np.array([0, 2])
    plain = oamip.score_neurons(model, x, y, loss=loss, lam=1.0, mip_gap=1e-9)
    cut = oamip.score_neurons(model, x, y, loss=loss, lam=1.0, mip_gap=1e-9, root_cuts=4)
    assert plain.status == cut.status == "optimal"
    assert cut.objective == pytest.approx(plain.objective, abs=1e-6)
