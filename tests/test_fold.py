"""Folding (docs/mathematics.md §4.8): with binary scores, a network whose one scored layer reads
constants and is followed by affine layers only has logits affine in its scores. The map equals
PyTorch's pruned forward pass on every mask, the folded MIP reproduces it with fixed scores and
finds the enumerated optimum, and the warm start values moves the same way on both models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from oamip import backends
from oamip.adapters import apply_masks, extract, scored_logits
from oamip.backends import SolveOptions, compile_model
from oamip.bounds import interval_bounds
from oamip.formulations import ImportanceSettings, build_importance_model
from oamip.formulations.size import estimate_size
from oamip.solve.warm_start import warm_start_scores
from tests.nets import mlp, random_bn
from tests.test_brute_force import _all_masks, assert_binary_optimum

SOLVE_ATOL = 1e-6


def _conv_pool(seed: int) -> nn.Sequential:
    """Conv+BatchNorm+ReLU, max pooling, then a Linear: one scored layer, pooled."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1),
        random_bn(nn.BatchNorm2d(3)),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(3 * 3 * 3, 3),
    ).eval()


def _hardtanh(seed: int) -> nn.Sequential:
    """A two-ramp activation (ReLU6) before an average pooling and two Linear layers."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 2, 3),
        nn.ReLU6(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(2 * 2 * 2, 4),
        nn.Linear(4, 3),
    ).eval()


FOLDED = {
    "mlp": (lambda seed: mlp(seed, (5, 5, 3)), (5,)),
    "conv_pool": (_conv_pool, (1, 6, 6)),
    "relu6": (_hardtanh, (1, 6, 6)),
}


def _setup(kind: str, seed: int = 0, n: int = 4):
    build, shape = FOLDED[kind]
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 2, size=(n, *shape))
    return build(seed), x, rng.integers(0, 3, n)


@pytest.mark.parametrize("kind", sorted(FOLDED))
def test_the_affine_map_gives_the_scored_torch_logits_of_every_mask(kind):
    model, x, _ = _setup(kind)
    extracted = extract(model, x)
    network = extracted.network
    big_m = interval_bounds(network, x).big_m
    affine = network.score_affine(x, big_m)
    assert affine is not None
    (key,) = network.scored
    name = network.layers[key].name
    for masks in _all_masks({name: network.layers[key].n_units}, 0):
        s = masks[name].astype(float)
        expected = scored_logits(extracted, x, {name: s}, big_m)
        np.testing.assert_allclose(affine.logits(s[None])[0], expected, atol=1e-9)
        if kind != "relu6":
            with torch.no_grad():
                pruned = apply_masks(model, masks).double()(torch.as_tensor(x)).numpy()
            np.testing.assert_allclose(affine.logits(s[None])[0], pruned, atol=1e-9)


def test_logits_that_are_not_affine_in_the_scores_give_none():
    x = np.random.default_rng(0).uniform(0, 1, size=(3, 5))
    for model in (mlp(0, (5, 4, 3, 3)), nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))):
        network = extract(model.eval(), x).network
        big_m = interval_bounds(network, x).big_m
        assert (network.score_affine(x, big_m) is None) == (len(network.scored) > 1)
    late_pool = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(2, 2, 1),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(2 * 3 * 3, 3),
    ).eval()
    images = np.random.default_rng(1).uniform(0, 1, size=(2, 1, 6, 6))
    network = extract(late_pool, images).network
    assert network.score_affine(images, interval_bounds(network, images).big_m) is None


@pytest.mark.parametrize("kind", sorted(FOLDED))
def test_the_folded_model_with_fixed_scores_gives_the_pruned_logits(kind):
    model, x, y = _setup(kind, seed=1, n=3)
    network = extract(model, x).network
    settings = ImportanceSettings("hinge", scores="binary", min_keep=0)
    im = build_importance_model(network, x, y, settings)
    layered = build_importance_model(network, x, y, settings, fold=False)
    assert im.affine is not None and layered.affine is None
    (key,) = network.scored
    units = network.layers[key].n_units
    assert len(im.table.variables) == units + y.size * network.num_classes + y.size
    size = estimate_size(network, len(x), im.settings)
    assert size.variables == len(im.table.variables)
    assert size.constraints == compile_model(im.model).num_rows
    counted = sum(layered.relu_entries.values())
    assert im.relu_entries == {"folded": counted} and counted
    for masks in _all_masks({"s": units}, 0):
        scores = {key: masks["s"].astype(float)}
        im.fix_scores(scores)
        result = backends.get("highs").solve(im.model)
        assert result.status == "optimal"
        np.testing.assert_allclose(im.logit_values(), im.forward(scores), atol=SOLVE_ATOL)
        assert result.objective == pytest.approx(im.objective_at(scores), abs=SOLVE_ATOL)
        assert im.objective_at(scores) == pytest.approx(layered.objective_at(scores), abs=1e-12)


@pytest.mark.parametrize(
    ("kind", "loss", "lam", "seed"),
    [
        ("mlp", "hinge", 1.0, 0),
        ("mlp", "ce", 2.0, 1),
        ("conv_pool", "fidelity", 0.5, 2),
        ("conv_pool", "hinge", 3.0, 3),
        ("relu6", "ce", 1.0, 4),
    ],
)
def test_the_folded_optimum_equals_enumeration_over_every_mask(kind, loss, lam, seed):
    model, x, y = _setup(kind, seed)
    res = assert_binary_optimum(model, x, y, loss, lam, root_cuts=0)
    assert res.subproblems == [] and res.status == "optimal"
    if loss == "ce":
        return
    network = extract(model, x).network
    settings = ImportanceSettings(loss, lam=lam, scores="binary")
    layered = build_importance_model(network, x, y, settings, fold=False)
    solved = backends.get("highs").solve(layered.model, SolveOptions(mip_gap=1e-9))
    assert solved.objective == pytest.approx(res.objective, abs=1e-6)


@pytest.mark.parametrize("kind", sorted(FOLDED))
def test_the_warm_start_values_moves_alike_on_both_models(kind):
    model, x, y = _setup(kind, seed=2, n=5)
    network = extract(model, x).network
    settings = ImportanceSettings("hinge", lam=2.0, scores="binary")
    folded = build_importance_model(network, x, y, settings)
    layered = build_importance_model(network, x, y, settings, fold=False)
    found = warm_start_scores(folded, time_budget=60.0)
    again = warm_start_scores(layered, time_budget=60.0)
    assert folded.objective_at(found) == pytest.approx(layered.objective_at(again), abs=1e-12)
