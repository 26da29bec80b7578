"""The baselines beside the MIP: every criterion pruned like the MIP's mask, with and without
fine-tuning, and the accuracy curve of every criterion along the MIP's threshold sweep."""

from __future__ import annotations

import copy

import numpy as np
from torch import nn

from oamip.adapters import apply_masks
from oamip.adapters.scoring import ScoreResult
from oamip.pipelines.inputs import test_accuracy
from oamip.pipelines.results import BaselineReport, CurvePoint
from oamip.pipelines.settings import DEFAULT_FINETUNE_LR, PruneSettings
from oamip.progress import Listener
from oamip.training.criteria import MIP_METHOD, masks_like
from oamip.training.data import Dataset
from oamip.training.inference import evaluate
from oamip.training.train import finetune

SWEEP_THRESHOLDS = tuple(np.round(np.linspace(0.0, 1.0, 21), 2).tolist())
"""Thresholds on the MIP's scores that give the points of the accuracy-vs-units-removed curve."""


def finetuned(
    masked: nn.Module,
    dataset: Dataset,
    masks: dict[str, np.ndarray],
    settings: PruneSettings,
    lr: float = DEFAULT_FINETUNE_LR,
    progress: bool | Listener = False,
) -> nn.Module | None:
    """A copy of ``masked`` trained ``settings.finetune_epochs`` epochs at learning rate ``lr``
    with the units ``masks`` prunes held at exactly zero, reporting to ``progress``; None when
    no epochs are asked for."""
    if settings.finetune_epochs == 0:
        return None
    return finetune(
        copy.deepcopy(masked),
        dataset,
        masks,
        epochs=settings.finetune_epochs,
        lr=lr,
        seed=settings.seed,
        device=settings.device,
        progress=progress,
    )


def compare(
    dense: nn.Module,
    dataset: Dataset,
    masks: dict[str, np.ndarray],
    baseline_scores: dict[str, dict[str, np.ndarray]],
    settings: PruneSettings,
) -> list[BaselineReport]:
    """Each criterion pruned like the MIP, per layer, evaluated with and without fine-tuning."""
    reports = []
    for method, scores in baseline_scores.items():
        baseline_masks = masks_like(scores, masks)
        masked = apply_masks(dense, baseline_masks)
        tuned = finetuned(masked, dataset, baseline_masks, settings)
        reports.append(
            BaselineReport(method, test_accuracy(masked, dataset), test_accuracy(tuned, dataset))
        )
    return reports


def accuracy_curve(
    dense: nn.Module,
    dataset: Dataset,
    result: ScoreResult,
    baseline_scores: dict[str, dict[str, np.ndarray]],
) -> list[CurvePoint]:
    """Accuracy of every criterion at each distinct mask of the threshold sweep on MIP scores."""
    points: dict[int, CurvePoint] = {}
    for threshold in SWEEP_THRESHOLDS:
        masks = result.masks(threshold)
        pruned = sum(int((~m).sum()) for m in masks.values())
        if pruned in points:
            continue
        by_method = {MIP_METHOD: masks} | {
            method: masks_like(scores, masks) for method, scores in baseline_scores.items()
        }
        accuracy = {
            method: evaluate(apply_masks(dense, m), dataset.x_test, dataset.y_test)
            for method, m in by_method.items()
        }
        layers = {name: int((~m).sum()) for name, m in masks.items()}
        points[pruned] = CurvePoint(threshold, pruned, layers, accuracy)
    return sorted(points.values(), key=lambda p: p.units_pruned)
