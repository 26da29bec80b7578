"""``oamip.prune``: the whole pipeline, from a trained model (or the embedded default) to a report.

Steps: load the data, train the default MLP if no model is given, pick the MIP batch, solve the
neuron-importance MIP, prune at the threshold, fine-tune with pruned units held at zero, remove the
pruned units physically, and compare with the baselines at the same units removed per layer.
"""

from __future__ import annotations

import copy
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from oamip import checks
from oamip.adapters import apply_masks, extract, load_model, read_chain, remove_pruned
from oamip.adapters.chain import has_additions
from oamip.adapters.residual import row_groups
from oamip.adapters.scoring import ScoreResult, score_decomposed, score_neurons, score_sweep
from oamip.adapters.serialize import FORMAT, read_payload, tensor_problem
from oamip.errors import InvalidInputError
from oamip.pipelines.budget import (
    DEFAULT_INTERPOLATE_STEPS,
    DEFAULT_LAMS,
    DEFAULT_REFINE_STEPS,
    DEFAULT_VAL_FRACTION,
    INTERPOLATED,
    BudgetEntry,
    Evaluator,
    LamPath,
    PathPoint,
    StepPoint,
    ValidationSplit,
    baseline_steps,
    budget_floor,
    budget_table,
    checked_lams,
    lam_path,
    split_validation,
)
from oamip.pipelines.limits import check_size_limit
from oamip.solve.decompose import PieceResult, open_executor
from oamip.solve.options import DEFAULT_THRESHOLD, ScoringOptions
from oamip.training.criteria import MIP_METHOD, MagnitudeCriterion, all_scores, masks_like
from oamip.training.data import DATA_SPECS, Batch, Dataset, fit_advice, load_data, mip_batch
from oamip.training.models import (
    ARCHITECTURES,
    DEFAULT_HIDDEN,
    TRAINING_DEFAULTS,
    VGG_CONVS_PER_STAGE,
    VGG_HIDDEN,
    VGG_WIDTHS,
    TrainingDefaults,
    build,
    describe_resnet,
    mlp,
)
from oamip.training.train import eval_mode, evaluate, finetune, model_device, resolve_device, train
from oamip.training.transfer import keep_all

DEFAULT_RECIPE = TrainingDefaults(epochs=10, lr=1e-2)
"""How mlp and lenet5 are trained when no model is given (vgg: ``TRAINING_DEFAULTS``)."""
DEFAULT_FINETUNE_LR = 1e-3
SWEEP_THRESHOLDS = tuple(np.round(np.linspace(0.0, 1.0, 21), 2).tolist())
"""Thresholds on the MIP's scores that give the points of the accuracy-vs-units-removed curve."""
LIVE_LINE_INTERVAL = 0.25
"""Seconds between two updates of the line shown while the solver runs."""
TIE_BREAK = MagnitudeCriterion.name
"""The criterion that orders, among units the MIP scores alike, which an interpolated mask of
the budget path prunes first."""
SEED_MAX = 2**32 - 1
"""Largest seed: the seeds of numpy's and torch's generators that every platform takes."""


@dataclass
class PruneSettings(ScoringOptions):
    """Every choice of ``oamip prune``: the scoring options (:class:`ScoringOptions`, whose
    defaults are the authors' settings) and the pipeline's own. ``threads`` limits PyTorch's
    CPU threads as well as the solver's."""

    arch: str = checks.option("mlp", "the architecture trained when no model is given")
    samples_per_class: int = checks.option(1, "training samples per class in the MIP batch")
    threshold: float = checks.option(DEFAULT_THRESHOLD, "units scoring below it are pruned")
    finetune_epochs: int = checks.option(1, "epochs of fine-tuning after pruning (0: none)")
    device: str = checks.option("cpu", "where to train and evaluate: cpu, cuda, cuda:N")
    seed: int = checks.option(0, "seed of training, the MIP batch and the baselines")
    progress: bool = checks.option(False, "show progress bars")
    at_init: bool = checks.option(False, "score and prune at initialisation, then train")
    log: bool = checks.option(
        False, "one line on stderr per finished piece and per weight of the path (no bars)"
    )
    max_drop: float | None = checks.option(
        None,
        "points of validation accuracy the pruned network may lose against the dense one: "
        "solve the lam path and keep the sparsest mask within (None: one lam, no validation)",
    )
    lams: tuple[float, ...] | None = checks.option(
        None, f"the path's loss weights with max_drop (None: {', '.join(map(str, DEFAULT_LAMS))})"
    )
    val_fraction: float = checks.option(
        DEFAULT_VAL_FRACTION, "share of the training split held out for validation (max_drop)"
    )
    refine_steps: int = checks.option(
        DEFAULT_REFINE_STEPS, "bisection steps of the path around the budget (max_drop)"
    )
    interpolate_steps: int = checks.option(
        DEFAULT_INTERPOLATE_STEPS,
        "bisection steps between the kept mask and the next sparser solution (max_drop; 0: none)",
    )

    def validate(self) -> None:
        """Check every setting before any work (InvalidInputError names the culprit) and
        normalise it; the backend must be installed."""
        super().validate()
        resolve_device(self.device)
        checks.choice("architecture", self.arch, ARCHITECTURES)
        self.threshold = checks.real("the threshold", self.threshold, 0.0, 1.0)
        self.samples_per_class = checks.whole("samples per class", self.samples_per_class, 1)
        self.finetune_epochs = checks.whole("fine-tuning epochs", self.finetune_epochs, 0)
        self.seed = checked_seed(self.seed)
        checks.flag("progress", self.progress)
        checks.flag("at_init", self.at_init)
        checks.flag("log", self.log)
        self._validate_budget()

    def _validate_budget(self) -> None:
        """The budget's settings: lams and refine_steps only make sense with max_drop."""
        self.val_fraction = checks.real(
            "the validation fraction", self.val_fraction, 0.0, 1.0, open_low=True
        )
        self.refine_steps = checks.whole("refine steps", self.refine_steps, 0)
        self.interpolate_steps = checks.whole("interpolate steps", self.interpolate_steps, 0)
        if self.max_drop is None:
            if self.lams is not None:
                raise InvalidInputError(
                    "lams (--lams) is the path of an accuracy budget: give max_drop "
                    "(--max-drop POINTS) too, or use lam (--lam) for one weight"
                )
            return
        self.max_drop = checks.real("max_drop (points of accuracy)", self.max_drop, 0.0, 100.0)
        if self.lams is not None:
            self.lams = checked_lams(self.lams)


@dataclass
class LayerReport:
    """One scored layer: its module name, its label (:func:`layer_labels`), its units, how many
    were pruned (which ones), the MIP's unit scores."""

    name: str
    units: int
    units_pruned: int
    pruned: list[int]
    scores: list[float]
    label: str


@dataclass
class BaselineReport:
    """A criterion's test accuracy at the MIP's units removed per layer (the paper's protocol)."""

    method: str
    accuracy_after: float
    accuracy_after_finetune: float | None


@dataclass
class CurvePoint:
    """Test accuracy (no fine-tuning) of every criterion at one threshold on the MIP scores."""

    threshold: float
    units_pruned: int
    layers_pruned: dict[str, int]
    accuracy: dict[str, float]


@dataclass
class SubproblemReport:
    """One piece of a decomposed solve (``label``: its class; None: every layer or class)."""

    layer: str | None
    label: int | None
    samples: int
    status: str
    objective: float | None
    bound: float | None
    seconds: float
    head_accuracy: float | None
    resumed: bool
    error: str | None
    continued: bool = False


@dataclass
class PruneReport:
    """What ``oamip prune`` found; ``to_dict()`` is report.json, ``model`` the pruned network."""

    dataset: str
    arch: str
    backend: str
    status: str
    lam: float
    loss: str
    scores: str
    threshold: float
    samples_per_class: int
    n_mip_samples: int
    seed: int
    time_limit: float | None
    solver_heuristics: bool
    objective: float
    bound: float | None
    gap: float | None
    units_total: int
    units_pruned: int
    params_total: int
    params_after: int
    accuracy_before: float
    accuracy_after: float
    accuracy_after_finetune: float | None
    finetune_epochs: int
    solve_seconds: float
    build_seconds: float
    train_seconds: float | None
    total_seconds: float
    decompose: str | None
    subproblems: list[SubproblemReport]
    """One record per piece with ``decompose`` (empty without)."""
    layers: list[LayerReport]
    baselines: list[BaselineReport]
    curve: list[CurvePoint]
    model: nn.Sequential = field(repr=False, compare=False)
    max_drop: float | None = None
    """The validation budget in points (None: one lam, and the budget fields stay empty)."""
    val_fraction: float | None = None
    val_size: int = 0
    val_accuracy_before: float | None = None
    path: list[PathPoint] = field(default_factory=list)
    """One entry per lam solved, sorted by lam."""
    chosen: int | None = None
    """The index in ``path`` of the mask kept (None: no lam within the budget, nothing pruned)."""
    budget: list[BudgetEntry] = field(default_factory=list)
    """The MIP and every criterion: the most units removed within the budget."""
    baseline_path: list[StepPoint] = field(default_factory=list)
    """Every criterion's steps (see ``oamip.pipelines.budget.BASELINE_STEPS``)."""

    def to_dict(self) -> dict:
        """The report as plain data (everything but the model), as written to report.json."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self) if f.name != "model"}


def _plain(value):
    return [asdict(item) for item in value] if isinstance(value, list) else value


@checks.with_options(PruneSettings)
def prune(
    model: nn.Module | None = None,
    data: Dataset | str = "digits",
    settings: PruneSettings | None = None,
    **changes,
) -> PruneReport:
    """Prune ``model`` (None: train the default MLP) on ``data`` (a Dataset or a spec such as
    ``"digits"`` or ``"npz:PATH"``), with ``settings`` and/or keyword options (keywords win).

    The model given is never modified, nor the caller's torch random state; bad settings, data
    or models are refused before any work. The report holds the pruned, smaller model.

    With ``decompose`` the MIP is solved in pieces (``score_neurons``); the auxiliary heads of
    ``"layer"`` are fit on the training split (unless ``aux_data`` is given), never on the
    test set, and a Dask scheduler given as ``executor`` is connected to before any work.
    """
    if settings is not None and not isinstance(settings, PruneSettings):
        raise InvalidInputError(
            f"settings must be an oamip PruneSettings, got {type(settings).__name__}"
        )
    settings = replace(settings or PruneSettings(), **changes)
    settings.validate()
    dataset = dataset_of(data)
    split = None
    if settings.max_drop is not None:
        split = split_validation(dataset, settings.val_fraction, settings.seed)
    _check_classes(dataset if split is None else split.train, settings.samples_per_class)
    if model is not None:
        _check_model(model, dataset)
    check_size_limit(model, dataset, settings, settings.arch, settings.samples_per_class)
    with _torch_threads(settings.threads), open_executor(settings.executor) as executor:
        if settings.at_init:
            from oamip.pipelines.at_init import prune_at_init  # it imports this module

            return prune_at_init(model, dataset, replace(settings, executor=executor))
        return _prune(model, dataset, split, replace(settings, executor=executor))


def _prune(
    model: nn.Module | None,
    full: Dataset,
    split: ValidationSplit | None,
    settings: PruneSettings,
) -> PruneReport:
    """The pipeline on ``full``, or, with a budget, on the training part of ``split`` (the
    validation samples are never trained, fine-tuned or scored on)."""
    started = time.perf_counter()
    dataset = full if split is None else split.train
    dense, train_seconds = _dense_model(model, dataset, settings)
    arch = describe_arch(dense)
    accuracy_before = evaluate(dense, dataset.x_test, dataset.y_test)
    batch = mip_batch(dense, dataset, settings.samples_per_class, settings.seed)
    baseline_scores = all_scores(dense, batch.x, batch.y, settings.seed)
    if split is None:
        result = score_batch(dense, batch.x, batch.y, settings, dataset)
        budgeted = _Budgeted.single(result, settings)
    else:
        budgeted = _budgeted(dense, batch, split, baseline_scores, settings)
    result, masks = budgeted.result, budgeted.masks
    masked = apply_masks(dense, masks)
    accuracy_after = evaluate(masked, dataset.x_test, dataset.y_test)
    tuned = _finetuned(masked, dataset, masks, settings)
    final = tuned if tuned is not None else masked
    small = remove_pruned(final, masks).cpu().eval()
    return PruneReport(
        dataset=full.name,
        arch=arch,
        **mip_fields(settings, result, masks, budgeted.lam, len(batch.y), dense, small),
        accuracy_before=accuracy_before,
        accuracy_after=accuracy_after,
        accuracy_after_finetune=_accuracy(tuned, dataset),
        solve_seconds=budgeted.solve_seconds,
        build_seconds=budgeted.build_seconds,
        train_seconds=train_seconds,
        total_seconds=time.perf_counter() - started,
        baselines=_compare(dense, dataset, masks, baseline_scores, settings),
        curve=accuracy_curve(dense, dataset, result, baseline_scores),
        max_drop=settings.max_drop,
        val_fraction=None if split is None else settings.val_fraction,
        val_size=0 if split is None else len(split.y_val),
        val_accuracy_before=budgeted.val_accuracy_before,
        path=budgeted.path.points,
        chosen=budgeted.path.chosen,
        budget=budgeted.budget,
        baseline_path=[point for points in budgeted.steps.values() for point in points],
    )


def mip_fields(
    settings: PruneSettings,
    result: ScoreResult,
    masks: dict[str, np.ndarray],
    lam: float,
    n_samples: int,
    model: nn.Module,
    small: nn.Module,
) -> dict:
    """The :class:`PruneReport` fields that say how the MIP ran and what it pruned: the same in
    every pipeline that reports (prune, prune at initialisation). ``model`` is the network
    scored, ``small`` the pruned one reported."""
    return {
        "backend": result.backend,
        "status": result.status,
        "lam": lam,
        "loss": str(settings.loss),
        "scores": settings.scores,
        "threshold": settings.threshold,
        "samples_per_class": settings.samples_per_class,
        "n_mip_samples": n_samples,
        "seed": settings.seed,
        "time_limit": settings.time_limit,
        "solver_heuristics": settings.solver_heuristics,
        "objective": result.objective,
        "bound": result.bound,
        "gap": result.gap,
        "units_total": sum(len(m) for m in masks.values()),
        "units_pruned": sum(int((~m).sum()) for m in masks.values()),
        "params_total": count_params(model),
        "params_after": count_params(small),
        "finetune_epochs": settings.finetune_epochs,
        "decompose": settings.decompose,
        "subproblems": [subproblem_report(piece) for piece in result.subproblems],
        "layers": layer_reports(result, masks, layer_labels(model, list(masks))),
        "model": small,
    }


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
    settings: PruneSettings,
) -> _Budgeted:
    """The lam path and every baseline's steps, each cut at the same validation budget; the
    path's chosen mask (nothing pruned when no lam is within the budget)."""
    evaluator = Evaluator(dense, split)
    dense_point = evaluator(keep_all(dense))
    floor = budget_floor(dense_point.val_accuracy, settings.max_drop)
    calls: list[tuple[float, ScoreResult]] = []

    def solve(lams: list[float]) -> list[ScoreResult]:
        start = time.perf_counter()
        results = _scores_at(dense, batch.x, batch.y, settings, split.train, lams)
        calls.append((time.perf_counter() - start, results[0]))
        return results

    path = lam_path(
        solve,
        evaluator,
        settings.lams or DEFAULT_LAMS,
        floor,
        settings.threshold,
        settings.refine_steps,
        _path_line if settings.progress or settings.log else None,
        settings.interpolate_steps,
        baseline_scores.get(TIE_BREAK),
    )
    steps = {
        method: baseline_steps(method, scores, evaluator, settings.min_keep)
        for method, scores in baseline_scores.items()
    }
    kept = len(path.points) - 1 if path.chosen is None else path.chosen
    build = sum(first.build_seconds for _, first in calls)
    return _Budgeted(
        result=path.results[kept],
        masks=keep_all(dense) if path.chosen is None else path.masks[kept],
        lam=path.points[kept].lam,
        solve_seconds=sum(seconds for seconds, _ in calls) - build,
        build_seconds=build,
        val_accuracy_before=dense_point.val_accuracy,
        path=path,
        steps=steps,
        budget=budget_table(path, steps, floor, dense_point),
    )


def _path_line(point: PathPoint) -> None:
    """One line on stderr per weight of the path, as it is evaluated."""
    gap = "" if point.gap is None else f", gap {100 * point.gap:.2f}%"
    status = "interpolated" if point.status == INTERPOLATED else f"{point.status}{gap}"
    towards = "towards " if point.status == INTERPOLATED else ""
    tqdm.write(
        f"{towards}lambda {point.lam:.4g}: {point.units_pruned} units pruned, validation "
        f"accuracy {100 * point.val_accuracy:.2f}% ({status})",
        file=sys.stderr,
    )


def layer_labels(model: nn.Module, names: list[str]) -> dict[str, str]:
    """Unit name -> what the unit is, for people: ``fc1 Linear 784->300``, ``conv2 Conv2d
    6->16 5x5`` for the scored layers ``names`` of a chain in forward order (Linear and Conv2d
    layers numbered apart); the module path for a residual network, with ``group of N`` for a
    coupled group (``stage2.0.conv2 group of 2 Conv2d ->32``)."""
    if has_additions(model):
        return _residual_labels(model, names)
    counts = {"fc": 0, "conv": 0}
    labels = {}
    for name in names:
        module = model.get_submodule(name)
        kind = "conv" if isinstance(module, nn.Conv2d) else "fc"
        counts[kind] += 1
        labels[name] = f"{kind}{counts[kind]} {_layer_shape(module)}"
    return labels


def _residual_labels(model: nn.Module, names: list[str]) -> dict[str, str]:
    groups = {unit.name: unit for unit in row_groups(model)}
    labels = {}
    for name in names:
        unit = groups[name]
        if unit.kind == "group":
            layer = type(unit.producers[0]).__name__
            labels[name] = f"{name} group of {len(unit.producers)} {layer} ->{unit.size}"
        else:
            labels[name] = f"{name} {_layer_shape(unit.producers[0])}"
    return labels


def _layer_shape(module: nn.Module) -> str:
    if isinstance(module, nn.Conv2d):
        kernel = "x".join(str(k) for k in module.kernel_size)
        return f"Conv2d {module.in_channels}->{module.out_channels} {kernel}"
    return f"Linear {module.in_features}->{module.out_features}"


def read_model(path: str | Path, arch: str | None, dataset: Dataset) -> nn.Module:
    """A model from ``path``: a file of :func:`oamip.save_model` (``arch`` None), or a state
    dict plus ``arch``.

    For ``arch="mlp"`` the hidden widths are read from the state dict's shapes. The model must
    take ``dataset``'s inputs and give at least one logit per class.
    """
    path = Path(path).expanduser()
    if arch is not None:
        checks.choice("architecture", arch, ARCHITECTURES)
    payload = read_payload(path)
    if isinstance(payload, dict) and payload.get("format") == FORMAT:
        if arch is not None:
            raise InvalidInputError(
                f"'{path}' is a complete model written by oamip.save_model, so an architecture "
                f"('{arch}', --arch) does not apply: it is for state dicts only; drop it"
            )
        model = load_model(path)
    else:
        model = _from_state_dict(path, _state_dict(path, payload), arch, dataset)
    check_fits(model, dataset, f"the model in '{path}'")
    return model


def describe_arch(model: nn.Module) -> str:
    """``"mlp"``, ``"lenet5"``, ``"vgg"`` or ``"custom"``, from the model's affine layers in
    forward order; a residual network by :func:`describe_resnet`."""
    if has_additions(model):
        return describe_resnet(model)
    affine = [step.module for step in read_chain(model) if step.kind in ("linear", "conv")]
    widths = [m.weight.shape[0] for m in affine]
    if all(isinstance(m, nn.Linear) for m in affine):
        return "mlp"
    if [type(m) for m in affine[:2]] == [nn.Conv2d] * 2 and widths[:-1] == [6, 16, 120, 84]:
        return "lenet5"
    vgg_widths = [w for w in VGG_WIDTHS for _ in range(VGG_CONVS_PER_STAGE)] + [VGG_HIDDEN]
    if widths[:-1] == vgg_widths and all(isinstance(m, nn.Conv2d) for m in affine[:-3]):
        return "vgg"
    return "custom"


def count_params(model: nn.Module) -> int:
    """The number of parameter values of ``model``."""
    return sum(p.numel() for p in model.parameters())


def dataset_of(data: Dataset | str) -> Dataset:
    """``data`` itself, or the data set its spec names; anything else is refused."""
    if isinstance(data, Dataset):
        return data
    if isinstance(data, str):
        return load_data(data)
    raise InvalidInputError(
        f"data must be an oamip Dataset or a spec ({DATA_SPECS}), got {type(data).__name__}"
    )


def check_fits(model: nn.Module, dataset: Dataset, name: str = "the model") -> None:
    """Refuse a model that is no module, does not take the data's inputs, or gives fewer logits
    than the data has classes: checked on one sample, in eval mode, the model left as it was."""
    if not isinstance(model, nn.Module):
        raise InvalidInputError(
            f"{name} must be a torch.nn.Module (or None to train one), got "
            f"{type(model).__name__}; load a saved model with oamip.load_model(path)"
        )
    sample = torch.as_tensor(
        dataset.x_train[:1], device=model_device(model), dtype=_float_dtype(model)
    )
    try:
        with torch.no_grad(), eval_mode(model):
            logits = model(sample)
    except RuntimeError as exc:
        raise InvalidInputError(
            f"{name} does not take inputs from '{dataset.name}': "
            f"{fit_advice(model, dataset)} (PyTorch: {str(exc).splitlines()[0]})"
        ) from exc
    if logits.dim() != 2 or logits.shape[1] < dataset.num_classes:
        raise InvalidInputError(
            f"{name} gives outputs of shape {tuple(logits.shape[1:])} but "
            f"'{dataset.name}' has {dataset.num_classes} classes; its last layer must give "
            f"one logit per class ({dataset.num_classes})"
        )


def _float_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the model's first floating parameter (float32 if it has none)."""
    dtypes = [p.dtype for p in model.parameters() if p.is_floating_point()]
    return dtypes[0] if dtypes else torch.float32


def checked_seed(seed: int) -> int:
    """``seed`` as an int, refused unless a whole number in 0..SEED_MAX."""
    return checks.whole("seed", seed, 0, SEED_MAX)


def _check_classes(dataset: Dataset, samples_per_class: int) -> None:
    """Every class ``0..K-1`` needs ``samples_per_class`` training samples for the MIP batch."""
    counts = np.bincount(dataset.y_train, minlength=dataset.num_classes)[: dataset.num_classes]
    absent = np.flatnonzero(counts == 0).tolist()
    if absent:
        classes = f"class {absent[0]} has" if len(absent) == 1 else f"classes {absent} have"
        raise InvalidInputError(
            f"{classes} no training samples in '{dataset.name}'; labels must number the classes "
            f"0..{dataset.num_classes - 1}, each with training samples (renumber labels 1..K as "
            "0..K-1)"
        )
    few = np.flatnonzero(counts < samples_per_class).tolist()
    if few:
        raise InvalidInputError(
            f"class {few[0]} of '{dataset.name}' has {counts[few[0]]} training samples, fewer "
            f"than the {samples_per_class} samples per class asked for; ask for fewer"
        )


def _check_model(model: nn.Module, dataset: Dataset) -> None:
    """Refuse, before any work, a model that does not fit the data or that the MIP cannot
    encode (an unsupported layer); reading the network from one sample is cheap."""
    check_fits(model, dataset)
    extract(model, dataset.x_train[:1])


def _dense_model(
    model: nn.Module | None, dataset: Dataset, settings: PruneSettings
) -> tuple[nn.Module, float | None]:
    """A copy of ``model`` on the device, or a fresh ``settings.arch`` trained on ``dataset``."""
    if model is not None:
        dense = copy.deepcopy(model).to(resolve_device(settings.device))
        return (dense.float() if _float_dtype(dense) != torch.float32 else dense).eval(), None
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
        progress=settings.progress,
    )
    return dense, time.perf_counter() - start


def score_batch(
    model: nn.Module, x: np.ndarray, y: np.ndarray, settings: PruneSettings, dataset: Dataset
) -> ScoreResult:
    """The MIP at ``settings.lam`` (see :func:`_scores_at`)."""
    return _scores_at(model, x, y, settings, dataset, None)[0]


def _scores_at(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    settings: PruneSettings,
    dataset: Dataset,
    lams: list[float] | None,
) -> list[ScoreResult]:
    """The MIP at each of ``lams`` (None: ``settings.lam`` alone) solved whole (a live line),
    or in pieces (a bar and a line per piece); the heads of ``"layer"`` fit on ``dataset``'s
    training split."""
    options = settings.scoring()
    if options.decompose is None:
        limit = None if settings.time_limit is None else settings.time_limit * len(lams or [0])
        with _live_line(f"solving ({settings.backend})", limit, settings.progress):
            if lams is None:
                return [score_neurons(model, x, y, options)]
            return score_sweep(model, x, y, lams, options)
    if "layer" in options.decompose.split(",") and options.aux_data is None:
        options.aux_data = (dataset.x_train, dataset.y_train)
    bar = f"pieces ({settings.backend})"
    with _pieces_bar(bar, settings.progress, settings.progress or settings.log) as on_done:
        return score_decomposed(model, x, y, options, lams or [options.lam], on_done)


@contextmanager
def _pieces_bar(
    desc: str, enabled: bool, lines: bool
) -> Iterator[Callable[[PieceResult, int], None]]:
    """A tqdm bar over the pieces of a decomposed solve (``enabled``), and above it one line per
    finished piece (``lines``); yields the callback that reports a piece (and the number of
    pieces in all)."""
    with tqdm(desc=desc, unit="piece", disable=not enabled) as bar:

        def done(piece: PieceResult, total: int) -> None:
            bar.total = total
            if lines:
                tqdm.write(piece_line(piece), file=sys.stderr)
            bar.update()

        yield done


def piece_line(piece: PieceResult | SubproblemReport, labels: dict[str, str] | None = None) -> str:
    """One line on a finished piece: its layer (by its label, :func:`layer_labels`, when
    ``labels`` has it), class, status and seconds (and error)."""
    name = None if piece.layer is None else (labels or {}).get(piece.layer, piece.layer)
    layer = "all layers" if name is None else f"layer {name}"
    label = "all classes" if piece.label is None else f"class {piece.label}"
    how = f"{piece.seconds:.1f} s" + (", reused from an earlier run" if piece.resumed else "")
    how += ", continued from an earlier run's best" if piece.continued else ""
    error = f": {piece.error}" if piece.error else ""
    return f"piece {layer}, {label}: {piece.status} ({how}){error}"


def subproblem_report(piece: PieceResult) -> SubproblemReport:
    """The report's columns of a piece (its scores and checkpoint key stay out of report.json)."""
    return SubproblemReport(**{f.name: getattr(piece, f.name) for f in fields(SubproblemReport)})


@contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """Run a block with PyTorch limited to ``threads`` CPU threads (None: unchanged)."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def _live_line(desc: str, time_limit: float | None, enabled: bool) -> Iterator[None]:
    """A tqdm line counting the seconds a block runs (against ``time_limit`` when given)."""
    bar_format = "{desc}: {n:.1f} s" + ("/{total:.0f} s |{bar}|" if time_limit else "")
    done = threading.Event()
    with tqdm(total=time_limit, desc=desc, bar_format=bar_format, disable=not enabled) as bar:
        start = time.perf_counter()

        def tick() -> None:
            while not done.wait(LIVE_LINE_INTERVAL):
                bar.n = min(time.perf_counter() - start, time_limit or float("inf"))
                bar.refresh()

        ticker = threading.Thread(target=tick, daemon=True)
        if enabled:
            ticker.start()
        try:
            yield
        finally:
            done.set()
            if enabled:
                ticker.join()


def _finetuned(
    masked: nn.Module, dataset: Dataset, masks: dict[str, np.ndarray], settings: PruneSettings
) -> nn.Module | None:
    """A fine-tuned copy of the masked model, or None when no fine-tuning was asked for."""
    if settings.finetune_epochs == 0:
        return None
    return finetune(
        copy.deepcopy(masked),
        dataset,
        masks,
        epochs=settings.finetune_epochs,
        lr=DEFAULT_FINETUNE_LR,
        seed=settings.seed,
        device=settings.device,
        progress=settings.progress,
    )


def _accuracy(model: nn.Module | None, dataset: Dataset) -> float | None:
    return None if model is None else evaluate(model, dataset.x_test, dataset.y_test)


def layer_reports(
    result: ScoreResult, masks: dict[str, np.ndarray], labels: dict[str, str]
) -> list[LayerReport]:
    return [
        LayerReport(
            name,
            len(keep),
            int((~keep).sum()),
            np.flatnonzero(~keep).tolist(),
            result.scores[name].tolist(),
            labels[name],
        )
        for name, keep in masks.items()
    ]


def _compare(
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
        tuned = _finetuned(masked, dataset, baseline_masks, _quiet(settings))
        reports.append(
            BaselineReport(method, _accuracy(masked, dataset), _accuracy(tuned, dataset))
        )
    return reports


def _quiet(settings: PruneSettings) -> PruneSettings:
    return replace(settings, progress=False)


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


def _state_dict(path: Path, payload) -> dict[str, torch.Tensor]:
    if not isinstance(payload, dict) or not payload:
        raise InvalidInputError(
            f"'{path}' holds no state dict; save models with oamip.save_model or "
            "torch.save(model.state_dict(), path)"
        )
    problem = tensor_problem(payload)
    if problem:
        raise InvalidInputError(
            f"'{path}' holds a dict that is not a state dict of tensors: {problem}"
        )
    return payload


def _from_state_dict(
    path: Path, state: dict[str, torch.Tensor], arch: str | None, dataset: Dataset
) -> nn.Module:
    if arch is None:
        raise InvalidInputError(
            f"'{path}' holds a state dict; say which architecture it belongs to with "
            f"--arch {'|'.join(ARCHITECTURES)}"
        )
    model = _mlp_for(path, state, dataset) if arch == "mlp" else build(arch, dataset)
    _load_in_order(model, state, path, arch)
    return model.eval()


def _mlp_for(path: Path, state: dict[str, torch.Tensor], dataset: Dataset) -> nn.Sequential:
    """The MLP whose widths the state dict's weight matrices give."""
    weights = [v for v in state.values() if v.dim() == 2]
    if not weights or any(v.dim() > 2 for v in state.values()):
        raise InvalidInputError(
            f"'{path}' does not fit --arch mlp: an MLP's state dict holds only weight matrices "
            "and bias vectors"
        )
    hidden = [w.shape[0] for w in weights[:-1]]
    return mlp(weights[0].shape[1], hidden, weights[-1].shape[0])


def _load_in_order(model: nn.Module, state: dict[str, torch.Tensor], path: Path, arch: str) -> None:
    """Load ``state`` into ``model`` by position: names may differ, shapes must match."""
    target = model.state_dict()
    given = list(state.values())
    if len(given) != len(target):
        raise InvalidInputError(
            f"'{path}' does not fit --arch {arch}: it holds {len(given)} tensors, the "
            f"architecture for this data needs {len(target)}"
        )
    for (name, expected), value in zip(target.items(), given, strict=True):
        if value.shape != expected.shape:
            raise InvalidInputError(
                f"'{path}' does not fit --arch {arch}: tensor {name} has shape "
                f"{tuple(value.shape)}, the architecture for this data needs "
                f"{tuple(expected.shape)}"
            )
    model.load_state_dict(dict(zip(target, given, strict=True)))
