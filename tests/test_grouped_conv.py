"""Grouped and depthwise convolutions: encoded exactly, a depthwise channel scored, masked and
removed with the channel feeding it, a grouped convolution's channels removed group by group,
and MobileNetV2's linear bottleneck (an addition with no activation after it) left unscored but
masked and removed like any unit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import oamip
from oamip import backends
from oamip.adapters import apply_masks, extract, scored_logits
from oamip.adapters.chain import units
from oamip.adapters.structure import Structure
from oamip.errors import UnsupportedLayerError
from oamip.formulations import ImportanceSettings, build_importance_model
from oamip.pipelines.inputs import layer_labels
from tests.nets import random_bn
from tests.test_brute_force import _all_masks, _objective, _pruned_logits

SOLVE_ATOL = 1e-6


def _block(c_in: int, c_out: int, kernel: int = 3, groups: int = 1, relu: bool = True):
    conv = nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, groups=groups, bias=False)
    return [conv, random_bn(nn.BatchNorm2d(c_out))] + ([nn.ReLU()] if relu else [])


class DepthwiseNet(nn.Sequential):
    """Convolution, depthwise convolution, 1x1 convolution, each with BatchNorm and ReLU."""

    def __init__(self, seed: int, side: int = 4) -> None:
        torch.manual_seed(seed)
        super().__init__(
            *_block(1, 3),
            *_block(3, 3, groups=3),
            *_block(3, 2, kernel=1),
            nn.Flatten(),
            nn.Linear(2 * side * side, 3),
        )


class GroupedNet(nn.Sequential):
    """A convolution of two groups between two ungrouped ones."""

    def __init__(self, seed: int, side: int = 4) -> None:
        torch.manual_seed(seed)
        super().__init__(
            *_block(1, 4),
            *_block(4, 4, groups=2),
            nn.Flatten(),
            nn.Linear(4 * side * side, 3),
        )


class InvertedNet(nn.Module):
    """A MobileNetV2 stem (convolution, depthwise, linear 1x1 projection) and one inverted
    residual block whose input is added to its projection, with no activation after it."""

    def __init__(self, seed: int, side: int = 4, hidden: int = 3) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.stem = nn.Sequential(
            *_block(1, 3), *_block(3, 3, groups=3), *_block(3, 2, 1, 1, False)
        )
        self.block = nn.Sequential(
            *_block(2, hidden, kernel=1),
            *_block(hidden, hidden, groups=hidden),
            *_block(hidden, 2, 1, 1, False),
        )
        self.fc = nn.Linear(2 * side * side, 3)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.block(x)
        return self.fc(torch.flatten(x, 1))


NETS = {"depthwise": DepthwiseNet, "grouped": GroupedNet, "inverted": InvertedNet}


def _setup(kind: str, seed: int, n: int = 3):
    model = NETS[kind](seed).eval()
    rng = np.random.default_rng(seed)
    return model, rng.uniform(-1, 1, (n, 1, 4, 4)), rng.integers(0, 3, n)


def _torch(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.double().eval()(torch.as_tensor(x, dtype=torch.float64)).numpy()


@pytest.mark.parametrize(
    ("c_in", "c_out", "groups", "stride", "padding", "dilation"),
    [(4, 6, 2, 1, 1, 1), (4, 4, 4, 2, 1, 1), (3, 6, 3, 1, 2, 2), (6, 4, 2, 2, 0, 1)],
)
def test_a_grouped_convolution_is_encoded_exactly(c_in, c_out, groups, stride, padding, dilation):
    torch.manual_seed(0)
    conv = nn.Conv2d(c_in, c_out, 3, stride, padding, dilation, groups=groups)
    model = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    x = np.random.default_rng(1).uniform(-1, 1, (3, c_in, 7, 7))
    model(torch.as_tensor(x, dtype=torch.float32))  # sizes the lazy Linear
    np.testing.assert_allclose(extract(model, x).network.forward(x), _torch(model, x), atol=1e-12)


def test_a_depthwise_convolution_is_one_unit_with_the_channels_feeding_it():
    model, x, _ = _setup("inverted", 0)
    units = {unit.name: unit for unit in Structure.of(model).units}
    assert units["stem.0"].producers == ("stem.0", "stem.3")
    assert units["stem.0"].batchnorms == ("stem.1", "stem.4")
    assert units["block.0"].producers == ("block.0", "block.3")
    assert units["stem.6"].kind == "group" and units["stem.6"].producers == ("stem.6", "block.6")
    extracted = extract(model, x)
    assert list(extracted.units) == ["stem.0", "block.0"]  # the linear bottleneck is not scored
    layers = extracted.network.layers
    assert [layers[i].share for i in (1, 4)] == [0, 3]


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("kind", sorted(NETS))
def test_fixed_scores_reproduce_the_scored_torch_forward(kind, binary):
    """Scores act at the ReLU of a layer and of the depthwise convolution after it alike; binary
    scores give the forward of the model masked by ``apply_masks``."""
    model, x, y = _setup(kind, 1)
    extracted = extract(model, x)
    settings = ImportanceSettings("hinge", scores="binary" if binary else "continuous", min_keep=0)
    im = build_importance_model(extracted.network, x, y, settings)
    rng = np.random.default_rng(2)
    network = extracted.network
    for _ in range(3):
        scores = {
            i: rng.integers(0, 2, network.layers[i].n_units).astype(float)
            if binary
            else rng.uniform(0, 1, network.layers[i].n_units)
            for i in network.scored
        }
        im.fix_scores(scores)
        assert backends.get("highs").solve(im.model).status == "optimal"
        by_name = extracted.scores_by_name(scores)
        expected = scored_logits(extracted, x, by_name, im.big_m)
        np.testing.assert_allclose(im.logit_values(), expected, atol=SOLVE_ATOL)
        if binary:
            masks = {k: v > 0.5 for k, v in by_name.items()}
            np.testing.assert_allclose(_torch(apply_masks(model, masks), x), expected, atol=1e-9)


@pytest.mark.parametrize(
    ("kind", "lam", "seed"), [("depthwise", 1.0, 3), ("grouped", 2.0, 4), ("inverted", 1.5, 5)]
)
def test_binary_optimum_equals_enumeration_over_all_masks(kind, lam, seed):
    """The MIP's optimum is the best of every mask of the scored units, each applied to the
    model by ``apply_masks`` (a depthwise channel going with the channel feeding it)."""
    model, x, y = _setup(kind, seed)
    res = oamip.score_neurons(model, x, y, loss="hinge", lam=lam, scores="binary", mip_gap=1e-9)
    assert res.status == "optimal"
    sizes = {name: len(s) for name, s in res.scores.items()}
    objectives = [
        _objective(_pruned_logits(model, x, masks), y, masks, "hinge", lam)
        for masks in _all_masks(sizes, 1)
    ]
    assert res.objective == pytest.approx(min(objectives), abs=1e-6)
    found = {name: s > 0.5 for name, s in res.scores.items()}
    pruned = _objective(_pruned_logits(model, x, found), y, found, "hinge", lam)
    assert pruned == pytest.approx(res.objective, abs=1e-9)


MASKS = {
    "depthwise": {"0": [True, False, True], "6": [False, True]},
    "grouped": {"0": [1, 0, 0, 1], "3": [0, 1, 1, 0]},
    "inverted": {"stem.0": [0, 1, 1], "stem.6": [1, 0], "block.0": [1, 0, 1]},
}


@pytest.mark.parametrize("kind", sorted(NETS))
def test_masks_and_removal_give_the_same_outputs_and_survive_saving(kind, tmp_path):
    """Removal takes a depthwise channel away with its input channel (and the convolution's
    groups with them), a grouped convolution's channels from each group alike; the small
    model computes what the masked one does and saves and loads as it is."""
    model, _, _ = _setup(kind, 6)
    masks = {name: np.array(m, dtype=bool) for name, m in MASKS[kind].items()}
    small = oamip.remove_pruned(model, masks)
    x = np.random.default_rng(7).uniform(-1, 1, (5, 1, 4, 4))
    np.testing.assert_allclose(_torch(small, x), _torch(apply_masks(model, masks), x), atol=1e-12)
    for unit in Structure.of(model).units:
        for name in unit.producers:
            assert small.get_submodule(name).out_channels == masks[unit.name].sum()
    grouped = [m for m in small.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert grouped and all(m.weight.shape[1] * m.groups == m.in_channels for m in grouped)
    loaded = oamip.load_model(oamip.save_model(small, tmp_path / "small.pt"))
    np.testing.assert_allclose(_torch(loaded, x), _torch(small, x), atol=1e-12)


@pytest.mark.parametrize(
    ("name", "mask", "side"),
    [("0", [1, 1, 1, 0], "input"), ("3", [1, 1, 0, 0], "output"), ("0", [0, 0, 1, 1], "input")],
)
def test_removal_refuses_masks_that_keep_unequal_numbers_per_group(name, mask, side):
    model, _, _ = _setup("grouped", 8)
    with pytest.raises(UnsupportedLayerError, match=f"cannot remove {side} channels of '3'"):
        oamip.remove_pruned(model, {name: np.array(mask, dtype=bool)})


def test_a_network_with_depthwise_convolutions_is_labelled_and_not_read_as_a_chain():
    model, _, _ = _setup("depthwise", 9)
    with pytest.raises(UnsupportedLayerError, match="layer '3' is a grouped convolution"):
        units(model)
    labels = layer_labels(model, ["0", "6"])
    assert labels["0"] == "0 Conv2d 1->3 3x3 + Conv2d 3->3 3x3 groups=3"
    assert labels["6"] == "6 Conv2d 3->2 1x1"
