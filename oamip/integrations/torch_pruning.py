"""OAMIP and SPR in Torch-Pruning's own terms (``pip install 'oamip[tp]'``).

Torch-Pruning users build a pruner from a model, example inputs and an importance, then call
``pruner.step()``. :class:`OAMIPImportance` is an importance (``tp.importance.Importance``)
ranking each dependency group's channels by the OAMIP scores of the unit that owns them, and
:class:`SPRPruner` a pruner (``tp.pruner.BasePruner``) whose ``regularize`` hook is SPR. Both
wrap :mod:`oamip.training.tp_importance` and :mod:`oamip.training.tp`, which hold the logic;
importing this module without Torch-Pruning raises an error naming the extra.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from oamip.training.spr import DEFAULT_RESIDUAL_UNITS, SPRRegularizer
from oamip.training.tp import pruner_class, torch_pruning
from oamip.training.tp_importance import importance_class, importance_tables

__all__ = ["OAMIPImportance", "SPRPruner"]

torch_pruning()


class OAMIPImportance(importance_class()):
    """A Torch-Pruning importance: each channel of a group gets the score its unit received
    from :func:`oamip.score_neurons` (``scores``: a ``ScoreResult`` or its ``scores``, unit
    name -> one score per channel). Groups of no scored unit (the output layer's) get None,
    which Torch-Pruning skips. Build it on the model the pruner prunes, before pruning."""

    def __init__(self, model: nn.Module, scores: Mapping[str, np.ndarray] | Any) -> None:
        super().__init__(*importance_tables(model, getattr(scores, "scores", scores)))


class SPRPruner(pruner_class()):
    """A Torch-Pruning pruner whose ``regularize(model)`` adds SPR's gradient, for sparse
    training in Torch-Pruning's loop; ``step()`` then removes the channels of least importance
    (by default the group L2 norm, which SPR drives to zero). ``reg`` is SPR's ``lam`` (as
    ``reg`` is the coefficient of Torch-Pruning's ``GroupNormPruner``); ``alpha``, ``M_scale``
    and ``units`` are :class:`~oamip.training.spr.SPRRegularizer`'s. Other keywords go to
    ``BasePruner`` (``pruning_ratio``, ``ignored_layers``, ...). After a ``step()`` call
    ``update_regularizer()``: it rebuilds SPR on the smaller model."""

    def __init__(
        self,
        model: nn.Module,
        example_inputs: torch.Tensor,
        importance: Any = None,
        reg: float = 1e-3,
        alpha: float = 0.5,
        M_scale: float = 1.0,
        units: str = DEFAULT_RESIDUAL_UNITS,
        **pruner_args: Any,
    ) -> None:
        spr = SPRRegularizer(model, reg, alpha, M_scale, units)
        super().__init__(model, example_inputs, spr, importance=importance, **pruner_args)
