"""Data sets for training, scoring and evaluation, and the small batch the MIP is built on.

Every loader returns a :class:`Dataset`: inputs as float32 in [0, 1] (images shaped
``(n, C, H, W)``), labels as int64 class indices. Nothing is downloaded: scikit-learn's digits ship
with scikit-learn, MNIST-style data comes from the user as IDX files or an ``.npz``.
"""

from __future__ import annotations

import gzip
import math
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from torch import nn

from oamip.errors import InvalidInputError
from oamip.training.inference import margins, predict

DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0
DIGITS_MAX_PIXEL = 16.0
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
NPZ_VAL_KEYS = ("x_val", "y_val")
"""Optional arrays of an ``.npz``: a validation set (both or neither), used by a budgeted
``oamip.prune`` instead of a split of the training data."""
IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
IDX_UBYTE = 0x08
IDX_CHUNK = 1 << 20
MAX_CLASSES = 100_000
"""Labels are class numbers ``0..K-1`` with ``K <= MAX_CLASSES`` and ``K`` at most the number of
samples (train and test together): a larger label is a corrupt file, not a class."""
DATA_KINDS = ("mnist", "fashion-mnist", "npz")
"""The prefixes of a data spec ``KIND:PATH``; a spec without one that ends in ``.npz`` is an
``npz:`` spec."""
DATA_SPECS = "digits | mnist:PATH | fashion-mnist:PATH | npz:PATH | PATH.npz"


@dataclass
class Dataset:
    """A train/test split: float32 inputs in [0, 1], int64 labels ``0..num_classes-1``; and
    optionally a validation set (``x_val``/``y_val``, both or neither) kept apart from both."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    name: str
    num_classes: int
    x_val: np.ndarray | None = None
    y_val: np.ndarray | None = None

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
    """An ``.npz`` with x_train, y_train, x_test, y_test, and optionally x_val, y_val; inputs
    uint8 0..255 or float in [0, 1]."""
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


def load_validation(spec: str) -> tuple[np.ndarray, np.ndarray]:
    """The validation set a data spec names (``--val-data``): the ``x_val``/``y_val`` of its
    data set if it has them, else its test split. An ``.npz`` needs only those arrays (x_val
    and y_val, or x_test and y_test); inputs and labels are converted like every split's."""
    kind, _, path = spec.partition(":")
    if kind == "npz" or (kind not in DATA_KINDS and spec.lower().endswith(".npz")):
        file = Path(path if kind == "npz" else spec).expanduser()
        if not file.is_file():
            raise InvalidInputError(f"validation file '{file}' does not exist; give an .npz")
        arrays = _read_npz(file)
        for x_key, y_key in (NPZ_VAL_KEYS, ("x_test", "y_test")):
            if x_key in arrays and y_key in arrays:
                return _inputs(arrays[x_key], x_key), _labels(arrays[y_key], y_key)
        raise InvalidInputError(
            f"'{file}' holds neither x_val and y_val nor x_test and y_test; a validation .npz "
            "needs one of those pairs"
        )
    dataset = load_data(spec)
    if dataset.x_val is not None:
        return dataset.x_val, dataset.y_val
    return dataset.x_test, dataset.y_test


def load_data(spec: str) -> Dataset:
    """The data set named by ``spec``: ``digits | mnist:PATH | fashion-mnist:PATH | npz:PATH``,
    or a path ending in ``.npz`` (read as ``npz:PATH``, named after the file).

    For ``mnist:`` and ``fashion-mnist:``, PATH is a folder of IDX files or an ``.npz``.
    """
    if spec == "digits":
        return load_digits()
    kind, sep, path = spec.partition(":")
    if kind not in DATA_KINDS and spec.lower().endswith(".npz"):
        return load_npz(spec)
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


def shape_text(shape: tuple[int, ...]) -> str:
    """A shape as users read it: ``1x8x8``."""
    return "x".join(str(size) for size in shape)


def fit_advice(model: nn.Module, dataset: Dataset) -> str:
    """Which shapes disagree between ``model``'s first layer and ``dataset``'s inputs, and what
    to do: the text that follows a refusal of a model that does not take the data."""
    shape = dataset.input_shape
    first = next((m for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d)), None)
    inputs = f"'{dataset.name}' inputs are {shape_text(shape)}"
    if isinstance(first, nn.Linear):
        if first.in_features == dataset.in_features and len(shape) > 1:
            return (
                f"its first layer, Linear({first.in_features} -> {first.out_features}), takes "
                f"flat vectors of {first.in_features} values and {inputs}: add nn.Flatten() "
                "before it"
            )
        return (
            f"its first layer, Linear({first.in_features} -> {first.out_features}), takes "
            f"{first.in_features} values and {inputs} ({dataset.in_features} values): build it "
            f"with {dataset.in_features} inputs, or use the data it was made for"
        )
    if isinstance(first, nn.Conv2d):
        conv = f"its first layer, Conv2d({first.in_channels} -> {first.out_channels}), takes"
        if len(shape) != 3:
            return f"{conv} images (channels x height x width) and {inputs}: give image data"
        if first.in_channels != shape[0]:
            return (
                f"{conv} {first.in_channels}-channel images and {inputs}: build it with "
                f"{shape[0]} input channels, or use the data it was made for"
            )
    return f"{inputs}; use a model made for inputs of that shape"


def make_dataset(
    name: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    x_val: np.ndarray | None = None,
    y_val: np.ndarray | None = None,
) -> Dataset:
    """Check raw arrays; inputs become float32 in [0, 1] with a channel axis, labels int64. A
    validation set (``x_val`` and ``y_val``, both or neither) is checked like the other splits."""
    if (x_val is None) != (y_val is None):
        raise InvalidInputError(
            "a validation set needs both x_val and y_val; give both arrays or neither"
        )
    splits = {"train": (x_train, y_train), "test": (x_test, y_test)}
    if x_val is not None:
        splits["validation"] = (x_val, y_val)
    key = {"train": "train", "test": "test", "validation": "val"}
    checked = {
        split: (_inputs(x, f"x_{key[split]}"), _labels(y, f"y_{key[split]}"))
        for split, (x, y) in splits.items()
    }
    for split, (x, y) in checked.items():
        _check_split(split, x, y, checked["train"][0].shape[1:])
    labels = [y for _, y in checked.values()]
    num_classes = int(max(y.max() for y in labels)) + 1
    total = sum(len(y) for y in labels)
    if num_classes > total:
        raise InvalidInputError(
            f"the largest label is {num_classes - 1}, so there would be {num_classes} classes "
            f"for only {total} samples; labels must number the classes "
            "0..K-1 with K at most the number of samples"
        )
    (x_train, y_train), (x_test, y_test) = checked["train"], checked["test"]
    x_val, y_val = checked.get("validation", (None, None))
    return Dataset(x_train, y_train, x_test, y_test, name, num_classes, x_val, y_val)


def _check_split(split: str, x: np.ndarray, y: np.ndarray, shape: tuple[int, ...]) -> None:
    """One split's inputs must have the training inputs' shape, and as many labels, at least one."""
    if x.shape[1:] != shape:
        raise InvalidInputError(
            f"training inputs have shape {shape} but {split} inputs {x.shape[1:]}; every split "
            "must hold inputs of one shape"
        )
    if len(x) != len(y) or len(x) == 0:
        raise InvalidInputError(
            f"the {split} split has {len(x)} inputs and {len(y)} labels; it needs the same "
            "number of each, and at least one"
        )


def checked_validation(dataset: Dataset, x, y) -> tuple[np.ndarray, np.ndarray]:
    """A validation set given for ``dataset``: inputs converted like every split's (float32 in
    [0, 1]), of the data's input shape, as many labels, each a class of the data set."""
    x, y = _inputs(np.asarray(x), "the validation inputs"), _labels(y, "the validation labels")
    _check_split("validation", x, y, dataset.input_shape)
    if y.max() >= dataset.num_classes:
        raise InvalidInputError(
            f"the validation labels include class {int(y.max())}, but '{dataset.name}' has "
            f"{dataset.num_classes} classes (0..{dataset.num_classes - 1})"
        )
    return x, y


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


def hardest_rows(model: nn.Module, dataset: Dataset, size: int) -> Batch:
    """The ``size`` training samples that ``model`` classifies correctly with the smallest
    margin (:func:`~oamip.training.inference.margins`; all the correct ones if fewer), in row
    order: the samples a pruned network is closest to losing."""
    margin = margins(model, dataset.x_train, dataset.y_train)
    correct = np.flatnonzero(margin > 0)
    indices = np.sort(correct[np.argsort(margin[correct], kind="stable")[:size]])
    return Batch(dataset.x_train[indices], dataset.y_train[indices], indices)


def random_rows(dataset: Dataset, size: int, seed: int) -> Batch:
    """``size`` training samples drawn at random by ``seed`` (all of them if fewer), in row
    order: the batch the baseline criteria score on, larger than the MIP's."""
    n = len(dataset.y_train)
    indices = np.sort(np.random.default_rng(seed).permutation(n)[: min(size, n)])
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
            return {key: loaded[key] for key in NPZ_KEYS + NPZ_VAL_KEYS if key in loaded.files}
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
    """An IDX array, its header checked against the file's length before the data is read."""
    with file.open("rb") as head:
        gzipped = head.read(2) == b"\x1f\x8b"
    try:
        with gzip.open(file) if gzipped else file.open("rb") as stream:
            shape = _idx_header(stream, file)
            size = math.prod(shape)
            data = _read_at_most(stream, size + 1)
    except (OSError, EOFError, zlib.error) as exc:
        what = "is a damaged gzip file" if gzipped else "cannot be read"
        raise InvalidInputError(f"'{file}' {what} ({exc}); fetch it again") from exc
    if len(data) != size:
        raise InvalidInputError(
            f"'{file}' announces shape {shape} in its header ({size} data bytes) but holds "
            f"{'more' if len(data) > size else len(data)} data bytes; the file is truncated or "
            "corrupt, fetch it again"
        )
    return np.frombuffer(data, dtype=np.uint8).reshape(shape)


def _idx_header(stream, file: Path) -> tuple[int, ...]:
    """The shape an IDX header announces (one unsigned 32-bit size per dimension)."""
    magic = stream.read(4)
    if len(magic) < 4 or magic[:2] != b"\x00\x00" or magic[2] != IDX_UBYTE or magic[3] == 0:
        raise InvalidInputError(
            f"'{file}' is not an unsigned-byte IDX file (bad header); fetch it again"
        )
    dims = stream.read(4 * magic[3])
    if len(dims) < 4 * magic[3]:
        raise InvalidInputError(f"'{file}' ends inside its IDX header; fetch it again")
    return tuple(int.from_bytes(dims[i : i + 4], "big") for i in range(0, len(dims), 4))


def _read_at_most(stream, limit: int) -> bytes:
    """Up to ``limit`` bytes, read in chunks so that memory follows what the file holds."""
    parts, total = [], 0
    while total < limit:
        part = stream.read(min(IDX_CHUNK, limit - total))
        if not part:
            break
        parts.append(part)
        total += len(part)
    return b"".join(parts)


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
    """Labels as int64, refused unless whole numbers in ``0..MAX_CLASSES-1`` (checked before
    any conversion, so inf, NaN or 1e20 never become a huge class count)."""
    y = np.asarray(y)
    if y.ndim != 1:
        raise InvalidInputError(f"{key} has shape {y.shape}; labels must be one class per sample")
    if y.dtype.kind not in "iuf":
        raise InvalidInputError(f"{key} must hold class numbers 0, 1, 2, ...; got {y.dtype} values")
    bad = _bad_labels(y)
    if bad.any():
        raise InvalidInputError(
            f"{key} holds the label {y[bad][0].item()}; labels must be whole numbers "
            f"0..K-1 (class numbers, K at most {MAX_CLASSES})"
        )
    return y.astype(np.int64)


def _bad_labels(y: np.ndarray) -> np.ndarray:
    """Which labels are not whole numbers in ``0..MAX_CLASSES-1`` (NaN and inf included)."""
    in_range = (y >= 0) & (y < MAX_CLASSES)
    if y.dtype.kind == "f":
        in_range &= np.floor(y) == y
    return ~in_range
