"""``oamip.transfer``: do the MIP's masks travel? The lottery-ticket test across data sets.

For every seed: initialise the network and keep its initial weights, train it on the source, score
its units there with the neuron-importance MIP (every option of ``oamip prune``), reset it to its
initial weights, apply the mask and train it on the target with the pruned units held at exactly
zero, then measure its test accuracy on the target. In the same run, from the same initial weights
and with the same epochs, seeds and units removed per layer: the dense network, a random mask, a
magnitude mask from the source-trained weights, and SNIP at initialisation on the target.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from torch import nn
from typing_extensions import Unpack

from oamip import checks
from oamip.adapters.masks import remove_pruned
from oamip.adapters.serialize import save_model
from oamip.errors import InvalidInputError
from oamip.files import plain, write_json
from oamip.pipelines.inputs import check_classes, dataset_of
from oamip.pipelines.report import percent
from oamip.pipelines.settings import (
    DEFAULT_RECIPE,
    ExperimentKeywords,
    ExperimentSettings,
    PruneSettings,
    checked_seed,
    report_settings,
    torch_threads,
)
from oamip.pipelines.solving import BatchSolver
from oamip.progress import Listener, Task, listener_for
from oamip.solve.decompose import open_executor
from oamip.solve.options import Resources, ScoringOptions, check_resources
from oamip.training.criteria import MIP_METHOD, Masks, get_criterion, masks_like
from oamip.training.data import Dataset, mip_batch
from oamip.training.inference import evaluate
from oamip.training.models import DEFAULT_HIDDEN, TRAINING_DEFAULTS, build
from oamip.training.train import finetune, train
from oamip.training.transfer import keep_all, random_batch, rewind, with_classes

METHODS = (MIP_METHOD, "dense", "random", "magnitude", "snip")
"""The methods compared, in the order of the report."""
DEFAULT_SEEDS = 3
REPORT_FILE = "report.json"
MODEL_FILE = "pruned.pt"
ONNX_FILE = "pruned.onnx"
PLOT_FILE = "transfer_accuracy.png"
PLOT_DPI = 100


@dataclass
class TransferSettings(ExperimentSettings):
    """Every choice of ``oamip transfer``: the experiment's settings (:class:`ExperimentSettings`,
    shared with ``oamip prune``; the MIP and SNIP batches take ``samples_per_class``) and its
    own."""

    hidden: tuple[int, ...] = checks.option(DEFAULT_HIDDEN, "hidden widths of the MLP")
    seeds: int | Sequence[int] = checks.option(
        DEFAULT_SEEDS, "how many seeds (0, 1, ...), or the seeds themselves"
    )
    epochs: int | None = checks.option(
        None, "epochs of training on the source and on the target (None: the arch's recipe)"
    )

    def validate(self) -> None:
        """Check every setting before any work (InvalidInputError names the culprit) and
        normalise it; the backend must be installed."""
        super().validate()
        self.hidden = _widths(self.hidden)
        self.seeds = seed_list(self.seeds)
        if self.epochs is not None:
            self.epochs = checks.whole("epochs", self.epochs, 1)


class TransferKeywords(ExperimentKeywords, total=False):
    """The keyword form of :class:`TransferSettings`: what ``oamip.transfer`` takes."""

    hidden: tuple[int, ...]
    seeds: int | Sequence[int]
    epochs: int | None


COMPUTED = ("seeds", "hidden", "epochs")
"""The report's fields named like settings that the run fills (seeds as a list, hidden widths
for an MLP only, the epochs the recipe gave)."""


def seed_list(seeds: int | Sequence[int]) -> list[int]:
    """``seeds`` as a list: a count ``N`` gives ``0..N-1``; a sequence must hold distinct valid
    seeds."""
    if isinstance(seeds, str | bytes) or not isinstance(seeds, int | Sequence):
        raise InvalidInputError(
            f"seeds must be a number of seeds or a list of seeds, got {type(seeds).__name__}"
        )
    if isinstance(seeds, int):
        return list(range(checks.whole("the number of seeds", seeds, 1)))
    chosen = [checked_seed(seed) for seed in seeds]
    if not chosen or len(set(chosen)) != len(chosen):
        raise InvalidInputError(f"seeds must be distinct and at least one, got {list(seeds)}")
    return chosen


def _widths(hidden) -> tuple[int, ...]:
    if isinstance(hidden, str | bytes) or not isinstance(hidden, Sequence) or not hidden:
        raise InvalidInputError(f"hidden must be a list of layer widths, got {hidden!r}")
    return tuple(checks.whole("a hidden width", width, 1) for width in hidden)


@dataclass
class MethodResult:
    """One method's target test accuracy and units pruned, per seed (in seed order)."""

    method: str
    accuracies: list[float]
    mean: float
    std: float
    """Sample standard deviation over the seeds (0 for one seed)."""
    units_pruned: list[int]


@dataclass
class TransferReport:
    """What ``oamip transfer`` found; ``to_dict()`` is report.json."""

    source: str
    target: str
    arch: str
    seeds: list[int]
    methods: list[MethodResult]
    hidden: list[int] | None
    """The MLP's hidden widths (None for the other architectures)."""
    epochs: int
    lr: float
    backend: str
    loss: str
    lam: float
    scores: str
    threshold: float
    samples_per_class: int
    decompose: str | None
    units_total: int
    layers_pruned: list[dict[str, int]]
    """Per seed: units the MIP's mask prunes in each layer (every other mask prunes as many)."""
    statuses: list[str]
    """Per seed: the certified status of the MIP's scores."""
    source_accuracy: list[float]
    """Per seed: the source-trained network's test accuracy on the source."""
    output_reinitialised: bool
    """True when the target's number of classes differs and the output layer was made anew."""
    total_seconds: float
    model: nn.Module = field(repr=False, compare=False)
    """The first seed's network with the MIP's mask, trained on the target, its pruned units
    physically removed (what ``write_transfer`` saves as pruned.pt)."""

    def to_dict(self) -> dict:
        """The report as plain data (everything but the model), as written to report.json."""
        return {f.name: plain(getattr(self, f.name)) for f in fields(self) if f.name != "model"}

    def method(self, name: str) -> MethodResult:
        """The entry of method ``name``."""
        return next(entry for entry in self.methods if entry.method == name)


@dataclass
class _SeedRun:
    """One seed's results: accuracy and units pruned per method, and the MIP's record."""

    accuracy: dict[str, float]
    pruned: dict[str, int]
    layers: dict[str, int]
    status: str
    source_accuracy: float
    model: nn.Module
    """The network with the MIP's mask trained on the target, pruned units removed."""


@checks.with_options(TransferSettings)
def transfer(
    source: Dataset | str,
    target: Dataset | str,
    settings: TransferSettings | None = None,
    *,
    executor: Any = None,
    on_progress: Listener | None = None,
    **changes: Unpack[TransferKeywords],
) -> TransferReport:
    """Compute masks on ``source``, retrain them from the initial weights on ``target`` (Datasets
    or specs such as ``"digits"`` or ``"npz:PATH"``) and compare with the dense network, random,
    magnitude and SNIP masks at the same units per layer, over several seeds.

    Settings come as ``settings`` and/or keywords (keywords win). Bad settings, data sets of
    different input shapes and classes without enough samples are refused before any work; the
    caller's torch random state is left as it was. The target is trained like the dense network
    (Adam at the recipe's learning rate, no augmentation), whatever the arch's own recipe.
    """
    if settings is not None and not isinstance(settings, TransferSettings):
        raise InvalidInputError(
            f"settings must be an oamip TransferSettings, got {type(settings).__name__}"
        )
    settings = replace(settings or TransferSettings(), **changes)
    settings.validate()
    check_resources(settings, None, executor)
    source_data, target_data = dataset_of(source), dataset_of(target)
    check_pair(source_data, target_data, settings)
    listener = listener_for(settings.progress if on_progress is None else on_progress)
    with torch_threads(settings.threads), open_executor(executor) as opened:
        return _transfer(source_data, target_data, settings, Resources(executor=opened), listener)


def check_pair(source: Dataset, target: Dataset, settings: TransferSettings) -> None:
    """Refuse, before any work, data sets of different input shapes, classes without the samples
    the batches need, and an architecture that does not fit the inputs."""
    if source.input_shape != target.input_shape:
        raise InvalidInputError(
            f"the source '{source.name}' has inputs of shape {source.input_shape} but the target "
            f"'{target.name}' has inputs of shape {target.input_shape}; a mask travels only "
            "between data sets of the same input shape (resize one of them)"
        )
    check_classes(source, settings.samples_per_class)
    check_classes(target, settings.samples_per_class)
    with_classes(initial_network(source, settings, 0), target.num_classes, 0)


def initial_network(dataset: Dataset, settings: TransferSettings, seed: int) -> nn.Sequential:
    """The ``settings.arch`` network for ``dataset`` at its initialisation by ``seed``."""
    return build(settings.arch, dataset, settings.hidden, seed=seed)


def _transfer(
    source: Dataset,
    target: Dataset,
    settings: TransferSettings,
    resources: Resources,
    listener: Listener | None,
) -> TransferReport:
    started = time.perf_counter()
    recipe = TRAINING_DEFAULTS.get(settings.arch, DEFAULT_RECIPE)
    epochs = settings.epochs or recipe.epochs
    solver = BatchSolver(_scoring_settings(settings), source, resources, listener)
    runs = []
    with Task(listener, "seeds", len(settings.seeds), "seed") as task:
        for seed in settings.seeds:
            runs.append(_one_seed(source, target, settings, solver, seed, epochs, recipe.lr))
            task.advance()
    units_total = sum(_count_units(initial_network(source, settings, 0)).values())
    return TransferReport(
        source=source.name,
        target=target.name,
        seeds=list(settings.seeds),
        methods=[_method_result(name, runs) for name in METHODS],
        hidden=list(settings.hidden) if settings.arch == "mlp" else None,
        epochs=epochs,
        lr=recipe.lr,
        **report_settings(settings, TransferReport, COMPUTED),
        units_total=units_total,
        layers_pruned=[run.layers for run in runs],
        statuses=[run.status for run in runs],
        source_accuracy=[run.source_accuracy for run in runs],
        output_reinitialised=source.num_classes != target.num_classes,
        total_seconds=time.perf_counter() - started,
        model=runs[0].model,
    )


def _one_seed(
    source: Dataset,
    target: Dataset,
    settings: TransferSettings,
    solver: BatchSolver,
    seed: int,
    epochs: int,
    lr: float,
) -> _SeedRun:
    """Initialise, train on the source, score there, rewind, and train every mask on the target."""
    init = initial_network(source, settings, seed)
    initial = copy.deepcopy(init.state_dict())
    trained = _trained_on_source(init, source, settings, seed, epochs, lr)
    batch = mip_batch(trained, source, settings.samples_per_class, seed)
    result = solver.one(trained, batch.x, batch.y)
    masks = result.masks(settings.threshold)
    start = with_classes(rewind(trained, initial), target.num_classes, seed)
    by_method = compared_masks(masks, trained, start, target, settings.samples_per_class, seed)
    models = {
        method: trained_on_target(start, target, method_masks, epochs, lr, seed, settings)
        for method, method_masks in by_method.items()
    }
    return _SeedRun(
        accuracy={m: evaluate(model, target.x_test, target.y_test) for m, model in models.items()},
        pruned={method: _pruned(m) for method, m in by_method.items()},
        layers={name: int((~keep).sum()) for name, keep in masks.items()},
        status=result.status,
        source_accuracy=evaluate(trained, source.x_test, source.y_test),
        model=remove_pruned(models[MIP_METHOD], masks),
    )


def _scoring_settings(settings: TransferSettings) -> PruneSettings:
    """The prune pipeline's settings for the MIP on the source (its scoring options), for its
    scoring helper (a whole solve, or the pieces of a decomposed one)."""
    scoring = {f.name: getattr(settings, f.name) for f in fields(ScoringOptions)}
    return PruneSettings(**scoring)


def _trained_on_source(
    init: nn.Module, source: Dataset, settings: TransferSettings, seed: int, epochs: int, lr: float
) -> nn.Module:
    """A copy of ``init`` trained on the source with the arch's recipe (its augmentation too)."""
    recipe = TRAINING_DEFAULTS.get(settings.arch, DEFAULT_RECIPE)
    return train(
        copy.deepcopy(init),
        source,
        epochs=epochs,
        lr=lr,
        shift=recipe.shift,
        cosine=recipe.cosine,
        seed=seed,
        device=settings.device,
        progress=False,
    )


def compared_masks(
    masks: Masks,
    trained: nn.Module,
    start: nn.Module,
    target: Dataset,
    samples_per_class: int,
    seed: int,
) -> dict[str, Masks]:
    """The mask of every method, each pruning as many units per layer as the MIP's ``masks``:
    the MIP's own, none (dense), random, magnitude of the source-trained weights, and SNIP of the
    initial network ``start`` on a random batch of the target."""
    snip_batch = random_batch(target, samples_per_class, seed)

    def like(criterion: str, model: nn.Module, x=None, y=None) -> Masks:
        return masks_like(get_criterion(criterion).scores(model, x, y, seed), masks)

    return {
        MIP_METHOD: masks,
        "dense": keep_all(start),
        "random": like("random", start),
        "magnitude": like("magnitude", trained),
        "snip": like("snip", start, snip_batch.x, snip_batch.y),
    }


def target_accuracy(
    start: nn.Module,
    target: Dataset,
    masks: Masks,
    epochs: int,
    lr: float,
    seed: int,
    settings: TransferSettings,
) -> float:
    """Target test accuracy of :func:`trained_on_target`'s network."""
    model = trained_on_target(start, target, masks, epochs, lr, seed, settings)
    return evaluate(model, target.x_test, target.y_test)


def trained_on_target(
    start: nn.Module,
    target: Dataset,
    masks: Masks,
    epochs: int,
    lr: float,
    seed: int,
    settings: TransferSettings,
) -> nn.Module:
    """A copy of ``start`` trained on the target with the units that ``masks`` prune held at
    exactly zero (before the first step and after every step)."""
    return finetune(
        copy.deepcopy(start),
        target,
        masks,
        epochs=epochs,
        lr=lr,
        seed=seed,
        device=settings.device,
        progress=False,
    )


def _pruned(masks: Masks) -> int:
    return sum(int((~np.asarray(keep)).sum()) for keep in masks.values())


def _count_units(model: nn.Module) -> dict[str, int]:
    return {name: len(keep) for name, keep in keep_all(model).items()}


def _method_result(method: str, runs: list[_SeedRun]) -> MethodResult:
    accuracies = [run.accuracy[method] for run in runs]
    return MethodResult(
        method=method,
        accuracies=accuracies,
        mean=float(np.mean(accuracies)),
        std=float(np.std(accuracies, ddof=1)) if len(accuracies) > 1 else 0.0,
        units_pruned=[run.pruned[method] for run in runs],
    )


def summary_table(report: TransferReport) -> str:
    """A plain-text summary: the experiment, then per method the units pruned and the target test
    accuracy (mean and standard deviation over the seeds)."""
    arch = f"mlp {'-'.join(map(str, report.hidden))}" if report.hidden else report.arch
    head = [
        f"{arch}: masks found on {report.source}, retrained from the start on {report.target}; "
        f"{report.epochs} epoch(s) on each; seeds {', '.join(map(str, report.seeds))}; "
        f"MIP: {report.backend}, {report.loss} loss, lambda {report.lam:g}, "
        f"{report.scores} scores, threshold {report.threshold:g}"
        + (f", decomposed ({report.decompose})" if report.decompose else ""),
        f"MIP status per seed: {', '.join(report.statuses)}"
        + (f"; output layer re-initialised for {report.target}" * report.output_reinitialised),
        "",
        f"{'method':<12}{'units pruned':>16}{'target test accuracy':>28}",
    ]
    rows = [
        f"{entry.method:<12}{_range(entry.units_pruned) + f' of {report.units_total}':>16}"
        f"{percent(entry.mean) + ' ± ' + percent(entry.std):>28}"
        for entry in report.methods
    ]
    note = "(every mask prunes as many units per layer as the MIP's; ± is the std over seeds)"
    return "\n".join([*head, *rows, note])


def _range(values: list[int]) -> str:
    low, high = min(values), max(values)
    return str(low) if low == high else f"{low}-{high}"


def write_transfer(
    report: TransferReport, folder: str | Path, onnx_input: tuple[int, ...] | None = None
) -> list[Path]:
    """Write report.json, pruned.pt (``report.model``) and the accuracy plot into ``folder``,
    and pruned.onnx for inputs of shape ``onnx_input`` when given; returns their paths."""
    folder = Path(folder)
    write_json(folder / REPORT_FILE, report.to_dict())
    save_model(report.model, folder / MODEL_FILE)
    models = [MODEL_FILE]
    if onnx_input is not None:
        save_model(report.model, folder / ONNX_FILE, input_shape=onnx_input)
        models.append(ONNX_FILE)
    accuracy_figure(report).savefig(folder / PLOT_FILE, dpi=PLOT_DPI)
    return [folder / name for name in (REPORT_FILE, *models, PLOT_FILE)]


def accuracy_figure(report: TransferReport) -> Figure:
    """Target test accuracy per method: the mean over seeds as a bar with the standard deviation
    as its error bar, and every seed's accuracy as a dot."""
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    position = np.arange(len(report.methods))
    means = [entry.mean for entry in report.methods]
    stds = [entry.std for entry in report.methods]
    ax.bar(position, means, yerr=stds, capsize=6, color="lightsteelblue", label="mean ± std")
    for x, entry in zip(position, report.methods, strict=True):
        ax.plot([x] * len(entry.accuracies), entry.accuracies, "o", color="tab:blue", ms=4)
    ax.set_xticks(position, [entry.method for entry in report.methods])
    low = min(min(entry.accuracies) for entry in report.methods)
    ax.set(
        ylim=(max(0.0, low - 0.05), 1.0),
        xlabel="mask",
        ylabel=f"test accuracy on {report.target}",
        title=f"{report.arch}: masks from {report.source}, retrained on {report.target} "
        f"({len(report.seeds)} seeds)",
    )
    ax.legend(loc="lower right")
    return fig
