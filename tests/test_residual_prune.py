"""``oamip prune`` on residual networks: every criterion scores the same units as the MIP
(inner channels and coupled groups), and the pipeline prunes, compares and writes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import oamip
from oamip.adapters.masks import apply_masks
from oamip.adapters.residual import residual_units
from oamip.cli import main
from oamip.pipelines.settings import PruneSettings
from oamip.training.criteria import all_scores, get_criterion
from oamip.training.data import Dataset, load_digits
from oamip.training.train import train
from tests.test_residual import resnet8


@pytest.fixture(scope="module")
def digits() -> Dataset:
    """Digits, 8x8 images, a few hundred samples: a ResNet-8 trains on it in seconds."""
    full = load_digits()
    return Dataset(
        full.x_train[:300], full.y_train[:300], full.x_test[:90], full.y_test[:90], "digits", 10
    )


@pytest.fixture(scope="module")
def trained(digits):
    """A ResNet-8 trained a few epochs on ``digits`` (every class has correct samples)."""
    return train(resnet8(4), digits, epochs=8, lr=1e-2, progress=False)


def test_every_criterion_scores_every_unit_of_a_resnet(digits):
    model = resnet8(1)
    found = residual_units(model)
    scores = all_scores(model, digits.x_train[:20], digits.y_train[:20], seed=0)
    for values in scores.values():
        assert list(values) == [unit.name for unit in found]
        assert [len(v) for v in values.values()] == [unit.size for unit in found]


def test_magnitude_of_a_coupled_group_is_the_norm_over_all_its_producers():
    model = resnet8(2)
    modules = dict(model.named_modules())
    scores = get_criterion("magnitude").scores(model, None, None, seed=0)
    groups = [unit for unit in residual_units(model) if unit.kind == "group"]
    assert groups and all(len(unit.producers) >= 2 for unit in groups)
    for unit in groups:
        squares = sum(
            modules[p].weight.detach().double().reshape(unit.size, -1).square().sum(1)
            + (0 if modules[p].bias is None else modules[p].bias.detach().double().square())
            for p in unit.producers
        )
        assert np.allclose(scores[unit.name], squares.sqrt().numpy(), rtol=1e-6)


def test_taylor_of_every_unit_is_the_loss_slope_of_scaling_its_channel_in_every_producer(digits):
    """Scaling channel ``c`` of every producer by ``1 + eps`` changes each sample's loss by
    ``eps * sum a * dL/da`` to first order: the Taylor score is the mean of its absolute value."""
    model = resnet8(3).double()
    x, y = digits.x_train[:6], digits.y_train[:6]
    scores = get_criterion("taylor").scores(model.float(), x, y, seed=0)
    model = model.double()
    inputs, labels = torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(y)
    modules, eps = dict(model.named_modules()), 1e-6
    with torch.no_grad():
        base = F.cross_entropy(model(inputs), labels, reduction="none")
        for unit in residual_units(model):
            for c in range(unit.size):
                for p in unit.producers:
                    modules[p].weight[c] *= 1 + eps
                    if modules[p].bias is not None:
                        modules[p].bias[c] *= 1 + eps
                moved = F.cross_entropy(model(inputs), labels, reduction="none")
                for p in unit.producers:
                    modules[p].weight[c] /= 1 + eps
                    if modules[p].bias is not None:
                        modules[p].bias[c] /= 1 + eps
                slope = ((moved - base) / eps).abs().mean().item()
                assert scores[unit.name][c] == pytest.approx(slope, rel=1e-3, abs=1e-6)


@pytest.mark.parametrize("residual", ["both", "inner"])
@pytest.mark.slow
def test_prune_on_a_resnet_scores_its_units_and_gives_the_masked_outputs(digits, trained, residual):
    model = trained
    settings = PruneSettings(
        arch="resnet8", time_limit=5, finetune_epochs=0, scores="binary", residual=residual
    )
    report = oamip.prune(model, digits, settings)
    found = residual_units(model)
    expected = [u.name for u in found if residual == "both" or u.kind == residual]
    assert [layer.name for layer in report.layers] == expected
    groups = [layer.label for layer in report.layers if "group of" in layer.label]
    assert bool(groups) == (residual == "both")
    masks = {}
    for layer in report.layers:
        masks[layer.name] = np.ones(layer.units, dtype=bool)
        masks[layer.name][layer.pruned] = False
    x = torch.as_tensor(digits.x_test[:16])
    with torch.no_grad():
        expected_logits = apply_masks(model, masks)(x)
        assert torch.allclose(report.model(x), expected_logits, atol=1e-5)
    assert {b.method for b in report.baselines} >= {"random", "magnitude", "snip", "taylor"}
    assert report.params_after == sum(p.numel() for p in report.model.parameters())


@pytest.mark.slow
def test_oamip_prune_trains_and_prunes_a_resnet8_from_the_command_line(tmp_path):
    out = tmp_path / "out"
    args = ["prune", "--arch", "resnet8", "--data", "digits", "--time-limit", "5"]
    assert main([*args, "--finetune-epochs", "0", "--residual", "group", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["arch"] == "resnet8"
    assert report["layers"] and all("group of" in layer["label"] for layer in report["layers"])
    loaded = oamip.load_model(out / "pruned.pt")
    assert sum(p.numel() for p in loaded.parameters()) == report["params_after"]
