"""Interoperation with Torch-Pruning (``pip install 'oamip[tp]'``), the structured-pruning library
whose dependency graph removes coupled channels from any graph.

:func:`spr_pruner` is a Torch-Pruning pruner whose ``regularize`` hook is SPR
(:class:`oamip.training.spr.SPRRegularizer`): sparse training with SPR in Torch-Pruning's own
loop, then its ``step()`` removes the channels of least group norm.
"""

from __future__ import annotations

from functools import cache
from types import ModuleType
from typing import Any

import torch
from torch import nn

from oamip.errors import InvalidInputError
from oamip.training.spr import DEFAULT_RESIDUAL_UNITS, SPRRegularizer


def torch_pruning() -> ModuleType:
    """The ``torch_pruning`` module; a clear error naming the extra when it is not installed."""
    try:
        import torch_pruning as tp
    except ImportError as exc:
        raise InvalidInputError(
            "this needs Torch-Pruning, which is not installed; install the extra with "
            "pip install 'oamip[tp]' (or pip install torch-pruning)"
        ) from exc
    return tp


def spr_pruner(
    model: nn.Module,
    example_inputs: torch.Tensor,
    lam: float,
    alpha: float,
    M_scale: float = 1.0,
    units: str = DEFAULT_RESIDUAL_UNITS,
    **pruner_args: Any,
):
    """A Torch-Pruning ``BasePruner`` over ``model`` whose ``regularize(model)`` adds SPR's
    gradient (``lam``, ``alpha``, ``M_scale``, ``units`` as for :class:`SPRRegularizer`) and
    whose default importance is the group L2 norm, so the groups SPR drove to zero go first.
    ``pruner_args`` go to ``BasePruner`` (``pruning_ratio``, ``ignored_layers``, ...). After a
    ``step()`` call ``update_regularizer()``: it rebuilds SPR on the smaller model."""
    reg = SPRRegularizer(model, lam, alpha, M_scale, units)
    return pruner_class()(model, example_inputs, reg, **pruner_args)


@cache
def pruner_class() -> type:
    """The pruner class, defined once Torch-Pruning is known to be importable."""
    tp = torch_pruning()

    class SPRPruner(tp.pruner.BasePruner):
        """Torch-Pruning's pruner with SPR as its sparse-training regulariser."""

        def __init__(self, model, example_inputs, reg: SPRRegularizer, **kwargs) -> None:
            if kwargs.get("importance") is None:
                kwargs["importance"] = tp.importance.GroupMagnitudeImportance(p=2)
            super().__init__(model, example_inputs, **kwargs)
            self.spr = reg
            self.spr_settings = (reg.lam, reg.alpha, reg.M_scale, reg.units)

        def regularize(self, model, *_args, **_kwargs) -> None:
            self.spr.regularize()

        def update_regularizer(self) -> None:
            self.spr = SPRRegularizer(self.model, *self.spr_settings)

    return SPRPruner
