"""Hand-written copies of torchvision's ResNet-18, VGG-11-BN and MobileNetV2 structures at small
widths.

The torchvision wheel here does not load with the CPU build of torch, so these follow its source
line by line: a BasicBlock with a downsample ``Sequential``, one ``self.relu`` reused twice,
``out += identity``, ``AdaptiveAvgPool2d((1, 1))`` and ``torch.flatten(x, 1)``; VGG's
``features`` with BatchNorm, ``AdaptiveAvgPool2d((2, 2))`` and a classifier with Dropout. The
ResNet stem is a 3x3 convolution (32x32 inputs), followed by torchvision's padded max pooling.
MobileNetV2 keeps its inverted residual blocks (depthwise convolutions with ``groups=channels``,
an addition with no activation after it), its functional global average pooling and its
Dropout classifier.
"""

from __future__ import annotations

import torch
from torch import nn

from tests.nets import random_bn


def _conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)


class BasicBlock(nn.Module):
    """torchvision's BasicBlock."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample=None) -> None:
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        identity = x
        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)
        out = self.conv2(out)
        out = self.bn2(out)
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        out = self.relu(out)
        return out


class ResNet18(nn.Module):
    """torchvision's ResNet-18 (two BasicBlocks per stage) with widths ``width * (1, 2, 2, 2)``."""

    def __init__(self, width: int = 4, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.inplanes = width
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(width, 2)
        self.layer2 = self._make_layer(2 * width, 2, stride=2)
        self.layer3 = self._make_layer(2 * width, 2, stride=2)
        self.layer4 = self._make_layer(2 * width, 2, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(2 * width, num_classes)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.relu(x)
        x = self.maxpool(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        x = self.fc(x)
        return x


VGG11 = [4, "M", 8, "M", 8, 8, "M", 8, 8, 8, 8]
"""VGG-11's eight convolutions at small widths; its last two max poolings are left out so that
32x32 inputs reach the adaptive pooling at 4x4 (pooled to 2x2, as the issue's VGG does)."""


class VGG(nn.Module):
    """torchvision's VGG with batch normalisation (``vgg11_bn``)."""

    def __init__(self, cfg=VGG11, num_classes: int = 10, hidden: int = 16, pooled: int = 2):
        super().__init__()
        self.features = _make_features(cfg)
        self.avgpool = nn.AdaptiveAvgPool2d((pooled, pooled))
        width = [v for v in cfg if v != "M"][-1]
        self.classifier = nn.Sequential(
            nn.Linear(width * pooled * pooled, hidden),
            nn.ReLU(True),
            nn.Dropout(p=0.5),
            nn.Linear(hidden, hidden),
            nn.ReLU(True),
            nn.Dropout(p=0.5),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x):
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        x = self.classifier(x)
        return x


def _make_features(cfg, in_channels: int = 3) -> nn.Sequential:
    layers: list[nn.Module] = []
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(in_channels, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU(True)]
            in_channels = v
    return nn.Sequential(*layers)


class ConvNormActivation(nn.Sequential):
    """torchvision's ``Conv2dNormActivation``: a bias-free convolution, BatchNorm, activation."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel: int = 3,
        stride: int = 1,
        groups: int = 1,
        activation: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__(
            nn.Conv2d(c_in, c_out, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(c_out),
            activation(inplace=True),
        )


class InvertedResidual(nn.Module):
    """torchvision's MobileNetV2 block: 1x1 expand (left out at ratio 1), depthwise 3x3, 1x1
    linear projection, and the input added back, with no activation after the addition, when
    the stride is 1 and the channels stay the same."""

    def __init__(
        self,
        inp: int,
        oup: int,
        stride: int,
        expand_ratio: int,
        activation: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        hidden = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvNormActivation(inp, hidden, kernel=1, activation=activation))
        layers += [
            ConvNormActivation(hidden, hidden, stride=stride, groups=hidden, activation=activation),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)
        self.out_channels = oup

    def forward(self, x):
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


MOBILENET_V2 = [[1, 4, 1, 1], [4, 6, 2, 2], [4, 8, 2, 2]]
"""torchvision's ``inverted_residual_setting`` rows (expand ratio t, channels c, blocks n,
stride s of the first block) at small widths: three stages, two of them with a block that adds."""


class MobileNetV2(nn.Module):
    """torchvision's MobileNetV2: a strided stem, inverted residual blocks, a 1x1 convolution to
    ``last_channel``, global average pooling and a classifier with Dropout. ``activation`` is
    torchvision's ReLU6 there; nn.ReLU by default here."""

    def __init__(
        self,
        num_classes: int = 10,
        width: int = 8,
        last_channel: int = 16,
        setting=MOBILENET_V2,
        activation: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        features: list[nn.Module] = [ConvNormActivation(3, width, stride=2, activation=activation)]
        inp = width
        for t, c, n, s in setting:
            for i in range(n):
                features.append(InvertedResidual(inp, c, s if i == 0 else 1, t, activation))
                inp = c
        features.append(ConvNormActivation(inp, last_channel, kernel=1, activation=activation))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(p=0.2), nn.Linear(last_channel, num_classes))

    def forward(self, x):
        x = self.features(x)
        x = nn.functional.adaptive_avg_pool2d(x, (1, 1))
        x = torch.flatten(x, 1)
        x = self.classifier(x)
        return x


def randomised(model: nn.Module, seed: int) -> nn.Module:
    """``model`` with seeded weights and random BatchNorm statistics, in eval mode."""
    torch.manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            module.reset_parameters()
        if isinstance(module, nn.BatchNorm2d):
            random_bn(module)
    return model.eval()


def calibrated(model: nn.Module, seed: int, side: int = 32) -> nn.Module:
    """``randomised(model, seed)`` with BatchNorm statistics measured on 64 random images, so that
    every BatchNorm's output has its scale and shift as spread and mean and signals survive
    depth (with made-up statistics a small MobileNetV2's output hardly depends on its input)."""
    randomised(model, seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
    images = torch.rand(64, 3, side, side, generator=torch.Generator().manual_seed(seed))
    model.train()
    with torch.no_grad():
        model(images)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = 0.1
    return model.eval()
