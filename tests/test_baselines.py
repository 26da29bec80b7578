import copy
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from oamip.errors import InvalidInputError
from oamip.training import criteria as registry
from oamip.training.criteria import (
    Criterion,
    all_scores,
    criteria,
    get_criterion,
    masks_like,
    register_criterion,
)
from oamip.training.models import lenet5, mlp

BUILT_IN = ("random", "magnitude", "snip", "taylor")
TORCH_PRUNING = ("tp-magnitude", "tp-taylor", "tp-lamp", "tp-bn")
"""Torch-Pruning's importances, registered after the built-in ones (tests/test_tp_criteria.py)."""


def _scores(name: str, model: nn.Module, x=None, y=None, seed: int = 0) -> dict[str, np.ndarray]:
    return get_criterion(name).scores(model, x, y, seed)


def _model(arch: str) -> nn.Sequential:
    torch.manual_seed(0)
    return lenet5(input_size=8) if arch == "lenet5" else mlp(64, hidden=(12, 8))


def _batch() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.random((6, 1, 8, 8), dtype=np.float32), np.arange(6) % 10


@pytest.mark.parametrize("criterion", BUILT_IN)
@pytest.mark.parametrize(
    ("arch", "sizes"),
    [("mlp", {"1": 12, "3": 8}), ("lenet5", {"0": 6, "3": 16, "7": 120, "9": 84})],
)
def test_scores_cover_every_unit_of_every_scored_layer(criterion, arch, sizes):
    scores = _scores(criterion, _model(arch), *_batch())
    assert {name: s.shape[0] for name, s in scores.items()} == sizes
    assert all(s.ndim == 1 and np.all(np.isfinite(s)) and np.all(s >= 0) for s in scores.values())


@pytest.mark.parametrize("criterion", BUILT_IN)
def test_criteria_leave_the_model_untouched(criterion):
    model = _model("lenet5")
    model.train()
    model[0].eval()
    before = copy.deepcopy(model.state_dict())
    _scores(criterion, model, *_batch())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert model.training and not model[0].training and model[3].training


def test_magnitude_is_the_norm_of_incoming_weights_and_bias():
    model = _model("lenet5")
    scores = _scores("magnitude", model)
    assert list(scores) == ["0", "3", "7", "9"]
    for name in scores:
        layer = model.get_submodule(name)
        weight = layer.weight.detach().numpy().reshape(layer.weight.shape[0], -1)
        rows = np.hstack([weight, layer.bias.detach().numpy()[:, None]])
        np.testing.assert_allclose(scores[name], np.linalg.norm(rows, axis=1), rtol=1e-6)


def test_random_scores_depend_only_on_the_seed():
    model = _model("mlp")
    first, again, other = (_scores("random", model, seed=s)["1"] for s in (4, 4, 5))
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
    np.testing.assert_allclose(
        _scores("snip", model, x, y)["3"], expected.detach().numpy(), rtol=1e-5
    )


def test_taylor_matches_the_loss_change_of_scaling_a_unit():
    model, (x, y) = _model("mlp"), _batch()
    x, y, unit, eps = x[:1], y[:1], 5, 1e-2
    score = _scores("taylor", model, x, y)["1"][unit]

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
    assert _scores("snip", model, x, y)["1"][2] == 0.0
    assert _scores("taylor", model, x, y)["1"][2] == 0.0


def test_masks_like_prunes_the_same_number_of_lowest_scorers_per_layer():
    scores = {"a": np.array([0.5, 0.1, 0.9, 0.3]), "b": np.array([2.0, 1.0, 3.0])}
    reference = {"a": np.array([True, False, True, False]), "b": np.array([True, True, False])}
    masks = masks_like(scores, reference)
    np.testing.assert_array_equal(masks["a"], [True, False, True, False])
    np.testing.assert_array_equal(masks["b"], [True, False, True])
    scores_random = _scores("random", _model("mlp"), seed=1)
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


@pytest.fixture
def own_registry(monkeypatch):
    """A copy of the criteria registry for one test, so registrations do not leak."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


def test_the_four_built_in_criteria_are_registered_in_report_order():
    assert criteria()[:4] == list(BUILT_IN)
    assert all(get_criterion(name).name == name for name in BUILT_IN)
    with pytest.raises(InvalidInputError, match="unknown criterion 'l1'.*random, magnitude"):
        get_criterion("l1")


def test_a_registered_criterion_is_scored_after_the_built_in_ones(own_registry):
    @register_criterion
    class Bias(Criterion):
        name = "bias"

        def scores(self, model, x, y, seed):
            return {name: model.get_submodule(name).bias.detach() for name in ("3", "1")}

    model, (x, y) = _model("mlp"), _batch()
    scores = all_scores(model.eval(), x.reshape(6, -1), y, seed=0)
    tp = [name for name in TORCH_PRUNING[:3] if get_criterion(name).applies(model)]
    assert list(scores) == [*BUILT_IN, *tp, "bias"]
    assert list(scores["bias"]) == ["1", "3"]
    np.testing.assert_array_equal(scores["bias"]["3"], model[3].bias.detach().double().numpy())


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (lambda model: {"1": np.ones(12)}, r"scored \['1'\].*\['1', '3'\]"),
        (lambda model: [np.ones(12), np.ones(8)], "scored list"),
        (
            lambda model: {"1": np.ones(12), "3": np.ones(7)},
            r"'3' scores of shape \(7,\).*8 units",
        ),
        (lambda model: {"1": np.ones(12), "3": np.full(8, np.nan)}, "'3' NaN or infinite"),
        (lambda model: {"1": ["high"] * 12, "3": np.ones(8)}, "'1' scores that are not numbers"),
    ],
)
def test_scores_of_a_faulty_criterion_are_refused_with_the_criterion_named(
    own_registry, bad, message
):
    @register_criterion
    class Faulty(Criterion):
        name = "faulty"

        def scores(self, model, x, y, seed):
            return bad(model)

    model, (x, y) = _model("mlp"), _batch()
    with pytest.raises(InvalidInputError, match=f"criterion 'faulty' .*{message}"):
        all_scores(model, x.reshape(6, -1), y, seed=0)


@pytest.mark.parametrize(
    ("cls", "message"),
    [
        (object, "subclass of Criterion"),
        (type("Nameless", (Criterion,), {"scores": lambda *a: {}}), "Nameless needs .*None"),
        (type("Mip", (Criterion,), {"name": "mip", "scores": lambda *a: {}}), "other than 'mip'"),
    ],
)
def test_register_refuses_what_is_no_named_criterion(own_registry, cls, message):
    with pytest.raises(InvalidInputError, match=message):
        register_criterion(cls)
    assert criteria() == [*BUILT_IN, *TORCH_PRUNING]


def _readme_example(heading: str) -> str:
    """The first Python block of the docs/extending.md section under ``heading``."""
    readme = (Path(__file__).resolve().parent.parent / "docs" / "extending.md").read_text()
    section = readme.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


def test_the_readme_criterion_is_compared_in_an_oamip_prune_report(own_registry, capsys):
    namespace: dict = {}
    exec(_readme_example("An importance criterion"), namespace)
    expected = [*BUILT_IN, "largest_weight"]
    assert capsys.readouterr().out.strip() == str(expected)
    report = namespace["report"]
    assert [b.method for b in report.baselines] == expected
    assert all(set(point.accuracy) == {"mip", *expected} for point in report.curve)
    tuned = report.to_dict()["baselines"][-1]
    assert tuned["method"] == "largest_weight" and 0 <= tuned["accuracy_after"] <= 1
