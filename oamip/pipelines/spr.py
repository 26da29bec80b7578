"""SPR training and structured pruning: ``oamip.spr_prune`` (run by ``oamip spr``).

A dense model (trained here from scratch, or a checkpoint) gives the accuracy before pruning and
the per-layer ``M`` (docs/mathematics.md §5.4). A copy is trained with the SPR term added to the
cross-entropy loss, the units whose groups end (near) zero are removed, and the rest is
fine-tuned with the pruned units held at zero. The same is done with the group-lasso penalty
``c sum_j ||w_j||_2`` for a few strengths ``c``; the report gives the one at matched accuracy.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field, fields, replace
from functools import partial
from pathlib import Path
from typing import TypedDict

import numpy as np
import torch
from torch import nn
from typing_extensions import Unpack

from oamip import checks
from oamip.adapters import apply_masks, remove_pruned, save_model
from oamip.adapters.onnx_io import onnx_module
from oamip.errors import InvalidInputError
from oamip.files import plain, staged_output, write_json
from oamip.pipelines.inputs import check_fits, count_params, dataset_of, dense_copy, describe_arch
from oamip.pipelines.settings import checked_seed, report_settings
from oamip.progress import Listener, listener_for
from oamip.training.data import Dataset
from oamip.training.inference import evaluate, resolve_device
from oamip.training.models import ARCHITECTURES, build
from oamip.training.spr import (
    DEFAULT_RESIDUAL_UNITS,
    RESIDUAL_UNITS,
    ZERO_GROUP_TOL,
    SPRRegularizer,
)
from oamip.training.train import finetune, train, train_penalised

DEFAULT_LAM = 0.03
DEFAULT_ALPHA = 0.5
DEFAULT_M_SCALE = 1.0
DEFAULT_EPOCHS = 10
DEFAULT_FINETUNE_EPOCHS = 1
DEFAULT_SPR_LR = 3e-3
DEFAULT_OUT = "oamip-spr-out"
# Fine-tuning steps are this fraction of the training step: the pruned model is already trained.
FINETUNE_LR_FACTOR = 0.1
# Group-lasso strengths tried, as multiples of 2 sqrt(ab) (the interior case of the SPR term).
GROUP_LASSO_SCALES = (0.5, 1.0, 2.0)

Penalty = Callable[[], torch.Tensor]
Progress = Listener | bool
"""Where a run's training reports: a listener, or False for nobody."""


@dataclass
class LayerUnits:
    """Units of one regularised layer before pruning, and how many were removed."""

    name: str
    units: int
    units_pruned: int


@dataclass
class Outcome:
    """One penalised training run, pruned and fine-tuned; accuracies on the test split."""

    units_pruned: int
    params_after: int
    accuracy_after: float
    accuracy_after_finetune: float | None
    train_seconds: float
    layers: list[LayerUnits]

    @property
    def final_accuracy(self) -> float:
        """The accuracy after fine-tuning, or after pruning when there was no fine-tuning."""
        if self.accuracy_after_finetune is None:
            return self.accuracy_after
        return self.accuracy_after_finetune


@dataclass
class GroupLassoRun(Outcome):
    """A group-lasso run: ``strength`` is ``c`` in ``c sum_j ||w_j||_2``, ``scale`` is
    ``c / (2 sqrt(ab))``."""

    scale: float
    strength: float


@dataclass
class GroupLassoReport(GroupLassoRun):
    """The group-lasso run at matched accuracy (the most units pruned among those at least as
    accurate as SPR, else the most accurate), and every run of the grid."""

    grid: list[GroupLassoRun]


@dataclass
class SPRReport:
    """What ``spr_prune`` did; ``to_dict()`` is report.json (every field but the model),
    ``model`` the pruned, physically smaller network (as :class:`oamip.PruneReport` has)."""

    dataset: str
    arch: str
    lam: float
    alpha: float
    M_scale: float
    M: dict[str, float]
    epochs: int
    finetune_epochs: int
    lr: float
    seed: int
    units_total: int
    units_pruned: int
    params_total: int
    params_after: int
    accuracy_before: float
    accuracy_after: float
    accuracy_after_finetune: float | None
    train_seconds: float
    layers: list[LayerUnits]
    group_lasso: GroupLassoReport | None
    model: nn.Sequential = field(repr=False, compare=False)

    def to_dict(self) -> dict:
        """The report as plain data (everything but the model), as written to report.json."""
        return {f.name: plain(getattr(self, f.name)) for f in fields(self) if f.name != "model"}


@dataclass
class SPRSettings:
    """Every choice of ``oamip spr`` and ``oamip.spr_prune``; ``validate`` checks them all
    (type, range, finiteness) before any work."""

    arch: str = checks.option("mlp", "the architecture trained when no model is given")
    lam: float = checks.option(DEFAULT_LAM, "SPR's weight: the strength of the regulariser")
    alpha: float = checks.option(DEFAULT_ALPHA, "SPR's alpha in [0, 1]: l2 against on/off cost")
    M_scale: float = checks.option(DEFAULT_M_SCALE, "SPR's bound M, as a multiple of each group's")
    epochs: int = checks.option(DEFAULT_EPOCHS, "epochs of SPR training (and of the dense one)")
    finetune_epochs: int = checks.option(DEFAULT_FINETUNE_EPOCHS, "epochs of fine-tuning")
    lr: float = checks.option(DEFAULT_SPR_LR, "Adam's learning rate, decayed on a cosine")
    seed: int = checks.option(0, "seed of training and of the data's order")
    device: str = checks.option("cpu", "where to train and evaluate: cpu, cuda, cuda:N")
    progress: bool | None = checks.option(
        None, "progress bars (None: where a person watches: a terminal or a notebook)"
    )
    group_lasso_scales: tuple[float, ...] = checks.option(
        GROUP_LASSO_SCALES, "group-lasso strengths of the baseline, as multiples of 2 sqrt(ab)"
    )
    units: str = checks.option(
        DEFAULT_RESIDUAL_UNITS, f"which units of a residual network: {', '.join(RESIDUAL_UNITS)}"
    )

    def validate(self) -> None:
        """Check every setting (InvalidInputError names the culprit) and normalise it."""
        checks.choice("architecture", self.arch, ARCHITECTURES)
        if self.progress is not None:
            checks.flag("progress", self.progress)
        self.lam = checks.real("SPR's lam", self.lam, 0.0)
        self.alpha = checks.real("SPR's alpha", self.alpha, 0.0, 1.0)
        self.M_scale = checks.real("SPR's M_scale", self.M_scale, 0.0, open_low=True)
        self.epochs = checks.whole("epochs", self.epochs, 0)
        self.finetune_epochs = checks.whole("fine-tuning epochs", self.finetune_epochs, 0)
        self.lr = checks.real("the learning rate", self.lr, 0.0, open_low=True)
        self.seed = checked_seed(self.seed)
        resolve_device(self.device)
        self.group_lasso_scales = _check_scales(self.group_lasso_scales)
        checks.choice("SPR's units", self.units, tuple(RESIDUAL_UNITS))


class SPRKeywords(TypedDict, total=False):
    """The keyword form of :class:`SPRSettings` (checked against it by a test)."""

    arch: str
    lam: float
    alpha: float
    M_scale: float
    epochs: int
    finetune_epochs: int
    lr: float
    seed: int
    device: str
    progress: bool | None
    group_lasso_scales: tuple[float, ...]
    units: str


@dataclass
class _Run:
    outcome: Outcome
    pruned: nn.Sequential
    M: dict[str, float]


class _GroupLasso:
    """``strength * sum_j ||w_j||_2`` over the groups of an SPR regulariser."""

    def __init__(self, reg: SPRRegularizer, strength: float) -> None:
        self._reg = reg
        self._strength = strength

    def __call__(self) -> torch.Tensor:
        total = sum(_safe_norms(g).sum() for g in self._reg.groups().values())
        return self._strength * total


def _safe_norms(groups: torch.Tensor) -> torch.Tensor:
    """Row norms with a zero (not NaN) gradient at a zero row."""
    sq = (groups * groups).sum(dim=1)
    nonzero = sq > 0
    return torch.where(nonzero, torch.sqrt(torch.where(nonzero, sq, 1.0)), 0.0)


@checks.with_options(SPRSettings)
def spr_prune(
    model: nn.Module | None,
    data: Dataset | str,
    settings: SPRSettings | None = None,
    *,
    out: str | os.PathLike | None = None,
    export_onnx: bool = False,
    on_progress: Listener | None = None,
    **changes: Unpack[SPRKeywords],
) -> SPRReport:
    """Train with SPR, remove the units whose groups are (near) zero, fine-tune, report.

    ``model`` None trains a fresh ``arch`` model for ``epochs`` epochs first; a given model is
    the dense starting point (not modified; the report names its own architecture). The caller's
    random state is left as it was. The SPR phase then runs ``epochs`` epochs of Adam
    at ``lr`` decayed to zero on a cosine. ``group_lasso_scales`` (multiples of ``2 sqrt(ab)``,
    empty for none) sets the group-lasso baseline. ``units`` (a key of RESIDUAL_UNITS) picks
    which units of a residual network SPR regularises and prunes. The report holds the pruned,
    smaller model (``report.model``); with ``out``, it is written there as ``pruned.pt`` with
    ``report.json`` (``report.to_dict()``), all or nothing, and with ``export_onnx`` also as
    ``pruned.onnx`` (``oamip[onnx]``, checked before any work).
    """
    if settings is not None and not isinstance(settings, SPRSettings):
        raise InvalidInputError(
            f"settings must be an oamip SPRSettings, got {type(settings).__name__}"
        )
    settings = replace(settings or SPRSettings(), **changes)
    settings.validate()
    if export_onnx:
        onnx_module()
    listener = listener_for(settings.progress if on_progress is None else on_progress) or False
    dataset = dataset_of(data)
    if model is not None:
        check_fits(model, dataset)
    output = staged_output(out) if out is not None else nullcontext()
    with output as folder:
        dense = _dense_model(model, dataset, settings, listener)
        accuracy_before = evaluate(dense, dataset.x_test, dataset.y_test)
        _check_prunable(dense, settings)
        spr = _penalised_run(dense, dataset, settings, listener, lambda reg: reg, "SPR")
        target = spr.outcome.final_accuracy
        group_lasso = _group_lasso(dense, dataset, settings, listener, target)
        report = _report(dataset.name, settings, dense, accuracy_before, spr, group_lasso)
        if folder is not None:
            save_model(report.model, Path(folder) / "pruned.pt")
            if export_onnx:
                save_model(report.model, Path(folder) / "pruned.onnx", dataset.input_shape)
            write_json(Path(folder) / "report.json", report.to_dict())
    return report


def _check_scales(scales: Sequence[float]) -> tuple[float, ...]:
    if not isinstance(scales, Sequence):
        raise InvalidInputError(
            f"group_lasso_scales must be a sequence of positive numbers (empty for none), got "
            f"{scales!r}"
        )
    return tuple(checks.real("every group-lasso scale", s, 0.0, open_low=True) for s in scales)


def _dense_model(
    model: nn.Module | None, dataset: Dataset, s: SPRSettings, progress: Progress
) -> nn.Module:
    """A copy of ``model`` on the device, or a fresh ``s.arch`` model trained for ``s.epochs``."""
    if model is not None:
        return dense_copy(model, s.device)
    fresh = build(s.arch, dataset, seed=s.seed)
    return train(fresh, dataset, s.epochs, s.lr, seed=s.seed, device=s.device, progress=progress)


def _check_prunable(model: nn.Module, s: SPRSettings) -> None:
    """Refuse, before any training, a model without unit layers or with an unusable one."""
    SPRRegularizer(model, s.lam, s.alpha, s.M_scale, s.units)


def _penalised_run(
    dense: nn.Module,
    dataset: Dataset,
    s: SPRSettings,
    progress: Progress,
    penalty_of: Callable[[SPRRegularizer], Penalty],
    desc: str,
) -> _Run:
    """Train a copy of ``dense`` with the penalty, prune its zero groups, fine-tune it."""
    model = copy.deepcopy(dense)
    reg = SPRRegularizer(model, s.lam, s.alpha, s.M_scale, s.units)
    penalty = penalty_of(reg)
    seconds = train_penalised(model, dataset, penalty, s.epochs, s.lr, s.seed, progress, desc)
    masks = zero_group_masks(reg)
    masked = apply_masks(model, masks)
    accuracy_after = evaluate(masked, dataset.x_test, dataset.y_test)
    accuracy_finetune = _finetune(masked, dataset, masks, s, progress)
    pruned = remove_pruned(masked, masks)
    layers = [LayerUnits(name, len(keep), int((~keep).sum())) for name, keep in masks.items()]
    outcome = Outcome(
        units_pruned=sum(layer.units_pruned for layer in layers),
        params_after=count_params(pruned),
        accuracy_after=accuracy_after,
        accuracy_after_finetune=accuracy_finetune,
        train_seconds=seconds,
        layers=layers,
    )
    return _Run(outcome, pruned, {name: p.M for name, p in reg.params.items()})


def _finetune(
    masked: nn.Module,
    dataset: Dataset,
    masks: dict[str, np.ndarray],
    s: SPRSettings,
    progress: Progress,
) -> float | None:
    """Fine-tune with pruned units held at zero; the test accuracy, or None without epochs."""
    if not s.finetune_epochs:
        return None
    lr = s.lr * FINETUNE_LR_FACTOR
    finetune(
        masked,
        dataset,
        masks,
        s.finetune_epochs,
        lr,
        seed=s.seed,
        device=s.device,
        progress=progress,
    )
    return evaluate(masked, dataset.x_test, dataset.y_test)


def zero_group_masks(reg: SPRRegularizer, tol: float = ZERO_GROUP_TOL) -> dict[str, np.ndarray]:
    """``reg.masks(tol)``, except that a layer with every group zero keeps its largest unit."""
    masks = reg.masks(tol)
    with torch.no_grad():
        for name, groups in reg.groups().items():
            if not masks[name].any():
                masks[name][int(groups.abs().amax(dim=1).argmax())] = True
    return masks


def _group_lasso(
    dense: nn.Module, dataset: Dataset, s: SPRSettings, progress: Progress, target: float
) -> GroupLassoReport | None:
    """The group-lasso baseline at each of ``s.group_lasso_scales``: the run that reaches the
    SPR run's accuracy ``target`` with the most units pruned (None for no scales)."""
    scales = s.group_lasso_scales
    if not scales:
        return None
    unit = 2.0 * s.lam * math.sqrt(s.alpha * (1.0 - s.alpha))
    grid = []
    for scale in scales:
        strength = scale * unit
        penalty = partial(_GroupLasso, strength=strength)
        run = _penalised_run(dense, dataset, s, progress, penalty, f"group lasso x{scale:g}")
        grid.append(GroupLassoRun(**_fields(run.outcome), scale=scale, strength=strength))
    return GroupLassoReport(**_fields(_matched(grid, target)), grid=grid)


def _matched(grid: list[GroupLassoRun], target: float) -> GroupLassoRun:
    reaching = [run for run in grid if run.final_accuracy >= target]
    if reaching:
        return max(reaching, key=lambda run: (run.units_pruned, run.final_accuracy))
    return max(grid, key=lambda run: run.final_accuracy)


def _fields(obj) -> dict:
    """A dataclass's fields, shallowly (``asdict`` would turn nested dataclasses into dicts)."""
    return {f.name: getattr(obj, f.name) for f in fields(obj)}


def _report(
    dataset: str,
    s: SPRSettings,
    dense: nn.Module,
    accuracy_before: float,
    spr: _Run,
    group_lasso: GroupLassoReport | None,
) -> SPRReport:
    o = spr.outcome
    return SPRReport(
        dataset=dataset,
        arch=describe_arch(dense),
        **report_settings(s, SPRReport, ("arch",)),
        M=spr.M,
        units_total=sum(layer.units for layer in o.layers),
        units_pruned=o.units_pruned,
        params_total=count_params(dense),
        params_after=o.params_after,
        accuracy_before=accuracy_before,
        accuracy_after=o.accuracy_after,
        accuracy_after_finetune=o.accuracy_after_finetune,
        train_seconds=o.train_seconds,
        layers=o.layers,
        group_lasso=group_lasso,
        model=spr.pruned.cpu().eval(),
    )
