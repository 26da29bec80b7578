"""Random tiny instances of the importance MIP and a brute-force oracle in float64 PyTorch.

Used by ``tests/test_fuzz.py`` (a few hundred cases per run, a new seed each run) and by
``benchmarks/bench_fuzz.py`` (the campaign of thousands). An instance is a random network of
the supported layer kinds (Linear, Conv2d, BatchNorm, max and average pooling, Dropout, Flatten)
with at most ``MAX_UNITS`` scored units, weights scaled by 1e-3 to 1e3 (per layer or overall),
a batch, a loss, a weight and ``min_keep``; the oracle enumerates every binary mask with at
least ``min_keep`` units per layer and computes the objective by PyTorch's forward pass of the
pruned model (``apply_masks``), in float64.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass

import numpy as np
import torch
from scipy.special import logsumexp
from torch import nn

import oamip
from tests.nets import random_bn

MAX_UNITS = 9
KINDS = ("mlp", "mlp_bn", "mlp_dropout", "conv_max", "conv_avg", "conv_bn")
TIME_LIMIT = 10.0
TIME_SLACK = 5.0
"""Seconds a call may overrun its time limit (process start-up of CBC, Python overhead)."""
RTOL = 1e-4
"""An optimum must be within this (relative to max(1, |optimum|)) of the oracle's."""
BOUND_RTOL = 1e-7
"""A bound may exceed the oracle's optimum by float rounding only."""


@dataclass
class Instance:
    seed: int
    kind: str
    scale: str
    model: nn.Module
    x: np.ndarray
    y: np.ndarray
    loss: str
    lam: float
    min_keep: int


def instance(seed: int) -> Instance:
    """The random instance number ``seed`` (the same seed gives the same instance)."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    kind = KINDS[rng.integers(len(KINDS))]
    model, x = _conv(rng, kind) if kind.startswith("conv") else _mlp(rng, kind)
    scale = _rescale(model, rng)
    classes = model[-1].out_features
    y = rng.integers(0, classes, len(x))
    loss = ("ce", "hinge")[rng.integers(2)]
    lam = float(np.round(10 ** rng.uniform(-1, 1.3), 6))
    min_keep = min(int(rng.integers(1, 3)), *units(model).values())
    return Instance(seed, kind, scale, model.eval(), x, y, loss, lam, min_keep)


def _mlp(rng, kind: str) -> tuple[nn.Sequential, np.ndarray]:
    n_in = int(rng.integers(1, 4))
    hidden = [int(rng.integers(1, 5)) for _ in range(rng.integers(1, 4))]
    while sum(hidden) > MAX_UNITS:
        hidden.pop()
    layers: list[nn.Module] = []
    width = n_in
    for h in hidden:
        layers.append(nn.Linear(width, h, bias=bool(rng.integers(0, 4))))
        if kind == "mlp_bn":
            layers.append(random_bn(nn.BatchNorm1d(h)))
        layers.append(nn.ReLU())
        if kind == "mlp_dropout":
            layers.append(nn.Dropout(0.5))
        width = h
    layers.append(nn.Linear(width, int(rng.integers(2, 5))))
    return nn.Sequential(*layers), rng.uniform(-2, 2, size=(int(rng.integers(1, 5)), n_in))


def _conv(rng, kind: str) -> tuple[nn.Sequential, np.ndarray]:
    channels = int(rng.integers(1, 4))
    hidden = int(rng.integers(1, MAX_UNITS - channels + 1))
    pool = nn.AvgPool2d(2) if kind == "conv_avg" else nn.MaxPool2d(2)
    layers: list[nn.Module] = [nn.Conv2d(1, channels, 3, padding=1)]
    if kind == "conv_bn":
        layers.append(random_bn(nn.BatchNorm2d(channels)))
    layers += [nn.ReLU(), pool, nn.Flatten(), nn.Linear(channels * 4, hidden), nn.ReLU()]
    layers.append(nn.Linear(hidden, int(rng.integers(2, 4))))
    return nn.Sequential(*layers), rng.uniform(0, 1, size=(int(rng.integers(1, 4)), 1, 4, 4))


def _rescale(model: nn.Sequential, rng) -> str:
    """Scale the weights of every affine layer by one factor, or each by its own (1e-3..1e3)."""
    affine = [m for m in model if isinstance(m, (nn.Linear, nn.Conv2d))]
    overall = bool(rng.integers(2))
    factor = 10 ** rng.uniform(-3, 3)
    with torch.no_grad():
        for m in affine:
            f = factor if overall else 10 ** rng.uniform(-3, 3)
            m.weight.mul_(f)
            if m.bias is not None:
                m.bias.mul_(f)
    return f"overall {factor:.3g}" if overall else "per layer"


def units(model: nn.Sequential) -> dict[str, int]:
    """The scored units per module name: every Linear or Conv2d but the last."""
    affine = [(n, m) for n, m in model.named_children() if isinstance(m, (nn.Linear, nn.Conv2d))]
    return {
        n: (m.out_features if isinstance(m, nn.Linear) else m.out_channels) for n, m in affine[:-1]
    }


def optimum(case: Instance) -> float:
    """The minimum objective over every mask, by PyTorch in float64."""
    sizes = units(case.model)
    x = torch.as_tensor(case.x, dtype=torch.float64)
    best = np.inf
    for masks in _masks(sizes, case.min_keep):
        with torch.no_grad():
            z = oamip.apply_masks(case.model, masks).double()(x).numpy()
        best = min(best, _objective(z, case.y, masks, case.loss, case.lam))
    return best


def _objective(z, y, masks, loss: str, lam: float) -> float:
    true = z[np.arange(len(y)), y]
    if loss == "hinge":
        other = z.copy()
        other[np.arange(len(y)), y] = -np.inf
        losses = np.maximum(0.0, 1.0 + other.max(axis=1) - true)
    else:
        losses = logsumexp(z, axis=1) - true
    return float(sum(m.sum() / len(m) for m in masks.values()) + lam * losses.mean())


def _masks(sizes: dict[str, int], min_keep: int):
    per_layer = [
        [
            np.array(bits, dtype=bool)
            for bits in itertools.product([0, 1], repeat=n)
            if sum(bits) >= min_keep
        ]
        for n in sizes.values()
    ]
    for combo in itertools.product(*per_layer):
        yield dict(zip(sizes, combo))


@dataclass
class Verdict:
    """One solve judged against the oracle: ``wrong`` names what is wrong, if anything."""

    seed: int
    backend: str
    status: str
    objective: float | None
    bound: float | None
    optimum: float
    seconds: float
    wrong: str = ""


def judge(case: Instance, backend: str, best: float, time_limit: float = TIME_LIMIT) -> Verdict:
    """Solve ``case`` on ``backend`` and compare with ``best``: a wrong optimum, a bound above
    the optimum, an objective below it (impossible for a feasible point), an overrun time limit
    or an exception are wrong; an honest non-optimal status with a valid bound is not."""
    started = time.perf_counter()
    try:
        res = oamip.score_neurons(
            case.model,
            case.x,
            case.y,
            backend=backend,
            loss=case.loss,
            lam=case.lam,
            min_keep=case.min_keep,
            scores="binary",
            time_limit=time_limit,
        )
    except Exception as exc:  # noqa: BLE001 - every exception is a finding here
        seconds = time.perf_counter() - started
        return Verdict(case.seed, backend, "exception", None, None, best, seconds, repr(exc))
    seconds = time.perf_counter() - started
    verdict = Verdict(case.seed, backend, res.status, res.objective, res.bound, best, seconds)
    tol = RTOL * max(1.0, abs(best))
    if res.objective < best - tol:
        verdict.wrong = f"objective {res.objective!r} below the optimum {best!r}"
    elif res.status == "optimal" and res.objective > best + tol:
        verdict.wrong = f"'optimal' at {res.objective!r} where the optimum is {best!r}"
    elif res.bound is not None and res.bound > best + BOUND_RTOL * max(1.0, abs(best)):
        verdict.wrong = f"bound {res.bound!r} above the optimum {best!r}"
    elif seconds > time_limit + TIME_SLACK:
        verdict.wrong = f"took {seconds:.1f} s with time_limit {time_limit}"
    return verdict
