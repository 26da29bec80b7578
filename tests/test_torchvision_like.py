"""Networks written the way torchvision writes them (tests/torchvision_nets.py): adaptive
pooling is read as the fixed pooling it equals, and ResNet-18, VGG-11-BN and MobileNetV2
structures at small widths on 32x32 inputs are scored, encoded exactly, masked, physically shrunk,
saved, pruned from the command line and trained and pruned by SPR."""

from __future__ import annotations

import json
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import oamip
from oamip import backends
from oamip.adapters import apply_masks, extract, scored_logits
from oamip.cli import main
from oamip.errors import UnsupportedLayerError
from oamip.formulations import ImportanceSettings, build_importance_model
from oamip.pipelines.spr import spr_prune, train_penalised, zero_group_masks
from oamip.training.data import Dataset
from oamip.training.inference import evaluate
from oamip.training.spr import SPRRegularizer
from tests.torchvision_nets import VGG, MobileNetV2, ResNet18, calibrated, randomised

SOLVE_ATOL = 1e-6
NETS = {
    "resnet18": ResNet18,
    "vgg11_bn": VGG,
    "mobilenet_v2": MobileNetV2,
    "mobilenet_v2_relu6": partial(MobileNetV2, activation=nn.ReLU6),
}
"""The copies; MobileNetV2 with ReLU as well as with torchvision's own ReLU6."""


class FunctionalPools(nn.Module):
    """Adaptive poolings as function calls: max to 2x2, then global average."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        x = F.adaptive_max_pool2d(F.relu(self.conv(x)), (2, 2))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def _pooled(pool: nn.Module, channels: int = 3) -> nn.Sequential:
    torch.manual_seed(0)
    conv = nn.Conv2d(1, channels, 3, padding=1)
    return nn.Sequential(conv, nn.ReLU(), pool, nn.Flatten(), nn.LazyLinear(2))


def _net(name: str, seed: int = 0, **kwargs) -> nn.Module:
    """A seeded copy; MobileNetV2's BatchNorm statistics are measured (see ``calibrated``)."""
    weights = calibrated if name.startswith("mobilenet") else randomised
    return weights(NETS[name](**kwargs), seed)


def _data(seed: int, n: int, side: int = 32) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 1, (n, 3, side, side)), rng.integers(0, 10, n)


def _torch(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.double().eval()(torch.as_tensor(x, dtype=torch.float64)).numpy()


@pytest.mark.parametrize(
    "pool",
    [
        nn.AdaptiveAvgPool2d((1, 1)),
        nn.AdaptiveAvgPool2d(2),
        nn.AdaptiveAvgPool2d((None, 3)),
        nn.AdaptiveMaxPool2d((1, 1)),
        nn.AdaptiveMaxPool2d((3, 2)),
    ],
    ids=repr,
)
def test_an_adaptive_pooling_is_read_as_the_fixed_pooling_it_equals(pool):
    model = _pooled(pool)
    x = np.random.default_rng(1).uniform(-1, 1, (3, 1, 6, 6))
    model(torch.as_tensor(x, dtype=torch.float32))  # sizes the lazy Linear
    np.testing.assert_allclose(extract(model, x).network.forward(x), _torch(model, x), atol=1e-12)


def test_adaptive_pooling_calls_are_read_like_the_modules(tmp_path):
    model = FunctionalPools().eval()
    x = np.random.default_rng(2).uniform(-1, 1, (3, 1, 6, 6))
    extracted = extract(model, x)
    np.testing.assert_allclose(extracted.network.forward(x), _torch(model, x), atol=1e-12)
    saved = oamip.load_model(oamip.save_model(model, tmp_path / "functional.pt"))
    assert [type(m).__name__ for m in saved][2:4] == ["AdaptiveMaxPool2d", "AdaptiveAvgPool2d"]
    np.testing.assert_allclose(_torch(saved, x), _torch(model, x), atol=1e-6)


@pytest.mark.parametrize(
    ("pool", "sizes"),
    [(nn.AdaptiveAvgPool2d((4, 4)), "6x6 inputs to 4x4"), (nn.AdaptiveMaxPool2d(5), "to 5x5")],
)
def test_an_output_size_that_does_not_divide_the_input_size_is_refused(pool, sizes):
    model = _pooled(pool)
    x = np.zeros((1, 1, 6, 6))
    model(torch.as_tensor(x, dtype=torch.float32))
    with pytest.raises(UnsupportedLayerError, match=f"layer '2' .*{sizes}.*must divide"):
        extract(model, x)


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("name", sorted(NETS))
def test_fixed_scores_reproduce_the_scored_torch_forward(name, binary):
    """The whole network's MIP at fixed scores gives PyTorch's logits (scores acting at every
    ReLU of a unit); binary scores are the forward of the model masked by ``apply_masks``."""
    model = _net(name)
    x, y = _data(0, 2)
    extracted = extract(model, x)
    settings = ImportanceSettings("hinge", scores="binary" if binary else "continuous", min_keep=0)
    im = build_importance_model(extracted.network, x, y, settings)
    rng = np.random.default_rng(1)
    network = extracted.network

    def draw(n: int) -> np.ndarray:
        return rng.integers(0, 2, n).astype(float) if binary else rng.uniform(0, 1, n)

    scores = {i: draw(network.layers[i].n_units) for i in network.scored}
    im.fix_scores(scores)
    assert backends.get("highs").solve(im.model).status == "optimal"
    expected = scored_logits(extracted, x, extracted.scores_by_name(scores), im.big_m)
    np.testing.assert_allclose(im.logit_values(), expected, atol=SOLVE_ATOL)
    if binary:
        masks = {k: v > 0.5 for k, v in extracted.scores_by_name(scores).items()}
        np.testing.assert_allclose(_torch(apply_masks(model, masks), x), expected, atol=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(NETS))
def test_layer_scoring_masks_removal_and_saving_agree(name, tmp_path):
    """``score_neurons(decompose="layer")`` scores every unit; its masks applied and physically
    removed give the same outputs, removal shrinks the model, and the small model round-trips
    through save_model/load_model."""
    model = _net(name)
    x, y = _data(1, 2)
    aux = _data(2, 20)
    res = oamip.score_neurons(
        model, x, y, decompose="layer", aux_data=aux, time_limit=1, residual="both"
    )
    assert set(res.scores) == set(extract(model, x).units)
    masks = {k: m if m.any() else np.eye(len(m), dtype=bool)[0] for k, m in res.masks(0.5).items()}
    assert not all(m.all() for m in masks.values())
    masked, small = apply_masks(model, masks), oamip.remove_pruned(model, masks)
    test = _data(3, 8)[0]
    np.testing.assert_allclose(_torch(small, test), _torch(masked, test), atol=1e-5)
    assert _params(small) < _params(model)
    loaded = oamip.load_model(oamip.save_model(small, tmp_path / "small.pt"))
    np.testing.assert_allclose(_torch(loaded, test), _torch(small, test), atol=1e-5)


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _balanced_two_class(name: str, x: np.ndarray) -> tuple[nn.Module, np.ndarray]:
    """A two-class network whose output bias splits ``x`` in half, and its labels of ``x``
    (every class then has correctly classified samples, as ``oamip prune`` needs)."""
    model = _net(name, 6, num_classes=2)
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    z = _torch(model, x)
    with torch.no_grad():
        last.bias[1] += float(np.median(z[:, 0] - z[:, 1]))
    return model.float(), _torch(model, x).argmax(1)


@pytest.mark.parametrize("name", sorted(NETS))
def test_oamip_prune_prunes_a_saved_torchvision_style_network(name, tmp_path):
    """The user's flow: a saved model and an .npz of 32x32 RGB images, pruned end to end."""
    x = _data(4, 80)[0].astype(np.float32)
    model, y = _balanced_two_class(name, x)
    model_file = oamip.save_model(model, tmp_path / "model.pt")
    data = tmp_path / "images.npz"
    np.savez(data, x_train=x[:60], y_train=y[:60], x_test=x[60:], y_test=y[60:])
    out = tmp_path / "out"
    args = ["prune", "--model", str(model_file), "--data", str(data), "--time-limit", "2"]
    assert main([*args, "--finetune-epochs", "0", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    pruned = oamip.load_model(out / "pruned.pt")
    assert _params(pruned) == report["params_after"] <= _params(model)


@pytest.fixture
def one_thread():
    """Small models train fastest on one thread, and do not slow down on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _images(seed: int, n: int, side: int = 16) -> Dataset:
    """Random RGB images with random labels, split in four for training and one for testing:
    enough for SPR to train on (at 16x16 every copy's adaptive pooling still divides)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (n, 3, side, side)).astype(np.float32)
    y = rng.integers(0, 10, n)
    cut = n * 4 // 5
    return Dataset(x[:cut], y[:cut], x[cut:], y[cut:], "images", 10)


SPR_FAST = dict(epochs=20, lr=3e-2, progress=False)
"""80 steps of Adam: enough for SPR at lam 5 to drive a few groups of each copy to zero."""


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("name", sorted(NETS))
def test_spr_trains_and_prunes_each_and_the_pruned_model_is_the_masked_one(name):
    """SPR drives some units' groups to zero; their masks applied and the units physically
    removed give the same outputs, and ``spr_prune`` reports the smaller model it returns."""
    data = _images(5, 320)
    model = _net(name).float()
    reg = SPRRegularizer(model, lam=5.0, alpha=0.5)
    train_penalised(model, data, reg, **SPR_FAST)
    masks = zero_group_masks(reg)
    assert any(not keep.all() for keep in masks.values())
    masked = apply_masks(model, masks)
    small = oamip.remove_pruned(masked, masks)
    test = data.x_test.astype(np.float64)
    np.testing.assert_allclose(_torch(small, test), _torch(masked, test), atol=1e-5)
    assert _params(small) < _params(model)
    report = spr_prune(
        _net(name).float(), data, finetune_epochs=0, lam=5.0, group_lasso_scales=(), **SPR_FAST
    )
    assert report.units_pruned > 0
    assert _params(report.model) == report.params_after < report.params_total
    assert evaluate(report.model, data.x_test, data.y_test) == report.accuracy_after
