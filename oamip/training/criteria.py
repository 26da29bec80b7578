"""Importance criteria to compare the MIP's scores with: one type, a registry, the criteria.

A :class:`Criterion` scores the units of a model (:func:`oamip.adapters.residual.row_groups`:
every scored Linear and Conv2d of a chain, the inner channels and coupled groups of a residual
network, in forward order) like the MIP does: unit name -> one value per unit, higher means more
important. A coupled group is scored over all its producers (every block's layer that adds
into it). ``register_criterion`` adds one, and ``oamip.prune`` compares every
registered criterion that applies to the model with the MIP. The four built in (random,
magnitude, SNIP, Taylor) leave the model unchanged: gradients are taken with respect to detached
copies of the parameters, and the train/eval mode is restored. :func:`masks_like` turns scores
into masks that prune as many units per layer as the MIP's masks do, the paper's comparison
protocol.

With Torch-Pruning installed (the ``tp`` extra), its own importances are criteria too
(``tp-magnitude``, ``tp-taylor``, ``tp-lamp``, and ``tp-bn`` on models with BatchNorm):
global-only criteria (:attr:`Criterion.global_only`), ranked over all layers as Torch-Pruning's
global pruning ranks them (:mod:`oamip.training.tp_scores`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from oamip.adapters.structure import RowGroup, row_groups
from oamip.errors import InvalidInputError
from oamip.training.inference import eval_mode, model_device
from oamip.training.tp_scores import group_importances, has_batchnorm, installed

Scores = dict[str, np.ndarray]
Masks = dict[str, np.ndarray]
Batch = np.ndarray | torch.Tensor
MIP_METHOD = "mip"
"""The name under which reports list the MIP itself; no criterion may take it."""


class Criterion(ABC):
    """An importance criterion: ``scores`` gives every unit of the model a value, higher meaning
    more important. ``x`` and ``y`` are the MIP's batch, ``seed`` fixes any random draw."""

    name: ClassVar[str]
    global_only: ClassVar[bool] = False
    """True for a criterion whose scores are already comparable across layers (normalised by the
    criterion itself, as Torch-Pruning's importances are): it is stepped only as one global
    ranking of its scores as given (``<name>-global``), never layer by layer, and a unit it
    scores ``+inf`` is never pruned (one it does not rank)."""

    @abstractmethod
    def scores(self, model: nn.Module, x: Batch, y: Batch, seed: int) -> Scores:
        """Unit name -> one score per unit, for every unit of ``row_groups(model)``."""

    def applies(self, model: nn.Module) -> bool:
        """Whether the criterion can score ``model`` here (a package it needs is installed, the
        layers it reads exist); criteria that do not apply are left out of comparisons."""
        return True


_REGISTRY: dict[str, type[Criterion]] = {}


def register_criterion(cls: type[Criterion]) -> type[Criterion]:
    """Make a criterion class known under ``cls.name`` (usable as a class decorator); a name
    registered again is replaced in place."""
    if not (isinstance(cls, type) and issubclass(cls, Criterion)):
        raise InvalidInputError(f"a criterion must be a subclass of Criterion, got {cls!r}")
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name or name == MIP_METHOD:
        raise InvalidInputError(
            f"criterion {cls.__name__} needs a class attribute 'name', a non-empty string other "
            f"than '{MIP_METHOD}' (the reports' name for the MIP), got {name!r}"
        )
    _REGISTRY[name] = cls
    return cls


def criteria() -> list[str]:
    """The registered criteria's names, in the order they were registered."""
    return list(_REGISTRY)


def get_criterion(name: str) -> Criterion:
    """The criterion registered as ``name``; a clear error if there is none."""
    cls = _REGISTRY.get(name)
    if cls is None:
        raise InvalidInputError(
            f"unknown criterion '{name}'; registered criteria: {', '.join(criteria())}"
        )
    return cls()


def is_global_only(name: str) -> bool:
    """Whether ``name`` is a registered global-only criterion (:attr:`Criterion.global_only`)."""
    cls = _REGISTRY.get(name)
    return cls is not None and cls.global_only


def all_scores(model: nn.Module, x: Batch, y: Batch, seed: int) -> dict[str, Scores]:
    """The scores of ``model``'s units by every registered criterion that applies to it, each
    checked to give one finite value per unit of every unit layer (``+inf`` allowed for a
    global-only criterion), and nothing else (in forward order)."""
    found = row_groups(model)
    chosen = {name: get_criterion(name) for name in criteria()}
    return {
        name: _checked(name, criterion.scores(model, x, y, seed), found, criterion.global_only)
        for name, criterion in chosen.items()
        if criterion.applies(model)
    }


def per_layer(scores: dict[str, Scores]) -> dict[str, Scores]:
    """The criteria's scores that may be compared layer by layer: all but the global-only."""
    return {name: values for name, values in scores.items() if not is_global_only(name)}


def _checked(
    criterion: str, scores: Scores, found: list[RowGroup], unranked: bool = False
) -> Scores:
    names = [unit.name for unit in found]
    if not isinstance(scores, dict) or set(scores) != set(names):
        given = sorted(scores) if isinstance(scores, dict) else type(scores).__name__
        raise InvalidInputError(
            f"criterion '{criterion}' scored {given}; it must return a dict with one entry per "
            f"unit layer of the model: {names}"
        )
    clean = {}
    for unit in found:
        values = _as_floats(criterion, unit.name, scores[unit.name])
        if values.shape != (unit.size,):
            raise InvalidInputError(
                f"criterion '{criterion}' gave layer '{unit.name}' scores of shape "
                f"{values.shape}; the layer has {unit.size} units, one score each"
            )
        if not np.all(np.isfinite(values) | (unranked & (values == np.inf))):
            raise InvalidInputError(
                f"criterion '{criterion}' gave layer '{unit.name}' NaN or infinite scores"
            )
        clean[unit.name] = values
    return clean


def _as_floats(criterion: str, name: str, values) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu()
    try:
        return np.asarray(values, dtype=float)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(
            f"criterion '{criterion}' gave layer '{name}' scores that are not numbers ({exc})"
        ) from exc


@register_criterion
class RandomCriterion(Criterion):
    """Uniform random scores in [0, 1), the same for the same seed."""

    name = "random"

    def scores(self, model: nn.Module, x: Batch, y: Batch, seed: int) -> Scores:
        rng = np.random.default_rng(seed)
        return {unit.name: rng.random(unit.size) for unit in row_groups(model)}


@register_criterion
class MagnitudeCriterion(Criterion):
    """The L2 norm of each unit's incoming weights and bias (over all producers of a group)."""

    name = "magnitude"

    @torch.no_grad()
    def scores(self, model: nn.Module, x: Batch, y: Batch, seed: int) -> Scores:
        return {unit.name: _to_numpy(_unit_norms(unit.producers)) for unit in row_groups(model)}


@register_criterion
class SnipCriterion(Criterion):
    """SNIP connection sensitivity ``|w * dL/dw|`` summed over each unit's weights and bias.

    ``L`` is the mean cross-entropy on ``(x, y)``, computed in eval mode.
    """

    name = "snip"

    def scores(self, model: nn.Module, x: Batch, y: Batch, seed: int) -> Scores:
        found = row_groups(model)
        params = _detached_params(model)
        with eval_mode(model):
            logits = functional_call(model, params, (_inputs(model, x),))
        loss = F.cross_entropy(logits, _labels(model, y))
        names = _module_names(model)
        scores = {}
        for unit in found:
            keys = [
                f"{names[id(layer)]}.{kind}"
                for layer in unit.producers
                for kind in ("weight", "bias")
                if getattr(layer, kind) is not None
            ]
            grads = torch.autograd.grad(loss, [params[k] for k in keys], retain_graph=True)
            saliency = sum(
                _per_unit_sum((params[k] * g).abs()) for k, g in zip(keys, grads, strict=True)
            )
            scores[unit.name] = _to_numpy(saliency)
        return scores


@register_criterion
class TaylorCriterion(Criterion):
    """First-order Taylor importance: ``|sum over positions of a * dL/da|``, averaged over samples.

    ``a`` is the layer's output for one sample and ``L`` that sample's cross-entropy, so the sum
    is the first-order estimate of the loss change when the unit is switched off (eval mode);
    for a coupled group the sum runs over every producer's output before the absolute value.
    """

    name = "taylor"

    def scores(self, model: nn.Module, x: Batch, y: Batch, seed: int) -> Scores:
        found = row_groups(model)
        layers = {id(layer): layer for unit in found for layer in unit.producers}
        outputs: dict[int, torch.Tensor] = {}
        hooks = [
            layer.register_forward_hook(lambda _m, _i, out, key=key: outputs.__setitem__(key, out))
            for key, layer in layers.items()
        ]
        try:
            with eval_mode(model):
                logits = functional_call(model, _detached_params(model), (_inputs(model, x),))
        finally:
            for hook in hooks:
                hook.remove()
        loss = F.cross_entropy(logits, _labels(model, y), reduction="sum")
        keys = list(outputs)
        grads = dict(zip(keys, torch.autograd.grad(loss, [outputs[k] for k in keys]), strict=True))
        return {
            unit.name: _taylor([(outputs[id(p)], grads[id(p)]) for p in unit.producers])
            for unit in found
        }


class TorchPruningCriterion(Criterion):
    """Torch-Pruning's importance ``importance`` (a key of
    :data:`oamip.training.tp_scores.IMPORTANCES`) of each unit's dependency group, normalised by
    its own normaliser: global-only, as Torch-Pruning's global pruning ranks it. Applies where
    Torch-Pruning is installed; gradients (Taylor) come from the mean cross-entropy of
    ``(x, y)`` in eval mode, on a copy of the model."""

    importance: ClassVar[str]
    global_only = True

    def applies(self, model: nn.Module) -> bool:
        return installed()

    def scores(self, model: nn.Module, x: Batch, y: Batch, seed: int) -> Scores:
        return group_importances(model, _inputs(model, x), _labels(model, y), type(self).importance)


@register_criterion
class TPMagnitudeCriterion(TorchPruningCriterion):
    """Torch-Pruning's group magnitude (``GroupMagnitudeImportance(p=2)``): the mean over the
    group's layers of each channel's squared L2 norm, divided by its mean over the group."""

    name = "tp-magnitude"
    importance = "magnitude"


@register_criterion
class TPTaylorCriterion(TorchPruningCriterion):
    """Torch-Pruning's group Taylor (``GroupTaylorImportance``): ``sum |w * dL/dw|`` per channel,
    averaged over the group's layers, divided by its mean."""

    name = "tp-taylor"
    importance = "taylor"


@register_criterion
class TPLampCriterion(TorchPruningCriterion):
    """Torch-Pruning's LAMP (``LAMPImportance(p=2)``): the group magnitude divided by the sum of
    the group's magnitudes at least as large."""

    name = "tp-lamp"
    importance = "lamp"


@register_criterion
class TPBatchNormCriterion(TorchPruningCriterion):
    """Torch-Pruning's BatchNorm scale (``BNScaleImportance``): ``|gamma|`` of the group's
    BatchNorms, divided by its mean; only on models with BatchNorm, and units without one are
    never pruned (Torch-Pruning does not rank them)."""

    name = "tp-bn"
    importance = "bn"

    def applies(self, model: nn.Module) -> bool:
        return installed() and has_batchnorm(model)


def masks_like(scores: Scores, reference_masks: Masks) -> Masks:
    """Masks that prune, in every layer of ``reference_masks``, as many units as it does.

    The units pruned are the lowest scorers (ties broken by unit order); True means keep.
    """
    masks = {}
    for name, reference in reference_masks.items():
        reference = np.asarray(reference, dtype=bool)
        if name not in scores:
            raise InvalidInputError(
                f"the scores have no layer '{name}' that the reference masks prune; compute both "
                "on the same model"
            )
        layer_scores = np.asarray(scores[name])
        if layer_scores.shape != reference.shape:
            raise InvalidInputError(
                f"layer '{name}' has {layer_scores.shape} scores but a mask of shape "
                f"{reference.shape}; compute both on the same model"
            )
        keep = np.ones(reference.shape, dtype=bool)
        keep[np.argsort(layer_scores, kind="stable")[: int((~reference).sum())]] = False
        masks[name] = keep
    return masks


def _taylor(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> np.ndarray:
    """Per channel, the mean over samples of ``|sum over producers and positions of a * g|``."""
    per_sample = sum(
        (output * grad).reshape(output.shape[0], output.shape[1], -1).sum(2)
        for output, grad in pairs
    )
    return _to_numpy(per_sample.abs().mean(0))


def _unit_norms(layers: list[nn.Module]) -> torch.Tensor:
    squares = 0
    for layer in layers:
        squares = squares + _per_unit_sum(layer.weight.square())
        if layer.bias is not None:
            squares = squares + layer.bias.square()
    return squares.sqrt()


def _module_names(model: nn.Module) -> dict[int, str]:
    return {id(module): name for name, module in model.named_modules()}


def _per_unit_sum(values: torch.Tensor) -> torch.Tensor:
    return values.reshape(values.shape[0], -1).sum(1)


def _detached_params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().requires_grad_() for name, p in model.named_parameters()}


def _inputs(model: nn.Module, x: Batch) -> torch.Tensor:
    return torch.as_tensor(x, dtype=torch.float32).to(model_device(model))


def _labels(model: nn.Module, y: Batch) -> torch.Tensor:
    return torch.as_tensor(y, dtype=torch.long).to(model_device(model))


def _to_numpy(values: torch.Tensor) -> np.ndarray:
    return values.detach().cpu().double().numpy()
