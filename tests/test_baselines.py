import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from oamip.errors import InvalidInputError
from oamip.training.baselines import (
    magnitude_scores,
    masks_like,
    random_scores,
    scored_layers,
    snip_scores,
    taylor_scores,
)
from oamip.training.models import lenet5, mlp

CRITERIA = {
    "random": lambda model, x, y: random_scores(model, seed=0),
    "magnitude": lambda model, x, y: magnitude_scores(model),
    "snip": snip_scores,
    "taylor": taylor_scores,
}


def _model(arch: str) -> nn.Sequential:
    torch.manual_seed(0)
    return lenet5(input_size=8) if arch == "lenet5" else mlp(64, hidden=(12, 8))


def _batch() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.random((6, 1, 8, 8), dtype=np.float32), np.arange(6) % 10


@pytest.mark.parametrize("criterion", CRITERIA)
@pytest.mark.parametrize(
    ("arch", "units"),
    [("mlp", {"1": 12, "3": 8}), ("lenet5", {"0": 6, "3": 16, "7": 120, "9": 84})],
)
def test_scores_cover_every_unit_of_every_scored_layer(criterion, arch, units):
    scores = CRITERIA[criterion](_model(arch), *_batch())
    assert {name: s.shape[0] for name, s in scores.items()} == units
    assert all(s.ndim == 1 and np.all(np.isfinite(s)) and np.all(s >= 0) for s in scores.values())


@pytest.mark.parametrize("criterion", CRITERIA)
def test_criteria_leave_the_model_untouched(criterion):
    model = _model("lenet5")
    model.train()
    model[0].eval()
    before = copy.deepcopy(model.state_dict())
    CRITERIA[criterion](model, *_batch())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert model.training and not model[0].training and model[3].training


def test_magnitude_is_the_norm_of_incoming_weights_and_bias():
    model = _model("lenet5")
    scores = magnitude_scores(model)
    for name, layer in scored_layers(model):
        weight = layer.weight.detach().numpy().reshape(layer.weight.shape[0], -1)
        rows = np.hstack([weight, layer.bias.detach().numpy()[:, None]])
        np.testing.assert_allclose(scores[name], np.linalg.norm(rows, axis=1), rtol=1e-6)


def test_random_scores_depend_only_on_the_seed():
    model = _model("mlp")
    first, again, other = (random_scores(model, seed=s)["1"] for s in (4, 4, 5))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_snip_sums_weight_times_gradient_per_unit():
    model, (x, y) = _model("mlp"), _batch()
    clone = copy.deepcopy(model).eval()
    F.cross_entropy(clone(torch.as_tensor(x)), torch.as_tensor(y)).backward()
    layer = clone[3]
    expected = (layer.weight * layer.weight.grad).abs().sum(1) + (
        layer.bias * layer.bias.grad
    ).abs()
    np.testing.assert_allclose(snip_scores(model, x, y)["3"], expected.detach().numpy(), rtol=1e-5)


def test_taylor_matches_the_loss_change_of_scaling_a_unit():
    model, (x, y) = _model("mlp"), _batch()
    x, y, unit, eps = x[:1], y[:1], 5, 1e-2
    score = taylor_scores(model, x, y)["1"][unit]

    def loss_with_unit_scaled(factor: float) -> float:
        scaled = copy.deepcopy(model)
        with torch.no_grad():
            scaled[1].weight[unit] *= factor
            scaled[1].bias[unit] *= factor
            return F.cross_entropy(scaled(torch.as_tensor(x)), torch.as_tensor(y)).item()

    slope = (loss_with_unit_scaled(1 + eps) - loss_with_unit_scaled(1 - eps)) / (2 * eps)
    assert score > 0
    assert score == pytest.approx(abs(slope), rel=1e-2)


def test_dead_units_score_zero_under_gradient_criteria():
    model, (x, y) = _model("mlp"), _batch()
    with torch.no_grad():
        model[1].weight[2] = 0.0
        model[1].bias[2] = -1.0
    assert snip_scores(model, x, y)["1"][2] == 0.0
    assert taylor_scores(model, x, y)["1"][2] == 0.0


def test_masks_like_prunes_the_same_number_of_lowest_scorers_per_layer():
    scores = {"a": np.array([0.5, 0.1, 0.9, 0.3]), "b": np.array([2.0, 1.0, 3.0])}
    reference = {"a": np.array([True, False, True, False]), "b": np.array([True, True, False])}
    masks = masks_like(scores, reference)
    np.testing.assert_array_equal(masks["a"], [True, False, True, False])
    np.testing.assert_array_equal(masks["b"], [True, False, True])
    scores_random = random_scores(_model("mlp"), seed=1)
    reference = {"1": np.arange(12) < 3, "3": np.ones(8, dtype=bool)}
    counts = {k: int((~m).sum()) for k, m in masks_like(scores_random, reference).items()}
    assert counts == {"1": 9, "3": 0}


@pytest.mark.parametrize(
    ("reference", "message"),
    [({"c": np.ones(2, dtype=bool)}, "no layer 'c'"), ({"a": np.ones(3, dtype=bool)}, "shape")],
)
def test_masks_like_refuses_masks_of_another_model(reference, message):
    with pytest.raises(InvalidInputError, match=message):
        masks_like({"a": np.zeros(4)}, reference)
