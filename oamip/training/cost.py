"""What a model costs to run: multiply-accumulates, parameters and CPU latency.

Pruning is meant to make models cheaper; these are the figures reports give before and after
physical removal, for chains and residual networks alike.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from oamip import checks
from oamip.training.inference import eval_mode, model_device

LATENCY_BATCHES = (1, 64)
LATENCY_REPEATS = 20
LATENCY_WARMUP = 3


@dataclass(frozen=True)
class Cost:
    """``macs`` per sample (Conv2d and Linear multiply-accumulates), ``params`` (parameter
    values), and ``latency_ms``: batch size -> median milliseconds of one forward pass on the
    CPU, over ``repeats`` timed runs after warm-up, with ``threads`` torch threads."""

    macs: int
    params: int
    latency_ms: dict[int, float]
    repeats: int
    threads: int


def count_macs(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-accumulates of one sample of shape ``input_shape`` through ``model``: for each
    Conv2d, output values times (input channels / groups) times kernel area; for each Linear,
    input times output features. Other layers (BatchNorm, ReLU, pooling, additions) are not
    counted, as usual for MAC counts."""
    total = 0

    def hook(module: nn.Module, _inputs, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            kernel = module.kernel_size[0] * module.kernel_size[1]
            total += output[0].numel() * (module.in_channels // module.groups) * kernel
        else:
            total += output[0].numel() * module.in_features

    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    handles = [m.register_forward_hook(hook) for m in layers]
    try:
        with torch.no_grad(), eval_mode(model):
            model(torch.zeros(1, *input_shape, device=model_device(model)))
    finally:
        for handle in handles:
            handle.remove()
    return total


def model_cost(
    model: nn.Module,
    input_shape: Sequence[int],
    batches: Sequence[int] = LATENCY_BATCHES,
    repeats: int = LATENCY_REPEATS,
    warmup: int = LATENCY_WARMUP,
) -> Cost:
    """MACs, parameters and the median CPU latency of ``model`` at each batch size in
    ``batches`` (random inputs of shape ``input_shape``); the model is left as it was."""
    checks.whole("repeats", repeats, 1)
    checks.whole("warm-up runs", warmup, 0)
    for batch in batches:
        checks.whole("every batch size", batch, 1)
    latency = {int(b): _median_ms(model, (b, *input_shape), repeats, warmup) for b in batches}
    return Cost(
        macs=count_macs(model, input_shape),
        params=sum(p.numel() for p in model.parameters()),
        latency_ms=latency,
        repeats=repeats,
        threads=torch.get_num_threads(),
    )


def paired_latency(
    first: nn.Module,
    second: nn.Module,
    input_shape: Sequence[int],
    batch: int,
    blocks: int = 15,
    repeats: int = 5,
) -> tuple[float, float]:
    """Median CPU milliseconds of one forward pass of ``first`` and of ``second`` at ``batch``,
    timed in alternating blocks of ``repeats`` runs (after one warm-up run each): on a shared
    machine the load changes over time, and alternation makes it hit both models alike."""
    checks.whole("blocks", blocks, 1)
    checks.whole("repeats", repeats, 1)
    checks.whole("the batch size", batch, 1)
    shape = (batch, *input_shape)
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(blocks):
        for model, found in zip((first, second), times):
            found.append(_median_ms(model, shape, repeats, 1))
    return statistics.median(times[0]), statistics.median(times[1])


def _median_ms(model: nn.Module, shape: tuple[int, ...], repeats: int, warmup: int) -> float:
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    cpu = model if model_device(model).type == "cpu" else copy.deepcopy(model).cpu()
    times = []
    with torch.no_grad(), eval_mode(cpu):
        for run in range(warmup + repeats):
            start = time.perf_counter()
            cpu(x)
            if run >= warmup:
                times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)
