"""Residual networks: their units, masks, physical removal, saving, SPR and costs."""

from __future__ import annotations

import copy
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

import oamip
from oamip.adapters.masks import apply_masks
from oamip.adapters.removal import remove_residual_pruned
from oamip.adapters.residual import residual_units
from oamip.adapters.structure import row_groups
from oamip.training.cost import count_macs, model_cost, paired_latency
from oamip.training.models import ARCHITECTURES, resnet
from oamip.training.spr import SPRRegularizer
from tests.nets import random_bn


def resnet8(seed: int = 0, widths=(4, 6, 8), size: int = 8) -> nn.Module:
    """A small ResNet-8 with random BatchNorm statistics, in eval mode."""
    torch.manual_seed(seed)
    model = resnet(1, input_size=size, widths=widths)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            random_bn(module)
    return model.eval()


def test_resnets_are_named_architectures_of_6n_plus_2_layers():
    assert {"resnet8", "resnet20"} <= set(ARCHITECTURES)
    for blocks, depth in [(1, 8), (3, 20)]:
        model = resnet(blocks, input_size=28)
        layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        shortcuts = [m for m in layers if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]
        assert len(layers) - len(shortcuts) == depth
        assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_resnet8_units_are_the_inner_channels_and_one_coupled_group_per_stage():
    found = residual_units(resnet8())
    assert [(u.name, u.kind, u.size) for u in found] == [
        ("stem", "group", 4),
        ("stage1.0.conv1", "inner", 4),
        ("stage2.0.conv1", "inner", 6),
        ("stage2.0.conv2", "group", 6),
        ("stage3.0.conv1", "inner", 8),
        ("stage3.0.conv2", "group", 8),
    ]
    stem, inner = found[0], found[1]
    assert stem.producers == ("stem", "stage1.0.conv2")
    assert stem.batchnorms == ("stem_bn", "stage1.0.bn2")
    assert stem.consumers == ("stage1.0.conv1", "stage2.0.conv1", "stage2.0.shortcut.0")
    assert inner.producers == ("stage1.0.conv1",) and inner.batchnorms == ("stage1.0.bn1",)
    assert inner.consumers == ("stage1.0.conv2",) and inner.additions == ()
    assert found[3].producers == ("stage2.0.conv2", "stage2.0.shortcut.0")
    assert found[3].batchnorms == ("stage2.0.bn2", "stage2.0.shortcut.1")
    assert found[5].consumers == ("fc",)


def test_every_block_of_a_resnet20_stage_shares_one_group():
    found = residual_units(resnet(3, input_size=8, widths=(2, 3, 4)))
    groups = [u for u in found if u.kind == "group"]
    assert len(found) == 12 and len(groups) == 3
    assert groups[1].producers == (
        "stage2.0.conv2",
        "stage2.0.shortcut.0",
        "stage2.1.conv2",
        "stage2.2.conv2",
    )
    assert len(groups[1].additions) == 3
    assert groups[1].consumers == (
        "stage2.1.conv1",
        "stage2.2.conv1",
        "stage3.0.conv1",
        "stage3.0.shortcut.0",
    )


class _FunctionalResidual(nn.Module):
    """Additions written as torch.add and a method, a functional ReLU, a Linear residual."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(3, 4)
        self.fc1 = nn.Linear(4, 4)
        self.fc2 = nn.Linear(4, 4)
        self.out = nn.Linear(4, 2)

    def forward(self, x):
        h = torch.relu(self.inp(x))
        h = torch.relu(torch.add(self.fc1(h), h))
        return self.out(torch.relu(h.add(self.fc2(h))))


def test_functional_additions_tie_every_layer_that_adds_into_them():
    found = residual_units(_FunctionalResidual())
    assert [(u.name, u.kind, u.producers) for u in found] == [
        ("inp", "group", ("inp", "fc1", "fc2"))
    ]
    assert found[0].consumers == ("fc1", "fc2", "out")


class _InputResidual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.out = nn.Linear(4, 2)

    def forward(self, x):
        return self.out(torch.relu(self.fc(x)) + x)


class _Concat(_InputResidual):
    def forward(self, x):
        return self.out(torch.cat([self.fc(x), x], 1)[:, :4])


def test_channels_tied_to_the_input_are_no_unit_and_other_operations_are_refused():
    assert residual_units(_InputResidual()) == []
    with pytest.raises(oamip.UnsupportedLayerError, match="cat"):
        residual_units(_Concat())


def test_chain_units_refuse_a_residual_network_and_point_to_residual_units():
    from oamip.adapters.chain import units

    with pytest.raises(oamip.UnsupportedLayerError, match="residual_units"):
        units(resnet8())


def test_masks_zero_the_unit_channels_in_every_producer_and_batchnorm():
    model = resnet8(1)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    keep = np.array([True, False, True, False, True, True])
    masked = apply_masks(model, {"stage2.0.conv2": keep})
    seen = {}
    for name in ("stage2.0.bn2", "stage2.0.shortcut.1", "stage2.0.relu2"):
        dict(masked.named_modules())[name].register_forward_hook(
            lambda _m, _i, out, name=name: seen.__setitem__(name, out)
        )
    with torch.no_grad():
        masked(torch.rand(3, 1, 8, 8))
    for out in seen.values():
        assert torch.all(out[:, ~keep] == 0) and torch.any(out[:, keep] != 0)
    assert all(torch.equal(v, original[k]) for k, v in model.state_dict().items())
    untouched = masked.state_dict()["stage1.0.conv1.weight"]
    assert torch.equal(untouched, original["stage1.0.conv1.weight"])


def test_masks_of_unknown_units_or_wrong_sizes_are_refused():
    model = resnet8()
    with pytest.raises(oamip.InvalidInputError, match="not a unit"):
        apply_masks(model, {"stage1.0.conv2": np.ones(4, bool)})
    with pytest.raises(oamip.InvalidInputError, match="has shape"):
        apply_masks(model, {"stem": np.ones(5, bool)})
    with pytest.raises(oamip.InvalidInputError, match="not boolean"):
        apply_masks(model, {"stem": np.full(4, 0.5)})


def _random_masks(model: nn.Module, seed: int) -> dict[str, np.ndarray]:
    """A keep-mask for every unit, each keeping at least one channel."""
    rng = np.random.default_rng(seed)
    masks = {}
    for unit in residual_units(model):
        keep = rng.random(unit.size) < 0.5
        keep[rng.integers(unit.size)] = True
        masks[unit.name] = keep
    return masks


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("blocks", [1, 2])
def test_removal_gives_a_smaller_model_with_exactly_the_masked_outputs(blocks):
    torch.manual_seed(blocks)
    model = resnet(blocks, input_size=8, widths=(4, 6, 8))
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            random_bn(module)
    model.eval()
    masks = _random_masks(model, blocks)
    before = _params(model)
    small = remove_residual_pruned(model, masks)
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        diff = (small(x) - apply_masks(model, masks)(x)).abs().max().item()
    assert diff < 1e-5
    kept = {name: int(mask.sum()) for name, mask in masks.items()}
    assert [u.size for u in residual_units(small)] == [kept[u.name] for u in residual_units(model)]
    assert _params(small) < _params(model)
    assert type(small) is type(model) and _params(model) == before


def test_removal_refuses_a_mask_that_empties_a_unit():
    with pytest.raises(oamip.InvalidInputError, match="removes every channel"):
        remove_residual_pruned(resnet8(), {"stage1.0.conv1": np.zeros(4, bool)})


@pytest.mark.slow
def test_a_pruned_resnet_saved_loads_in_a_fresh_process_with_the_same_outputs(tmp_path):
    model = resnet8(3)
    small = remove_residual_pruned(model, _random_masks(model, 3))
    oamip.save_model(small, tmp_path / "small.pt")
    x = torch.randn(4, 1, 8, 8)
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        torch.save(small(x), tmp_path / "expected.pt")
    script = (
        "import sys, torch, oamip\n"
        "folder = sys.argv[1]\n"
        "model = oamip.load_model(folder + '/small.pt')\n"
        "x = torch.load(folder + '/x.pt')\n"
        "with torch.no_grad():\n"
        "    diff = (model(x) - torch.load(folder + '/expected.pt')).abs().max().item()\n"
        "assert diff == 0, diff\n"
        "print([(u.name, u.size) for u in oamip.adapters.residual.residual_units(model)])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str([(u.name, u.size) for u in residual_units(small)])


def test_a_graph_file_with_a_bad_operation_is_refused(tmp_path):
    path = oamip.save_model(resnet8(), tmp_path / "model.pt")
    payload = torch.load(path, weights_only=True)
    good = copy.deepcopy(payload)
    payload["ops"][3][2] = [99]
    torch.save(payload, path)
    with pytest.raises(oamip.InvalidInputError, match="operations cannot be run"):
        oamip.load_model(path)
    for name, problem in [("forward", "hide an attribute"), ("a..b", "not a module path")]:
        bad = copy.deepcopy(good)
        bad["names"][0] = name
        torch.save(bad, path)
        with pytest.raises(oamip.InvalidInputError, match=problem):
            oamip.load_model(path)


def test_spr_groups_every_filter_and_batchnorm_of_a_coupled_group_together():
    model = resnet8(4)
    reg = SPRRegularizer(model, lam=0.5, alpha=0.5, units="both")
    groups = reg.groups()
    assert list(groups) == [u.name for u in residual_units(model)]
    modules = dict(model.named_modules())
    stage2 = ["stage2.0.conv2", "stage2.0.shortcut.0", "stage2.0.bn2", "stage2.0.shortcut.1"]
    parts = [modules[name].weight.reshape(6, -1) for name in stage2]
    parts.insert(3, modules["stage2.0.bn2"].bias[:, None])
    parts.append(modules["stage2.0.shortcut.1"].bias[:, None])
    assert torch.equal(groups["stage2.0.conv2"], torch.cat(parts, dim=1))
    assert groups["stage2.0.conv2"].shape == (6, 6 * 9 + 4 + 2 + 2)
    inner = SPRRegularizer(model, lam=0.5, alpha=0.5).groups()
    assert list(inner) == ["stage1.0.conv1", "stage2.0.conv1", "stage3.0.conv1"], "the default"
    assert list(SPRRegularizer(model, lam=0.5, alpha=0.5, units="group").groups()) == [
        "stem",
        "stage2.0.conv2",
        "stage3.0.conv2",
    ]
    with pytest.raises(oamip.InvalidInputError, match="units must be one of"):
        SPRRegularizer(model, lam=0.5, alpha=0.5, units="blocks")


def test_spr_masks_of_a_residual_net_prune_it_through_the_public_functions():
    model = resnet8(5)
    reg = SPRRegularizer(model, lam=0.5, alpha=0.5, units="both")
    with torch.no_grad():
        for param in row_groups(model)[3].params:  # the stage-2 group's channel 1, everywhere
            param[1] = 0.0
    masks = reg.masks()
    assert masks["stage2.0.conv2"].tolist() == [True, False, True, True, True, True]
    small = oamip.remove_pruned(model, masks)
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        assert (small(x) - oamip.apply_masks(model, masks)(x)).abs().max() < 1e-5
        assert (small(x) - model(x)).abs().max() < 1e-5  # the channel was zero already
    assert dict(small.named_modules())["stage2.0.shortcut.0"].out_channels == 5


def test_spr_as_torch_pruning_regularize_hook_adds_its_gradient_and_prunes_zero_groups():
    pytest.importorskip("torch_pruning")
    from oamip.training.tp import spr_pruner

    model, twin = resnet8(6).train(), resnet8(6).train()
    x = torch.randn(4, 1, 8, 8)
    pruner = spr_pruner(
        model, x, lam=0.5, alpha=0.5, units="both", pruning_ratio=0.17, ignored_layers=[model.fc]
    )
    model.train()  # building the dependency graph leaves the model in eval mode
    model(x).square().mean().backward()
    pruner.regularize(model)
    (twin(x).square().mean() + SPRRegularizer(twin, 0.5, 0.5, units="both")()).backward()
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)
    with torch.no_grad():
        for param in row_groups(model)[3].params:
            param[1] = 0.0
    pruner.step()
    pruner.update_regularizer()
    group = [m.weight for m in (model.stage2[0].shortcut[0], model.stage2[0].bn2)]
    assert all(len(w) < 6 and (w.reshape(len(w), -1).abs().sum(1) > 0).all() for w in group)
    assert model.fc.in_features == model.stage3[0].conv2.out_channels < 8
    assert len(pruner.spr.groups()["stage2.0.conv2"]) == len(group[0])


def test_torch_pruning_missing_is_named_with_its_extra(monkeypatch):
    from oamip.training import tp

    monkeypatch.setitem(sys.modules, "torch_pruning", None)
    with pytest.raises(oamip.InvalidInputError, match=r"oamip\[tp\]"):
        tp.torch_pruning()


def test_macs_of_a_tiny_net_are_counted_as_by_hand():
    net = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3)
    )
    # conv: 2 * 4 * 4 outputs, each 1 channel x 3 x 3 = 288; linear: 32 x 3 = 96
    assert count_macs(net, (1, 4, 4)) == 288 + 96
    strided = nn.Sequential(nn.Conv2d(2, 4, 1, stride=2), nn.Conv2d(4, 4, 3, groups=2))
    # 1x1: 4 x 3 x 3 outputs x 2 inputs = 72; grouped 3x3: 4 x 1 x 1 outputs x 2 x 9 = 72
    assert count_macs(strided, (2, 6, 6)) == 72 + 72


def test_model_cost_reports_macs_params_and_latency_and_pruning_lowers_them():
    model = resnet8(7)
    small = remove_residual_pruned(model, _random_masks(model, 7)).train()
    dense, pruned = (model_cost(m, (1, 8, 8), batches=(1, 4), repeats=3) for m in (model, small))
    assert dense.params == _params(model) and set(dense.latency_ms) == {1, 4}
    assert all(v > 0 for v in dense.latency_ms.values())
    assert pruned.macs < dense.macs and pruned.params < dense.params
    assert small.training and not model.training, "each model keeps its own mode"
    first, second = paired_latency(model, small, (1, 8, 8), batch=2, blocks=2, repeats=1)
    assert first > 0 and second > 0
    with pytest.raises(oamip.InvalidInputError, match="blocks"):
        paired_latency(model, small, (1, 8, 8), batch=2, blocks=0)


@pytest.mark.slow
def test_spr_prune_runs_on_a_resnet_and_writes_a_loadable_smaller_model(tmp_path):
    from oamip.training.data import Dataset, load_digits

    full = load_digits()
    digits = Dataset(
        full.x_train[:256], full.y_train[:256], full.x_test[:64], full.y_test[:64], "digits", 10
    )
    model = resnet8(8, widths=(4, 6, 8))
    report = oamip.spr_prune(
        model,
        digits,
        epochs=1,
        finetune_epochs=0,
        progress=False,
        group_lasso_scales=(),
        out=tmp_path / "out",
    )
    assert report.arch == "resnet8"
    inner = [u.name for u in residual_units(model) if u.kind == "inner"]
    assert [layer.name for layer in report.layers] == inner, "SPR prunes inner channels by default"
    assert list(report.M) == [layer.name for layer in report.layers]
    loaded = oamip.load_model(tmp_path / "out" / "pruned.pt")
    x = torch.as_tensor(digits.x_test[:16])
    with torch.no_grad():
        assert (loaded(x) - report.model(x)).abs().max() < 1e-5
