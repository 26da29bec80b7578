"""Pruning to an accuracy budget: the lam path of the MIP and the step paths of the baselines.

Validation samples are given (``val_data``, or the data set's ``x_val``/``y_val``:
:func:`given_validation`) or held out of the training split (:func:`split_validation`). The MIP is
solved for one loss weight after another (a grid from "prune almost nothing" to "prune almost
everything", refined by bisection between the two weights around the budget), every mask is
evaluated on the validation split, and :func:`most_within_budget` (the one definition, used
for the MIP and every baseline alike) keeps the mask that removes the most units while losing
at most ``max_drop`` points of validation accuracy against the dense network.

Two solved weights around the budget give masks far apart (tens of units on an MLP), so the
path is then interpolated (:func:`interpolate`): starting from the kept mask (the dense network
if none), a share of the units that the next sparser solution prunes is pruned in every layer,
the ones that solution scores lowest first, the share found by bisection on the budget. These
points cost forward passes only. An interpolated mask prunes only units that the solution it
steps towards prunes, so it never goes past that solution.

Every criterion is stepped in two schedules (:data:`SCHEDULES`): per layer (the same fraction
of every layer, :func:`step_masks`) and global (one ranking of layer-normalised scores over
all layers, :func:`global_step_masks`), the latter reported as ``<criterion>-global``. A
global-only criterion (Torch-Pruning's importances, already normalised by their own rule) is
stepped in the global schedule only, its scores ranked as given (:func:`given_step_masks`), as
Torch-Pruning's global pruning ranks them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TypeVar

import numpy as np
from torch import nn

from oamip import checks
from oamip.adapters import apply_masks, remove_pruned
from oamip.adapters.scoring import ScoreResult
from oamip.errors import InvalidInputError
from oamip.formulations.importance import checked_lam
from oamip.solve.interrupt import INTERRUPTED
from oamip.training.cost import count_macs
from oamip.training.criteria import MIP_METHOD, is_global_only
from oamip.training.data import Dataset, checked_validation
from oamip.training.inference import correct

DEFAULT_LAMS = (0.01, 0.1, 0.3, 1.0, 3.0, 10.0, 100.0)
"""The default grid of loss weights: at 0.01 the sparsity term wins and nearly every unit goes
(down to ``min_keep`` per layer); at 100 a unit goes only if the batch's loss barely notices."""
DEFAULT_REFINE_STEPS = 2
"""Bisection steps between the chosen weight and the next smaller one solved (geometric mean)."""
DEFAULT_VAL_FRACTION = 0.25
"""The share of the training split held out for validation: a quarter, because a budget of one
point needs a few thousand samples to be resolved (the standard error of a drop, 0.3-0.45
points on 2,000-3,000 samples, against 0.6-0.8 on 800-1,200, where the MLP and LeNet-5 of
``benchmarks/bench_budget.py`` lost 1.75 and 2.55 test points on a one-point budget); the MIP
and the baselines need only hundreds of the training rows left."""
DEFAULT_BASELINE_SAMPLES = 512
"""Training samples the criteria score on by default: data-driven ones (SNIP, Taylor) rank
units far better on hundreds of samples than on the MIP's batch of one per class."""
BASELINE_STEPS = 50
"""A baseline's step ``s`` (0..BASELINE_STEPS) prunes ``round(s / BASELINE_STEPS * n)`` of the
lowest-scored units of every layer of ``n`` units (per layer), or of the network's ``n`` units
(global); at least ``min_keep``, and one, kept per layer."""
GLOBAL_SUFFIX = "-global"
"""The suffix of a criterion's name in its global schedule: ``magnitude-global``."""
DEFAULT_INTERPOLATE_STEPS = 10
"""Bisection steps between the kept mask and the next sparser solution (0: none): enough to
reach single units in layers of up to about a thousand units."""
INTERPOLATED = "interpolated"
"""The status of a path point that was interpolated, not solved."""
RANKED = "ranked"
"""The status of a path point stepped along the global ranking of a solved weight's scores
(:func:`rank_path`), not solved."""
POLISHED = "polished"
"""The status of a path point stepped from the best mask within the budget along the scores of
a MIP solved on the network that mask leaves (:mod:`oamip.pipelines.polish`)."""
NOT_SOLVED = (INTERPOLATED, RANKED, POLISHED)
"""The statuses of path points that are not one solve of the whole network at their weight
(stepped from solved ones): the monotony of the path in lambda does not apply to them."""
DEFAULT_RANK_SCORES = True
"""Whether the path also steps each solved weight's scores as one global ranking."""
DEFAULT_POLISH_SAMPLES = 300
"""Training samples the polishing MIP keeps (the hardest ones for the start's network): enough
that its scores rank units on more than the handful of samples the path solves on."""
RANK_PATIENCE = 3
"""A ranking's steps stop after this many steps in a row below the budget's floor."""
BUDGET_SLACK = 1e-9
"""Rounding slack when comparing accuracies (fractions of samples) with the budget's floor."""
GIVEN, SPLIT = "given", "split"
"""Where validation samples come from: given by the user, or split off the training data."""
SEEN_POINTS = 3.0
"""Validation accuracy this many points above test accuracy means the model has probably been
trained on the validation samples (a warning)."""
NOISY_SHARE = 0.5
"""A kept mask's validation drop whose standard error (:func:`drop_error`) is more than this
share of the budget cannot tell the budget held from the budget broken (a warning)."""

Masks = dict[str, np.ndarray]


@dataclass
class ValidationSplit:
    """The training split cut in two: ``train`` (the Dataset to train, pick the MIP batch and fit
    heads on; test split unchanged) and the held-out validation samples with their row
    numbers in the original training split."""

    train: Dataset
    x_val: np.ndarray
    y_val: np.ndarray
    indices: np.ndarray
    source: str = SPLIT
    """``split`` (held out of the training split, rows ``indices``) or ``given`` (no rows)."""

    def describe(self) -> dict:
        """The report's ``validation`` entry: where the samples came from and how many."""
        return {"source": self.source, "samples": len(self.y_val)}


def split_validation(dataset: Dataset, fraction: float, seed: int) -> ValidationSplit:
    """Hold out ``fraction`` of ``dataset``'s training split (never the test split) for
    validation: ``round(fraction * n)`` rows drawn with ``seed``, at least one; the rest stays
    training data. The same arguments give the same split, so a model can be trained on
    ``train`` beforehand to keep the validation samples unseen."""
    fraction = checks.real("the validation fraction", fraction, 0.0, 1.0, open_low=True)
    n = len(dataset.y_train)
    size = max(1, round(fraction * n))
    if size >= n:
        raise InvalidInputError(
            f"a validation fraction of {fraction:g} leaves no training samples out of {n} in "
            f"'{dataset.name}'; use a smaller one"
        )
    held = np.sort(np.random.default_rng(seed).permutation(n)[:size])
    rest = np.setdiff1d(np.arange(n), held)
    train = replace(dataset, x_train=dataset.x_train[rest], y_train=dataset.y_train[rest])
    return ValidationSplit(train, dataset.x_train[held], dataset.y_train[held], held)


def given_validation(dataset: Dataset, x, y) -> ValidationSplit:
    """Validation samples given apart from ``dataset`` (checked like its splits); the whole
    training split stays training data."""
    x, y = checked_validation(dataset, x, y)
    return ValidationSplit(dataset, x, y, np.arange(0), GIVEN)


def validation_of(
    dataset: Dataset, val_data: tuple | None, fraction: float, seed: int
) -> ValidationSplit:
    """The validation samples of a budget: ``val_data`` (inputs, labels) if given, else the
    data set's own ``x_val``/``y_val``, else ``fraction`` of the training split
    (:func:`split_validation`)."""
    if val_data is not None:
        if not isinstance(val_data, tuple | list) or len(val_data) != 2:
            raise InvalidInputError(
                f"val_data must be a pair (inputs, labels), got {type(val_data).__name__}"
            )
        return given_validation(dataset, *val_data)
    if dataset.x_val is not None:
        return given_validation(dataset, dataset.x_val, dataset.y_val)
    return split_validation(dataset, fraction, seed)


def validation_warnings(dense: Evaluation, samples: int, max_drop: float) -> list[str]:
    """What makes a budget untrustworthy: a dense validation accuracy more than
    :data:`SEEN_POINTS` above test accuracy (the model has seen those samples), or too few
    samples to tell masks ``max_drop / 2`` points apart (one sample is ``100 / samples``)."""
    found = []
    gap = 100 * (dense.val_accuracy - dense.test_accuracy)
    if gap > SEEN_POINTS:
        found.append(
            f"the dense network scores {100 * dense.val_accuracy:.2f}% on the validation "
            f"samples but {100 * dense.test_accuracy:.2f}% on the test split ({gap:.2f} points "
            "higher): it has probably been trained on them, so the budget is not held on "
            "unseen data; give unseen samples with val_data (--val-data) or an npz's x_val/y_val"
        )
    if max_drop > 0 and 100 / samples > max_drop / 2:
        needed = math.ceil(200 / max_drop)
        unit = "point" if max_drop == 1 else "points"
        found.append(
            f"{samples} validation samples: one sample is {100 / samples:.2f} points of "
            f"accuracy, too coarse for a budget of {max_drop:g} {unit} (one point needs 100 "
            f"samples; give at least {needed} to resolve half the budget) with val_data "
            "(--val-data), x_val/y_val or a larger val_fraction"
        )
    return found


def checked_lams(lams) -> tuple[float, ...]:
    """``lams`` as a tuple of loss weights, each checked like ``lam``; a clear error for a
    string, a non-sequence or an empty one."""
    if isinstance(lams, str | bytes) or not isinstance(lams, Sequence | np.ndarray):
        raise InvalidInputError(f"lams must be a list of loss weights, got {lams!r}")
    if len(lams) == 0:
        raise InvalidInputError("lams is empty: give at least one loss weight")
    return tuple(checked_lam(lam) for lam in lams)


def budget_floor(val_accuracy_before: float, max_drop: float) -> float:
    """The lowest validation accuracy (a fraction) within ``max_drop`` points of the dense one."""
    return val_accuracy_before - max_drop / 100.0


def most_within_budget(
    units_pruned: Sequence[int], val_accuracies: Sequence[float], floor: float
) -> int | None:
    """The index of the candidate that removes the most units with validation accuracy at least
    ``floor`` (ties: the higher validation accuracy, then the first); None if none is within."""
    best = None
    for k, (removed, accuracy) in enumerate(zip(units_pruned, val_accuracies, strict=True)):
        if not within(accuracy, floor):
            continue
        if best is None or (removed, accuracy) > (units_pruned[best], val_accuracies[best]):
            best = k
    return best


def within(accuracy: float, floor: float) -> bool:
    """Whether a validation accuracy is within the budget's floor (up to rounding)."""
    return accuracy >= floor - BUDGET_SLACK


@dataclass
class Evaluation:
    """A mask's units removed (total and per layer), parameters and MACs left and accuracies."""

    units_pruned: int
    layers_pruned: dict[str, int]
    params_after: int
    macs_after: int
    val_accuracy: float
    test_accuracy: float | None
    """None: not evaluated on the test split (a step only searched through, see
    :class:`Evaluator`)."""
    val_drop_error: float = 0.0
    """The standard error, in points, of the validation drop from the dense network
    (:func:`drop_error`)."""
    test_drop_error: float | None = None
    """The same for the test drop (None where the test accuracy is): the test split measures
    the drop only up to about twice this."""


Evaluated = TypeVar("Evaluated", bound=Evaluation)
"""An :class:`Evaluation` or a point made of one (:class:`PathPoint`, :class:`StepPoint`)."""


@dataclass
class Evaluator:
    """Evaluates masks of ``dense`` on the validation and test splits."""

    dense: nn.Module
    split: ValidationSplit
    _dense_right: np.ndarray = field(init=False, repr=False)
    _dense_test_right: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        test = self.split.train
        self._dense_right = correct(self.dense, self.split.x_val, self.split.y_val)
        self._dense_test_right = correct(self.dense, test.x_test, test.y_test)

    def __call__(self, masks: Masks, test: bool = True) -> Evaluation:
        """The mask's counts, the parameters and MACs per sample of the physically pruned
        model, accuracies, and the standard error of its validation drop. ``test=False`` leaves
        the test accuracy out (None): the searches that step through many masks to keep one
        (the baselines' steps, a ranking's cuts) evaluate only that one on test
        (:meth:`tested`), which on a network with a small validation split is most of the
        cost."""
        masked = apply_masks(self.dense, masks)
        small = remove_pruned(self.dense, masks)
        right = correct(masked, self.split.x_val, self.split.y_val)
        evaluation = Evaluation(
            units_pruned=sum(int((~m).sum()) for m in masks.values()),
            layers_pruned={name: int((~m).sum()) for name, m in masks.items()},
            params_after=sum(p.numel() for p in small.parameters()),
            macs_after=count_macs(small, self.split.train.input_shape),
            val_accuracy=float(np.mean(right)),
            test_accuracy=None,
            val_drop_error=drop_error(self._dense_right, right),
        )
        return self._tested(evaluation, masked) if test else evaluation

    def tested(self, evaluation: Evaluated, masks: Masks) -> Evaluated:
        """``evaluation`` of ``masks`` with its test accuracy and the standard error of its test
        drop filled in."""
        if evaluation.test_accuracy is not None:
            return evaluation
        return self._tested(evaluation, apply_masks(self.dense, masks))

    def _tested(self, evaluation: Evaluated, masked: nn.Module) -> Evaluated:
        test = self.split.train
        right = correct(masked, test.x_test, test.y_test)
        return replace(
            evaluation,
            test_accuracy=float(np.mean(right)),
            test_drop_error=drop_error(self._dense_test_right, right),
        )


def drop_error(dense_right: np.ndarray, right: np.ndarray) -> float:
    """The standard error, in points, of a validation drop measured on the same samples as the
    dense network's accuracy (paired): ``sqrt(var(d) / n)`` of the per-sample differences
    ``d`` (-1, 0 or 1). It grows with the samples whose answer the mask changes, not with
    the drop alone: 800 samples and 40 changed answers give about 0.8 points."""
    if not len(right):
        return 0.0
    differences = right.astype(float) - dense_right.astype(float)
    return 100.0 * float(np.sqrt(differences.var() / len(differences)))


@dataclass(kw_only=True)
class PathPoint(Evaluation):
    """One loss weight solved on the path (``report.json``'s ``path`` entries): its mask's
    :class:`Evaluation` (always on test too) and how it was found."""

    lam: float
    status: str
    """The solver's status, or ``interpolated`` for a point between two solved masks (its
    ``lam`` is the solved weight whose mask it steps towards; no gap)."""
    gap: float | None
    seconds: float
    """The solve's seconds (a decomposed sweep: the wall time of the run it was part of; 0 for an
    interpolated or ranked point)."""
    start: str | None = None
    """A polished point: the method whose budget mask the polish started from (``mip`` for the
    path's own)."""
    samples: int | None = None
    """A polished point: the training samples its MIP solved on (the path's batch is the
    report's ``n_mip_samples``)."""
    pieces: bool = False
    """A polished point solved in per-layer pieces rather than whole."""


@dataclass(kw_only=True)
class StepPoint(Evaluation):
    """One step of a baseline's path (``report.json``'s ``baseline_path`` entries): its mask's
    :class:`Evaluation`, on test only at the method's budget step (the most units within the
    budget; ``test_accuracy`` and ``test_drop_error`` are None at every other step)."""

    method: str
    fraction: float = 0.0
    """The step: the share of the units its schedule prunes (its masks are the schedule's at
    this share)."""


@dataclass
class BudgetEntry:
    """The most units a method removes within the validation budget (``budget`` entries), and
    the parameters and MACs per sample it leaves and removes."""

    method: str
    units_pruned: int
    params_after: int
    params_removed: int
    macs_after: int
    macs_removed: int
    val_accuracy: float
    test_accuracy: float
    test_accuracy_finetuned: float | None = None
    """Test accuracy of the same mask after ``finetune_epochs`` epochs of fine-tuning (None:
    no fine-tuning asked for)."""
    val_drop_error: float = 0.0
    """The standard error, in points, of its validation drop (:func:`drop_error`): the drop
    on unseen data may differ from the measured one by about twice this."""
    test_drop_error: float | None = None
    """The same for its test drop: the test split's own measurement error."""


@dataclass
class LamPath:
    """The path: points sorted by ``lam`` (interpolated ones after the solved point of their
    weight, by units removed), their results (an interpolated point: the solution it steps
    towards) and masks, and the one kept (or None)."""

    points: list[PathPoint] = field(default_factory=list)
    results: list[ScoreResult] = field(default_factory=list)
    masks: list[Masks] = field(default_factory=list)
    chosen: int | None = None


Solve = Callable[[list[float]], list[ScoreResult]]
"""Solves the MIP at the given loss weights (one result each, in that order)."""


def lam_path(
    solve: Solve,
    evaluator: Evaluator,
    lams: Sequence[float],
    floor: float,
    threshold: float,
    refine_steps: int,
    on_point: Callable[[PathPoint], None] | None = None,
    interpolate_steps: int = 0,
    tie_break: dict[str, np.ndarray] | None = None,
    rank: bool = False,
    min_keep: int = 1,
) -> LamPath:
    """Solve ``lams`` together, then ``refine_steps`` single weights, each between the chosen
    weight and the next smaller one solved (which prunes more), then up to
    ``interpolate_steps`` masks between the chosen mask and the next sparser one, by bisection
    (:func:`interpolate`), then, with ``rank``, every solved weight's scores stepped as one
    global ranking (:func:`rank_path`, ``min_keep`` units kept per layer), and keep the
    mask removing the most units with validation accuracy at least ``floor``. A solve stopped by
    Ctrl-C ends the refinement. ``on_point`` is called with each point as it is evaluated."""
    path = LamPath()
    grid = sorted(set(lams))
    stopped = _add(path, grid, solve(grid), evaluator, threshold, on_point)
    choose(path, floor)
    for _ in range(refine_steps):
        lam = _between(path)
        if lam is None or stopped:
            break
        stopped = _add(path, [lam], solve([lam]), evaluator, threshold, on_point)
        choose(path, floor)
    interpolate(path, evaluator, interpolate_steps, tie_break or {}, floor, on_point)
    if rank:
        rank_path(path, evaluator, tie_break or {}, min_keep, floor, on_point)
    choose(path, floor)
    return path


def rank_path(
    path: LamPath,
    evaluator: Evaluator,
    tie_break: dict[str, np.ndarray],
    min_keep: int,
    floor: float,
    on_point: Callable[[PathPoint], None] | None = None,
) -> None:
    """Step every solved weight's scores as one global ranking, as the global baselines are
    stepped (:func:`global_step_masks`, :data:`BASELINE_STEPS` steps): the units ranked by
    layer-normalised score, ties (e.g. every unit the MIP keeps at score 1) by the
    layer-normalised ``tie_break`` score (e.g. magnitude; :func:`global_order`). A weight's
    steps stop after :data:`RANK_PATIENCE` steps in a row below ``floor``; the step removing
    the most units within ``floor`` (if any, and not already on the path) is added to the path
    as a point of status :data:`RANKED` at the weight whose scores ranked it."""
    solved = [k for k, p in enumerate(path.points) if p.status not in NOT_SOLVED]
    seen = {_mask_key(masks) for masks in path.masks}
    for k in solved:
        result, lam = path.results[k], path.points[k].lam
        order = global_order(result.scores, min_keep, tie_break)
        total = sum(len(values) for values in result.scores.values())
        cuts = [round(step / BASELINE_STEPS * total) for step in range(1, BASELINE_STEPS + 1)]
        best = sparsest_within(_keep_all_like(path.masks[k]), order, cuts, evaluator, floor)
        if best is None or _mask_key(best[1]) in seen:
            continue
        seen.add(_mask_key(best[1]))
        point = PathPoint(lam=lam, status=RANKED, gap=None, seconds=0.0, **vars(best[0]))
        path.points.append(point)
        path.results.append(result)
        path.masks.append(best[1])
        if on_point is not None:
            on_point(point)
    sort_path(path)


def sparsest_within(
    start: Masks,
    order: Sequence[tuple[str, int]],
    cuts: Sequence[int],
    evaluator: Evaluator,
    floor: float,
) -> tuple[Evaluation, Masks] | None:
    """The sparsest of the masks that prune, from ``start``, the first ``cut`` units of
    ``order`` for each of ``cuts`` in turn, evaluated one after another until
    :data:`RANK_PATIENCE` in a row fall below ``floor`` (a ranked weight's and a polish's
    steps, stepped as the global baselines are), evaluated on test only for the one returned;
    None if none is within ``floor``."""
    best: tuple[Evaluation, Masks] | None = None
    outside = 0
    for cut in cuts:
        masks = {name: keep.copy() for name, keep in start.items()}
        for name, unit in order[:cut]:
            masks[name][unit] = False
        seen = evaluator(masks, test=False)
        if within(seen.val_accuracy, floor):
            best, outside = (seen, masks), 0
            continue
        outside += 1
        if outside >= RANK_PATIENCE:
            break
    return None if best is None else (evaluator.tested(*best), best[1])


def _mask_key(masks: Masks) -> tuple:
    return tuple((name, keep.tobytes()) for name, keep in sorted(masks.items()))


def _add(
    path: LamPath,
    lams: list[float],
    results: list[ScoreResult],
    evaluator: Evaluator,
    threshold: float,
    on_point: Callable[[PathPoint], None] | None,
) -> bool:
    """Evaluate the results solved at ``lams`` and insert them in the path by weight; True if
    a solve was interrupted."""
    for lam, result in zip(lams, results, strict=True):
        masks = result.masks(threshold)
        seen = evaluator(masks)
        point = PathPoint(
            lam=lam,
            status=result.status,
            gap=result.gap,
            seconds=result.solve_seconds,
            **vars(seen),
        )
        _insert(path, point, result, masks)
        if on_point is not None:
            on_point(point)
    return any(result.status == INTERRUPTED for result in results)


def _insert(path: LamPath, point: PathPoint, result: ScoreResult, masks: Masks) -> None:
    """Add a point and keep the path sorted."""
    path.points.append(point)
    path.results.append(result)
    path.masks.append(masks)
    sort_path(path)


def sort_path(path: LamPath) -> None:
    """Sort the path by weight, solved points before interpolated ones, then by units removed."""
    order = sorted(
        range(len(path.points)),
        key=lambda k: (
            path.points[k].lam,
            NOT_SOLVED.index(path.points[k].status) + 1
            if path.points[k].status in NOT_SOLVED
            else 0,
            path.points[k].units_pruned,
        ),
    )
    path.points = [path.points[k] for k in order]
    path.results = [path.results[k] for k in order]
    path.masks = [path.masks[k] for k in order]


def interpolate(
    path: LamPath,
    evaluator: Evaluator,
    steps: int,
    tie_break: dict[str, np.ndarray],
    floor: float,
    on_point: Callable[[PathPoint], None] | None = None,
) -> None:
    """Search the line from the chosen mask (all units kept if none) to the next sparser solved
    mask (the one pruning the fewest units beyond it) by bisection, ``steps`` masks at most.
    The mask at share ``t`` prunes the units both masks prune and, in every layer,
    ``round(t * d)`` of the ``d`` units the chosen mask keeps and the sparser one prunes, in
    the order of :func:`step_order`: only units the sparser mask prunes, so never more. ``t``
    halves the interval between the largest share found within ``floor`` (0 at first) and the
    smallest found outside (1 at first), and the search stops early when a share gives no new
    mask."""
    solved = [k for k, p in enumerate(path.points) if p.status not in NOT_SOLVED]
    chosen = path.chosen
    start = _keep_all_like(path.masks[solved[0]]) if chosen is None else path.masks[chosen]
    sparser = _next_sparser(path, solved, sum(int((~m).sum()) for m in start.values()))
    if sparser is None:
        return
    towards, result, target = path.points[sparser].lam, path.results[sparser], path.masks[sparser]
    start = {name: keep | target[name] for name, keep in start.items()}
    order = step_order(result.scores, [path.masks[k] for k in solved], tie_break)
    going = {
        name: [u for u in order[name] if keep[u] and not target[name][u]]
        for name, keep in start.items()
    }

    def counts(share: float) -> dict[str, int]:
        return {name: round(share * len(units)) for name, units in going.items()}

    low, high = 0.0, 1.0
    for _ in range(steps):
        share = (low + high) / 2
        pruned = counts(share)
        if pruned in (counts(low), counts(high)):
            break
        masks = {name: keep.copy() for name, keep in start.items()}
        for name, units in going.items():
            masks[name][units[: pruned[name]]] = False
        point = PathPoint(
            lam=towards, status=INTERPOLATED, gap=None, seconds=0.0, **vars(evaluator(masks))
        )
        path.points.append(point)
        path.results.append(result)
        path.masks.append(masks)
        if on_point is not None:
            on_point(point)
        low, high = (share, high) if within(point.val_accuracy, floor) else (low, share)
    sort_path(path)


def _keep_all_like(masks: Masks) -> Masks:
    """Masks of the same layers and sizes keeping every unit."""
    return {name: np.ones_like(keep, dtype=bool) for name, keep in masks.items()}


def _next_sparser(path: LamPath, solved: list[int], removed: int) -> int | None:
    """The solved point pruning the fewest units beyond ``removed`` (the sparsest weight's on a
    tie), or None."""
    beyond = [k for k in solved if path.points[k].units_pruned > removed]
    if not beyond:
        return None
    return min(beyond, key=lambda k: (path.points[k].units_pruned, path.points[k].lam))


def step_order(
    scores: dict[str, np.ndarray], solved: list[Masks], tie_break: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Per layer, the units in pruning order: the lowest score of the solution stepped
    towards first, then the fewest solved masks keeping the unit, then the lowest
    ``tie_break`` value (e.g. magnitude; none given: unit order)."""
    order = {}
    for name, values in scores.items():
        kept = sum(masks[name].astype(int) for masks in solved)
        ties = tie_break.get(name, np.zeros(len(values)))
        order[name] = np.lexsort((np.arange(len(values)), ties, kept, np.asarray(values)))
    return order


def choose(path: LamPath, floor: float) -> None:
    """Keep the point removing the most units within ``floor`` (:func:`most_within_budget`)."""
    path.chosen = most_within_budget(
        [p.units_pruned for p in path.points], [p.val_accuracy for p in path.points], floor
    )


def _between(path: LamPath) -> float | None:
    """The next weight to solve: between the chosen one and the next smaller one solved
    (geometric mean; arithmetic from 0), or None when there is none or it is solved."""
    if path.chosen is None or path.chosen == 0:
        return None
    high, low = path.points[path.chosen].lam, path.points[path.chosen - 1].lam
    lam = math.sqrt(high * low) if low > 0 else (high + low) / 2
    return None if lam in (high, low) else lam


Schedule = Callable[[dict[str, np.ndarray], float, int], Masks]
"""Masks of a criterion's scores at a fraction of the units, keeping ``min_keep`` per layer."""
Normaliser = Callable[[np.ndarray], np.ndarray]
"""A layer's scores made comparable with other layers' before a global ranking."""


def baseline_steps(
    method: str,
    scores: dict[str, np.ndarray],
    evaluator: Evaluator,
    min_keep: int,
    floor: float,
    schedule: Schedule | None = None,
) -> list[StepPoint]:
    """A criterion's masks at every step of the grid (see BASELINE_STEPS) in ``schedule``
    (None: :func:`step_masks`, per layer), evaluated on validation, and the step removing the
    most units within ``floor`` (its budget step) on test too; steps giving the same counts per
    layer as an earlier one are left out."""
    schedule = schedule or step_masks
    points: list[StepPoint] = []
    stepped: list[Masks] = []
    seen: set[tuple[int, ...]] = set()
    for step in range(BASELINE_STEPS + 1):
        fraction = step / BASELINE_STEPS
        masks = schedule(scores, fraction, min_keep)
        counts = tuple(int((~m).sum()) for m in masks.values())
        if counts in seen:
            continue
        seen.add(counts)
        evaluation = evaluator(masks, test=False)
        points.append(StepPoint(method=method, fraction=fraction, **vars(evaluation)))
        stepped.append(masks)
    best = _best_step(points, floor)
    if best is not None:
        points[best] = evaluator.tested(points[best], stepped[best])
    return points


def step_masks(scores: dict[str, np.ndarray], fraction: float, min_keep: int) -> Masks:
    """Masks pruning ``round(fraction * n)`` lowest-scored units of every layer (ties by unit
    order), keeping at least ``min_keep`` units (and one) per layer; True means keep."""
    masks = {}
    for name, values in scores.items():
        n = len(values)
        drop = min(round(fraction * n), max(0, n - max(min_keep, 1)))
        keep = np.ones(n, dtype=bool)
        keep[np.argsort(np.asarray(values), kind="stable")[:drop]] = False
        masks[name] = keep
    return masks


def global_step_masks(
    scores: dict[str, np.ndarray],
    fraction: float,
    min_keep: int,
    normalise: Normaliser | None = None,
) -> Masks:
    """Masks pruning the first ``round(fraction * N)`` units of :func:`global_order` (``N``
    units in all layers; ``normalise`` as there); True means keep."""
    masks = {name: np.ones(len(values), dtype=bool) for name, values in scores.items()}
    total = sum(len(values) for values in scores.values())
    order = global_order(scores, min_keep, normalise=normalise)
    for name, unit in order[: round(fraction * total)]:
        masks[name][unit] = False
    return masks


def given_step_masks(scores: dict[str, np.ndarray], fraction: float, min_keep: int) -> Masks:
    """:func:`global_step_masks` of scores ranked as given, for a global-only criterion whose
    scores are comparable across layers already (Torch-Pruning's normalised importances)."""
    return global_step_masks(scores, fraction, min_keep, as_given)


def global_order(
    scores: dict[str, np.ndarray],
    min_keep: int,
    tie_break: dict[str, np.ndarray] | None = None,
    normalise: Normaliser | None = None,
) -> list[tuple[str, int]]:
    """The units that a global schedule prunes, in order: one ranking over all layers by
    ``normalise``d score (None: :func:`layer_normalised`; ties by the layer-normalised
    ``tie_break`` score if given, then by layer, then unit order), leaving out each layer's
    ``max(min_keep, 1)`` best units so that every layer keeps them, and every unit scored
    ``+inf`` (unranked: never pruned)."""
    normalise = normalise or layer_normalised
    ranked = []
    for position, (name, values) in enumerate(scores.items()):
        values = np.asarray(values, dtype=float)
        finite = np.isfinite(values)
        normalised = np.where(finite, 0.0, values)
        normalised[finite] = normalise(values[finite])
        ties = (tie_break or {}).get(name)
        ties = np.zeros(len(values)) if ties is None else layer_normalised(np.asarray(ties, float))
        droppable = min(int(finite.sum()), max(0, len(values) - max(min_keep, 1)))
        for unit in np.lexsort((np.arange(len(values)), ties, normalised))[:droppable]:
            ranked.append((normalised[unit], ties[unit], position, int(unit), name))
    ranked.sort()
    return [(name, unit) for _, _, _, unit, name in ranked]


def layer_normalised(values: np.ndarray) -> np.ndarray:
    """A layer's scores divided by their L2 norm (all zero stays zero): a unit's share of its
    layer's importance, comparable across layers of different sizes and scales. A layer of
    ``n`` alike units scores ``1/sqrt(n)`` each, so wide layers give up units first."""
    norm = float(np.linalg.norm(values))
    return values / norm if norm > 0 else np.zeros_like(values)


def as_given(values: np.ndarray) -> np.ndarray:
    """A layer's scores unchanged: for scores comparable across layers already."""
    return values


SCHEDULES: dict[str, Schedule] = {"": step_masks, GLOBAL_SUFFIX: global_step_masks}
"""Every criterion's schedules by the suffix of its method name: per layer, global."""
GLOBAL_ONLY_SCHEDULES: dict[str, Schedule] = {GLOBAL_SUFFIX: given_step_masks}
"""A global-only criterion's one schedule (:attr:`oamip.training.criteria.Criterion.global_only`):
global, its scores ranked as given."""


def schedules_of(criterion: str) -> dict[str, Schedule]:
    """The schedules a criterion is stepped in, by suffix: :data:`GLOBAL_ONLY_SCHEDULES` for a
    global-only criterion, else :data:`SCHEDULES`."""
    return GLOBAL_ONLY_SCHEDULES if is_global_only(criterion) else SCHEDULES


def schedule_steps(
    scores: dict[str, dict[str, np.ndarray]], evaluator: Evaluator, min_keep: int, floor: float
) -> dict[str, list[StepPoint]]:
    """Every criterion's steps in each of its schedules (:func:`schedules_of`), a criterion's
    schedules side by side: ``magnitude``, ``magnitude-global``, ``snip``, ...,
    ``tp-magnitude-global``; each one's budget step at ``floor`` evaluated on test."""
    return {
        method: baseline_steps(method, scores[criterion], evaluator, min_keep, floor, schedule)
        for method, (criterion, schedule) in baseline_methods(scores).items()
    }


def baseline_methods(scores: dict[str, dict[str, np.ndarray]]) -> dict[str, tuple[str, Schedule]]:
    """Every baseline method's name (``<criterion><suffix>``), with its criterion and schedule."""
    return {
        criterion + suffix: (criterion, schedule)
        for criterion in scores
        for suffix, schedule in schedules_of(criterion).items()
    }


def monotony_note(points: Sequence[PathPoint]) -> str | None:
    """None when no solved weight prunes more units than the next smaller one solved (a larger
    weight on the loss should keep at least as many units), else which ones and why."""
    solved = sorted((p for p in points if p.status not in NOT_SOLVED), key=lambda p: p.lam)
    breaks = [(a, b) for a, b in zip(solved, solved[1:]) if b.units_pruned > a.units_pruned]
    if not breaks:
        return None
    said = "; ".join(
        f"lambda {b.lam:.4g} prunes {b.units_pruned} units, more than lambda {a.lam:.4g} "
        f"({a.units_pruned})"
        for a, b in breaks
    )
    unproven = [p for a, b in breaks for p in (a, b) if p.status != "optimal"]
    if unproven:
        why = (
            "not every solve was proven optimal ("
            + ", ".join(f"lambda {p.lam:.4g}: {p.status}" for p in unproven)
            + "), and a better solution may prune otherwise"
        )
    else:
        why = (
            "the objective weighs the units' scores (each scaled by its layer's size unless "
            "sparsity is 'unit'), not the number of units below the threshold, so a larger "
            "weight can still leave fewer units above it"
        )
    return f"the path is not monotone in lambda: {said}. Why: {why}"


def budget_table(
    path: LamPath, steps: dict[str, list[StepPoint]], floor: float, dense: Evaluation
) -> list[BudgetEntry]:
    """For the MIP and every baseline, the most units removed within the budget (the dense
    network itself when no candidate is within)."""
    entries = [_entry(MIP_METHOD, path.points, path.chosen, dense)]
    for method, points in steps.items():
        entries.append(_entry(method, points, _best_step(points, floor), dense))
    return entries


def _best_step(points: list[StepPoint], floor: float) -> int | None:
    return most_within_budget(
        [p.units_pruned for p in points], [p.val_accuracy for p in points], floor
    )


def budget_masks(
    path: LamPath,
    steps: dict[str, list[StepPoint]],
    scores: dict[str, dict[str, np.ndarray]],
    floor: float,
    min_keep: int,
    dense_masks: Masks,
) -> dict[str, Masks]:
    """The masks behind every entry of :func:`budget_table` (``dense_masks`` where nothing is
    within the budget): the MIP's kept mask, each baseline's step redone from its scores."""
    found = {MIP_METHOD: dense_masks if path.chosen is None else path.masks[path.chosen]}
    methods = baseline_methods(scores)
    for method, points in steps.items():
        best = _best_step(points, floor)
        if best is None:
            found[method] = dense_masks
            continue
        criterion, schedule = methods[method]
        found[method] = schedule(scores[criterion], points[best].fraction, min_keep)
    return found


def _entry(method: str, points, best: int | None, dense: Evaluation) -> BudgetEntry:
    source = dense if best is None else points[best]
    return BudgetEntry(
        method=method,
        units_pruned=source.units_pruned,
        params_after=source.params_after,
        params_removed=dense.params_after - source.params_after,
        macs_after=source.macs_after,
        macs_removed=dense.macs_after - source.macs_after,
        val_accuracy=source.val_accuracy,
        test_accuracy=source.test_accuracy,
        val_drop_error=source.val_drop_error,
        test_drop_error=source.test_drop_error,
    )


def noisy_warning(entry: BudgetEntry, before: float, samples: int, max_drop: float) -> str | None:
    """A warning when ``entry``'s validation drop from ``before`` has a standard error over
    :data:`NOISY_SHARE` of ``max_drop``: the validation samples cannot tell whether the mask
    holds the budget on unseen data. It says how many samples would (the error falls as one
    over their square root)."""
    limit = NOISY_SHARE * max_drop
    error = entry.val_drop_error
    if max_drop <= 0 or error <= limit:
        return None
    drop = 100 * (before - entry.val_accuracy)
    needed = math.ceil(samples * (error / limit) ** 2 - BUDGET_SLACK)
    return (
        f"the {entry.method} mask's validation drop, {drop:.2f} points, has a standard error "
        f"of {error:.2f} points on {samples} samples: on unseen data it may be about "
        f"{drop + 2 * error:.1f}; about {needed} validation samples would bring the error "
        f"under {limit:g} points (val_data, --val-data, x_val/y_val or a larger val_fraction)"
    )
