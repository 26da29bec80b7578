"""``oamip.prune``: the whole pipeline, from a trained model (or the embedded default) to a report.

Steps: load the data, train the default MLP if no model is given, pick the MIP batch, solve the
neuron-importance MIP, prune at the threshold, fine-tune with pruned units held at zero, remove the
pruned units physically, and compare with the baselines at the same units removed per layer.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from torch import nn
from typing_extensions import Unpack

from oamip import checks
from oamip.adapters import apply_masks, remove_pruned
from oamip.adapters.scoring import ScoreResult
from oamip.adapters.structure import Masks
from oamip.errors import InvalidInputError, SizeWarning, ValidationWarning
from oamip.pipelines.at_init import prune_at_init
from oamip.pipelines.budget import (
    DEFAULT_LAMS,
    SPLIT,
    BudgetEntry,
    Evaluation,
    Evaluator,
    LamPath,
    PathPoint,
    StepPoint,
    ValidationSplit,
    baseline_methods,
    budget_floor,
    budget_masks,
    budget_table,
    lam_path,
    monotony_note,
    noisy_warning,
    schedule_steps,
    validation_of,
    validation_warnings,
)
from oamip.pipelines.compare import accuracy_curve, compare, finetuned
from oamip.pipelines.compress import DEFAULT_TIME_LIMIT, CompressResult, compress
from oamip.pipelines.inputs import (
    check_classes,
    check_model,
    dataset_of,
    dense_copy,
    describe_arch,
    test_accuracy,
)
from oamip.pipelines.limits import check_size_limit, in_pieces_if_large
from oamip.pipelines.polish import PolishSettings, Start, path_weights, polish, tie_scores
from oamip.pipelines.results import PruneReport, mip_fields
from oamip.pipelines.settings import DEFAULT_RECIPE, PruneKeywords, PruneSettings, torch_threads
from oamip.pipelines.solving import BatchSolver, path_text
from oamip.progress import Listener, Task, listener_for
from oamip.solve.decompose import open_executor
from oamip.solve.options import Resources, ScoringOptions, check_resources
from oamip.training.criteria import MagnitudeCriterion, all_scores, is_global_only, per_layer
from oamip.training.data import Batch, Dataset, mip_batch, random_rows
from oamip.training.inference import evaluate
from oamip.training.models import DEFAULT_HIDDEN, TRAINING_DEFAULTS, build
from oamip.training.train import train
from oamip.training.transfer import keep_all

TIE_BREAK = MagnitudeCriterion.name
"""The criterion that orders, among units the MIP scores alike, which an interpolated mask of
the budget path prunes first."""


@checks.with_options(PruneSettings)
def prune(
    model: nn.Module | None = None,
    data: Dataset | str = "digits",
    settings: PruneSettings | None = None,
    *,
    val_data: tuple | None = None,
    aux_data: tuple | None = None,
    executor: Any = None,
    on_progress: Listener | None = None,
    **changes: Unpack[PruneKeywords],
) -> PruneReport:
    """Prune ``model`` (None: train the default MLP) on ``data`` (a Dataset or a spec such as
    ``"digits"`` or ``"npz:PATH"``), with ``settings`` and/or keyword options (keywords win).

    With ``max_drop`` the budget is held on validation samples: ``val_data`` (inputs, labels)
    if given, else the data's ``x_val``/``y_val``, else ``val_fraction`` of the training split
    (then a model given should not have been trained on those rows; see
    :func:`oamip.pipelines.budget.split_validation`). ``val_data`` without ``max_drop`` is
    refused. A :class:`oamip.errors.ValidationWarning` says when the validation samples look
    seen by the model or too few for the budget.

    The model given is never modified, nor the caller's torch random state; bad settings, data
    or models are refused before any work. The report holds the pruned, smaller model.

    With ``decompose`` the MIP is solved in pieces (``score_neurons``); the auxiliary heads of
    ``"layer"`` are fit on the training split (unless ``aux_data`` is given), never on the
    test set, and a Dask scheduler given as ``executor`` is connected to before any work
    (:class:`oamip.solve.options.Resources`).

    Progress (training, the solve or its pieces, the lam path, fine-tuning) goes to
    ``on_progress`` (an :mod:`oamip.progress` listener) if given, else to bars as ``progress``
    says (by default where a person watches: a terminal or a notebook).
    """
    if settings is not None and not isinstance(settings, PruneSettings):
        raise InvalidInputError(
            f"settings must be an oamip PruneSettings, got {type(settings).__name__}"
        )
    settings = replace(settings or PruneSettings(), **changes)
    settings.validate()
    check_resources(settings, aux_data, executor)
    dataset = dataset_of(data)
    split = None
    if settings.max_drop is not None:
        split = validation_of(dataset, val_data, settings.val_fraction, settings.seed)
    elif val_data is not None:
        raise InvalidInputError(
            "val_data (--val-data) is the validation set of an accuracy budget: give max_drop "
            "(--max-drop POINTS) too, or drop it"
        )
    check_classes(dataset if split is None else split.train, settings.samples_per_class)
    if model is not None:
        check_model(model, dataset)
    check_size_limit(model, dataset, settings, settings.arch, settings.samples_per_class)
    with torch_threads(settings.threads), open_executor(executor) as opened:
        resources = Resources(aux_data, opened)
        listener = listener_for(settings.progress if on_progress is None else on_progress)
        if settings.at_init:
            return prune_at_init(model, dataset, settings, resources, listener)
        return _prune(model, dataset, split, settings, resources, listener)


def _prune(
    model: nn.Module | None,
    full: Dataset,
    split: ValidationSplit | None,
    settings: PruneSettings,
    resources: Resources,
    listener: Listener | None,
) -> PruneReport:
    """The pipeline on ``full``, or, with a budget, on the training part of ``split`` (the
    validation samples are never trained, fine-tuned or scored on)."""
    started = time.perf_counter()
    dataset = full if split is None else split.train
    dense, train_seconds = _dense_model(model, dataset, settings, listener)
    compression = _compressed(dense, full, settings) if settings.compress else None
    if compression is not None:
        dense = compression.model
    settings, too_large = in_pieces_if_large(dense, dataset, settings)
    if too_large is not None:
        warnings.warn(too_large, SizeWarning, stacklevel=4)  # the caller of oamip.prune
    arch = describe_arch(dense)
    accuracy_before = evaluate(dense, dataset.x_test, dataset.y_test)
    batch = mip_batch(dense, dataset, settings.samples_per_class, settings.seed)
    rows = random_rows(dataset, settings.baseline_samples, settings.seed)
    baseline_scores = all_scores(dense, rows.x, rows.y, settings.seed)
    if split is None:
        result = BatchSolver(settings, dataset, resources, listener).one(dense, batch.x, batch.y)
        budgeted = _Budgeted.single(result, settings)
    else:
        solver = BatchSolver(settings, split.train, resources, listener)
        budgeted = _budgeted(dense, batch, split, baseline_scores, solver)
    result, masks = budgeted.result, budgeted.masks
    masked = apply_masks(dense, masks)
    accuracy_after = evaluate(masked, dataset.x_test, dataset.y_test)
    tuned = finetuned(masked, dataset, masks, settings, progress=listener or False)
    final = tuned if tuned is not None else masked
    small = remove_pruned(final, masks).cpu().eval()
    return PruneReport(
        dataset=full.name,
        arch=arch,
        **mip_fields(settings, result, masks, budgeted.lam, len(batch.y), dense, small),
        accuracy_before=accuracy_before,
        accuracy_after=accuracy_after,
        accuracy_after_finetune=test_accuracy(tuned, dataset),
        solve_seconds=budgeted.solve_seconds,
        build_seconds=budgeted.build_seconds,
        train_seconds=train_seconds,
        total_seconds=time.perf_counter() - started,
        baselines=compare(dense, dataset, masks, per_layer(baseline_scores), settings),
        curve=accuracy_curve(dense, dataset, result, per_layer(baseline_scores)),
        val_fraction=None if split is None or split.source != SPLIT else settings.val_fraction,
        val_size=0 if split is None else len(split.y_val),
        validation=None if split is None else split.describe(),
        warnings=budgeted.warnings,
        path_note=budgeted.path_note,
        n_baseline_samples=len(rows.y),
        val_accuracy_before=budgeted.val_accuracy_before,
        path=budgeted.path.points,
        chosen=budgeted.path.chosen,
        budget=budgeted.budget,
        baseline_path=[point for points in budgeted.steps.values() for point in points],
        compression=None if compression is None else compression.to_dict(),
    )


def _compressed(dense: nn.Module, dataset: Dataset, settings: PruneSettings) -> CompressResult:
    """``dense`` compressed exactly on the range of every split of ``dataset`` (so that its
    outputs on the training, validation and test samples are unchanged)."""
    limit = DEFAULT_TIME_LIMIT if settings.time_limit is None else settings.time_limit
    return compress(
        dense,
        data=dataset,
        time_limit=limit,
        backend=settings.backend,
        threads=settings.threads,
        seed=settings.seed,
    )


@dataclass
class _Budgeted:
    """What the MIP gave: the result and masks kept, its lam and timings, and with a budget
    the path, the baselines' steps and the budget table."""

    result: ScoreResult
    masks: dict[str, np.ndarray]
    lam: float
    solve_seconds: float
    build_seconds: float
    val_accuracy_before: float | None = None
    path: LamPath = field(default_factory=LamPath)
    steps: dict[str, list[StepPoint]] = field(default_factory=dict)
    budget: list[BudgetEntry] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    path_note: str | None = None

    @classmethod
    def single(cls, result: ScoreResult, settings: PruneSettings) -> _Budgeted:
        """One lam, no budget: today's pipeline."""
        return cls(
            result,
            result.masks(settings.threshold),
            settings.lam,
            result.solve_seconds,
            result.build_seconds,
        )


def _budgeted(
    dense: nn.Module,
    batch: Batch,
    split: ValidationSplit,
    baseline_scores: dict[str, dict[str, np.ndarray]],
    solver: BatchSolver,
) -> _Budgeted:
    """The lam path and every baseline's steps in its schedules, each cut at the same
    validation budget; the path's chosen mask (nothing pruned when no lam is within the
    budget). Doubts about the validation samples are warned of before any solve."""
    settings = solver.settings
    evaluator = Evaluator(dense, split)
    dense_point = evaluator(keep_all(dense))
    floor = budget_floor(dense_point.val_accuracy, settings.max_drop)
    doubts = validation_warnings(dense_point, len(split.y_val), settings.max_drop)
    for doubt in doubts:
        warnings.warn(doubt, ValidationWarning, stacklevel=2)
    calls: list[tuple[float, ScoreResult]] = []

    def solve_on(
        model: nn.Module, rows: Batch, lams: list[float], options: ScoringOptions | None = None
    ) -> list[ScoreResult]:
        start = time.perf_counter()
        results = solver.at(model, rows.x, rows.y, lams, options)
        calls.append((time.perf_counter() - start, results[0]))
        return results

    def solve(lams: list[float]) -> list[ScoreResult]:
        return solve_on(dense, batch, lams)

    polishing = PolishSettings(
        settings.polish_samples, len(batch.y), settings.scoring(), settings.min_keep
    )
    lams, short = (settings.lams or DEFAULT_LAMS, None)
    if settings.polish_samples:
        lams, short = path_weights(dense, split.train, polishing, settings.lams)
    with Task(solver.listener, "lam path", unit="weight") as task:

        def evaluated(point: PathPoint) -> None:
            task.line(path_text(point))
            task.advance()

        path = lam_path(
            solve,
            evaluator,
            lams,
            floor,
            settings.threshold,
            settings.refine_steps if short is None else 0,
            evaluated,
            settings.interpolate_steps,
            baseline_scores.get(TIE_BREAK),
            settings.rank_scores,
            settings.min_keep,
        )
    steps = schedule_steps(baseline_scores, evaluator, settings.min_keep, floor)
    dense_masks = keep_all(dense)
    if settings.polish_samples:
        start = _polish_start(
            path, steps, baseline_scores, floor, settings, dense_point, dense_masks
        )
        if start is not None:
            with Task(solver.listener, f"polishing the {start.method} mask", unit="weight") as task:

                def polished(point: PathPoint) -> None:
                    task.line(path_text(point))
                    task.advance()

                polish(
                    path,
                    start,
                    solve_on,
                    dense,
                    split.train,
                    evaluator,
                    floor,
                    polishing,
                    polished,
                )
    kept = len(path.points) - 1 if path.chosen is None else path.chosen
    build = sum(first.build_seconds for _, first in calls)
    table = budget_table(path, steps, floor, dense_point)
    noisy = noisy_warning(table[0], dense_point.val_accuracy, len(split.y_val), settings.max_drop)
    if noisy is not None:
        warnings.warn(noisy, ValidationWarning, stacklevel=2)
        doubts.append(noisy)
    if settings.finetune_epochs:
        every = budget_masks(path, steps, baseline_scores, floor, settings.min_keep, dense_masks)
        _finetune_entries(dense, split.train, table, every, settings)
    return _Budgeted(
        result=path.results[kept],
        masks=keep_all(dense) if path.chosen is None else path.masks[kept],
        lam=path.points[kept].lam,
        solve_seconds=sum(seconds for seconds, _ in calls) - build,
        build_seconds=build,
        val_accuracy_before=dense_point.val_accuracy,
        path=path,
        steps=steps,
        budget=table,
        warnings=doubts,
        path_note=_joined(short, monotony_note(path.points)),
    )


def _joined(*notes: str | None) -> str | None:
    """The notes given, one after the other (None when there are none)."""
    return " ".join(note for note in notes if note) or None


def _polish_start(
    path: LamPath,
    steps: dict[str, list[StepPoint]],
    scores: dict[str, dict[str, np.ndarray]],
    floor: float,
    settings: PruneSettings,
    dense: Evaluation,
    dense_masks: Masks,
) -> Start | None:
    """The budget mask removing the most units (ties: the higher validation accuracy, then the
    MIP's path first), with its own criterion's scores as tie-breaks (magnitude for the path's
    mask); None when no method removes a unit within the budget."""
    table = budget_table(path, steps, floor, dense)
    masks = budget_masks(path, steps, scores, floor, settings.min_keep, dense_masks)
    best = max(table, key=lambda entry: (entry.units_pruned, entry.val_accuracy))
    if best.units_pruned == 0:
        return None
    methods = baseline_methods(scores)
    criterion = methods[best.method][0] if best.method in methods else TIE_BREAK
    ties = tie_scores(scores[criterion], normalise=not is_global_only(criterion))
    return Start(best.method, masks[best.method], ties)


def _dense_model(
    model: nn.Module | None, dataset: Dataset, settings: PruneSettings, listener: Listener | None
) -> tuple[nn.Module, float | None]:
    """A copy of ``model`` on the device, or a fresh ``settings.arch`` trained on ``dataset``."""
    if model is not None:
        return dense_copy(model, settings.device), None
    start = time.perf_counter()
    dense = build(settings.arch, dataset, DEFAULT_HIDDEN, seed=settings.seed)
    recipe = TRAINING_DEFAULTS.get(settings.arch, DEFAULT_RECIPE)
    train(
        dense,
        dataset,
        epochs=recipe.epochs,
        lr=recipe.lr,
        shift=recipe.shift,
        cosine=recipe.cosine,
        seed=settings.seed,
        device=settings.device,
        progress=listener or False,
    )
    return dense, time.perf_counter() - start


def _finetune_entries(
    dense: nn.Module,
    dataset: Dataset,
    table: list[BudgetEntry],
    masks: dict[str, Masks],
    settings: PruneSettings,
) -> None:
    """Every budget entry's test accuracy after ``settings.finetune_epochs`` epochs of
    fine-tuning its own mask (the same recipe for the MIP and every baseline)."""
    for entry in table:
        kept = masks[entry.method]
        tuned = finetuned(apply_masks(dense, kept), dataset, kept, settings)
        entry.test_accuracy_finetuned = test_accuracy(tuned, dataset)
