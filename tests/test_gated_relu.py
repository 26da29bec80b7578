"""The ``gated`` case of the scored ReLU: a variable pre-activation that is never negative, with a
binary score, is ``h = s * pre`` with the score as its indicator (no binary). Planted networks
(half the units of every hidden layer after the first have non-negative weights and a positive
bias, so their pre-activations stay non-negative whatever the scores) take that case; the
optimum and every fixed-score output stay those of PyTorch, by enumeration of every mask."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import oamip
from oamip import backends
from oamip.adapters import apply_masks, extract, scored_logits
from oamip.formulations import ImportanceSettings, build_importance_model
from tests.nets import deep_pool_net, mlp
from tests.test_brute_force import (
    _all_masks,
    assert_binary_optimum,
)

SOLVE_ATOL = 1e-6


def _planted(model: nn.Module) -> nn.Module:
    """``model`` with the even output units of every Linear or Conv2d between the first and the
    last made non-negative: weights ``|w|``, bias ``|b| + 0.1``."""
    layers = [m for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    with torch.no_grad():
        for layer in layers[1:-1]:
            layer.weight[::2].abs_()
            layer.bias[::2] = layer.bias[::2].abs() + 0.1
    return model


NETS = {
    "mlp": (lambda: _planted(mlp(1, (5, 4, 4, 3))), (5,)),
    "deep_pool": (lambda: _planted(deep_pool_net(1)), (1, 6, 6)),
}


def _setup(kind: str, n: int = 3):
    build, shape = NETS[kind]
    rng = np.random.default_rng(len(kind))
    x = rng.uniform(0, 1, size=(n, *shape))
    y = rng.integers(0, 3, n)
    return build(), x, y


@pytest.mark.parametrize("kind", sorted(NETS))
def test_planted_networks_take_the_gated_case_only_with_binary_scores(kind):
    model, x, y = _setup(kind)
    network = extract(model, x).network
    binary = build_importance_model(network, x, y, ImportanceSettings(scores="binary"))
    continuous = build_importance_model(network, x, y, ImportanceSettings())
    assert binary.relu_entries["gated"] > 0
    assert binary.relu_entries["binary"] > 0
    assert continuous.relu_entries.get("gated", 0) == 0
    assert binary.relu_entries["dead"] == continuous.relu_entries["dead"]
    assert sum(binary.relu_entries.values()) == sum(continuous.relu_entries.values())


@pytest.mark.parametrize("kind", sorted(NETS))
def test_every_mask_of_a_planted_network_gives_the_pruned_torch_logits(kind):
    model, x, y = _setup(kind, 2)
    extracted = extract(model, x)
    network = extracted.network
    settings = ImportanceSettings("hinge", scores="binary", min_keep=0)
    im = build_importance_model(network, x, y, settings)
    sizes = {network.layers[i].name: network.layers[i].n_units for i in network.scored}
    for masks in _all_masks(sizes, 0):
        scores = {i: masks[network.layers[i].name].astype(float) for i in network.scored}
        im.fix_scores(scores)
        result = backends.get("highs").solve(im.model)
        assert result.status == "optimal"
        expected = scored_logits(extracted, x, extracted.scores_by_name(scores), im.big_m)
        np.testing.assert_allclose(im.logit_values(), expected, atol=SOLVE_ATOL)
        with torch.no_grad():
            pruned = apply_masks(model, masks).double()(torch.as_tensor(x)).numpy()
        np.testing.assert_allclose(pruned, expected, atol=1e-9)


@pytest.mark.parametrize("root_cuts", [0, 3])
@pytest.mark.parametrize(("kind", "loss", "lam"), [("mlp", "ce", 2.0), ("deep_pool", "hinge", 1.0)])
def test_binary_optimum_of_a_planted_network_equals_enumeration(kind, loss, lam, root_cuts):
    model, x, y = _setup(kind)
    res = assert_binary_optimum(model, x, y, loss, lam, root_cuts)
    big_m = oamip.score_neurons(
        model, x, y, loss=loss, lam=lam, scores="binary", mip_gap=1e-9, encoding="big-m"
    )
    assert big_m.objective == pytest.approx(res.objective, abs=1e-6)
