"""Physical removal of pruned channels from residual networks.

Own code rather than Torch-Pruning's dependency graph: :func:`oamip.adapters.residual.
residual_units` already knows which layers share a unit's channels, so removal is slicing those
layers' weights; it needs no optional dependency, keeps the model's class, forward and module
names (so the result is saved like any residual model), and is checked for exactness in
tests/test_residual.py.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from oamip.adapters.chain import is_depthwise, is_grouped
from oamip.adapters.residual import ResidualUnit, residual_units
from oamip.adapters.structure import Masks, Structure
from oamip.errors import UnsupportedLayerError


def remove_residual_pruned(model: nn.Module, masks: Masks) -> nn.Module:
    """A copy of ``model`` with the pruned channels of each masked unit physically gone.

    Every producer and BatchNorm of a unit loses the pruned channels' rows and every consumer
    the matching input channels (a Linear after a flatten, each channel's block of features).
    Pruned channels are exactly 0 in the masked model (:func:`oamip.adapters.masks.apply_masks`),
    so the smaller model computes the same outputs. Each mask must keep at least one channel.
    """
    clean = Structure.of(model).check_masks(masks, allow_empty=False)
    found = residual_units(model)
    small = copy.deepcopy(model)
    modules = dict(small.named_modules())
    for unit in found:
        if unit.name in clean and not clean[unit.name].all():
            _slice_unit(unit, modules, clean[unit.name])
    return small


def _slice_unit(unit: ResidualUnit, modules: dict[str, nn.Module], keep: np.ndarray) -> None:
    index = torch.from_numpy(np.flatnonzero(keep))
    for name in unit.producers:
        _keep_outputs(name, modules[name], index)
    for name in unit.batchnorms:
        _keep_batchnorm(modules[name], index)
    for name in unit.consumers:
        _keep_inputs(name, modules[name], index, unit.size)


def _keep_outputs(name: str, module: nn.Module, index: torch.Tensor) -> None:
    """Keep output channels ``index``; a depthwise convolution keeps the same input channels
    (and as many groups), a grouped one the same number of channels in each group."""
    if is_depthwise(module):
        module.in_channels = module.groups = len(index)
    elif is_grouped(module):
        _per_group(name, module, index, module.out_channels, "output")
    _select(module, "weight", index, 0)
    _select(module, "bias", index, 0)
    attr = "out_channels" if isinstance(module, nn.Conv2d) else "out_features"
    setattr(module, attr, len(index))


def _keep_batchnorm(module: nn.Module, index: torch.Tensor) -> None:
    for attr in ("weight", "bias", "running_mean", "running_var"):
        _select(module, attr, index, 0)
    module.num_features = len(index)


def _keep_inputs(name: str, module: nn.Module, index: torch.Tensor, channels: int) -> None:
    if is_grouped(module):
        _keep_group_inputs(name, module, index)
        return
    if isinstance(module, nn.Conv2d):
        _select(module, "weight", index, 1)
        module.in_channels = len(index)
        return
    area, rest = divmod(module.in_features, channels)
    if rest:
        raise UnsupportedLayerError(
            f"cannot tell which inputs of '{name}' ({module.in_features} features) belong to "
            f"which of the {channels} channels before it"
        )
    columns = (index[:, None] * area + torch.arange(area)).reshape(-1)
    _select(module, "weight", columns, 1)
    module.in_features = len(columns)


def _select(module: nn.Module, attr: str, index: torch.Tensor, dim: int) -> None:
    """Keep the ``index`` entries of a parameter or buffer along ``dim`` (absent ones stay)."""
    value = getattr(module, attr)
    if value is None:
        return
    kept = value.detach().index_select(dim, index.to(value.device)).clone()
    setattr(
        module,
        attr,
        nn.Parameter(kept, value.requires_grad) if isinstance(value, nn.Parameter) else kept,
    )


def _keep_group_inputs(name: str, module: nn.Conv2d, index: torch.Tensor) -> None:
    """Keep input channels ``index`` of a grouped convolution: each group's filters keep the
    columns of its own kept channels."""
    local = _per_group(name, module, index, module.in_channels, "input")
    rows = module.out_channels // module.groups
    weight = module.weight.detach()
    parts = [weight[j * rows : (j + 1) * rows][:, cols] for j, cols in enumerate(local)]
    module.weight = nn.Parameter(torch.cat(parts).clone(), module.weight.requires_grad)
    module.in_channels = len(index)


def _per_group(name: str, module: nn.Conv2d, index: torch.Tensor, channels: int, side: str):
    """Per group, the positions within it of the kept channels ``index`` (of ``channels``);
    a grouped convolution keeps as many channels in every group, at least one, or it is no
    longer a grouped convolution of torch."""
    width = channels // module.groups
    local = [
        index[(index >= j * width) & (index < (j + 1) * width)] - j * width
        for j in range(module.groups)
    ]
    counts = sorted({len(cols) for cols in local})
    if counts[0] == 0 or len(counts) > 1:
        raise UnsupportedLayerError(
            f"cannot remove {side} channels of '{name}' ({module.groups} groups of {width}): the "
            f"masks keep {[len(cols) for cols in local]} of them per group; a grouped "
            "convolution must keep as many in each group, at least one (apply_masks zeroes "
            "them instead)"
        )
    return local
