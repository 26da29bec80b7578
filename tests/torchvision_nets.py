"""Hand-written copies of torchvision's ResNet-18 and VGG-11-BN structures at small widths.

The torchvision wheel here does not load with the CPU build of torch, so these follow its source
line by line: a BasicBlock with a downsample ``Sequential``, one ``self.relu`` reused twice,
``out += identity``, ``AdaptiveAvgPool2d((1, 1))`` and ``torch.flatten(x, 1)``; VGG's
``features`` with BatchNorm, ``AdaptiveAvgPool2d((2, 2))`` and a classifier with Dropout. The
ResNet stem is a 3x3 convolution (32x32 inputs), followed by torchvision's padded max pooling.
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


def randomised(model: nn.Module, seed: int) -> nn.Module:
    """``model`` with seeded weights and random BatchNorm statistics, in eval mode."""
    torch.manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            module.reset_parameters()
        if isinstance(module, nn.BatchNorm2d):
            random_bn(module)
    return model.eval()
