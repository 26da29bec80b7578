"""Auxiliary heads: a small classifier fit on a block's outputs, so a block can be scored alone.

A block of a decomposed network (docs/mathematics.md §2: a scored layer with its pooling) hands
its outputs to a head instead of to the rest of the network:

* a linear block (flat outputs): one affine layer;
* a convolutional block (``(channels, height, width)`` outputs): global average pooling over the
  positions, then one affine layer, so the head adds only ``channels x classes`` weights.

The affine layer is a multinomial logistic regression fit by L-BFGS from zero weights with a
small L2 penalty: deterministic, and the same on every machine for the same data. The head is
returned as :mod:`oamip.network` layers (no ReLU, so nothing in it is scored). Nothing here
imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize
from scipy.special import log_softmax, softmax

from oamip.errors import InvalidInputError
from oamip.network import AffineLayer, Conv

HEAD_L2 = 1e-4
"""Weight of the L2 penalty ``HEAD_L2 / 2 * ||W||^2`` (not on the bias) of the head's fit."""
HEAD_MAX_ITER = 500
"""Most L-BFGS iterations of one head's fit."""


@dataclass
class Head:
    """A fitted head: its layers (input: the block's outputs) and its accuracy on the data it
    was fit on."""

    layers: list[AffineLayer]
    accuracy: float


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
    outputs = np.asarray(outputs, dtype=float).reshape(len(outputs), -1)
    labels = np.asarray(labels, dtype=np.int64)
    if len(outputs) == 0 or labels.shape != (len(outputs),):
        raise InvalidInputError(
            f"a head needs one label per sample, got {labels.shape[0]} labels for "
            f"{len(outputs)} samples"
        )
    layers = []
    features = outputs
    if len(shape) == 3:
        pool = global_average_pool(shape, f"{name}.head_pool")
        layers.append(pool)
        features = pool.forward(outputs)
    weight, bias = _logistic_regression(features, labels, num_classes, l2)
    n_in = features.shape[1]
    layers.append(AffineLayer(f"{name}.head", "linear", (n_in,), (num_classes,), weight, bias))
    logits = features @ weight.T + bias
    accuracy = float(np.mean(np.argmax(logits, axis=1) == labels))
    return Head(layers, accuracy)


def global_average_pool(shape: tuple[int, ...], name: str) -> AffineLayer:
    """Average pooling over every position of each channel, as an ``avgpool`` layer."""
    channels, height, width = shape
    weight = np.full((channels, 1, height, width), 1.0 / (height * width))
    geometry = Conv((height, width), (height, width), (0, 0))
    return AffineLayer(
        name, "avgpool", tuple(shape), (channels, 1, 1), weight, np.zeros(channels), geometry
    )


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

    found = minimize(
        value_and_gradient,
        np.zeros(k * d + k),
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": HEAD_MAX_ITER},
    )
    return found.x[: k * d].reshape(k, d).copy(), found.x[k * d :].copy()
