"""Auxiliary heads: a small classifier fit on a block's outputs, so a block can be scored alone.

A block of a decomposed network (docs/mathematics.md §2: a scored layer with its pooling) hands
its outputs to a head instead of to the rest of the network:

* a linear block (flat outputs): one affine layer;
* a convolutional block (``(channels, height, width)`` outputs): average pooling onto a
  ``HEAD_GRID x HEAD_GRID`` grid of each channel, then one affine layer, so the head adds only
  ``channels x HEAD_GRID^2 x classes`` weights. A global average (a 1 x 1 grid) is too weak a
  head for early blocks: on LeNet-5 trained on MNIST it classifies 39% of the training split
  from conv1's outputs and 78% from conv2's; a 2 x 2 grid gives 87% and 98%
  (benchmarks/bench_decompose.py reports each head's accuracy).

The affine layer is a multinomial logistic regression fit by L-BFGS from zero weights with a
small L2 penalty, on features standardised per column (folded back into the weights, so the
head acts on the raw outputs): deterministic, and the same on every machine for the same data.
The head is returned as :mod:`oamip.network` layers (no ReLU, so nothing in it is scored).
A head's data (:class:`HeadData`: the pooled outputs, small) travels with its pieces, and the
head is fit where a piece is solved (a worker), so heads are fit in parallel, each process
fitting a block's head once. Nothing here imports torch.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from scipy.optimize import minimize
from scipy.special import log_softmax, softmax
from threadpoolctl import threadpool_limits

from oamip.errors import InvalidInputError
from oamip.network import AffineLayer, Conv

HEAD_L2 = 1e-4
"""Weight of the L2 penalty ``HEAD_L2 / 2 * ||W||^2`` (on the standardised features' weights,
not on the bias) of the head's fit."""
HEAD_MAX_ITER = 500
"""Most L-BFGS iterations of one head's fit."""
HEAD_GRID = 2
"""Side of the grid a convolutional block's channels are average-pooled onto before the head."""
HEAD_BLAS_THREADS = 1
"""BLAS threads of a head's fit. Its products are small (2,000 rows by default, a few hundred
features), and with more threads than free cores OpenBLAS's threads wait on each other: a
ResNet-20 head took 20.7 s on two threads and 2.2 s on one, on this project's 2-core machine
with a benchmark beside it (2026-12-07); the fit is the same."""
FITTED_KEPT = 8
"""Heads a process remembers (:func:`fitted_head`)."""
_FITTED: dict[str, Head] = {}


@dataclass
class Head:
    """A fitted head: its layers (input: the block's outputs) and its accuracy on the data it
    was fit on."""

    layers: list[AffineLayer]
    accuracy: float


@dataclass
class HeadData:
    """What one head is fit on: ``features`` (``(N, d)``: the block's outputs over the
    auxiliary data, already pooled by ``pool`` for a convolutional block, so they are small) and
    their class ``labels``. Plain numpy data: a piece carries it to the worker that solves it,
    which fits the head there (:func:`fitted_head`)."""

    features: np.ndarray
    labels: np.ndarray
    num_classes: int
    name: str
    pool: AffineLayer | None = None

    @cached_property
    def key(self) -> str:
        """A hash of everything the fitted head depends on."""
        digest = hashlib.sha256(f"{self.num_classes} {self.name}".encode())
        for part in (self.features, self.labels):
            digest.update(f"{part.dtype}{part.shape}".encode())
            digest.update(np.ascontiguousarray(part).tobytes())
        if self.pool is not None:
            digest.update(
                repr((self.pool.in_shape, self.pool.out_shape, self.pool.geometry)).encode()
            )
        return digest.hexdigest()

    def fit(self, l2: float = HEAD_L2) -> Head:
        """The head: ``pool`` (if any), then the affine layer of a logistic regression on
        ``features``."""
        weight, bias = _standardised_fit(self.features, self.labels, self.num_classes, l2)
        n_in = self.features.shape[1]
        layer = AffineLayer(
            f"{self.name}.head", "linear", (n_in,), (self.num_classes,), weight, bias
        )
        logits = self.features @ weight.T + bias
        accuracy = float(np.mean(np.argmax(logits, axis=1) == self.labels))
        return Head([*([] if self.pool is None else [self.pool]), layer], accuracy)


def head_pool(shape: tuple[int, ...], name: str) -> AffineLayer | None:
    """The fixed pooling in front of the head of a block whose outputs have ``shape`` (a grid
    average for ``(channels, height, width)``; None for flat outputs)."""
    return (
        grid_average_pool(tuple(shape), HEAD_GRID, f"{name}.head_pool") if len(shape) == 3 else None
    )


def head_data(
    outputs: np.ndarray, labels: np.ndarray, num_classes: int, shape: tuple[int, ...], name: str
) -> HeadData:
    """The data of a head on a block's ``outputs`` (``(N, prod(shape))``) with class ``labels``
    in ``0..num_classes - 1``: the outputs pooled as :func:`head_pool` says."""
    outputs = np.asarray(outputs, dtype=float).reshape(len(outputs), -1)
    labels = np.asarray(labels, dtype=np.int64)
    if len(outputs) == 0 or labels.shape != (len(outputs),):
        raise InvalidInputError(
            f"a head needs one label per sample, got {labels.shape[0]} labels for "
            f"{len(outputs)} samples"
        )
    pool = head_pool(shape, name)
    features = outputs if pool is None else pool.forward(outputs)
    return HeadData(features, labels, num_classes, name, pool)


def fit_head(
    outputs: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    shape: tuple[int, ...],
    name: str,
    l2: float = HEAD_L2,
) -> Head:
    """Fit a head on a block's ``outputs`` (``(N, prod(shape))``, the block's flat outputs over
    the training data) with class ``labels`` in ``0..num_classes - 1``. ``shape`` is one
    block output's shape; ``name`` prefixes the head's layer names."""
    return head_data(outputs, labels, num_classes, shape, name).fit(l2)


def fitted_head(data: HeadData) -> Head:
    """``data.fit()``, remembered in this process for the last ``FITTED_KEPT`` heads, so the
    pieces of one block (one per class) that run here fit its head once."""
    if data.key not in _FITTED:
        while len(_FITTED) >= FITTED_KEPT:
            del _FITTED[next(iter(_FITTED))]
        _FITTED[data.key] = data.fit()
    return _FITTED[data.key]


def grid_average_pool(shape: tuple[int, ...], grid: int, name: str) -> AffineLayer:
    """Average pooling of each channel onto a ``grid x grid`` grid of equal windows that cover
    every position (windows overlap by one row or column where a side is odd), as an
    ``avgpool`` layer; a side shorter than ``grid`` is pooled onto that many cells."""
    channels, height, width = shape
    kernel, stride, cells = zip(*(_windows(side, grid) for side in (height, width)))
    weight = np.full((channels, 1, *kernel), 1.0 / (kernel[0] * kernel[1]))
    geometry = Conv(tuple(kernel), tuple(stride), (0, 0))
    return AffineLayer(
        name, "avgpool", tuple(shape), (channels, *cells), weight, np.zeros(channels), geometry
    )


def _windows(side: int, grid: int) -> tuple[int, int, int]:
    """Kernel, stride and number of windows that cut ``side`` positions into ``min(grid,
    side)`` equal windows covering them all."""
    cells = min(grid, side)
    kernel = -(-side // cells)
    stride = (side - kernel) // (cells - 1) if cells > 1 else kernel
    return kernel, stride, cells


def _standardised_fit(features: np.ndarray, labels: np.ndarray, k: int, l2: float):
    """:func:`_logistic_regression` on features scaled to zero mean and unit spread per column
    (well conditioned, so L-BFGS converges in few steps), folded back into raw-feature
    weights."""
    mean = features.mean(axis=0)
    spread = features.std(axis=0)
    spread[spread < 1e-12] = 1.0
    weight, bias = _logistic_regression((features - mean) / spread, labels, k, l2)
    weight = weight / spread
    return weight, bias - weight @ mean


def _logistic_regression(features: np.ndarray, labels: np.ndarray, k: int, l2: float):
    """Weights ``(k, n)`` and bias ``(k,)`` minimising the mean cross-entropy plus
    ``l2 / 2 ||W||^2``, by L-BFGS from zero."""
    n, d = features.shape
    onehot = np.zeros((n, k))
    onehot[np.arange(n), labels] = 1.0

    def value_and_gradient(theta: np.ndarray) -> tuple[float, np.ndarray]:
        weight, bias = theta[: k * d].reshape(k, d), theta[k * d :]
        logits = features @ weight.T + bias
        loss = -np.mean(np.sum(onehot * log_softmax(logits, axis=1), axis=1))
        residual = (softmax(logits, axis=1) - onehot) / n
        grad_w = residual.T @ features + l2 * weight
        value = loss + 0.5 * l2 * float(np.sum(weight * weight))
        return value, np.concatenate([grad_w.ravel(), residual.sum(axis=0)])

    with threadpool_limits(HEAD_BLAS_THREADS):
        found = minimize(
            value_and_gradient,
            np.zeros(k * d + k),
            jac=True,
            method="L-BFGS-B",
            options={"maxiter": HEAD_MAX_ITER},
        )
    return found.x[: k * d].reshape(k, d).copy(), found.x[k * d :].copy()
