"""Small random networks of every supported layer type, for the exactness tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def mlp(seed: int, sizes=(6, 5, 4, 3), batchnorm: bool = False) -> nn.Sequential:
    """Flatten, then Linear(+BatchNorm)+ReLU blocks, then a Linear giving the logits."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Flatten()]
    for n_in, n_out in zip(sizes[:-2], sizes[1:-1]):
        layers.append(nn.Linear(n_in, n_out))
        if batchnorm:
            layers.append(random_bn(nn.BatchNorm1d(n_out)))
        layers.append(nn.ReLU())
    layers.append(nn.Linear(sizes[-2], sizes[-1]))
    return nn.Sequential(*layers).eval()


def convnet(seed: int, channels=(1, 3, 4), size: int = 8, pool: str = "max") -> nn.Sequential:
    """Conv+BatchNorm+ReLU+pooling, Conv+ReLU, Flatten, Linear+ReLU, Linear."""
    torch.manual_seed(seed)
    c0, c1, c2 = channels
    pooling = nn.MaxPool2d(2) if pool == "max" else nn.AvgPool2d(2)
    side = (size // 2) - 2
    model = nn.Sequential(
        nn.Conv2d(c0, c1, 3, padding=1),
        random_bn(nn.BatchNorm2d(c1)),
        nn.ReLU(),
        pooling,
        nn.Conv2d(c1, c2, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(c2 * side * side, 5),
        nn.ReLU(),
        nn.Linear(5, 3),
    )
    return model.eval()


class FunctionalNet(nn.Module):
    """A chain written with functional calls and a view, as many user models are."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(1, 2, 3, stride=2, padding=1)
        self.fc1 = nn.Linear(2 * 2 * 2, 4)
        self.drop = nn.Dropout(0.3)
        self.fc2 = nn.Linear(4, 3)
        self.eval()

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv(x)), 2, 1)
        x = x.view(x.size(0), -1)
        x = self.drop(torch.relu(self.fc1(x)))
        return self.fc2(x)


def random_bn(bn: nn.Module) -> nn.Module:
    """A BatchNorm with non-trivial statistics, scale and shift."""
    with torch.no_grad():
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.3, 0.3)
    return bn


class PoolFirstNet(nn.Module):
    """Convolution, BatchNorm, max pooling, then ReLU, as in PyTorch's own MNIST example
    (8x8 inputs)."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv1 = nn.Conv2d(1, 3, 3, padding=1)
        self.bn = random_bn(nn.BatchNorm2d(3))
        self.conv2 = nn.Conv2d(3, 2, 3)
        self.fc = nn.Linear(2 * 1 * 1, 3)
        self.eval()

    def forward(self, x):
        x = F.relu(F.max_pool2d(self.bn(self.conv1(x)), 2))
        x = F.relu(F.max_pool2d(self.conv2(x), 2))
        return self.fc(torch.flatten(x, 1))


def deep_pool_net(seed: int) -> nn.Sequential:
    """Two convolutions, the second max-pooled with overlapping, padded windows (6x6 inputs):
    the pooled pre-activations are variables, not constants."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(2, 3, 3),
        nn.ReLU(),
        nn.MaxPool2d(3, stride=2, padding=1),
        nn.Flatten(),
        nn.Linear(3 * 2 * 2, 3),
    ).eval()


def digits_mlp(x: torch.Tensor, y: torch.Tensor, hidden: tuple[int, ...]) -> nn.Sequential:
    """An MLP 64-hidden-10 with a leading Flatten, trained by 150 full-batch Adam steps on
    ``(x, y)`` from seed 0: the small trained network of the signal and interrupt drivers."""
    torch.manual_seed(0)
    widths = (64, *hidden)
    layers: list[nn.Module] = [nn.Flatten()]
    for inputs, outputs in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(inputs, outputs), nn.ReLU()]
    model = nn.Sequential(*layers, nn.Linear(widths[-1], 10))
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        optimiser.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimiser.step()
    return model.eval()
