"""Pruning at initialisation: ``oamip.prune(..., at_init=True)`` and ``oamip prune --at-init``.

The network is scored at its initialisation, on a few training samples drawn at random (an
untrained network classifies too few correctly to pick those), pruned, and then trained with the
pruned units held at exactly zero. In the same run, from the same initial weights and for the same
epochs: the dense network, and every registered criterion (random, magnitude, SNIP, Taylor, all at
initialisation) pruning as many units per layer. The authors scored on 5 samples with lam 1 and
threshold 0.2.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from torch import nn

from oamip.adapters import apply_masks, remove_pruned
from oamip.errors import InvalidInputError
from oamip.pipelines.compare import accuracy_curve, finetuned
from oamip.pipelines.inputs import dense_copy, describe_arch, test_accuracy
from oamip.pipelines.results import BaselineReport, PruneReport, mip_fields
from oamip.pipelines.settings import DEFAULT_RECIPE, PruneSettings
from oamip.pipelines.solving import BatchSolver
from oamip.progress import Listener
from oamip.solve.options import Resources
from oamip.training.criteria import Masks, all_scores, masks_like, per_layer
from oamip.training.data import Dataset
from oamip.training.inference import resolve_device
from oamip.training.models import DEFAULT_HIDDEN, TRAINING_DEFAULTS, build
from oamip.training.transfer import keep_all, random_batch


@dataclass
class AtInitReport(PruneReport):
    """A :class:`PruneReport` of a network pruned at initialisation. Its accuracies: before
    pruning, the dense network trained from the same initial weights for as many epochs;
    after pruning, the masked network at initialisation; after fine-tuning, the masked network
    trained (``finetune_epochs``); the baselines likewise."""

    at_init: bool = True


def prune_at_init(
    model: nn.Module | None,
    dataset: Dataset,
    settings: PruneSettings,
    resources: Resources | None = None,
    listener: Listener | None = None,
) -> AtInitReport:
    """Score ``model`` (None: a fresh ``settings.arch`` initialised by ``settings.seed``) at its
    initialisation, prune, train, and compare; ``settings`` and ``dataset`` are already checked
    by :func:`oamip.prune`. ``model``'s weights are taken as the initialisation; it is left as
    it was."""
    if settings.max_drop is not None:
        raise InvalidInputError(
            "pruning at initialisation takes one lam: drop max_drop (--max-drop), or at_init"
        )
    if settings.finetune_epochs < 1:
        raise InvalidInputError(
            "pruning at initialisation trains the pruned network afterwards: finetune_epochs "
            "(--finetune-epochs) must be at least 1"
        )
    started = time.perf_counter()
    init = _initial(model, dataset, settings)
    batch = random_batch(dataset, settings.samples_per_class, settings.seed)
    solver = BatchSolver(settings, dataset, resources or Resources(), listener)
    result = solver.one(init, batch.x, batch.y)
    masks = result.masks(settings.threshold)
    baseline_scores = per_layer(all_scores(init, batch.x, batch.y, settings.seed))
    arch = describe_arch(init)
    lr = TRAINING_DEFAULTS.get(arch, DEFAULT_RECIPE).lr
    train_start = time.perf_counter()
    dense = trained_from(init, dataset, keep_all(init), settings, lr)
    train_seconds = time.perf_counter() - train_start
    pruned = trained_from(init, dataset, masks, settings, lr)
    small = remove_pruned(pruned, masks).cpu().eval()
    return AtInitReport(
        dataset=dataset.name,
        arch=arch,
        **mip_fields(settings, result, masks, settings.lam, len(batch.y), init, small),
        accuracy_before=test_accuracy(dense, dataset),
        accuracy_after=test_accuracy(apply_masks(init, masks), dataset),
        accuracy_after_finetune=test_accuracy(pruned, dataset),
        solve_seconds=result.solve_seconds,
        build_seconds=result.build_seconds,
        train_seconds=train_seconds,
        total_seconds=time.perf_counter() - started,
        baselines=_baselines(init, dataset, masks, baseline_scores, settings, lr),
        curve=accuracy_curve(init, dataset, result, baseline_scores),
    )


def _initial(model: nn.Module | None, dataset: Dataset, settings: PruneSettings) -> nn.Module:
    """A float32 copy of ``model`` on the device, or a fresh network initialised by the seed."""
    if model is not None:
        return dense_copy(model, settings.device)
    init = build(settings.arch, dataset, DEFAULT_HIDDEN, seed=settings.seed)
    return init.to(resolve_device(settings.device)).eval()


def trained_from(
    init: nn.Module, dataset: Dataset, masks: Masks, settings: PruneSettings, lr: float
) -> nn.Module:
    """A copy of ``init`` trained ``settings.finetune_epochs`` epochs (at least one, checked)
    at the architecture's learning rate ``lr``, pruned units held at zero, silently."""
    return finetuned(init, dataset, masks, settings, lr)


def _baselines(
    init: nn.Module,
    dataset: Dataset,
    masks: Masks,
    baseline_scores: dict[str, dict[str, np.ndarray]],
    settings: PruneSettings,
    lr: float,
) -> list[BaselineReport]:
    """Each criterion, scored at initialisation, pruned like the MIP per layer: its accuracy at
    initialisation and after the same training."""
    reports = []
    for method, scores in baseline_scores.items():
        method_masks = masks_like(scores, masks)
        reports.append(
            BaselineReport(
                method,
                test_accuracy(apply_masks(init, method_masks), dataset),
                test_accuracy(trained_from(init, dataset, method_masks, settings, lr), dataset),
            )
        )
    return reports
