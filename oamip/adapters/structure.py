"""A network read once: whether it is a chain or a residual graph, and its units.

:class:`Structure` is what masks, removal, descriptions, criteria and fine-tuning take instead of
each reading the model again. It names modules rather than holding them, so the structure of a
model is also the structure of every copy of it (``copy.deepcopy``, a fine-tuned copy, the
float64 reference): :meth:`Structure.of` reads a model's forward with torch.fx only the first
time it sees that architecture (see :func:`oamip.adapters.chain.trace_graph`).

A mask is ``{unit name: boolean keep-mask}``; :meth:`Structure.check_masks` is the one check of
masks for chains and residual graphs alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from oamip.adapters.chain import GRAPH_CACHE_SIZE, architecture_key, reads_as_graph, units
from oamip.adapters.residual import residual_units
from oamip.errors import InvalidInputError

Masks = Mapping[str, np.ndarray | torch.Tensor]
UNIT_KINDS = ("inner", "group")
FROM_SCORES = "from a ScoreResult use res.masks(threshold)"


@dataclass(frozen=True)
class UnitRows:
    """One unit: ``size`` channels (or neurons) pruned together. ``producers`` are the
    Linear/Conv2d modules whose output channels they are, ``batchnorms`` the BatchNorms acting on
    them; ``kind`` is ``"inner"`` (one producer, no addition ties it) or ``"group"`` (channels
    tied by additions in a residual graph)."""

    name: str
    kind: str
    size: int
    producers: tuple[str, ...]
    batchnorms: tuple[str, ...]

    def row_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """The parameters of ``model`` with one row per channel of this unit: each producer's
        weight and bias, each BatchNorm's scale and shift (where present). Zeroing row ``c`` of
        all of them makes channel ``c`` output exactly 0."""
        params = []
        for name in (*self.producers, *self.batchnorms):
            module = model.get_submodule(name)
            params += [module.weight, module.bias]
        return [p for p in params if p is not None]


@dataclass
class RowGroup:
    """A unit with the modules and parameters of one model: what SPR groups, what fine-tuning
    holds at zero, what the baseline criteria score."""

    name: str
    kind: str
    size: int
    params: list[nn.Parameter]
    producers: list[nn.Module]


@dataclass(frozen=True)
class Structure:
    """A model read once: ``residual`` (read as a graph: its forward adds tensors or it has
    grouped convolutions, :func:`oamip.adapters.chain.reads_as_graph`) and its ``units`` in
    forward order (:func:`oamip.adapters.chain.units` for a chain, :func:`residual_units` for a
    graph)."""

    residual: bool
    units: tuple[UnitRows, ...]

    @classmethod
    def of(cls, model: nn.Module) -> Structure:
        """The structure of ``model``, read once per architecture (the key of
        :func:`oamip.adapters.chain.architecture_key`, which fixes the units and their sizes);
        refuses, naming the culprit, what cannot be read."""
        key = architecture_key(model)
        found = None if key is None else _STRUCTURES.get(key)
        if found is None:
            found = cls._read(model)
            if key is not None:
                _STRUCTURES[key] = found
                while len(_STRUCTURES) > GRAPH_CACHE_SIZE:
                    _STRUCTURES.pop(next(iter(_STRUCTURES)))
        return found

    @classmethod
    def _read(cls, model: nn.Module) -> Structure:
        if reads_as_graph(model):
            found = tuple(
                UnitRows(u.name, u.kind, u.size, u.producers, u.batchnorms)
                for u in residual_units(model)
            )
            return cls(True, found)
        found = tuple(
            UnitRows(u.name, "inner", u.size, (u.name,), (u.batchnorm,) if u.batchnorm else ())
            for u in units(model)
        )
        return cls(False, found)

    @property
    def sizes(self) -> dict[str, int]:
        """Unit name -> number of channels, in forward order."""
        return {unit.name: unit.size for unit in self.units}

    def row_groups(self, model: nn.Module, kinds: tuple[str, ...] = UNIT_KINDS) -> list[RowGroup]:
        """The units whose kind is in ``kinds`` with ``model``'s parameters and modules."""
        return [
            RowGroup(
                unit.name,
                unit.kind,
                unit.size,
                unit.row_parameters(model),
                [model.get_submodule(p) for p in unit.producers],
            )
            for unit in self.units
            if unit.kind in kinds
        ]

    def check_masks(self, masks: Masks, allow_empty: bool = True) -> dict[str, np.ndarray]:
        """Masks as new bool arrays keyed by unit names, with types and sizes checked; with
        ``allow_empty=False`` a mask that removes every channel of its unit is refused too."""
        what = "unit" if self.residual else "layer"
        if not isinstance(masks, Mapping):
            raise InvalidInputError(
                f"masks must be a dict {{{what} name: boolean keep-mask}}, got "
                f"{type(masks).__name__}; {FROM_SCORES}"
            )
        sizes = self.sizes
        clean = {}
        for name, mask in masks.items():
            if name not in sizes:
                known = (
                    "a unit of this network; units"
                    if self.residual
                    else ("a scored layer; scored layers")
                )
                raise InvalidInputError(f"mask for '{name}', which is not {known}: {list(sizes)}")
            clean[name] = as_bool_mask(name, mask)
            if clean[name].shape != (sizes[name],):
                channels = "channels" if self.residual else "units"
                raise InvalidInputError(
                    f"mask for '{name}' has shape {clean[name].shape}; the {what} has "
                    f"{sizes[name]} {channels}"
                )
            if not allow_empty and not clean[name].any():
                raise InvalidInputError(f"the mask of '{name}' removes {self._everything}")
        return clean

    @property
    def _everything(self) -> str:
        if self.residual:
            return "every channel; keep at least one per unit"
        return "every unit; keep at least one unit per layer"


_STRUCTURES: dict[tuple, Structure] = {}
"""Structures read, by architecture key (oldest first, at most GRAPH_CACHE_SIZE)."""


def row_groups(model: nn.Module, kinds: tuple[str, ...] = UNIT_KINDS) -> list[RowGroup]:
    """The units of ``model`` whose kind is in ``kinds``, in forward order, with its parameters:
    the one list of units for everything that treats chains and residual graphs alike."""
    return Structure.of(model).row_groups(model, kinds)


def as_bool_mask(name: str, mask) -> np.ndarray:
    """A new bool array from a bool mask or one of only 0s and 1s; anything else (scores, NaN,
    strings) is refused rather than read as "keep if non-zero"."""
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    mask = np.asarray(mask)
    numeric = mask.dtype.kind in "biuf"
    if not numeric or not np.isin(mask, (0, 1)).all():
        kind = "values other than 0 and 1" if numeric else f"dtype {mask.dtype}"
        raise InvalidInputError(
            f"mask for '{name}' is not boolean ({kind}); masks must be boolean keep-masks "
            f"(True = keep); {FROM_SCORES}"
        )
    return mask.astype(bool)
