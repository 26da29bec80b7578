"""Torch-Pruning's own importances of our units (``pip install 'oamip[tp]'``), as its global
pruning ranks them.

Torch-Pruning scores a dependency group (a unit's producers' output channels, their BatchNorms,
the next layers' inputs, and across additions the whole coupled group) with an importance that
reduces the group's layers to one value per channel and divides by its own normaliser (the
mean, or LAMP's); its global pruning ranks those values over all groups as they are
(``MetaPruner(global_pruning=True)``). :func:`group_importances` gives each unit of
:func:`oamip.adapters.structure.row_groups` the values of the group that Torch-Pruning's pruner
ranks for it, computed by Torch-Pruning on a copy of the model (so gradients never touch the
caller's).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from oamip.adapters.structure import RowGroup, row_groups
from oamip.errors import InvalidInputError
from oamip.training.tp import torch_pruning

IMPORTANCES = {
    "magnitude": lambda tp: tp.importance.GroupMagnitudeImportance(p=2),
    "taylor": lambda tp: tp.importance.GroupTaylorImportance(),
    "lamp": lambda tp: tp.importance.LAMPImportance(p=2),
    "bn": lambda tp: tp.importance.BNScaleImportance(),
}
"""Torch-Pruning's importances by our name for them, each at Torch-Pruning's defaults (group
magnitude at p=2 as its own examples use it)."""
NEEDS_GRADIENTS = {"taylor"}
"""The importances that read each parameter's gradient of the loss on the samples."""
UNRANKED = np.inf
"""The score of a unit whose group the importance does not rank (BatchNorm scale where the unit
has no BatchNorm): Torch-Pruning leaves such a group out of its ranking, so it is never pruned."""


def installed() -> bool:
    """Whether Torch-Pruning can be imported."""
    try:
        import torch_pruning  # noqa: F401
    except ImportError:
        return False
    return True


def has_batchnorm(model: nn.Module) -> bool:
    """Whether ``model`` holds a BatchNorm (what BatchNorm scale importance reads)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def group_importances(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, importance: str
) -> dict[str, np.ndarray]:
    """Unit name -> Torch-Pruning's ``importance`` (a key of :data:`IMPORTANCES`) of each of
    its channels, normalised by the importance's own normaliser, on the groups that
    Torch-Pruning's pruner ranks (:func:`unit_groups`); a group left unranked scores
    :data:`UNRANKED`, and a group of all-zero importances (0/0 under the mean) scores 0. The
    importances that need gradients take them from the mean cross-entropy of ``(x, y)`` in eval
    mode. ``model`` is not modified."""
    if importance not in IMPORTANCES:
        raise InvalidInputError(
            f"unknown Torch-Pruning importance '{importance}'; known: {', '.join(IMPORTANCES)}"
        )
    tp = torch_pruning()
    twin = copy.deepcopy(model).eval()
    graph = tp.DependencyGraph().build_dependency(twin, example_inputs=x[:1])
    if importance in NEEDS_GRADIENTS:
        twin.zero_grad()
        F.cross_entropy(twin(x), y).backward()
    scorer = IMPORTANCES[importance](tp)
    return {
        unit.name: _unit_importance(scorer(group), unit)
        for unit, group in unit_groups(graph, row_groups(twin))
    }


def unit_groups(graph, units: list[RowGroup]) -> list[tuple[RowGroup, object]]:
    """Each unit with the dependency group Torch-Pruning's pruner ranks for it: the groups of
    ``graph.get_all_groups`` (rooted at output channels of Conv2d and Linear layers, every layer
    that is no unit's producer ignored, as a pruner ignores the output layer), each matched to
    the unit whose producers are the layers whose outputs it prunes; a coupled group of a
    residual net is one group. Refused when the two disagree."""
    producers = {id(layer): unit for unit in units for layer in unit.producers}
    layers = [m for m in graph.model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    ignored = [m for m in layers if id(m) not in producers]
    found = {}
    for group in graph.get_all_groups(ignored, (nn.Conv2d, nn.Linear)):
        outputs = {
            id(dep.target.module)
            for dep, _ in group
            if graph.is_out_channel_pruning_fn(dep.handler) and id(dep.target.module) in producers
        }
        unit = producers[id(group[0].dep.target.module)]
        if outputs != {id(layer) for layer in unit.producers} or unit.name in found:
            raise InvalidInputError(
                f"Torch-Pruning's dependency group rooted in unit '{unit.name}' does not prune "
                "exactly that unit's producers; its dependency graph and OAMIP's units disagree "
                "on this model"
            )
        found[unit.name] = group
    missing = [unit.name for unit in units if unit.name not in found]
    if missing:
        raise InvalidInputError(
            f"Torch-Pruning's pruner ranks no group for units {missing} of this model; its "
            "dependency graph and OAMIP's units disagree on it"
        )
    return [(unit, found[unit.name]) for unit in units]


def _unit_importance(values: torch.Tensor | None, unit: RowGroup) -> np.ndarray:
    if values is None:
        return np.full(unit.size, UNRANKED)
    values = values.detach().cpu().double().numpy()
    return np.where(np.isnan(values), 0.0, values)
