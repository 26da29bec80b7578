"""Polishing the best budget mask with the MIP (``polish_samples``, on by default): the hardest
samples, the scores of the smaller network mapped back to the dense one, the walk recomputed by
hand on a tiny network, and the pipeline's polished point checked against numpy."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

import oamip
from oamip.adapters import apply_masks, extract, remove_pruned
from oamip.adapters.decompose import largest_piece_size
from oamip.adapters.scoring import score_neurons
from oamip.errors import InvalidInputError, SizeWarning
from oamip.formulations.size import estimate_size
from oamip.pipelines import limits
from oamip.pipelines import polish as polishing
from oamip.pipelines.budget import (
    DEFAULT_LAMS,
    DEFAULT_POLISH_SAMPLES,
    NOT_SOLVED,
    POLISHED,
    RANK_PATIENCE,
    Evaluator,
    LamPath,
    budget_floor,
    monotony_note,
    split_validation,
)
from oamip.pipelines.limits import in_pieces_if_large
from oamip.pipelines.polish import (
    LARGE_PATH_LAMS,
    PolishSettings,
    Start,
    path_weights,
    polish,
    polish_order,
    polish_plan,
    walk,
    widen,
)
from oamip.pipelines.settings import PruneSettings
from oamip.pipelines.solving import BatchSolver
from oamip.solve.options import ScoringOptions
from oamip.training.criteria import MIP_METHOD
from oamip.training.data import hardest_rows
from oamip.training.transfer import keep_all
from tests.test_budget import _numpy_accuracy, _numpy_logits
from tests.test_honest_budget import FAST, LAYERS, _tiny_problem

START = {"1": np.array([True, False, True, True, True]), "3": np.array([True, True, False, True])}
"""A start mask of the tiny 4-5-4-3 MLP: one unit pruned in each layer."""


def _margins_by_hand(model, masks, x, y) -> np.ndarray:
    a = _numpy_logits(model, masks, x)
    rows = np.arange(len(y))
    label = a[rows, y].copy()
    a[rows, y] = -np.inf
    return label - a.max(1)


def test_hardest_rows_are_the_correct_samples_of_smallest_margin():
    """The samples picked are correctly classified by the masked network, and no correct
    sample left out has a smaller margin (numpy forward pass)."""
    model, data = _tiny_problem()
    masked = apply_masks(model, START)
    batch = hardest_rows(masked, data, 7)
    margin = _margins_by_hand(model, START, data.x_train, data.y_train)
    assert len(batch.y) == 7 and list(batch.indices) == sorted(batch.indices)
    assert (margin[batch.indices] > 0).all()
    left = np.setdiff1d(np.flatnonzero(margin > 0), batch.indices)
    assert margin[batch.indices].max() <= margin[left].min() + 1e-6
    assert np.array_equal(batch.y, data.y_train[batch.indices])
    everything = hardest_rows(masked, data, 10_000)
    assert len(everything.y) == int((margin > 0).sum())


def test_widened_scores_keep_the_smaller_networks_masked_outputs():
    """The MIP solved on the network the start leaves: its masks, mapped back to the dense
    network's units (pruned ones at 0), give the same outputs as the smaller network masked by
    the MIP's own masks, and the units the start prunes stay pruned."""
    model, data = _tiny_problem()
    small = remove_pruned(model, START)
    x, y = data.x_train[:6], data.y_train[:6]
    result = score_neurons(small, x, y, lam=1.0, time_limit=5.0, threads=1)
    widened = widen(result, START)
    for name, keep in START.items():
        assert len(widened.scores[name]) == len(keep)
        assert (widened.scores[name][~keep] == 0).all()
    inputs = torch.from_numpy(data.x_test)
    with torch.no_grad():
        dense_out = apply_masks(model, widened.masks())(inputs)
        small_out = apply_masks(small, result.masks())(inputs)
    assert torch.allclose(dense_out, small_out, atol=1e-5)


def _walk_by_hand(order, start, floor, model, split, step) -> int | None:
    """One unit at a time along ``order`` (a layer keeps one unit), a numpy evaluation after
    every ``step`` units pruned and after the last one, patience as the walk's."""
    masks = {name: keep.copy() for name, keep in start.items()}
    best, outside, pending = None, 0, 0

    def within_floor() -> bool:
        return _numpy_accuracy(model, masks, split.x_val, split.y_val) >= floor - 1e-12

    for name, unit in order:
        if not masks[name][unit] or masks[name].sum() <= 1:
            continue
        masks[name][unit] = False
        pending += 1
        if pending < step:
            continue
        pending = 0
        if within_floor():
            best, outside = sum(int((~m).sum()) for m in masks.values()), 0
        else:
            outside += 1
            if outside >= RANK_PATIENCE:
                return best
    if pending and within_floor():
        best = sum(int((~m).sum()) for m in masks.values())
    return best


def test_polish_order_sorts_kept_units_by_score_then_tie():
    scores = {"1": np.array([0.5, 0.0, 0.2, 0.2, 1.0]), "3": np.array([0.2, 0.0, 0.0, 1.0])}
    ties = {"1": np.array([0.1, 0.0, 0.9, 0.3, 0.0]), "3": np.array([0.5, 0.4, 0.0, 0.0])}
    assert polish_order(scores, START, ties) == [
        ("3", 1),
        ("1", 3),
        ("3", 0),
        ("1", 2),
        ("1", 0),
        ("1", 4),
        ("3", 3),
    ]


@pytest.mark.parametrize("step", [1, 2])
def test_the_walk_is_the_sparsest_step_within_the_budget_by_hand(step):
    """From a start mask, along random orders at several budgets: the walk's mask removes what
    the steps recomputed by hand (numpy forward passes) say, and its validation accuracy is
    within the floor."""
    model, data = _tiny_problem()
    split = split_validation(data, 0.5, 0)
    evaluator = Evaluator(model, split)
    dense = evaluator(keep_all(model))
    rng = np.random.default_rng(5)
    checked = 0
    for max_drop in (5.0, 20.0, 60.0):
        floor = budget_floor(dense.val_accuracy, max_drop)
        scores = {name: rng.random(size) for name, size in LAYERS.items()}
        order = polish_order(scores, START, {})
        found = walk(START, order, evaluator, floor, step, 1)
        expected = _walk_by_hand(order, START, floor, model, split, step)
        if expected is None:
            assert found is None
            continue
        checked += 1
        seen, masks = found
        assert seen.units_pruned == expected
        assert seen.val_accuracy >= floor - 1e-12
        assert _numpy_accuracy(model, masks, split.x_val, split.y_val) == seen.val_accuracy
        assert all((~START[name] <= ~masks[name]).all() for name in START)
    assert checked


def test_polish_adds_points_beyond_the_start_only():
    """Polishing a start on the tiny network solves the MIP on the smaller network once per
    weight, and every point it adds prunes more than the start, everything the start prunes,
    within the budget; it never counts as a solve (monotony)."""
    model, data = _tiny_problem()
    split = split_validation(data, 0.5, 0)
    evaluator = Evaluator(model, split)
    floor = budget_floor(evaluator(keep_all(model)).val_accuracy, 60.0)
    solved = []

    def solve(net, batch, lams, options):
        solved.append((sum(p.numel() for p in net.parameters()), len(batch.y), lams, options))
        return [
            score_neurons(net, batch.x, batch.y, options, lam=lam, time_limit=5.0) for lam in lams
        ]

    path = LamPath()
    settings = PolishSettings(8, 3, ScoringOptions())
    polish(
        path, Start("magnitude", START, {}), solve, model, split.train, evaluator, floor, settings
    )
    assert len(solved) == 1 and solved[0][1] == 8 and solved[0][3].decompose is None
    assert solved[0][0] < sum(p.numel() for p in model.parameters())
    start_pruned = sum(int((~keep).sum()) for keep in START.values())
    assert path.points, "a 60-point budget leaves room to prune beyond one unit per layer"
    for point, masks in zip(path.points, path.masks, strict=True):
        assert point.status == POLISHED and point.start == "magnitude"
        assert point.samples == 8 and not point.pieces
        assert point.units_pruned > start_pruned
        assert point.val_accuracy >= floor - 1e-12
        assert all((~START[name] <= ~masks[name]).all() for name in START)
    assert monotony_note(path.points) is None
    assert path.chosen is not None


def test_the_defaults_polish_and_the_mip_entry_is_the_sparsest_point():
    """Polishing is on by default; the MIP's budget entry is the sparsest point within the
    budget, polished ones included, each starting from a method's budget mask that it prunes
    more than; ``polish_samples=0`` adds no polished point."""
    assert PruneSettings().polish_samples == DEFAULT_POLISH_SAMPLES > 0
    model, data = _tiny_problem()
    common = {"max_drop": 20.0, "val_fraction": 0.5, "lams": [0.01, 1.0, 100.0], **FAST}
    report = oamip.prune(model, data, **common)
    floor = report.val_accuracy_before - 0.2
    within = [p.units_pruned for p in report.path if p.val_accuracy >= floor - 1e-12]
    entry = next(e for e in report.budget if e.method == MIP_METHOD)
    assert entry.units_pruned == max(within, default=0)
    by_method = {e.method: e for e in report.budget}
    polished = [p for p in report.path if p.status == POLISHED]
    for point in polished:
        assert point.start in by_method
        beyond = point.units_pruned - by_method[point.start].units_pruned
        assert beyond > 0 or point.start == MIP_METHOD or (beyond == 0 and len(polished) == 1)
        assert point.val_accuracy >= floor - 1e-12
    plain = oamip.prune(model, data, polish_samples=0, **common)
    assert not [p for p in plain.path if p.status == POLISHED]


def test_a_negative_polish_sample_count_is_refused():
    with pytest.raises(InvalidInputError, match="polish samples"):
        PruneSettings(max_drop=1.0, polish_samples=-1).validate()


def test_the_polish_takes_fewer_samples_when_its_mip_would_be_too_large(monkeypatch):
    """The samples asked for when the estimated MIP fits the cap; as many as fit when it does
    not; the whole network's MIP while it takes more than the path's batch."""
    model, data = _tiny_problem()
    small = remove_pruned(model, START)
    options = ScoringOptions()
    network = extract(small, data.x_train[:1]).network
    per_sample = estimate_size(network, 1, options).variables
    assert polish_plan(small, data, PolishSettings(40, 3, options)) == (40, options)
    monkeypatch.setattr(polishing, "POLISH_MAX_VARIABLES", 7 * per_sample)
    assert polish_plan(small, data, PolishSettings(40, 3, options)) == (7, options)


def test_the_polish_takes_layer_pieces_when_the_whole_mip_sees_no_more_than_the_path(
    monkeypatch,
):
    """When the whole MIP would take no more samples than the path's batch, per-layer pieces,
    sized by their own estimate (never fewer samples than the path's batch); a run decomposed
    already, or one whose pieces cannot be
    priced apart, keeps its own options."""
    model, data = _tiny_problem()
    small = remove_pruned(model, START)
    options = ScoringOptions()
    network = extract(small, data.x_train[:1]).network
    whole = estimate_size(network, 1, options).variables
    piece = largest_piece_size(network, 1, replace(options, decompose="layer")).variables
    assert piece < whole
    monkeypatch.setattr(polishing, "POLISH_MAX_VARIABLES", 5 * piece)
    monkeypatch.setattr(polishing, "POLISH_MAX_PIECE_VARIABLES", 5 * piece)
    samples, chosen = polish_plan(small, data, PolishSettings(40, 5 * piece // whole, options))
    assert chosen == replace(options, decompose="layer") and samples == 5
    assert polish_plan(small, data, PolishSettings(2, 5 * piece // whole, options))[0] == 2
    monkeypatch.setattr(polishing, "POLISH_MAX_PIECE_VARIABLES", 1)
    assert polish_plan(small, data, PolishSettings(40, 3, options)) == (3, chosen)
    by_class = ScoringOptions(decompose="class")
    assert polish_plan(small, data, PolishSettings(40, 3, by_class))[1] == by_class


def test_a_polish_on_layer_pieces_adds_points_beyond_the_start_within_the_budget(monkeypatch):
    """The pieces' scores (heads fit on the training split) order the units as the whole MIP's
    would: every polished point prunes what the start prunes and more, within the budget."""
    model, data = _tiny_problem()
    split = split_validation(data, 0.5, 0)
    evaluator = Evaluator(model, split)
    floor = budget_floor(evaluator(keep_all(model)).val_accuracy, 60.0)
    monkeypatch.setattr(polishing, "POLISH_MAX_VARIABLES", 1)
    monkeypatch.setattr(polishing, "POLISH_MAX_PIECE_VARIABLES", 1)
    solver = BatchSolver(PruneSettings(max_drop=60.0, time_limit=5.0), split.train)
    used = []

    def solve(net, batch, lams, options):
        used.append(options.decompose)
        return solver.at(net, batch.x, batch.y, lams, options)

    path = LamPath()
    settings = PolishSettings(8, 6, ScoringOptions(time_limit=5.0))
    polish(
        path, Start("magnitude", START, {}), solve, model, split.train, evaluator, floor, settings
    )
    assert used == ["layer"] and path.points
    for point, masks, result in zip(path.points, path.masks, path.results, strict=True):
        assert point.status == POLISHED and point.val_accuracy >= floor - 1e-12
        assert point.pieces and point.samples == 6
        assert all((~START[name] <= ~masks[name]).all() for name in START)
        assert [piece.layer for piece in result.subproblems] == list(START)


def test_a_whole_mip_too_large_for_memory_is_solved_in_layer_pieces(monkeypatch):
    """Over the whole-MIP cap, a run without ``decompose`` warns and solves per-layer pieces
    (the report says so); one that gives ``decompose`` keeps it, and the cap is not reached
    at the defaults on this network."""
    model, data = _tiny_problem()
    assert in_pieces_if_large(model, data, PruneSettings()) == (PruneSettings(), None)
    monkeypatch.setattr(limits, "WHOLE_MAX_VARIABLES", 1)
    with pytest.warns(SizeWarning, match="solved in per-layer pieces"):
        report = oamip.prune(model, data, **FAST)
    assert report.decompose == "layer"
    assert [piece.layer for piece in report.subproblems] == list(LAYERS)
    given = PruneSettings(decompose="class")
    assert in_pieces_if_large(model, data, given) == (given, None)


def test_a_path_whose_whole_mip_sees_no_more_than_its_batch_is_one_weight(monkeypatch):
    """The default weights while the whole MIP takes more than the path's batch; when it
    cannot (the polish then solves pieces), :data:`LARGE_PATH_LAMS` alone, with a note that
    names the estimate; weights given are always kept, and a network whose pieces cannot be
    priced apart keeps the whole path."""
    model, data = _tiny_problem()
    options = ScoringOptions()
    settings = PolishSettings(40, 3, options)
    assert path_weights(model, data, settings, None) == (DEFAULT_LAMS, None)
    network = extract(model, data.x_train[:1]).network
    at_batch = estimate_size(network, 3, options).variables
    monkeypatch.setattr(polishing, "POLISH_MAX_VARIABLES", at_batch)
    lams, note = path_weights(model, data, settings, None)
    assert lams == LARGE_PATH_LAMS and f"{at_batch:,} variables" in note
    assert path_weights(model, data, settings, (0.1, 2.0)) == ((0.1, 2.0), None)
    monkeypatch.setattr(polishing, "can_cut_by_layer", lambda network, options: False)
    assert path_weights(model, data, settings, None) == (DEFAULT_LAMS, None)


def test_the_pipeline_solves_one_weight_and_says_why_when_the_whole_mip_is_too_large(
    monkeypatch,
):
    """With the cap under the path's batch, the budgeted pipeline solves the path at one
    weight with no refinement, polishes in pieces, and its report's path note says why;
    without polishing the whole path is solved."""
    model, data = _tiny_problem()
    monkeypatch.setattr(polishing, "POLISH_MAX_VARIABLES", 1)
    common = {"max_drop": 20.0, "val_fraction": 0.5, "polish_samples": 8, **FAST}
    report = oamip.prune(model, data, **common)
    solved = [p for p in report.path if p.status not in NOT_SOLVED]
    assert [p.lam for p in solved] == list(LARGE_PATH_LAMS)
    assert "is solved at lambda 1.0 alone" in report.path_note
    assert all(p.pieces for p in report.path if p.status == POLISHED)
    plain = oamip.prune(model, data, **{**common, "polish_samples": 0})
    assert len([p for p in plain.path if p.status not in NOT_SOLVED]) > 1
    assert plain.path_note is None or "alone" not in plain.path_note


def test_a_start_no_step_improves_joins_the_path_as_its_one_polished_point(monkeypatch):
    """When no walk finds a step within the budget, the start's own mask joins the path once
    (status polished, its method as ``start``, its own validation accuracy), so the path can
    choose the start's mask over its own, which may remove far fewer units."""
    model, data = _tiny_problem()
    split = split_validation(data, 0.5, 0)
    evaluator = Evaluator(model, split)
    floor = budget_floor(evaluator(keep_all(model)).val_accuracy, 60.0)
    monkeypatch.setattr(polishing, "walk", lambda *args: None)

    def solve(net, batch, lams, options):
        return [score_neurons(net, batch.x, batch.y, options, lam=lam) for lam in lams]

    path = LamPath()
    settings = PolishSettings(8, 3, ScoringOptions(time_limit=5.0))
    polish(
        path, Start("magnitude", START, {}), solve, model, split.train, evaluator, floor, settings
    )
    assert [p.status for p in path.points] == [POLISHED]
    point, masks = path.points[0], path.masks[0]
    assert point.start == "magnitude" and point.samples == 8
    assert all((masks[name] == START[name]).all() for name in START)
    seen = evaluator(START)
    assert point.units_pruned == seen.units_pruned and point.val_accuracy == seen.val_accuracy
    assert path.chosen == (0 if seen.val_accuracy >= floor else None)
