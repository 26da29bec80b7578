"""Data sets for training, scoring and evaluation, and the small batch the MIP is built on.

Every loader returns a :class:`Dataset`: inputs as float32 in [0, 1] (images shaped
``(n, C, H, W)``), labels as int64 class indices. Nothing is downloaded: scikit-learn's digits ship
with scikit-learn, MNIST-style data comes from the user as IDX files or an ``.npz``.
"""

from __future__ import annotations

import gzip
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from torch import nn

from oamip.errors import InvalidInputError
from oamip.training.train import predict

DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0
DIGITS_MAX_PIXEL = 16.0
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
IDX_UBYTE = 0x08
DATA_SPECS = "digits | mnist:PATH | fashion-mnist:PATH | npz:PATH"


@dataclass
class Dataset:
    """A train/test split: float32 inputs in [0, 1], int64 labels ``0..num_classes-1``."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    name: str
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one input, e.g. ``(1, 28, 28)``."""
        return tuple(self.x_train.shape[1:])

    @property
    def in_features(self) -> int:
        """The number of values in one input once flattened."""
        return int(np.prod(self.input_shape))


class Batch(NamedTuple):
    """The samples a MIP is built on, and their row numbers in the training split."""

    x: np.ndarray
    y: np.ndarray
    indices: np.ndarray


def load_digits() -> Dataset:
    """scikit-learn's bundled 8x8 digits, split 80/20, stratified, always the same way."""
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    bunch = sklearn_digits()
    x = (bunch.images / DIGITS_MAX_PIXEL).astype(np.float32)[:, None]
    x_train, x_test, y_train, y_test = train_test_split(
        x,
        bunch.target,
        test_size=DIGITS_TEST_FRACTION,
        stratify=bunch.target,
        random_state=DIGITS_SPLIT_SEED,
    )
    return make_dataset("digits", x_train, y_train, x_test, y_test)


def load_idx_folder(path: str | Path, name: str = "mnist") -> Dataset:
    """MNIST-style IDX files (plain or ``.gz``) under their standard names in folder ``path``."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise InvalidInputError(
            f"data folder '{folder}' does not exist or is not a folder; give the folder that "
            f"holds {', '.join(IDX_FILES.values())} (plain or .gz)"
        )
    found = {key: _find_idx_file(folder, stem) for key, stem in IDX_FILES.items()}
    missing = [IDX_FILES[key] for key, file in found.items() if file is None]
    if missing:
        raise InvalidInputError(
            f"data folder '{folder}' lacks {', '.join(missing)} (looked for the plain and the "
            ".gz names); put the four MNIST-style IDX files there, or pass an .npz instead"
        )
    arrays = {key: _read_idx(file) for key, file in found.items()}
    return make_dataset(name, **arrays)


def load_npz(path: str | Path, name: str | None = None) -> Dataset:
    """An ``.npz`` with x_train, y_train, x_test, y_test; inputs uint8 0..255 or float in [0, 1]."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise InvalidInputError(f"data file '{file}' does not exist; give the path of an .npz")
    arrays = _read_npz(file)
    missing = [key for key in NPZ_KEYS if key not in arrays]
    if missing:
        raise InvalidInputError(
            f"'{file}' lacks the arrays {', '.join(missing)}; an .npz data set needs "
            f"{', '.join(NPZ_KEYS)}"
        )
    return make_dataset(name or file.stem, **arrays)


def load_data(spec: str) -> Dataset:
    """The data set named by ``spec``: ``digits | mnist:PATH | fashion-mnist:PATH | npz:PATH``.

    For ``mnist:`` and ``fashion-mnist:``, PATH is a folder of IDX files or an ``.npz``.
    """
    if spec == "digits":
        return load_digits()
    kind, sep, path = spec.partition(":")
    if not sep or not path:
        raise InvalidInputError(f"cannot read data spec '{spec}'; use {DATA_SPECS}")
    if kind == "npz":
        return load_npz(path)
    if kind in ("mnist", "fashion-mnist"):
        location = Path(path).expanduser()
        if not location.exists():
            raise InvalidInputError(
                f"'{path}' does not exist; {kind}:PATH takes a folder of IDX files or an .npz"
            )
        if location.is_dir():
            return load_idx_folder(location, name=kind)
        return load_npz(location, name=kind)
    raise InvalidInputError(f"unknown data kind '{kind}' in '{spec}'; use {DATA_SPECS}")


def make_dataset(
    name: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
) -> Dataset:
    """Check raw arrays; inputs become float32 in [0, 1] with a channel axis, labels int64."""
    x_train, x_test = _inputs(x_train, "x_train"), _inputs(x_test, "x_test")
    y_train, y_test = _labels(y_train, "y_train"), _labels(y_test, "y_test")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise InvalidInputError(
            f"training inputs have shape {x_train.shape[1:]} but test inputs "
            f"{x_test.shape[1:]}; both splits must hold inputs of one shape"
        )
    for x, y, split in ((x_train, y_train, "train"), (x_test, y_test, "test")):
        if len(x) != len(y) or len(x) == 0:
            raise InvalidInputError(
                f"the {split} split has {len(x)} inputs and {len(y)} labels; it needs the same "
                "number of each, and at least one"
            )
    num_classes = int(max(y_train.max(), y_test.max())) + 1
    return Dataset(x_train, y_train, x_test, y_test, name, num_classes)


def mip_batch(
    model: nn.Module, dataset: Dataset, samples_per_class: int = 1, seed: int = 0
) -> Batch:
    """``samples_per_class`` training samples of each class that ``model`` classifies correctly.

    The choice depends only on the model's predictions and ``seed``; samples come ordered by class.
    """
    if samples_per_class < 1:
        raise InvalidInputError(f"samples per class must be at least 1, got {samples_per_class}")
    correct = predict(model, dataset.x_train) == dataset.y_train
    rng = np.random.default_rng(seed)
    chosen = [
        _choose(rng, np.flatnonzero(correct & (dataset.y_train == c)), samples_per_class, c)
        for c in range(dataset.num_classes)
    ]
    indices = np.concatenate(chosen)
    return Batch(dataset.x_train[indices], dataset.y_train[indices], indices)


def _choose(rng: np.random.Generator, candidates: np.ndarray, k: int, label: int) -> np.ndarray:
    if len(candidates) < k:
        raise InvalidInputError(
            f"class {label} has only {len(candidates)} correctly classified training samples, "
            f"{k} needed; lower the samples per class or train the model better"
        )
    return np.sort(rng.choice(candidates, size=k, replace=False))


def _read_npz(file: Path) -> dict[str, np.ndarray]:
    try:
        loaded = np.load(file, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ValueError("it holds a single array, not named arrays")
        with loaded:
            return {key: loaded[key] for key in NPZ_KEYS if key in loaded.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise InvalidInputError(
            f"'{file}' is not a readable .npz ({exc}); save it with numpy.savez or "
            "numpy.savez_compressed, without object arrays"
        ) from exc


def _find_idx_file(folder: Path, stem: str) -> Path | None:
    dotted = stem.replace("-idx", ".idx")
    for candidate in (stem, stem + ".gz", dotted, dotted + ".gz"):
        if (folder / candidate).is_file():
            return folder / candidate
    return None


def _read_idx(file: Path) -> np.ndarray:
    raw = file.read_bytes()
    try:
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise InvalidInputError(f"'{file}' is a damaged gzip file ({exc}); fetch it again") from exc
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] != IDX_UBYTE:
        raise InvalidInputError(
            f"'{file}' is not an unsigned-byte IDX file (bad header); fetch it again"
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(raw[4:header], dtype=">u4"))
    if len(raw) != header + int(np.prod(shape)):
        raise InvalidInputError(
            f"'{file}' holds {len(raw) - header} data bytes but its header announces shape "
            f"{shape}; the file is truncated or corrupt, fetch it again"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _inputs(x: np.ndarray, key: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim < 2:
        raise InvalidInputError(f"{key} has shape {x.shape}; inputs need a sample axis first")
    if np.issubdtype(x.dtype, np.integer):
        if x.size and (x.min() < 0 or x.max() > 255):
            raise InvalidInputError(f"{key} holds integers outside 0..255; store pixels as uint8")
        x = x.astype(np.float32) / 255.0
    elif np.issubdtype(x.dtype, np.floating):
        if x.size and not (np.isfinite(x).all() and x.min() >= 0.0 and x.max() <= 1.0):
            raise InvalidInputError(
                f"{key} holds floats outside [0, 1]; scale them to [0, 1] or store uint8 0..255"
            )
        x = x.astype(np.float32)
    else:
        raise InvalidInputError(f"{key} has dtype {x.dtype}; store inputs as uint8 or float")
    return x[:, None] if x.ndim == 3 else x


def _labels(y: np.ndarray, key: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1:
        raise InvalidInputError(f"{key} has shape {y.shape}; labels must be one class per sample")
    if y.dtype.kind not in "iuf" or (y.size and (y.min() < 0 or not np.all(y == np.round(y)))):
        raise InvalidInputError(f"{key} must hold class numbers 0, 1, 2, ...; got {y.dtype} values")
    return y.astype(np.int64)
