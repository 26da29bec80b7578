"""OAMIP scores as a Torch-Pruning importance criterion (``pip install 'oamip[tp]'``).

Torch-Pruning's pruners rank the channels of each dependency group (channels that must go
together: a convolution's filters, its BatchNorm, the next layers' inputs, and across additions
the whole coupled group) by an importance and remove the lowest. :func:`oamip_importance` makes
that importance the scores :func:`oamip.score_neurons` gave our units, which are the same sets of
channels (:func:`oamip.adapters.structure.row_groups`), so Torch-Pruning's dependency graph does
the removal and OAMIP decides what goes.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache

import numpy as np
import torch
from torch import nn

from oamip.adapters.structure import row_groups
from oamip.errors import InvalidInputError
from oamip.training.tp import torch_pruning


def oamip_importance(model: nn.Module, scores: Mapping[str, np.ndarray]):
    """A ``torch_pruning.importance.Importance`` giving each channel of a group its unit's score
    in ``scores`` (unit name -> one score per channel, e.g. ``score_neurons(...).scores``);
    groups of no scored unit (the output layer's, or units left unscored) get None, which
    Torch-Pruning skips. Build it on the model the pruner prunes, before pruning."""
    return importance_class()(*importance_tables(model, scores))


def importance_tables(
    model: nn.Module, scores: Mapping[str, np.ndarray]
) -> tuple[dict[int, str], dict[str, torch.Tensor]]:
    """What the importance looks up: the unit owning each parameter (by id) of ``model``, and
    each unit's scores as a tensor; scores of an unknown unit or of the wrong size are
    refused."""
    units = {group.name: group for group in row_groups(model)}
    owner = {}
    for name, values in scores.items():
        if name not in units:
            raise InvalidInputError(
                f"scores for '{name}', which is not a unit of the model; units: {list(units)}"
            )
        if np.shape(values) != (units[name].size,):
            raise InvalidInputError(
                f"scores for '{name}' have shape {np.shape(values)}; the unit has "
                f"{units[name].size} channels"
            )
        owner.update({id(param): name for param in units[name].params})
    table = {name: torch.as_tensor(np.asarray(v, dtype=float)) for name, v in scores.items()}
    return owner, table


@cache
def importance_class() -> type:
    """The importance class, defined once Torch-Pruning is known to be importable."""
    tp = torch_pruning()
    out_channels = (
        tp.prune_conv_out_channels,
        tp.prune_linear_out_channels,
        tp.prune_batchnorm_out_channels,
    )

    class OamipImportance(tp.importance.Importance):
        """Channels ranked by OAMIP scores: the scores of the unit that owns the group."""

        def __init__(self, owner: dict[int, str], scores: dict[str, torch.Tensor]) -> None:
            self.owner = owner
            self.scores = scores

        @torch.no_grad()
        def __call__(self, group) -> torch.Tensor | None:
            names = {
                self.owner.get(id(getattr(dep.layer, "weight", None)))
                for dep, _ in group
                if dep.pruning_fn in out_channels
            } - {None}
            if not names:
                return None
            if len(names) > 1:
                raise InvalidInputError(
                    f"a Torch-Pruning group holds the channels of several units {sorted(names)}; "
                    "OAMIP's units and the dependency graph disagree on this model"
                )
            return self.scores[names.pop()][group[0].root_idxs]

    return OamipImportance
