"""The architectures of the paper's experiments: a fully connected ReLU network and LeNet-5."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from typing import TYPE_CHECKING

import torch
from torch import nn

from oamip.errors import InvalidInputError

if TYPE_CHECKING:
    from oamip.training.data import Dataset

ARCHITECTURES = ("mlp", "lenet5")
DEFAULT_HIDDEN = (64, 32)
LENET_MIN_INPUT = 4
# Below this input side the second convolution is padded ("same") instead of "valid".
LENET_VALID_CONV2_MIN_INPUT = 16


def mlp(
    in_features: int, hidden: Sequence[int] = DEFAULT_HIDDEN, num_classes: int = 10
) -> nn.Sequential:
    """Flatten, then Linear + ReLU per hidden width, then a Linear output layer."""
    if in_features < 1 or num_classes < 1 or any(width < 1 for width in hidden):
        raise InvalidInputError(
            f"an MLP needs positive sizes, got in_features={in_features}, hidden={tuple(hidden)}, "
            f"num_classes={num_classes}"
        )
    layers: list[nn.Module] = [nn.Flatten()]
    widths = [in_features, *hidden]
    for fan_in, fan_out in pairwise(widths):
        layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
    layers.append(nn.Linear(widths[-1], num_classes))
    return nn.Sequential(*layers)


def lenet5(in_channels: int = 1, num_classes: int = 10, input_size: int = 28) -> nn.Sequential:
    """LeNet-5 for square ``input_size`` images; small inputs get a padded second convolution."""
    if input_size < LENET_MIN_INPUT:
        raise InvalidInputError(
            f"LeNet-5 needs images of at least {LENET_MIN_INPUT}x{LENET_MIN_INPUT} pixels, got "
            f"{input_size}x{input_size}; use the mlp architecture"
        )
    pad2 = 0 if input_size >= LENET_VALID_CONV2_MIN_INPUT else 2
    side = (input_size // 2 + 2 * pad2 - 4) // 2
    return nn.Sequential(
        nn.Conv2d(in_channels, 6, kernel_size=5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, kernel_size=5, padding=pad2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * side * side, 120),
        nn.ReLU(),
        nn.Linear(120, 84),
        nn.ReLU(),
        nn.Linear(84, num_classes),
    )


def build(
    arch: str, dataset: Dataset, hidden: Sequence[int] = DEFAULT_HIDDEN, seed: int = 0
) -> nn.Sequential:
    """A freshly initialised ``arch`` model fitting ``dataset``; one seed, one set of weights.

    ``hidden`` sets the MLP's hidden widths and is ignored by LeNet-5.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if arch == "mlp":
            return mlp(dataset.in_features, hidden, dataset.num_classes)
        if arch == "lenet5":
            return _lenet5_for(dataset)
    raise InvalidInputError(f"unknown architecture '{arch}'; use one of {', '.join(ARCHITECTURES)}")


def _lenet5_for(dataset: Dataset) -> nn.Sequential:
    shape = dataset.input_shape
    if len(shape) != 3 or shape[1] != shape[2]:
        raise InvalidInputError(
            f"LeNet-5 needs square images shaped (channels, side, side), but '{dataset.name}' has "
            f"inputs of shape {shape}; use the mlp architecture"
        )
    return lenet5(shape[0], dataset.num_classes, shape[1])
