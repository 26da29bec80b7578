"""What moving a mask between networks and data sets needs: the lottery-ticket rewind, an output
layer made for another number of classes, a MIP batch that needs no trained model, and masks that
keep every unit (the dense network trained the same way as the pruned ones)."""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from oamip.adapters.residual import forward_ops
from oamip.adapters.structure import row_groups
from oamip.errors import InvalidInputError
from oamip.training.data import Batch, Dataset


def rewind(model: nn.Module, initial: dict[str, torch.Tensor]) -> nn.Module:
    """A copy of ``model`` holding the weights (and buffers) of ``initial``, a state dict saved
    at initialisation: the trained network reset to its start. ``model`` is left as it was."""
    reset = copy.deepcopy(model)
    reset.load_state_dict(initial)
    return reset


def with_classes(model: nn.Module, num_classes: int, seed: int) -> nn.Module:
    """A copy of ``model`` whose output layer gives ``num_classes`` logits: the same model when it
    already does, otherwise with the output layer (its last Linear) initialised afresh from
    ``seed``, as PyTorch initialises a new Linear layer."""
    name, layer = _output_layer(model)
    if not isinstance(layer, nn.Linear):
        raise InvalidInputError(
            f"the output layer '{name}' is a {type(layer).__name__}, not a Linear "
            "layer; only a Linear output layer can be made for another number of classes"
        )
    changed = copy.deepcopy(model)
    if layer.out_features == num_classes:
        return changed
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = nn.Linear(layer.in_features, num_classes, bias=layer.bias is not None)
    parent, _, child = name.rpartition(".")
    owner = changed.get_submodule(parent) if parent else changed
    setattr(owner, child, fresh.to(device=layer.weight.device, dtype=layer.weight.dtype))
    return changed


def _output_layer(model: nn.Module) -> tuple[str, nn.Module]:
    """The name and module of the last Linear or Conv2d the forward applies (chain or graph)."""
    layers, ops, _ = forward_ops(model)
    kinds = (nn.Linear, nn.Conv2d)
    applied = [op.layer for op in ops if op.kind == "layer"]
    name = [layer for layer in applied if isinstance(layers[layer], kinds)][-1]
    return name, layers[name]


def random_batch(dataset: Dataset, samples_per_class: int, seed: int) -> Batch:
    """``samples_per_class`` training samples of each class drawn at random (by ``seed``), ordered
    by class: the batch for scoring a network at initialisation, which classifies too few samples
    correctly for :func:`oamip.training.data.mip_batch`."""
    rng = np.random.default_rng(seed)
    chosen = []
    for label in range(dataset.num_classes):
        candidates = np.flatnonzero(dataset.y_train == label)
        if len(candidates) < samples_per_class:
            raise InvalidInputError(
                f"class {label} of '{dataset.name}' has {len(candidates)} training samples, fewer "
                f"than the {samples_per_class} samples per class asked for; ask for fewer"
            )
        chosen.append(np.sort(rng.choice(candidates, size=samples_per_class, replace=False)))
    indices = np.concatenate(chosen)
    return Batch(dataset.x_train[indices], dataset.y_train[indices], indices)


def keep_all(model: nn.Module) -> dict[str, np.ndarray]:
    """Masks that keep every unit of ``model``: training with them is training the dense network
    by the same code path as the pruned ones."""
    return {unit.name: np.ones(unit.size, dtype=bool) for unit in row_groups(model)}
