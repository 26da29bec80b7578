"""The torch side of exact compression: read a model for the proofs, write the smaller model.

The proofs (:mod:`oamip.solve.stability`) and folds (:mod:`oamip.solve.folding`) work on the
network read by :func:`~oamip.adapters.extract.extract`; this module says which of its layers
may be folded (a Linear whose ReLU feeds the next Linear, in a chain), turns the proofs into
keep-masks per unit (a residual network's coupled group is dead only where every ReLU of the
group is), folds into the next layer's weights and removes units with
:func:`~oamip.adapters.masks.remove_pruned`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from oamip.adapters.chain import chain_units, read_chain
from oamip.adapters.extract import Extracted, extract
from oamip.adapters.masks import remove_pruned
from oamip.solve.folding import Fold
from oamip.solve.stability import StabilityProof

_PASS_THROUGH = ("dropout",)
"""Steps between a ReLU and the next Linear that leave the values unchanged (in eval mode)."""


@dataclass
class Compressible:
    """A model read for compression: its network, and per foldable network layer the module
    that reads its units (``consumers``); ``not_folded`` says why other layers are not."""

    extracted: Extracted
    consumers: dict[int, str] = field(default_factory=dict)
    not_folded: dict[str, str] = field(default_factory=dict)

    @property
    def unit_layers(self) -> dict[str, list[int]]:
        """Per unit name, the network layers of its ReLUs (several for a coupled group)."""
        return {
            name: [layer for layer, _ in self.extracted.shift_targets(name)]
            for name in self.extracted.units
        }


def read_compressible(model: nn.Module, input_shape: tuple[int, ...]) -> Compressible:
    """Read ``model`` (left untouched) for inputs of ``input_shape`` per sample; every unit of a
    residual network is scored (inner units and coupled groups)."""
    extracted = extract(model, np.zeros((1, *input_shape)), residual="both")
    found = Compressible(extracted)
    if extracted.targets:
        found.not_folded = dict.fromkeys(extracted.units, "residual network")
        return found
    steps = read_chain(extracted.reference)
    for unit in chain_units(steps):
        reason = _fold_blocker(unit, steps)
        if reason:
            found.not_folded[unit.name] = reason
        else:
            layer = extracted.units[unit.name].layer
            found.consumers[layer] = next(
                s.name for s in steps[unit.activation + 1 :] if s.kind == "linear"
            )
    return found


def _fold_blocker(unit, steps) -> str | None:
    """Why ``unit``'s active units cannot be folded into the next layer (None: they can)."""
    if not isinstance(unit.module, nn.Linear):
        return "convolution"
    after = [s for s in steps[unit.activation + 1 :] if s.kind not in _PASS_THROUGH]
    if not after or after[0].kind != "linear":
        kind = after[0].kind if after else "nothing"
        return f"its ReLU feeds {kind}, not a Linear layer"
    return None


def dead_masks(found: Compressible, proof: StabilityProof) -> dict[str, np.ndarray]:
    """Per unit name, True where the unit is proven dead at every one of its ReLUs."""
    masks = {}
    for name, layers in found.unit_layers.items():
        dead = np.ones(found.extracted.network.layers[layers[0]].n_units, dtype=bool)
        for layer in layers:
            dead &= proof.layers[layer].dead
        masks[name] = dead
    return masks


def open_masks(found: Compressible, proof: StabilityProof) -> dict[str, np.ndarray]:
    """Per unit name, True where the unit is not proven dead and a question about it was left
    open at one of its ReLUs (kept, and the proof is partial)."""
    dead = dead_masks(found, proof)
    masks = {}
    for name, layers in found.unit_layers.items():
        masks[name] = np.any([proof.layers[layer].open for layer in layers], axis=0) & ~dead[name]
    return masks


def compressed_model(
    model: nn.Module,
    found: Compressible,
    removed: dict[str, np.ndarray],
    folds: list[Fold],
) -> nn.Module:
    """A smaller copy of ``model``: the folds written into the next layers' weights, then the
    ``removed`` units (bool per unit name, folded ones included) physically gone."""
    small = copy.deepcopy(model)
    for fold in folds:
        _fold_into(small.get_submodule(found.consumers[fold.layer]), fold)
    masks = {name: ~gone for name, gone in removed.items() if gone.any()}
    return remove_pruned(small, masks) if masks else small


def _fold_into(consumer: nn.Linear, fold: Fold) -> None:
    """``consumer`` reads ``fold.unit`` through the basis units and its bias (float64 sums)."""
    with torch.no_grad():
        weight = consumer.weight.detach().double()
        column = weight[:, fold.unit].clone()
        coefs = torch.as_tensor(fold.coefs, dtype=torch.float64, device=weight.device)
        basis = torch.as_tensor(fold.basis, device=weight.device)
        weight[:, basis] += torch.outer(column, coefs)
        weight[:, fold.unit] = 0.0
        consumer.weight.copy_(weight)
        if consumer.bias is None:
            consumer.bias = nn.Parameter(torch.zeros_like(consumer.weight[:, 0]))
        consumer.bias.copy_(consumer.bias.double() + column * fold.shift)
