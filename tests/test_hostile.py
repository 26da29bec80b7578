"""Hostile and unusual input: half-precision models, bad labels, lying IDX headers, model files
whose declared layers do not match their weights, and models left in training mode. Each is read
correctly or refused with a one-line error before any large allocation."""

from __future__ import annotations

import copy
import gzip
import subprocess
import sys
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import oamip
from oamip.adapters import extract
from oamip.errors import InvalidInputError
from oamip.pipelines.inputs import read_model
from oamip.training import models
from oamip.training.data import (
    IDX_FILES,
    MAX_CLASSES,
    Dataset,
    load_idx_folder,
    load_npz,
    make_dataset,
)
from tests.nets import mlp, random_bn

SMALL_PEAK = 8 << 20
"""Bytes a refusal may allocate: far below what the hostile files ask for."""


def _one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def _peak_bytes(action) -> int:
    """The largest amount of Python and numpy memory held while ``action`` runs (it raises)."""
    tracemalloc.start()
    try:
        with pytest.raises(InvalidInputError):
            action()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# -- half-precision models ------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_models_are_scored_exactly_on_a_float64_copy(dtype):
    model = mlp(5, (6, 5, 4, 3), batchnorm=True).to(dtype)
    before = copy.deepcopy(model.state_dict())
    x = torch.rand(3, 6, generator=torch.Generator().manual_seed(5)).to(dtype)
    y = torch.tensor([0, 1, 2])
    res = oamip.score_neurons(model, x, y, lam=1.0)
    wide = oamip.score_neurons(copy.deepcopy(model).double(), x.double(), y, lam=1.0)
    assert res.status == wide.status == "optimal"
    assert res.objective == pytest.approx(wide.objective, rel=1e-12)
    assert res.logit_error <= 1e-6
    assert all(p.dtype == dtype for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def _tiny_data() -> Dataset:
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(12, 6)).astype(np.float32)
    return make_dataset("tiny", x, np.arange(12) % 3, x[:6], np.arange(6) % 3)


def test_half_precision_model_files_load_as_float32_with_the_same_values(tmp_path):
    torch.manual_seed(0)
    half = models.mlp(6, [5], 3).to(torch.bfloat16)
    saved = oamip.load_model(oamip.save_model(half, tmp_path / "half.pt"))
    torch.save(half.state_dict(), tmp_path / "state.pt")
    from_state = read_model(tmp_path / "state.pt", "mlp", _tiny_data())
    for loaded in (saved, from_state):
        values = [p for p in loaded.parameters()]
        assert all(p.dtype == torch.float32 for p in values)
        for p, q in zip(values, half.parameters(), strict=True):
            assert torch.equal(p, q.float())


# -- labels ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("labels", "shown"),
    [
        (np.array([0.0, 1.0, np.inf]), "inf"),
        (np.array([0.0, 1.0, 1e20]), "1e+20"),
        (np.array([0.0, np.nan, 1.0]), "nan"),
        (np.array([0, -3, 1]), "-3"),
        (np.array([0.0, 1.5, 1.0]), "1.5"),
        (np.array([0, 10**9, 1]), "1000000000"),
        (np.array([0, MAX_CLASSES, 1], dtype=np.uint64), str(MAX_CLASSES)),
    ],
)
def test_labels_that_are_not_class_numbers_are_refused_before_any_allocation(
    tmp_path, labels, shown
):
    file = tmp_path / "bad.npz"
    np.savez(file, x_train=np.zeros((3, 4)), y_train=labels, x_test=np.zeros((1, 4)), y_test=[0])
    peak = _peak_bytes(lambda: load_npz(file))
    with pytest.raises(InvalidInputError) as exc:
        load_npz(file)
    message = _one_line(exc)
    assert f"y_train holds the label {shown};" in message and "whole numbers" in message
    assert peak < SMALL_PEAK


def test_more_classes_than_samples_are_refused():
    with pytest.raises(InvalidInputError) as exc:
        make_dataset("many", np.zeros((3, 4)), [0, 1, 2], np.zeros((2, 4)), [0, 900])
    assert "largest label is 900" in _one_line(exc) and "only 5 samples" in str(exc.value)
    fits = make_dataset("ok", np.zeros((3, 4)), [0, 1, 2], np.zeros((2, 4)), [0, 4])
    assert fits.num_classes == 5


# -- IDX files ------------------------------------------------------------------------------


def _idx(shape: tuple[int, ...], data: bytes) -> bytes:
    return bytes([0, 0, 0x08, len(shape)]) + np.array(shape, dtype=">u4").tobytes() + data


def _idx_folder(folder: Path, images: bytes, compress: bool) -> Path:
    """A folder of valid IDX files whose training images are replaced by ``images``."""
    labels = np.arange(4, dtype=np.uint8) % 2
    files = {
        "x_train": images,
        "y_train": _idx((4,), labels.tobytes()),
        "x_test": _idx((4, 2, 2), bytes(16)),
        "y_test": _idx((4,), labels.tobytes()),
    }
    for key, raw in files.items():
        name = IDX_FILES[key] + (".gz" if compress else "")
        (folder / name).write_bytes(gzip.compress(raw) if compress else raw)
    return folder / (IDX_FILES["x_train"] + (".gz" if compress else ""))


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize(
    ("images", "problem"),
    [
        (_idx((2**32 - 1,) * 3, bytes(16)), "announces shape (4294967295, 4294967295, 4294967295)"),
        (_idx((4, 2, 2), bytes(15)), "(16 data bytes) but holds 15"),
        (_idx((4, 2, 2), bytes(17)), "(16 data bytes) but holds more"),
        (_idx((4, 2, 2), b""), "but holds 0 data bytes"),
        (_idx((4, 2, 2), bytes(16))[:9], "ends inside its IDX header"),
        (bytes([0, 0, 0x0D, 3]) + bytes(28), "not an unsigned-byte IDX file"),
    ],
)
def test_idx_headers_that_do_not_match_the_file_are_refused_before_reading_it(
    tmp_path, images, problem, compress
):
    file = _idx_folder(tmp_path, images, compress)
    peak = _peak_bytes(lambda: load_idx_folder(tmp_path))
    with pytest.raises(InvalidInputError) as exc:
        load_idx_folder(tmp_path)
    message = _one_line(exc)
    assert f"'{file}'" in message and problem in message
    assert peak < SMALL_PEAK


def test_valid_idx_files_still_load(tmp_path):
    _idx_folder(tmp_path, _idx((4, 2, 2), bytes(range(16))), compress=True)
    data = load_idx_folder(tmp_path)
    assert data.x_train.shape == (4, 1, 2, 2) and data.x_train[3, 0, 1, 1] == 15 / 255


# -- model files ----------------------------------------------------------------------------

_MEASURE = """
import resource, sys
import torch
import oamip
from oamip.adapters.serialize import load_model
torch.load(sys.argv[1], weights_only=True)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    load_model(sys.argv[1])
except oamip.InvalidInputError as exc:
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    print(grown)
    print(exc)
"""


def _declare_large(payload: dict) -> None:
    """Linear(12000, 12000) declared, the small weights kept: 576 MB to build, 1.4 KB file."""
    payload["layers"][1][1]["args"].update(in_features=12000, out_features=12000)


def _expand_weights(payload: dict) -> None:
    """The declared shapes kept in line, but every tensor a zero-stride view of one value."""
    _declare_large(payload)
    payload["layers"][3][1]["args"].update(in_features=12000)
    big = {"1.weight": (12000, 12000), "1.bias": (12000,), "3.weight": (3, 12000)}
    for key, shape in big.items():
        payload["state_dict"][key] = torch.zeros(1).expand(shape)


@pytest.mark.parametrize(
    ("craft", "problem"),
    [
        (_declare_large, "declare 1.weight of shape (12000, 12000), the file holds (5, 6)"),
        (_expand_weights, "declare 576192012 bytes of values but the file stores only 24"),
    ],
)
def test_model_files_declaring_more_than_they_hold_are_refused_without_allocating(
    tmp_path, craft, problem
):
    torch.manual_seed(0)
    path = oamip.save_model(models.mlp(6, [5], 3), tmp_path / "model.pt")
    payload = torch.load(path, weights_only=True)
    craft(payload)
    torch.save(payload, path)
    assert path.stat().st_size < 4096
    run = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[1],
    )
    grown_kib, message, *rest = run.stdout.splitlines()
    assert not rest and problem in message and "written by oamip.save_model" in message
    assert int(grown_kib) < 50_000


def test_state_dicts_of_zero_stride_tensors_are_refused(tmp_path):
    torch.save({"0.weight": torch.zeros(1).expand(12000, 6)}, tmp_path / "state.pt")
    with pytest.raises(InvalidInputError) as exc:
        read_model(tmp_path / "state.pt", "mlp", _tiny_data())
    assert "declare 288000 bytes of values but the file stores only 4" in _one_line(exc)


def test_model_files_with_meta_or_integer_weights_are_refused(tmp_path):
    torch.manual_seed(0)
    path = oamip.save_model(models.mlp(6, [5], 3), tmp_path / "model.pt")
    payload = torch.load(path, weights_only=True)
    for key, value, problem in [
        ("1.bias", torch.empty(5, device="meta"), "holds no values"),
        ("1.bias", torch.zeros(5, dtype=torch.int64), "1.bias holds torch.int64 values"),
    ]:
        tampered = copy.deepcopy(payload)
        tampered["state_dict"][key] = value
        torch.save(tampered, path)
        with pytest.raises(InvalidInputError) as exc:
            oamip.load_model(path)
        assert problem in _one_line(exc)


# -- training mode --------------------------------------------------------------------------


def _bn_dropout_net() -> nn.Sequential:
    torch.manual_seed(3)
    return nn.Sequential(
        nn.Linear(6, 5),
        random_bn(nn.BatchNorm1d(5)),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(5, 4),
        nn.ReLU(),
        nn.Linear(4, 3),
    ).eval()


def _batch() -> tuple[np.ndarray, np.ndarray]:
    return np.random.default_rng(3).uniform(size=(4, 6)), np.array([0, 1, 2, 1])


def test_a_model_in_training_mode_is_scored_in_eval_mode_with_a_warning():
    model = _bn_dropout_net()
    x, y = _batch()
    expected = oamip.score_neurons(model, x, y, lam=1.0)
    model.train()
    with torch.no_grad():  # on copies: a forward pass in training mode updates BatchNorm
        inputs = torch.as_tensor(x, dtype=torch.float32)
        train_logits = copy.deepcopy(model)(inputs)
        eval_logits = copy.deepcopy(model).eval()(inputs)
    assert not torch.allclose(train_logits, eval_logits, atol=1e-3)
    with pytest.warns(UserWarning) as caught:
        res = oamip.score_neurons(model, x, y, lam=1.0)
    [warning] = [w for w in caught if "training mode" in str(w.message)]
    message = str(warning.message)
    assert "scored in eval mode" in message and "model.eval()" in message
    assert "BatchNorm '1' uses its running statistics" in message
    assert "dropout '3' drops nothing" in message
    assert res.objective == expected.objective
    assert all(np.array_equal(res.scores[k], expected.scores[k]) for k in expected.scores)
    assert model.training


class _FunctionalDropout(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.fc1, self.fc2 = nn.Linear(6, 4), nn.Linear(4, 3)

    def forward(self, x):
        return self.fc2(F.dropout(F.relu(self.fc1(x)), 0.3, training=self.training))


def test_functional_dropout_follows_the_mode_of_the_model():
    model = _FunctionalDropout().train()
    with pytest.warns(UserWarning, match=r"dropout '\w+' drops nothing"):
        extract(model, np.zeros((1, 6)))
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        extract(model, np.zeros((1, 6)))


def test_no_warning_when_eval_mode_changes_nothing():
    x, y = _batch()
    plain = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3)).train()
    partly = _bn_dropout_net()
    partly.train()
    partly[1].eval()
    partly[3].eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        oamip.score_neurons(_bn_dropout_net(), x, y, lam=1.0)
        oamip.score_neurons(plain, x, y, lam=1.0)
        oamip.score_neurons(partly, x, y, lam=1.0)
