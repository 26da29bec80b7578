import gzip
from pathlib import Path

import numpy as np
import pytest

from oamip.errors import InvalidInputError
from oamip.training.data import (
    IDX_FILES,
    Dataset,
    load_data,
    load_digits,
    load_idx_folder,
    load_npz,
    mip_batch,
)
from oamip.training.inference import predict
from oamip.training.models import build
from oamip.training.train import train

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist-10k.npz"


def _write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, dtype=">u4").tobytes()
    raw = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


def _idx_folder(folder: Path, compress: bool = False) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, (30, 6, 5)),
        "y_train": np.arange(30) % 3,
        "x_test": rng.integers(0, 256, (9, 6, 5)),
        "y_test": np.arange(9) % 3,
    }
    for key, array in arrays.items():
        name = IDX_FILES[key] + (".gz" if compress else "")
        _write_idx(folder / name, array, compress)
    return arrays


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_digits()


@pytest.fixture(scope="module")
def trained(digits):
    return train(build("mlp", digits, hidden=(32,)), digits, epochs=3, lr=1e-2, progress=False)


def test_digits_are_float_images_in_unit_range_with_a_fixed_stratified_split(digits):
    assert digits.x_train.dtype == np.float32 and digits.x_train.shape[1:] == (1, 8, 8)
    assert digits.x_train.min() == 0.0 and digits.x_train.max() == 1.0
    assert len(digits.x_train) + len(digits.x_test) == 1797 and digits.num_classes == 10
    train_share = np.bincount(digits.y_train) / len(digits.y_train)
    test_share = np.bincount(digits.y_test) / len(digits.y_test)
    np.testing.assert_allclose(train_share, test_share, atol=0.01)
    np.testing.assert_array_equal(load_digits().y_test, digits.y_test)


@pytest.mark.parametrize("compress", [False, True])
def test_idx_folder_reads_back_what_was_written(tmp_path, compress):
    arrays = _idx_folder(tmp_path, compress)
    data = load_idx_folder(tmp_path)
    np.testing.assert_allclose(data.x_train[:, 0], arrays["x_train"] / 255.0, atol=1e-7)
    np.testing.assert_array_equal(data.y_test, arrays["y_test"])
    assert data.x_test.shape == (9, 1, 6, 5) and data.num_classes == 3 and data.name == "mnist"


def test_idx_folder_names_the_missing_files(tmp_path):
    _idx_folder(tmp_path)
    (tmp_path / IDX_FILES["y_test"]).unlink()
    with pytest.raises(InvalidInputError, match="t10k-labels-idx1-ubyte"):
        load_idx_folder(tmp_path)


def test_truncated_idx_file_is_reported(tmp_path):
    _idx_folder(tmp_path)
    images = tmp_path / IDX_FILES["x_train"]
    images.write_bytes(images.read_bytes()[:-7])
    with pytest.raises(InvalidInputError, match="truncated"):
        load_idx_folder(tmp_path)


def test_data_spec_selects_the_loader(tmp_path):
    _idx_folder(tmp_path)
    assert load_data(f"fashion-mnist:{tmp_path}").name == "fashion-mnist"
    assert load_data("digits").name == "digits"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("mnist", "cannot read data spec 'mnist'; use digits"),
        ("npz:", "cannot read data spec"),
        ("cifar:/tmp", "unknown data kind 'cifar'"),
        ("mnist:/no/such/place", "'/no/such/place' does not exist; mnist:PATH takes a folder"),
    ],
)
def test_bad_data_spec_is_refused_with_a_reason(spec, message):
    with pytest.raises(InvalidInputError, match=message):
        load_data(spec)


def test_npz_with_uint8_images_is_scaled(tmp_path):
    file = tmp_path / "small.npz"
    arrays = _idx_folder(tmp_path)
    np.savez(file, **{k: v.astype(np.uint8) for k, v in arrays.items()})
    data = load_data(f"npz:{file}")
    assert data.name == "small" and data.x_train.dtype == np.float32
    np.testing.assert_allclose(data.x_train[:, 0] * 255.0, arrays["x_train"], atol=1e-4)


@pytest.mark.parametrize("suffix", [".npz", ".NPZ"])
def test_a_path_ending_in_npz_is_read_without_a_prefix(tmp_path, suffix):
    file = tmp_path / f"plain{suffix}"
    arrays = _idx_folder(tmp_path)
    with open(file, "wb") as handle:  # np.savez would add .npz to a path not ending in it
        np.savez(handle, **{k: v.astype(np.uint8) for k, v in arrays.items()})
    data, prefixed = load_data(str(file)), load_data(f"npz:{file}")
    assert data.name == "plain" == prefixed.name
    np.testing.assert_array_equal(data.x_train, prefixed.x_train)
    np.testing.assert_array_equal(data.y_test, prefixed.y_test)


def test_a_missing_npz_without_a_prefix_is_named(tmp_path):
    with pytest.raises(InvalidInputError, match="missing.npz' does not exist"):
        load_data(str(tmp_path / "missing.npz"))


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x_train": np.zeros((2, 4))}, "lacks the arrays y_train, x_test, y_test"),
        (
            {"x_train": np.full((2, 4), 3.0), "y_train": [0, 1], "x_test": np.zeros((1, 4))}
            | {"y_test": [0]},
            "outside \\[0, 1\\]",
        ),
        (
            {"x_train": np.zeros((2, 4)), "y_train": [0, 1, 1], "x_test": np.zeros((1, 4))}
            | {"y_test": [0]},
            "2 inputs and 3 labels",
        ),
        (
            {"x_train": np.zeros((2, 4)), "y_train": [0, -1], "x_test": np.zeros((1, 4))}
            | {"y_test": [0]},
            "class numbers",
        ),
    ],
)
def test_bad_npz_content_is_named(tmp_path, arrays, message):
    file = tmp_path / "bad.npz"
    np.savez(file, **arrays)
    with pytest.raises(InvalidInputError, match=message):
        load_npz(file)


def test_file_that_is_not_an_npz_is_refused(tmp_path):
    file = tmp_path / "junk.npz"
    file.write_bytes(b"not a zip archive at all")
    with pytest.raises(InvalidInputError, match="not a readable .npz"):
        load_npz(file)


@pytest.mark.skipif(not SHARED_MNIST.exists(), reason="shared MNIST sample not present")
def test_shared_mnist_npz_loads_as_28x28_images():
    data = load_data(f"mnist:{SHARED_MNIST}")
    assert data.x_train.shape == (8000, 1, 28, 28) and data.num_classes == 10
    assert data.x_test.min() >= 0.0 and data.x_test.max() <= 1.0


def test_mip_batch_takes_k_correctly_classified_samples_per_class(digits, trained):
    batch = mip_batch(trained, digits, samples_per_class=3, seed=1)
    np.testing.assert_array_equal(np.bincount(batch.y), np.full(10, 3))
    np.testing.assert_array_equal(predict(trained, batch.x), batch.y)
    np.testing.assert_array_equal(digits.y_train[batch.indices], batch.y)
    np.testing.assert_array_equal(mip_batch(trained, digits, 3, seed=1).indices, batch.indices)
    assert not np.array_equal(mip_batch(trained, digits, 3, seed=2).indices, batch.indices)


def test_mip_batch_names_the_class_with_too_few_samples(digits, trained):
    with pytest.raises(InvalidInputError, match="class 0 has only .* 1000 needed"):
        mip_batch(trained, digits, samples_per_class=1000)
