"""Pruning to an accuracy budget: the validation split, the lam path, the baselines' steps, the
budget table, the report and ``oamip prune --max-drop``.

Design checked here: the validation split is drawn from the training split only (the test split
is untouched), and the MIP batch, fine-tuning and decomposition heads use the rest of the
training split, so the validation samples are disjoint from both the test split and the batch.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import oamip
from oamip.adapters import apply_masks
from oamip.errors import InvalidInputError
from oamip.pipelines import prune as pipeline
from oamip.pipelines.budget import (
    BASELINE_STEPS,
    INTERPOLATED,
    NOT_SOLVED,
    Evaluator,
    LamPath,
    baseline_steps,
    budget_floor,
    budget_table,
    lam_path,
    most_within_budget,
    split_validation,
    step_masks,
)
from oamip.pipelines.inputs import layer_labels
from oamip.pipelines.report import summary_table, write_report
from oamip.pipelines.results import SubproblemReport, piece_line
from oamip.solve.interrupt import INTERRUPTED
from oamip.training.criteria import MIP_METHOD, all_scores, criteria, is_global_only
from oamip.training.data import load_digits, make_dataset
from oamip.training.inference import evaluate
from oamip.training.models import build, lenet5
from oamip.training.tp_scores import installed
from oamip.training.train import train
from oamip.training.transfer import keep_all
from tests import nets

HIDDEN = (12, 8)
MAX_DROP = 1.0
FAST = {"time_limit": 1.0, "threads": 1, "finetune_epochs": 0}
PATH_KEYS = {
    "lam",
    "units_pruned",
    "layers_pruned",
    "params_after",
    "val_accuracy",
    "test_accuracy",
    "status",
    "gap",
    "seconds",
}
BUDGET_KEYS = {"method", "units_pruned", "val_accuracy", "test_accuracy"}


@pytest.fixture(scope="module")
def digits():
    return load_digits()


@pytest.fixture(scope="module")
def trained(digits):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model = build("mlp", digits, HIDDEN, seed=0)
    yield train(model, digits, epochs=8, lr=1e-2, progress=False)
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def budgeted(trained, digits):
    """A budgeted run, recording the data set the MIP batch was drawn from."""
    seen = []
    draw = pipeline.mip_batch

    def spy(model, dataset, samples_per_class, seed):
        batch = draw(model, dataset, samples_per_class, seed)
        seen.append((dataset, batch))
        return batch

    pipeline.mip_batch = spy
    try:
        report = oamip.prune(
            trained, digits, max_drop=MAX_DROP, lams=[0.1, 1.0, 10.0], refine_steps=1, **FAST
        )
    finally:
        pipeline.mip_batch = draw
    return report, seen


def _within(report) -> list[int]:
    floor = report.val_accuracy_before - MAX_DROP / 100
    return [k for k, p in enumerate(report.path) if p.val_accuracy >= floor - 1e-12]


def test_the_chosen_mask_is_the_sparsest_on_the_path_within_the_budget(budgeted):
    report, _ = budgeted
    within = _within(report)
    assert report.chosen in within
    most = max(report.path[k].units_pruned for k in within)
    assert report.path[report.chosen].units_pruned == most
    assert report.units_pruned == most
    assert report.lam == report.path[report.chosen].lam


def test_the_budget_is_never_exceeded_on_the_validation_split(budgeted, trained, digits):
    """The kept mask, rebuilt from the report's pruned units and evaluated afresh on the same
    validation split, loses at most max_drop points against the dense network; so does every
    method's entry in the budget table."""
    report, _ = budgeted
    split = split_validation(digits, report.val_fraction, report.seed)
    masks = {}
    for layer in report.layers:
        keep = np.ones(layer.units, dtype=bool)
        keep[layer.pruned] = False
        masks[layer.name] = keep
    dense = evaluate(trained, split.x_val, split.y_val)
    assert dense == report.val_accuracy_before
    accuracy = evaluate(apply_masks(trained, masks), split.x_val, split.y_val)
    assert accuracy == report.path[report.chosen].val_accuracy
    assert accuracy == evaluate(report.model, split.x_val, split.y_val)
    assert accuracy >= dense - MAX_DROP / 100
    for entry in report.budget:
        assert entry.val_accuracy >= dense - MAX_DROP / 100 - 1e-12


def test_the_path_is_sorted_refined_between_the_weights_around_the_budget(budgeted):
    """One refinement step: a weight between the kept grid weight and the next smaller one,
    unless the smallest grid weight is kept (nothing smaller to refine towards)."""
    report, _ = budgeted
    lams = [p.lam for p in report.path]
    grid = [0.1, 1.0, 10.0]
    assert lams == sorted(lams) and set(grid) <= set(lams)
    refined = sorted(set(lams) - set(grid))
    if not refined:
        assert report.path[report.chosen].lam == grid[0]
        return
    (lam,) = refined
    assert any(np.isclose(lam, np.sqrt(a * b)) for a, b in itertools.pairwise(grid))


def test_baselines_budget_figures_are_the_most_units_within_the_budget(budgeted):
    report, _ = budgeted
    floor = report.val_accuracy_before - MAX_DROP / 100
    methods = [entry.method for entry in report.budget]
    layer = [m for m in criteria() if not is_global_only(m)]
    tp = ["tp-magnitude-global", "tp-taylor-global", "tp-lamp-global"] if installed() else []
    assert methods == [MIP_METHOD, *(m + s for m in layer for s in ("", "-global")), *tp]
    mip = report.budget[0]
    chosen = report.path[report.chosen]
    assert (mip.units_pruned, mip.val_accuracy, mip.test_accuracy) == (
        chosen.units_pruned,
        chosen.val_accuracy,
        chosen.test_accuracy,
    )
    for entry in report.budget[1:]:
        steps = [s for s in report.baseline_path if s.method == entry.method]
        best = max(s.units_pruned for s in steps if s.val_accuracy >= floor - 1e-12)
        assert entry.units_pruned == best


def test_baselines_are_still_compared_at_the_chosen_counts(budgeted):
    report, _ = budgeted
    chosen = report.path[report.chosen]
    assert {layer.name: layer.units_pruned for layer in report.layers} == chosen.layers_pruned
    assert [b.method for b in report.baselines] == [m for m in criteria() if not is_global_only(m)]


def test_the_validation_split_is_disjoint_from_test_and_mip_batch(budgeted, digits):
    report, seen = budgeted
    split = split_validation(digits, report.val_fraction, report.seed)
    n = len(digits.y_train)
    assert report.val_size == len(split.y_val) == round(report.val_fraction * n)
    rest = np.setdiff1d(np.arange(n), split.indices)
    assert len(rest) + len(split.indices) == n
    assert split.train.x_test is digits.x_test and split.train.y_test is digits.y_test
    np.testing.assert_array_equal(split.train.x_train, digits.x_train[rest])
    ((dataset, batch),) = seen
    np.testing.assert_array_equal(dataset.x_train, split.train.x_train)
    batch_rows = {row.tobytes() for row in batch.x}
    assert not batch_rows & {row.tobytes() for row in digits.x_train[split.indices]}


def test_split_validation_is_reproducible_and_refuses_bad_fractions(digits):
    first, again = (split_validation(digits, 0.2, 3) for _ in range(2))
    np.testing.assert_array_equal(first.indices, again.indices)
    assert not np.array_equal(first.indices, split_validation(digits, 0.2, 4).indices)
    for fraction in (0.0, 1.0, 1.5, -0.1):
        with pytest.raises(InvalidInputError, match="validation fraction"):
            split_validation(digits, fraction, 0)


def test_report_keys_and_json(budgeted, tmp_path):
    report, _ = budgeted
    data = json.loads(json.dumps(report.to_dict()))
    assert {"val_accuracy_before", "path", "chosen", "budget", "max_drop"} <= set(data)
    assert all(set(point) >= PATH_KEYS for point in data["path"])
    assert all(set(entry) >= BUDGET_KEYS for entry in data["budget"])
    assert all(0.0 <= point["val_accuracy"] <= 1.0 for point in data["path"])
    assert data["layers"][0]["name"] == "1"
    assert data["layers"][0]["label"] == "fc1 Linear 64->12"
    assert all(set(p["layers_pruned"]) == {"1", "3"} for p in data["path"])
    write_report(report, tmp_path)
    assert (tmp_path / "accuracy_vs_units_removed.png").stat().st_size > 0
    text = summary_table(report)
    assert "lambda path" in text and "within budget" in text
    assert text.count("\n* ") == 1
    assert "fc2 Linear 12->8" in text


def test_without_max_drop_the_budget_fields_stay_empty(trained, digits):
    report = oamip.prune(trained, digits, **FAST)
    assert report.path == [] and report.budget == [] and report.chosen is None
    assert report.val_accuracy_before is None and report.val_size == 0
    assert report.lam == 5.0


def test_no_lam_within_a_zero_budget_prunes_nothing(trained, digits):
    report = oamip.prune(
        trained,
        digits,
        max_drop=0.0,
        lams=[0.001],
        refine_steps=0,
        interpolate_steps=0,
        rank_scores=False,
        polish_samples=0,
        **FAST,
    )
    (point,) = report.path
    assert point.val_accuracy < report.val_accuracy_before
    assert report.chosen is None and report.units_pruned == 0
    assert report.budget[0].units_pruned == 0
    assert report.budget[0].val_accuracy == report.val_accuracy_before


@pytest.mark.parametrize(
    "options, message",
    [
        ({"lams": [1.0]}, "give max_drop"),
        ({"max_drop": -1.0}, "max_drop"),
        ({"max_drop": 1.0, "lams": []}, "lams is empty"),
        ({"max_drop": 1.0, "lams": "1,2"}, "list of loss weights"),
        ({"max_drop": 1.0, "lams": [1.0, -2.0]}, "lam"),
        ({"max_drop": 1.0, "val_fraction": 0.0}, "validation fraction"),
        ({"max_drop": 1.0, "refine_steps": -1}, "refine steps"),
        ({"max_drop": 1.0, "interpolate_steps": 1.5}, "interpolate steps"),
    ],
)
def test_bad_budget_settings_are_refused_before_any_work(options, message, digits, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the pipeline started working on bad input")

    monkeypatch.setattr(pipeline, "_prune", fail)
    with pytest.raises(InvalidInputError, match=message):
        oamip.prune(None, digits, **options)


def test_most_within_budget_matches_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(300):
        n = int(rng.integers(1, 7))
        units = rng.integers(0, 5, n).tolist()
        accuracy = rng.choice([0.5, 0.6, 0.7, 0.8], n).tolist()
        floor = float(rng.choice([0.55, 0.7, 0.9]))
        best = most_within_budget(units, accuracy, floor)
        within = [k for k in range(n) if accuracy[k] >= floor]
        if not within:
            assert best is None
            continue
        top = max((units[k], accuracy[k]) for k in within)
        assert (units[best], accuracy[best]) == top
        assert best == min(k for k in within if (units[k], accuracy[k]) == top)


def _tiny_problem():
    """A random 4-5-4-3 MLP and data it labels, with some labels flipped so that the dense
    network is not perfect on validation."""
    model = nets.mlp(3, sizes=(4, 5, 4, 3))
    rng = np.random.default_rng(1)
    x = rng.random((120, 1, 2, 2)).astype(np.float32)
    with torch.no_grad():
        y = model(torch.from_numpy(x)).argmax(1).numpy()
    flip = rng.random(len(y)) < 0.1
    y[flip] = (y[flip] + 1) % 3
    return model, make_dataset("tiny", x[:80], y[:80], x[80:], y[80:])


def _steep_problem():
    """A random 4-8-6-3 MLP whose first layer sees its inputs in [-2, 2], and data it labels:
    one path weight prunes a little at some loss of accuracy, the other much more at more."""
    model = nets.mlp(4, sizes=(4, 8, 6, 3))
    with torch.no_grad():
        first = model[1]
        first.bias -= 2 * first.weight.sum(1)
        first.weight *= 4
    x = np.random.default_rng(1).random((120, 1, 2, 2)).astype(np.float32)
    with torch.no_grad():
        y = model(torch.from_numpy(x)).argmax(1).numpy()
    return model, make_dataset("steep", x[:80], y[:80], x[80:], y[80:])


def _numpy_logits(model, masks, x) -> np.ndarray:
    """The masked MLP's outputs by hand: pruned units output 0."""
    a = x.reshape(len(x), -1).astype(np.float64)
    linears = [m for m in model if isinstance(m, torch.nn.Linear)]
    for k, layer in enumerate(linears):
        w, b = layer.weight.detach().double().numpy(), layer.bias.detach().double().numpy()
        a = a @ w.T + b
        if k < len(linears) - 1:
            a = np.maximum(a, 0) * masks[str(2 * k + 1)]
    return a


def _numpy_accuracy(model, masks, x, y) -> float:
    """The masked network's accuracy by hand: pruned units output 0."""
    return float(np.mean(_numpy_logits(model, masks, x).argmax(1) == y))


@pytest.mark.parametrize("max_drop", [0.0, 5.0, 20.0, 100.0])
def test_baselines_budget_on_a_tiny_network_by_brute_force(max_drop):
    """Every step of the grid enumerated by hand (ranking, masking, a numpy forward pass): the
    most units within the budget is what the budget table says, for every criterion, with its
    test accuracy; that step alone is evaluated on test."""
    model, data = _tiny_problem()
    split = split_validation(data, 0.5, 0)
    evaluator = Evaluator(model, split)
    dense = evaluator(keep_all(model))
    assert dense.val_accuracy == _numpy_accuracy(model, {"1": 1, "3": 1}, split.x_val, split.y_val)
    floor = budget_floor(dense.val_accuracy, max_drop)
    scores = all_scores(model, split.train.x_train[:9], split.train.y_train[:9], 0)
    steps = {m: baseline_steps(m, s, evaluator, min_keep=1, floor=floor) for m, s in scores.items()}
    table = budget_table(LamPath(), steps, floor, dense)[1:]
    test = split.train
    for entry, (method, layer_scores) in zip(table, scores.items(), strict=True):
        best, best_test = 0, _numpy_accuracy(model, {"1": 1, "3": 1}, test.x_test, test.y_test)
        for step in range(BASELINE_STEPS + 1):
            masks = {}
            for name, values in layer_scores.items():
                drop = min(round(step / BASELINE_STEPS * len(values)), len(values) - 1)
                order = sorted(range(len(values)), key=lambda i: (values[i], i))
                masks[name] = np.isin(np.arange(len(values)), order[:drop], invert=True)
            pruned = sum(int((~m).sum()) for m in masks.values())
            accuracy = _numpy_accuracy(model, masks, split.x_val, split.y_val)
            if accuracy >= floor - 1e-12 and pruned > best:
                best, best_test = pruned, _numpy_accuracy(model, masks, test.x_test, test.y_test)
        assert (entry.method, entry.units_pruned) == (method, best)
        assert entry.test_accuracy == pytest.approx(best_test, abs=1e-12)
        tested = [step for step in steps[method] if step.test_accuracy is not None]
        assert [step.units_pruned for step in tested] == [best]
    if max_drop == 100.0:
        assert all(entry.units_pruned == 9 - 2 for entry in table)


def test_step_masks_keep_min_keep_and_prune_the_lowest():
    scores = {"a": np.array([3.0, 1.0, 2.0, 1.0]), "b": np.array([5.0, 4.0])}
    masks = step_masks(scores, 0.5, min_keep=1)
    assert masks["a"].tolist() == [True, False, True, False]
    assert masks["b"].tolist() == [True, False]
    assert step_masks(scores, 1.0, min_keep=2)["a"].tolist() == [True, False, True, False]


def test_layer_labels_say_what_each_layer_is():
    model = lenet5(1, 10, 28)
    assert list(layer_labels(model, ["0", "3", "7", "9"]).values()) == [
        "conv1 Conv2d 1->6 5x5",
        "conv2 Conv2d 6->16 5x5",
        "fc1 Linear 400->120",
        "fc2 Linear 120->84",
    ]


def test_oamip_prune_max_drop_end_to_end(trained, tmp_path):
    oamip.save_model(trained, tmp_path / "model.pt")
    out = tmp_path / "out"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "oamip",
            "prune",
            "--model",
            str(tmp_path / "model.pt"),
            "--max-drop",
            "2",
            "--lams",
            "1,10",
            "--refine-steps",
            "0",
            "--val-fraction",
            "0.2",
            "--time-limit",
            "1",
            "--finetune-epochs",
            "0",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    solved = [p["lam"] for p in report["path"] if p["status"] not in NOT_SOLVED]
    assert solved == [1.0, 10.0]
    assert {p["lam"] for p in report["path"]} == {1.0, 10.0}
    assert (report["max_drop"], report["val_fraction"]) == (2.0, 0.2)
    assert report["val_size"] == round(0.2 * 1437)
    lines = done.stdout.splitlines()
    path_lines = [line for line in lines if line.strip().startswith(("1 ", "10 ", "* "))]
    assert len(path_lines) >= 2
    for method in (MIP_METHOD, *(m for m in criteria() if not is_global_only(m))):
        assert any(line.startswith(method) for line in lines)


def test_piece_lines_name_the_layer_by_its_label():
    piece = SubproblemReport("1", 3, 10, "optimal", 0.5, 0.5, 1.25, 0.9, False, None)
    labels = {"1": "fc1 Linear 64->12"}
    assert piece_line(piece, labels) == ("piece layer fc1 Linear 64->12, class 3: optimal (1.2 s)")
    assert piece_line(piece).startswith("piece layer 1, class 3")


@pytest.mark.parametrize("interrupted", [False, True])
def test_the_path_refines_between_the_kept_weight_and_the_next_smaller_one(interrupted):
    """Real solves on a tiny network; a solve stopped by Ctrl-C ends the refinement."""
    model, data = _tiny_problem()
    split = split_validation(data, 0.5, 0)
    x, y = split.train.x_train[:6], split.train.y_train[:6]
    calls, seen = [], []

    def solve(lams):
        calls.append(list(lams))
        results = oamip.score_sweep(model, x, y, lams, time_limit=5.0)
        for result in results:
            result.status = INTERRUPTED if interrupted else result.status
        return results

    path = lam_path(solve, Evaluator(model, split), [100.0, 0.0001], 0.0, 0.1, 3, seen.append)
    assert calls[0] == [0.0001, 100.0]
    assert len(seen) == len(path.points) == sum(map(len, calls))
    if interrupted:
        assert len(calls) == 1
        return
    # floor 0: every mask is within, so the kept one prunes the most and lies at 0.0001
    assert path.points[path.chosen].units_pruned == max(p.units_pruned for p in path.points)
    assert all(len(call) == 1 for call in calls[1:])
    for call in calls[1:]:
        assert 0.0001 < call[0] < 100.0


@pytest.mark.parametrize("max_drop", [0.0, 20.0, 100.0])
def test_interpolated_masks_by_hand(max_drop):
    """Real solves at two weights on a tiny network, then the bisection redone by hand: from
    the solved mask kept before interpolating (all units if none), the mask at share t prunes
    in each layer the first round(t * d) of the d units the next sparser solution prunes,
    ordered by its score, then by how few solved masks keep them, then by magnitude; t halves
    the interval between the last share within the floor (by a numpy forward pass) and the
    last outside, stopping when a share gives the counts of an end. The kept point removes the
    most units within the floor. The budgets: nothing solved within (from all units), the
    weight that prunes less within, both within (nothing sparser to search towards)."""
    model, data = _steep_problem()
    split = split_validation(data, 0.5, 0)
    x, y = split.train.x_train[:6], split.train.y_train[:6]
    evaluator = Evaluator(model, split)
    floor = budget_floor(evaluator(keep_all(model)).val_accuracy, max_drop)
    magnitude = all_scores(model, x, y, 0)["magnitude"]

    def solve(lams):
        return oamip.score_sweep(model, x, y, lams, time_limit=5.0, scores="binary")

    path = lam_path(solve, evaluator, [100.0, 0.01], floor, 0.5, 0, None, 10, magnitude)
    points = path.points
    within = [k for k, p in enumerate(points) if p.val_accuracy >= floor - 1e-12]
    if within:
        assert points[path.chosen].units_pruned == max(points[k].units_pruned for k in within)
    solved = [k for k, p in enumerate(points) if p.status != INTERPOLATED]
    assert [points[k].lam for k in solved] == [0.01, 100.0]
    kept = most_within_budget(
        [points[k].units_pruned for k in solved], [points[k].val_accuracy for k in solved], floor
    )
    start = keep_all(model) if kept is None else path.masks[solved[kept]]
    removed = sum(int((~m).sum()) for m in start.values())
    beyond = [k for k in solved if points[k].units_pruned > removed]
    found = [path.masks[k] for k, p in enumerate(points) if p.status == INTERPOLATED]
    if not beyond:
        assert found == [] and max_drop == 100.0
        return
    sparser = min(beyond, key=lambda k: (points[k].units_pruned, points[k].lam))
    start = {name: keep | path.masks[sparser][name] for name, keep in start.items()}
    going = {}
    for name, keep in start.items():
        scores = path.results[sparser].scores[name]
        count = sum(path.masks[s][name].astype(int) for s in solved)
        units = [u for u in range(len(keep)) if keep[u] and not path.masks[sparser][name][u]]
        going[name] = sorted(units, key=lambda u: (scores[u], count[u], magnitude[name][u], u))
    expected, low, high = [], 0.0, 1.0
    for _ in range(10):
        share = (low + high) / 2
        counts = [[round(t * len(going[n])) for n in going] for t in (share, low, high)]
        if counts[0] in counts[1:]:
            break
        masks = {n: start[n].copy() for n in start}
        for name, units in going.items():
            masks[name][units[: round(share * len(units))]] = False
        expected.append(masks)
        accuracy = _numpy_accuracy(model, masks, split.x_val, split.y_val)
        low, high = (share, high) if accuracy >= floor - 1e-12 else (low, share)
    assert len(expected) >= 2
    by_units = sorted(expected, key=lambda m: sum(int((~v).sum()) for v in m.values()))
    assert len(found) == len(by_units)
    for got, masks in zip(found, by_units, strict=True):
        for name in masks:
            np.testing.assert_array_equal(got[name], masks[name])
    for k, p in enumerate(points):
        if p.status == INTERPOLATED:
            assert p.lam == points[sparser].lam and path.results[k] is path.results[sparser]
            for name, keep in path.masks[k].items():
                assert not (~keep & path.masks[sparser][name]).any()
            assert p.units_pruned <= points[sparser].units_pruned
            accuracy = _numpy_accuracy(model, path.masks[k], split.x_val, split.y_val)
            assert p.val_accuracy == accuracy


def test_oamip_prune_refuses_lams_without_max_drop_in_one_line(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "oamip", "prune", "--lams", "1,2", "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "--max-drop" in done.stderr
    assert not (tmp_path / "o").exists()
