"""oamip.integrations.torch_pruning: OAMIP's importance and SPR's pruner in Torch-Pruning's own
conventions (an ``Importance`` called on dependency groups, a ``BasePruner`` with ``regularize``
and ``step``), on a chain and on a torchvision-style ResNet-18 with adaptive pooling."""

from __future__ import annotations

import copy
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

import oamip
from oamip.adapters.structure import row_groups
from oamip.errors import InvalidInputError
from oamip.training.spr import SPRRegularizer
from tests.nets import convnet
from tests.torchvision_nets import ResNet18, randomised

tp = pytest.importorskip("torch_pruning")
from oamip.integrations.torch_pruning import OAMIPImportance, SPRPruner  # noqa: E402

NETS = {
    "chain": (lambda: convnet(0).double(), (2, 1, 8, 8)),
    "resnet18": (lambda: randomised(ResNet18(), 0).double(), (2, 3, 32, 32)),
}


def _output_layer(model: nn.Module) -> nn.Linear:
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1]


@pytest.mark.parametrize("name", sorted(NETS))
def test_oamip_importance_makes_a_torch_pruning_pruner_remove_the_lowest_scored_channels(name):
    """Half of every unit pruned by random OAMIP scores: the pruned model computes what the
    model masked to the top-scored channels of each unit computes."""
    build, shape = NETS[name]
    model = build()
    x = torch.as_tensor(np.random.default_rng(1).uniform(0, 1, shape))
    rng = np.random.default_rng(0)
    found = {group.name: group.size for group in row_groups(model)}
    scores = {unit: rng.permutation(size) / size for unit, size in found.items()}
    pruned = copy.deepcopy(model)
    importance = OAMIPImportance(pruned, scores)
    assert isinstance(importance, tp.importance.Importance)
    pruner = tp.pruner.BasePruner(
        pruned, x[:1], importance, pruning_ratio=0.5, ignored_layers=[_output_layer(pruned)]
    )
    pruner.step()
    modules = dict(pruned.named_modules())
    masks = {}
    for unit, size in found.items():
        layer = modules[unit]
        kept = layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features
        masks[unit] = scores[unit] >= np.sort(scores[unit])[size - kept]
        assert masks[unit].sum() < size
    with torch.no_grad():
        torch.testing.assert_close(
            pruned(x), oamip.apply_masks(model, masks)(x), atol=1e-10, rtol=0
        )


def test_oamip_importance_takes_a_score_result_and_refuses_other_units():
    model = convnet(0)
    x = np.random.default_rng(2).uniform(0, 1, (3, 1, 8, 8))
    res = oamip.score_neurons(model, x, np.array([0, 1, 2]), time_limit=1)
    importance = OAMIPImportance(model, res)
    assert set(importance.scores) == set(res.scores)
    with pytest.raises(InvalidInputError, match="not a unit"):
        OAMIPImportance(model, {"9": np.ones(3)})


def test_spr_pruner_is_a_torch_pruning_pruner_with_spr_as_its_regularizer():
    """``regularize`` adds exactly SPR's gradient; ``step`` removes the group SPR zeroed;
    ``update_regularizer`` follows the smaller model."""
    torch.manual_seed(3)
    model = randomised(ResNet18(), 3).train()
    twin = copy.deepcopy(model)
    x = torch.randn(2, 3, 32, 32)
    pruner = SPRPruner(
        model, x, reg=0.5, alpha=0.5, units="inner", pruning_ratio=0.25, ignored_layers=[model.fc]
    )
    assert isinstance(pruner, tp.pruner.BasePruner)
    assert isinstance(pruner.importance, tp.importance.GroupMagnitudeImportance)
    model.train()
    model(x).square().mean().backward()
    pruner.regularize(model)
    (twin(x).square().mean() + SPRRegularizer(twin, 0.5, 0.5, units="inner")()).backward()
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)
    with torch.no_grad():
        model.layer1[0].conv1.weight[2] = 0.0
        model.layer1[0].bn1.weight[2] = 0.0
        model.layer1[0].bn1.bias[2] = 0.0
    pruner.step()
    pruner.update_regularizer()
    assert model.layer1[0].conv1.out_channels < 4
    assert (
        model.layer1[0]
        .conv1.weight.reshape(model.layer1[0].conv1.out_channels, -1)
        .abs()
        .sum(1)
        .gt(0)
        .all()
    )
    assert len(pruner.spr.groups()["layer1.0.conv1"]) == model.layer1[0].conv1.out_channels


def test_the_integration_names_its_extra_when_torch_pruning_is_missing():
    code = (
        "import sys; sys.modules['torch_pruning'] = None\n"
        "import oamip.integrations\n"
        "try:\n    import oamip.integrations.torch_pruning\n"
        "except Exception as exc:\n    print(type(exc).__name__, exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("InvalidInputError") and "oamip[tp]" in out.stdout
