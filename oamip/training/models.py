"""The architectures that get pruned: the paper's fully connected ReLU network and LeNet-5, a
small VGG-style network for the decomposed MIP, and CIFAR-style ResNets (residual networks)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import TYPE_CHECKING

import torch
from torch import nn

from oamip.errors import InvalidInputError

if TYPE_CHECKING:
    from oamip.training.data import Dataset

ARCHITECTURES = ("mlp", "lenet5", "vgg", "resnet8", "resnet20")
DEFAULT_HIDDEN = (64, 32)
LENET_MIN_INPUT = 4
# Below this input side the second convolution is padded ("same") instead of "valid".
LENET_VALID_CONV2_MIN_INPUT = 16
VGG_WIDTHS = (8, 16, 32)
"""Channels of the VGG's three stages: small, so each per-layer MIP piece has few units."""
VGG_CONVS_PER_STAGE = 2
VGG_HIDDEN = 64
"""Units of the VGG's first Linear layer (the last scored layer)."""
RESNET_WIDTHS = (16, 32, 64)
"""Channels of the ResNets' three stages (see :func:`resnet`), the CIFAR ResNets' own: one epoch
of ResNet-20 on Fashion-MNIST's 12,000 training images (batch 64, one CPU thread of this 2-core
machine) took 58-60 s, measured; (8, 16, 32) took 22 s."""
RESNET_BLOCKS = {"resnet8": 1, "resnet20": 3}
"""BasicBlocks per stage: a ResNet-(6n+2) has n blocks in each of its three stages."""


@dataclass(frozen=True)
class TrainingDefaults:
    """How an architecture is trained when nothing else is asked: epochs, Adam's learning rate
    (cosine-decayed to 0 when ``cosine``) and random shifts of up to ``shift`` pixels."""

    epochs: int
    lr: float
    shift: int = 0
    cosine: bool = False


TRAINING_DEFAULTS = {"vgg": TrainingDefaults(epochs=20, lr=3e-3, shift=2, cosine=True)}
"""Architectures whose own training recipe replaces the pipeline's generic one (measured in
benchmarks/bench_vgg.py for the VGG: Fashion-MNIST's 12k training images, one CPU thread)."""


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


def vgg(
    in_channels: int = 1,
    num_classes: int = 10,
    input_size: int = 28,
    widths: Sequence[int] = VGG_WIDTHS,
    hidden: int = VGG_HIDDEN,
) -> nn.Sequential:
    """A VGG-style network: per width, a stage of two 3x3 convolutions (padding 1), each followed
    by BatchNorm and ReLU, then a 2x2 max pooling; then Flatten, Linear + ReLU and a Linear output.

    Every layer is one the MIP reader supports, and each convolution with its BatchNorm is a scored
    layer whose units are its channels.
    """
    if not widths or any(w < 1 for w in widths) or min(in_channels, num_classes, hidden) < 1:
        raise InvalidInputError(
            f"a VGG needs positive sizes, got in_channels={in_channels}, widths={tuple(widths)}, "
            f"hidden={hidden}, num_classes={num_classes}"
        )
    need = 2 ** len(widths)  # each stage halves the side; at least one pixel must be left
    if input_size < need:
        raise InvalidInputError(
            f"this VGG pools {len(widths)} times, so it needs images of at least {need}x{need} "
            f"pixels, got {input_size}x{input_size}; use lenet5 or mlp"
        )
    layers: list[nn.Module] = []
    channels = in_channels
    for width in widths:
        for _ in range(VGG_CONVS_PER_STAGE):
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
            channels = width
        layers.append(nn.MaxPool2d(2))
    side = input_size // need
    layers += [
        nn.Flatten(),
        nn.Linear(channels * side * side, hidden),
        nn.ReLU(),
        nn.Linear(hidden, num_classes),
    ]
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    """A ResNet BasicBlock: ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``.

    The convolutions are 3x3 without bias (the BatchNorm shifts play that part). The shortcut is
    the identity, or a 1x1 convolution + BatchNorm where the block changes the channels or the
    stride (``conv1``'s stride, which halves the side when 2).
    """

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(channels),
            )
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(out + self.shortcut(x))


class ResNet(nn.Module):
    """A CIFAR-style ResNet: a 3x3 stem convolution + BatchNorm + ReLU, three stages of
    BasicBlocks (the second and third start with stride 2), an average pooling over the whole
    remaining image, Flatten and a Linear output layer.

    Every layer is one the graph reader supports (the pooling is an ``AvgPool2d`` sized to the
    input, not an adaptive one). Module names: ``stem``, ``stem_bn``, ``stem_relu``,
    ``stage{1,2,3}.{block}.{conv1,bn1,relu1,conv2,bn2,shortcut,relu2}``, ``pool``, ``flatten``,
    ``fc``.
    """

    def __init__(
        self,
        blocks: int,
        in_channels: int = 1,
        num_classes: int = 10,
        input_size: int = 28,
        widths: Sequence[int] = RESNET_WIDTHS,
    ) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(widths[0])
        self.stem_relu = nn.ReLU()
        channels, side = widths[0], input_size
        for index, width in enumerate(widths):
            stride = 1 if index == 0 else 2
            stage = [BasicBlock(channels, width, stride)]
            stage += [BasicBlock(width, width) for _ in range(blocks - 1)]
            self.add_module(f"stage{index + 1}", nn.Sequential(*stage))
            channels, side = width, (side - 1) // stride + 1
        self.pool = nn.AvgPool2d(side)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_relu(self.stem_bn(self.stem(x)))
        x = self.stage3(self.stage2(self.stage1(x)))
        return self.fc(self.flatten(self.pool(x)))


def resnet(
    blocks: int,
    in_channels: int = 1,
    num_classes: int = 10,
    input_size: int = 28,
    widths: Sequence[int] = RESNET_WIDTHS,
) -> ResNet:
    """A ResNet-(6 ``blocks`` + 2) for square ``input_size`` images (see :class:`ResNet`):
    ``blocks=1`` is ResNet-8, ``blocks=3`` ResNet-20."""
    if len(widths) != 3 or min(*widths, blocks, in_channels, num_classes) < 1:
        raise InvalidInputError(
            f"a ResNet needs three positive stage widths and positive sizes, got "
            f"widths={tuple(widths)}, blocks={blocks}, in_channels={in_channels}, "
            f"num_classes={num_classes}"
        )
    if input_size < 1:
        raise InvalidInputError(f"a ResNet needs images of at least 1x1 pixel, got {input_size}")
    return ResNet(blocks, in_channels, num_classes, input_size, widths)


def describe_resnet(model: nn.Module) -> str:
    """``"resnet8"`` or ``"resnet20"`` for a :class:`ResNet` with 1 or 3 blocks per stage
    (pruned or not), else ``"custom"``: the architecture name of a residual network."""
    if isinstance(model, ResNet):
        blocks = len(model.stage1)
        for arch, count in RESNET_BLOCKS.items():
            if blocks == count:
                return arch
    return "custom"


def build(
    arch: str, dataset: Dataset, hidden: Sequence[int] = DEFAULT_HIDDEN, seed: int = 0
) -> nn.Module:
    """A freshly initialised ``arch`` model fitting ``dataset``; one seed, one set of weights.

    ``hidden`` sets the MLP's hidden widths and is ignored by the other architectures.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if arch == "mlp":
            return mlp(dataset.in_features, hidden, dataset.num_classes)
        if arch == "lenet5":
            return lenet5(*_square_images(dataset, "LeNet-5"))
        if arch == "vgg":
            return vgg(*_square_images(dataset, "the VGG"))
        if arch in RESNET_BLOCKS:
            return resnet(RESNET_BLOCKS[arch], *_square_images(dataset, "a ResNet"))
    raise InvalidInputError(f"unknown architecture '{arch}'; use one of {', '.join(ARCHITECTURES)}")


def _square_images(dataset: Dataset, what: str) -> tuple[int, int, int]:
    """``(channels, num_classes, side)`` of a data set of square images; refuses anything else."""
    shape = dataset.input_shape
    if len(shape) != 3 or shape[1] != shape[2]:
        raise InvalidInputError(
            f"{what} needs square images shaped (channels, side, side), but '{dataset.name}' has "
            f"inputs of shape {shape}; use the mlp architecture"
        )
    return shape[0], dataset.num_classes, shape[1]
