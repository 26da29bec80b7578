"""The MIP's scores used as a global ranking on the budget path (``rank_scores``, on by
default): the order (layer-normalised scores, ties by a second criterion), the ranked point
checked against every step recomputed by hand on a tiny network, and the pipeline's defaults."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

import oamip
from oamip.pipelines.budget import (
    BASELINE_STEPS,
    RANK_PATIENCE,
    RANKED,
    Evaluator,
    LamPath,
    PathPoint,
    budget_floor,
    global_order,
    monotony_note,
    rank_path,
    split_validation,
)
from oamip.pipelines.settings import PruneSettings
from oamip.training.criteria import MIP_METHOD
from oamip.training.transfer import keep_all
from tests.test_budget import _numpy_accuracy
from tests.test_honest_budget import FAST, LAYERS, _tiny_problem


def test_global_order_breaks_ties_by_the_layer_normalised_tie_break():
    """Every unit kept at score 1 ties within its layer: the tie-break (divided by its layer's
    norm, like the scores) orders them, across layers too."""
    scores = {"a": np.array([1.0, 1.0, 0.0]), "b": np.array([1.0, 1.0])}
    ties = {"a": np.array([3.0, 4.0, 9.0]), "b": np.array([2.0, 1.0])}
    # scores / norm: a = [0.707, 0.707, 0], b = [0.707, 0.707]; ties / norm: a = [.29, .39, .88],
    # b = [0.894, 0.447]
    assert global_order(scores, 1, ties) == [("a", 2), ("a", 0), ("b", 1)]
    assert global_order(scores, 1) == [("a", 2), ("a", 0), ("b", 0)]


def _path_of(evaluator, lam: float, scores: dict[str, np.ndarray]) -> LamPath:
    """A path of one solved weight keeping every unit, whose scores are ``scores``."""
    path = LamPath()
    masks = keep_all_tiny()
    path.points.append(
        PathPoint(lam=lam, status="optimal", gap=0.0, seconds=0.0, **vars(evaluator(masks)))
    )
    path.results.append(SimpleNamespace(scores=scores))
    path.masks.append(masks)
    return path


def keep_all_tiny() -> dict[str, np.ndarray]:
    return {name: np.ones(size, dtype=bool) for name, size in LAYERS.items()}


def _by_hand(scores, ties, floor, model, split) -> int:
    """The most units a step of the ranking removes within ``floor``, stepping every step (one
    unit kept per layer), recomputed without the package's ranking; None: none within."""
    units = []
    for position, name in enumerate(scores):
        s = scores[name] / np.linalg.norm(scores[name])
        t = ties[name] / np.linalg.norm(ties[name])
        ranked = sorted(range(len(s)), key=lambda i: (s[i], t[i], i))[: len(s) - 1]
        units += [(s[i], t[i], position, i, name) for i in ranked]
    units.sort()
    total = sum(LAYERS.values())
    best, outside = None, 0
    for step in range(1, BASELINE_STEPS + 1):
        masks = keep_all_tiny()
        for *_, unit, name in units[: round(step / BASELINE_STEPS * total)]:
            masks[name][unit] = False
        if _numpy_accuracy(model, masks, split.x_val, split.y_val) >= floor - 1e-12:
            best, outside = sum(int((~m).sum()) for m in masks.values()), 0
        else:
            outside += 1
            if outside >= RANK_PATIENCE:
                break
    return best


def test_the_ranked_point_is_the_sparsest_step_within_the_budget_by_hand():
    """On a 4-5-4-3 MLP: a solved weight's scores stepped as one global ranking (ties by the
    tie-break) add one point, the sparsest step within the budget, recomputed by hand; it is
    labelled ranked at that weight, never counts as a solve (monotony), and is not added twice."""
    model, data = _tiny_problem()
    split = split_validation(data, 0.5, 0)
    evaluator = Evaluator(model, split)
    dense = evaluator(keep_all(model))
    rng = np.random.default_rng(3)
    scores = {name: rng.random(size) for name, size in LAYERS.items()}
    ties = {name: rng.random(size) for name, size in LAYERS.items()}
    found = 0
    for max_drop in (5.0, 20.0, 60.0):
        floor = budget_floor(dense.val_accuracy, max_drop)
        path = _path_of(evaluator, 2.0, scores)
        rank_path(path, evaluator, ties, 1, floor)
        ranked = [k for k, p in enumerate(path.points) if p.status == RANKED]
        expected = _by_hand(scores, ties, floor, model, split)
        if not expected:  # none within, or only the dense mask already on the path
            assert not ranked
            continue
        assert len(ranked) == 1
        found += 1
        point = path.points[ranked[0]]
        assert point.units_pruned == expected and point.lam == 2.0
        assert point.val_accuracy >= floor - 1e-12
        assert (
            _numpy_accuracy(model, path.masks[ranked[0]], split.x_val, split.y_val)
            == point.val_accuracy
        )
        assert monotony_note(path.points) is None
        again = len(path.points)
        rank_path(path, evaluator, ties, 1, floor)
        assert len(path.points) == again
    assert found


def test_the_defaults_rank_and_the_mip_keeps_the_sparsest_point():
    """``rank_scores`` is on by default; the MIP's budget entry is the sparsest point of the
    path within the budget, ranked points included; off, no point is ranked."""
    assert PruneSettings().rank_scores is True
    model, data = _tiny_problem()
    common = {"max_drop": 20.0, "val_fraction": 0.5, "lams": [0.01, 1.0, 100.0], **FAST}
    report = oamip.prune(model, data, **common)
    floor = report.val_accuracy_before - 0.2
    within = [p.units_pruned for p in report.path if p.val_accuracy >= floor - 1e-12]
    entry = next(e for e in report.budget if e.method == MIP_METHOD)
    assert entry.units_pruned == max(within, default=0)
    assert all(p.status != RANKED or p.val_accuracy >= floor - 1e-12 for p in report.path)
    plain = oamip.prune(model, data, rank_scores=False, **common)
    assert not [p for p in plain.path if p.status == RANKED]
