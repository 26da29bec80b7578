"""Polishing the best mask within an accuracy budget with the MIP.

A budget path (:mod:`oamip.pipelines.budget`) and the baselines' steps each end at a mask: the
most units a method removes within the budget. Polishing starts from the best of them, whichever
method found it (the path's own or a criterion's step), and asks the MIP which of the units that
mask keeps can go too:

* the MIP is solved on the network the start leaves (its pruned units removed, so a smaller MIP)
  and on the training samples that network is closest to losing: the ``polish_samples``
  correctly classified ones with the smallest margin (:func:`hardest_rows`), many more than
  the path's batch of one per class, at each weight of :data:`POLISH_LAMS`;
* each solution's scores order the kept units, lowest first (ties by the layer-normalised
  scores of the start's own criterion, magnitude for the path's mask);
* the start is stepped along that order exactly as a global baseline is stepped: the same step
  (one in :data:`~oamip.pipelines.budget.BASELINE_STEPS` of the network's units) and the same
  patience (:data:`~oamip.pipelines.budget.RANK_PATIENCE` steps in a row below the budget), so
  the polish looks at the validation samples no more often than a baseline does;
* the sparsest step within the budget joins the path as a point of status ``polished``.

The start itself is never changed: a polished point prunes every unit it prunes, and more; when
no step within the budget removes more, the start itself joins the path as the one polished
point, so the pipeline's mask never removes fewer units than the best method's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
from torch import nn

from oamip.adapters import apply_masks, remove_pruned
from oamip.adapters.decompose import can_cut_by_layer, largest_piece_size
from oamip.adapters.scoring import ScoreResult
from oamip.formulations.size import ModelSize, estimate_size
from oamip.network import Network
from oamip.pipelines.budget import (
    BASELINE_STEPS,
    DEFAULT_LAMS,
    POLISHED,
    Evaluation,
    Evaluator,
    LamPath,
    Masks,
    PathPoint,
    choose,
    layer_normalised,
    sort_path,
    sparsest_within,
)
from oamip.pipelines.limits import sized_network
from oamip.solve.options import ScoringOptions
from oamip.training.data import Batch, Dataset, hardest_rows

POLISH_MAX_VARIABLES = 400_000
"""The polishing MIP takes fewer samples than asked when more would give it more variables than
this (estimated with every ReLU undecided, :func:`~oamip.formulations.size.estimate_size`),
but never fewer than the path's own batch: 300 samples of an MNIST MLP 784-300-100-10, about
50 of LeNet-5 (at 300 its MIP took 10 GB); a VGG's whole MIP would take only the path's 10, so
it is polished in pieces (:func:`polish_plan`)."""
POLISH_MAX_PIECE_VARIABLES = 1_500_000
"""The cap of a polish on per-layer pieces, on the largest piece's estimated variables: pieces
are solved one at a time and their inputs are fixed samples (most of their ReLUs need no
binary), so they take more than a whole MIP. The VGG's largest piece on 300 samples (3.75
million estimated variables) took 5.9 GB; this cap gives it 119 samples."""
POLISH_LAMS = (1.0, 10.0)
"""The polishing MIP's loss weights: each one's scores are stepped, the sparsest kept."""
LARGE_PATH_LAMS = (1.0,)
"""The path's only weight when the whole MIP is too large to take more than the path's batch
(:func:`path_weights`)."""

SolveOn = Callable[[nn.Module, Batch, list[float], ScoringOptions], list[ScoreResult]]
"""Solves the MIP of a network on a batch at the given loss weights with the given options
(one result each)."""


@dataclass(frozen=True)
class PolishSettings:
    """How much the polish may solve: ``samples`` asked for, at least ``least`` (the path's
    batch size) whatever the size cap, with the run's scoring ``options``, keeping
    ``min_keep`` units per layer."""

    samples: int
    least: int
    options: ScoringOptions
    min_keep: int = 1


@dataclass
class Start:
    """Where polishing starts: the method whose budget mask it is, the mask, and per layer the
    scores that break ties between units the MIP scores alike (comparable across layers)."""

    method: str
    masks: Masks
    ties: dict[str, np.ndarray]


def polish(
    path: LamPath,
    start: Start,
    solve: SolveOn,
    dense: nn.Module,
    dataset: Dataset,
    evaluator: Evaluator,
    floor: float,
    settings: PolishSettings,
    on_point: Callable[[PathPoint], None] | None = None,
) -> None:
    """Add to ``path`` the polished points of ``start``, and keep the path's sparsest point
    within ``floor``. When no step removes more units within ``floor``, the start itself joins
    the path (status polished, no unit beyond it): the pipeline's mask is then the best
    method's, and the report says whose (``start``)."""
    small = remove_pruned(dense, start.masks)
    samples, options = polish_plan(small, dataset, settings)
    batch = hardest_rows(apply_masks(dense, start.masks), dataset, samples)
    if not len(batch.y):
        return
    results = solve(small, batch, list(POLISH_LAMS), options)
    total = sum(len(keep) for keep in start.masks.values())
    step = max(1, round(total / BASELINE_STEPS))
    found = []
    for lam, result in zip(POLISH_LAMS, results, strict=True):
        widened = widen(result, start.masks)
        order = polish_order(widened.scores, start.masks, start.ties)
        step_found = walk(start.masks, order, evaluator, floor, step, settings.min_keep)
        if step_found is not None:
            found.append((lam, result, widened, *step_found))
    if not found:
        first = results[0]
        found.append(
            (POLISH_LAMS[0], first, widen(first, start.masks), evaluator(start.masks), start.masks)
        )
    for lam, result, widened, seen, masks in found:
        point = PathPoint(
            lam=lam,
            status=POLISHED,
            gap=result.gap,
            seconds=result.solve_seconds,
            start=start.method,
            samples=len(batch.y),
            pieces=options.decompose is not None,
            **vars(seen),
        )
        path.points.append(point)
        path.results.append(widened)
        path.masks.append(masks)
        if on_point is not None:
            on_point(point)
    sort_path(path)
    choose(path, floor)


def polish_plan(
    small: nn.Module, dataset: Dataset, settings: PolishSettings
) -> tuple[int, ScoringOptions]:
    """The samples and options of the polishing MIP on ``small``: the whole network's MIP on
    ``settings.samples`` samples, or on as many as :data:`POLISH_MAX_VARIABLES` estimated
    variables allow, but at least ``settings.least``. When the whole MIP cannot take more than
    ``settings.least`` (the path's batch: it would see nothing new), per-layer pieces instead
    (``decompose="layer"``, the largest piece's estimate under
    :data:`POLISH_MAX_PIECE_VARIABLES`), which take many more samples; a run decomposed
    already keeps its own decomposition."""
    network = sized_network(small, dataset)
    if not _in_pieces(network, settings):
        return _whole_samples(network, settings), settings.options
    pieces = replace(settings.options, decompose="layer")
    per_piece = largest_piece_size(network, 1, pieces)
    return _fitting(per_piece, settings, POLISH_MAX_PIECE_VARIABLES), pieces


def path_weights(
    dense: nn.Module, dataset: Dataset, settings: PolishSettings, given: tuple[float, ...] | None
) -> tuple[tuple[float, ...], str | None]:
    """The path's loss weights (``given``, else :data:`~oamip.pipelines.budget.DEFAULT_LAMS`),
    and why they are cut short: when no weights are given and the whole MIP of ``dense``
    cannot take more samples than the path's batch (the polish then solves pieces), the path
    is solved at :data:`LARGE_PATH_LAMS` alone. Such a MIP's solves stop at their time limit
    with masks far outside any budget (the VGG's seven: 33 to 77% validation accuracy), so a
    path of them is time the polish needs."""
    if given is not None:
        return given, None
    network = sized_network(dense, dataset)
    if not _in_pieces(network, settings):
        return DEFAULT_LAMS, None
    size = estimate_size(network, settings.least, settings.options)
    note = (
        f"the path is solved at lambda {', '.join(map(str, LARGE_PATH_LAMS))} alone: the whole "
        f"MIP on its {settings.least} samples would have up to {size.variables:,} "
        f"variables (over {POLISH_MAX_VARIABLES:,}), so the polish solves per-layer pieces "
        "instead; give lams (--lams) to solve a path"
    )
    return LARGE_PATH_LAMS, note


def _in_pieces(network: Network, settings: PolishSettings) -> bool:
    """Whether a polish of ``network`` solves per-layer pieces: its whole MIP cannot take
    more samples than the path's batch (it would see nothing new) and its pieces can be
    priced apart."""
    too_large = _whole_samples(network, settings) <= settings.least
    return too_large and can_cut_by_layer(network, settings.options)


def _whole_samples(network: Network, settings: PolishSettings) -> int:
    """The samples of a polish by the whole network's MIP (:func:`_fitting` under
    :data:`POLISH_MAX_VARIABLES`)."""
    per_sample = estimate_size(network, 1, settings.options)
    return _fitting(per_sample, settings, POLISH_MAX_VARIABLES)


def _fitting(per_sample: ModelSize, settings: PolishSettings, cap: int) -> int:
    """The samples asked for, or as many as fit ``cap`` estimated variables at ``per_sample``
    variables each, but at least ``settings.least``."""
    fits = cap // max(per_sample.variables, 1)
    return min(settings.samples, max(settings.least, fits))


def widen(result: ScoreResult, start: Masks) -> ScoreResult:
    """A result on the network ``start`` leaves, as scores of the dense network's units: the
    units ``start`` prunes score 0 (the Pyomo model, built on the smaller network, is left
    out)."""
    scores = {}
    for name, keep in start.items():
        values = np.zeros(len(keep))
        values[keep] = result.scores[name]
        scores[name] = values
    return replace(result, scores=scores, formulation=None)


def polish_order(
    scores: dict[str, np.ndarray], start: Masks, ties: dict[str, np.ndarray]
) -> list[tuple[str, int]]:
    """The units ``start`` keeps, in pruning order: the lowest MIP score first (scores in
    [0, 1], comparable across layers as they are), then the lowest tie-break, then layer and
    unit order."""
    ranked = []
    for position, (name, keep) in enumerate(start.items()):
        tie = ties.get(name, np.zeros(len(keep)))
        for unit in np.flatnonzero(keep):
            ranked.append((float(scores[name][unit]), float(tie[unit]), position, int(unit), name))
    ranked.sort()
    return [(name, unit) for *_, unit, name in ranked]


def walk(
    start: Masks,
    order: list[tuple[str, int]],
    evaluator: Evaluator,
    floor: float,
    step: int,
    min_keep: int,
) -> tuple[Evaluation, Masks] | None:
    """Prune ``order``'s units from ``start``, ``step`` at a time (a layer keeps at least
    ``max(min_keep, 1)`` units: its remaining ones are skipped), evaluating after each step and
    after the last unit that can go; stop after
    :data:`~oamip.pipelines.budget.RANK_PATIENCE` steps in a row below ``floor``. The sparsest
    step within ``floor``, or None if none is."""
    left = {name: int(keep.sum()) - max(min_keep, 1) for name, keep in start.items()}
    prunable = []
    for name, unit in order:
        if start[name][unit] and left[name] > 0:
            left[name] -= 1
            prunable.append((name, unit))
    cuts = [*range(step, len(prunable), step), len(prunable)] if prunable else []
    return sparsest_within(start, prunable, cuts, evaluator, floor)


def tie_scores(scores: dict[str, np.ndarray], normalise: bool = True) -> dict[str, np.ndarray]:
    """A criterion's scores as tie-breaks: layer-normalised (:func:`layer_normalised`) unless
    they are comparable across layers already."""
    if not normalise:
        return {name: np.asarray(values, float) for name, values in scores.items()}
    return {name: layer_normalised(np.asarray(values, float)) for name, values in scores.items()}
