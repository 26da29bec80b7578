"""The torch adapter: reading models, writing masks, removing units, saving and loading."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import oamip
from oamip.adapters import extract, read_chain
from tests.nets import FunctionalNet, PoolFirstNet, convnet, mlp


def _same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _forward(model, x):
    with torch.no_grad():
        return model.eval().double()(torch.as_tensor(x, dtype=torch.float64)).numpy()


def test_extract_names_the_scored_modules_and_folds_batchnorm():
    model = convnet(0)
    extracted = extract(model, np.zeros((1, 1, 8, 8)))
    assert list(extracted.units) == ["0", "4", "7"]
    assert extracted.units["0"].batchnorm == "1"
    activated = [layer for layer in extracted.network.layers if getattr(layer, "activation", None)]
    assert [layer.n_units for layer in activated] == [
        3,
        4,
        5,
    ]


def test_functional_relu_pooling_and_view_are_read_as_a_chain():
    kinds = [step.kind for step in read_chain(FunctionalNet(0))]
    act = "activation"
    assert kinds == ["conv", act, "maxpool", "flatten", "linear", act, "dropout", "linear"]


def test_apply_masks_zeroes_pruned_units_and_leaves_the_input_untouched():
    model = convnet(1)
    before = copy.deepcopy(model)
    masks = {"0": np.array([True, False, True]), "7": np.array([1, 0, 0, 1, 1], dtype=bool)}
    pruned = oamip.apply_masks(model, masks)
    assert _same_state(model, before)
    x = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        after_bn = pruned[2](pruned[1](pruned[0](x)))
        hidden = pruned[8](pruned[7](pruned[6](pruned[5](pruned[4](pruned[3](after_bn))))))
    assert torch.all(after_bn[:, 1] == 0)
    assert torch.all(hidden[:, [1, 2]] == 0)


def test_remove_pruned_is_smaller_computes_the_same_logits_and_draws_nothing():
    model = convnet(2)
    masks = {"0": np.array([True, False, True]), "4": np.array([1, 1, 0, 1], dtype=bool)}
    masks["7"] = np.array([1, 0, 1, 1, 0], dtype=bool)
    state = torch.get_rng_state()
    small = oamip.remove_pruned(model, masks)
    assert torch.equal(torch.get_rng_state(), state), "new layers must not draw random weights"
    x = np.random.default_rng(0).uniform(size=(5, 1, 8, 8))
    np.testing.assert_allclose(
        _forward(small, x), _forward(oamip.apply_masks(model, masks), x), atol=1e-10
    )
    count = sum(p.numel() for p in small.parameters())
    assert count < sum(p.numel() for p in model.parameters())
    assert small[0].out_channels == 2 and small[4].in_channels == 2 and small[7].in_features == 12


def test_remove_pruned_handles_functional_models():
    model = FunctionalNet(3)
    masks = {"conv": np.array([False, True]), "fc1": np.array([True, True, False, True])}
    small = oamip.remove_pruned(model, masks)
    x = np.random.default_rng(1).uniform(size=(3, 1, 6, 6))
    np.testing.assert_allclose(
        _forward(small, x), _forward(oamip.apply_masks(model, masks), x), atol=1e-10
    )


def test_max_pooling_before_the_relu_keeps_its_convolution_scored():
    model = PoolFirstNet(5)
    extracted = extract(model, np.zeros((1, 1, 8, 8)))
    assert list(extracted.units) == ["conv1", "conv2"]
    assert extracted.units["conv1"].batchnorm == "bn"
    masks = {"conv1": np.array([True, False, True]), "conv2": np.array([False, True])}
    small = oamip.remove_pruned(model, masks)
    x = np.random.default_rng(5).uniform(size=(3, 1, 8, 8))
    np.testing.assert_allclose(
        _forward(small, x), _forward(oamip.apply_masks(model, masks), x), atol=1e-10
    )


def test_saved_model_loads_back_identical_without_pickled_code(tmp_path):
    model = oamip.remove_pruned(convnet(4), {"4": np.array([1, 0, 1, 1], dtype=bool)})
    path = oamip.save_model(model, tmp_path / "sub" / "pruned.pt")
    loaded = oamip.load_model(path)
    x = np.random.default_rng(2).uniform(size=(2, 1, 8, 8))
    np.testing.assert_allclose(_forward(loaded, x), _forward(model, x), atol=0)
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["pruned.pt"]
    assert path.stat().st_mode & 0o044 == 0o044 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_load_model_refuses_missing_corrupt_and_foreign_files(tmp_path):
    with pytest.raises(oamip.InvalidInputError, match="does not exist"):
        oamip.load_model(tmp_path / "nope.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a model")
    with pytest.raises(oamip.InvalidInputError, match="cannot read .* as a model file"):
        oamip.load_model(tmp_path / "bad.pt")
    with pytest.raises(oamip.InvalidInputError, match="is a folder, not a model file"):
        oamip.load_model(tmp_path)
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(oamip.InvalidInputError, match="not written by oamip.save_model"):
        oamip.load_model(tmp_path / "other.pt")


def test_save_model_refuses_a_folder_or_a_file_in_the_way_and_writes_nothing(tmp_path):
    model = mlp(0)
    (tmp_path / "somedir").mkdir()
    (tmp_path / "afile").write_text("")
    with pytest.raises(oamip.InvalidInputError, match="it is a folder"):
        oamip.save_model(model, tmp_path / "somedir")
    with pytest.raises(oamip.InvalidInputError, match="'.*afile' is a file, not a folder"):
        oamip.save_model(model, tmp_path / "afile" / "x.pt")
    with pytest.raises(oamip.InvalidInputError, match="must be a str or os.PathLike"):
        oamip.save_model(model, None)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["afile", "somedir"]


def test_a_failed_save_leaves_the_old_file_and_no_partial_one(tmp_path, monkeypatch):
    path = oamip.save_model(mlp(0), tmp_path / "model.pt")
    before = path.read_bytes()

    def fail(_payload, target):
        Path(target).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", fail)
    with pytest.raises(oamip.InvalidInputError, match="No space left on device"):
        oamip.save_model(mlp(1), path)
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]
    assert path.read_bytes() == before


def _linear_args(payload, **args):
    payload["layers"][1][1]["args"].update(args)


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (lambda p: p.pop("layers"), "has no list of layers"),
        (lambda p: p.pop("state_dict"), "has no state dict"),
        (lambda p: p.update(version="1"), "format version '1' is not a positive integer"),
        (lambda p: p["layers"].append("x"), "layer entry is not"),
        (lambda p: p["layers"].append(("9", {"type": "Softmax", "args": {}})), "unknown layer"),
        (lambda p: _linear_args(p, foo=1), "layer '1' .* unexpected keyword argument 'foo'"),
        (lambda p: _linear_args(p, in_features=-1), "layer '1' .* negative dimension"),
        (lambda p: p["layers"].append(("9", {"type": "Dropout", "args": {"p": 2}})), "'9'"),
        (lambda p: p["layers"].append(("a.b", {"type": "ReLU", "args": {}})), "'a.b'"),
        (lambda p: p["state_dict"].update({"1.weight": 3}), "weights do not fit"),
    ],
)
def test_load_model_refuses_tampered_files_with_the_fault_named(tmp_path, tamper, message):
    path = oamip.save_model(mlp(0), tmp_path / "model.pt")
    payload = torch.load(path, weights_only=True)
    tamper(payload)
    torch.save(payload, path)
    with pytest.raises(oamip.InvalidInputError, match=f"{message}.*written by oamip.save_model"):
        oamip.load_model(path)


def test_load_model_refuses_newer_versions_and_non_paths(tmp_path):
    path = oamip.save_model(mlp(0), tmp_path / "model.pt")
    payload = torch.load(path, weights_only=True)
    payload["version"] = 99
    torch.save(payload, path)
    with pytest.raises(oamip.InvalidInputError, match="newer oamip .* version 99.*upgrade oamip"):
        oamip.load_model(path)
    with pytest.raises(oamip.InvalidInputError, match="must be a str or os.PathLike"):
        oamip.load_model(None)


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.out = nn.Linear(4, 2)

    def forward(self, x):
        return self.out(torch.relu(self.fc(x)) + x)


class _SharedLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.out = nn.Linear(4, 2)

    def forward(self, x):
        return self.out(torch.relu(self.fc(torch.relu(self.fc(x)))))


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (
            nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)),
            r"layer '1' \(Tanh\) is not a piecewise-linear activation .*encoded: Hardtanh, "
            "LeakyReLU, ReLU, ReLU6",
        ),
        (_SharedLayer(), "layer 'fc' is applied 2 times"),
        (nn.Sequential(nn.Linear(4, 3), nn.Softmax(1), nn.Linear(3, 2)), "'1' of type Softmax"),
        (
            nn.Sequential(nn.Linear(4, 3), nn.Sigmoid(), nn.Linear(3, 2)),
            r"activation '1' \(Sigmoid\) maps 0 to 0.5",
        ),
        (_Residual(), "not a chain"),
        (nn.Sequential(nn.Linear(4, 3), nn.ReLU()), "must end with a Linear"),
        (nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.ReLU(), nn.Linear(3, 2)), "activation '2'"),
    ],
)
def test_unsupported_models_are_refused_with_the_culprit_named(model, message):
    with pytest.raises(oamip.UnsupportedLayerError, match=message):
        extract(model, np.zeros((1, 4)))


def test_masks_of_wrong_layers_or_sizes_are_refused():
    model = mlp(0)
    with pytest.raises(oamip.InvalidInputError, match="not a scored layer"):
        oamip.apply_masks(model, {"5": np.ones(3, dtype=bool)})
    with pytest.raises(oamip.InvalidInputError, match="has 5 units"):
        oamip.apply_masks(model, {"1": np.ones(4, dtype=bool)})
    with pytest.raises(oamip.InvalidInputError, match="removes every unit"):
        oamip.remove_pruned(model, {"1": np.zeros(5, dtype=bool)})


@pytest.mark.parametrize("prune", [oamip.apply_masks, oamip.remove_pruned])
@pytest.mark.parametrize(
    ("mask", "message"),
    [
        (np.array([0.05, 0.5, 0, 0, 1]), "values other than 0 and 1"),
        (np.array([np.nan, 1, 1, 1, 1]), "values other than 0 and 1"),
        (np.array(list("11011")), "dtype <U1"),
        (np.array([True, None, True, True, True]), "dtype object"),
    ],
)
def test_masks_that_are_not_boolean_are_refused(prune, mask, message):
    with pytest.raises(oamip.InvalidInputError, match=f"{message}.*use res.masks"):
        prune(mlp(0), {"1": mask})


@pytest.mark.parametrize("masks", [None, [np.ones(5, dtype=bool)]])
def test_masks_must_be_a_dict(masks):
    with pytest.raises(oamip.InvalidInputError, match="masks must be a dict.*use res.masks"):
        oamip.apply_masks(mlp(0), masks)


def test_zero_one_arrays_and_bool_tensors_are_read_as_keep_masks():
    model = mlp(0)
    expected = oamip.apply_masks(model, {"1": np.array([True, False, True, True, False])})
    keep = [True, False, True, True, False]
    for mask in (np.array(keep, dtype=int), torch.tensor(keep), torch.tensor(keep).double()):
        assert _same_state(oamip.apply_masks(model, {"1": mask}), expected)
