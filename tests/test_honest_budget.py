"""The budget held honestly: validation samples given (``val_data``, ``--val-data``, an npz's
``x_val``/``y_val``) and reported, the warnings on seen or too few validation samples, every
criterion in a per-layer and a global schedule checked by enumeration on a tiny network, the
baselines' larger training batch, and the path's rules (monotone in lambda or said why not; an
interpolated mask never goes past the solution it steps towards).
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import oamip
from oamip.errors import InvalidInputError, ValidationWarning
from oamip.pipelines import prune as pipeline
from oamip.pipelines.budget import (
    BASELINE_STEPS,
    INTERPOLATED,
    BudgetEntry,
    Evaluation,
    Evaluator,
    LamPath,
    PathPoint,
    budget_floor,
    budget_masks,
    budget_table,
    drop_error,
    given_validation,
    global_order,
    global_step_masks,
    interpolate,
    lam_path,
    monotony_note,
    noisy_warning,
    schedule_steps,
    split_validation,
    validation_warnings,
)
from oamip.pipelines.report import path_figure, summary_table
from oamip.training.criteria import MIP_METHOD, all_scores, criteria
from oamip.training.data import load_data, load_validation, make_dataset
from oamip.training.models import build
from oamip.training.tp_scores import installed
from oamip.training.train import train
from oamip.training.transfer import keep_all
from tests import nets
from tests.test_budget import _numpy_accuracy

FAST = {"time_limit": 1.0, "threads": 1, "finetune_epochs": 0}
ONE_WEIGHT = {"lams": [10.0], "refine_steps": 0, "interpolate_steps": 0, **FAST}
LAYERS = {"1": 5, "3": 4}
"""The tiny problem's unit layers (a 4-5-4-3 MLP) and their sizes."""


def _tiny_problem():
    """A random 4-5-4-3 MLP whose first layer sees its inputs centred, and data it labels in
    all three classes (20, 42 and 98 of 160), a tenth of the labels changed so that the dense
    network is not perfect: 100 training and 60 test samples."""
    model = nets.mlp(9, sizes=(4, 5, 4, 3))
    with torch.no_grad():
        first = model[1]
        first.bias -= 0.5 * first.weight.sum(1)
        first.weight *= 3
    rng = np.random.default_rng(1)
    x = rng.random((160, 1, 2, 2)).astype(np.float32)
    with torch.no_grad():
        y = model(torch.from_numpy(x)).argmax(1).numpy()
    flip = rng.random(len(y)) < 0.1
    y[flip] = (y[flip] + 1) % 3
    return model, make_dataset("tiny", x[:100], y[:100], x[100:], y[100:])


def _masks(pruned: dict[str, list[int]]) -> dict[str, np.ndarray]:
    masks = {name: np.ones(size, dtype=bool) for name, size in LAYERS.items()}
    for name, units in pruned.items():
        masks[name][units] = False
    return masks


def _tiny_cost(masks) -> tuple[int, int]:
    """Parameters and MACs of the tiny 4-5-4-3 MLP with the masked units removed, by hand."""
    a, b = int(masks["1"].sum()), int(masks["3"].sum())
    macs = 4 * a + a * b + b * 3
    return macs + a + b + 3, macs


# --- validation given, and reported -------------------------------------------------------


def test_val_data_is_used_instead_of_a_split_and_reported(monkeypatch):
    """The given samples are the validation set; the MIP batch and the criteria's batch are
    drawn from the whole training split; report.json and the summary say so."""
    model, data = _tiny_problem()
    rng = np.random.default_rng(5)
    x_val = rng.random((30, 1, 2, 2)).astype(np.float32)
    y_val = rng.integers(0, data.num_classes, 30)
    seen = {}
    draw, score = pipeline.mip_batch, pipeline.all_scores

    def batch(model, dataset, samples_per_class, seed):
        seen["mip"] = dataset
        return draw(model, dataset, samples_per_class, seed)

    def scored(model, x, y, seed):
        seen["rows"] = x
        return score(model, x, y, seed)

    monkeypatch.setattr(pipeline, "mip_batch", batch)
    monkeypatch.setattr(pipeline, "all_scores", scored)
    with pytest.warns(ValidationWarning, match="30 validation samples"):
        report = oamip.prune(model, data, max_drop=5.0, val_data=(x_val, y_val), **ONE_WEIGHT)
    assert report.validation == {"source": "given", "samples": 30}
    assert report.val_fraction is None and report.val_size == 30
    assert report.val_accuracy_before == _numpy_accuracy(model, _masks({}), x_val, y_val)
    np.testing.assert_array_equal(seen["mip"].x_train, data.x_train)
    np.testing.assert_array_equal(seen["rows"], data.x_train)
    assert report.n_baseline_samples == len(data.y_train)
    data_json = json.loads(json.dumps(report.to_dict()))
    assert data_json["validation"] == {"source": "given", "samples": 30}
    assert "validation: given, 30 samples" in summary_table(report)


def test_a_split_is_reported_as_such():
    model, data = _tiny_problem()
    report = oamip.prune(model, data, max_drop=100.0, val_fraction=0.5, **ONE_WEIGHT)
    assert report.validation == {"source": "split", "samples": 50}
    assert report.val_fraction == 0.5
    assert "validation: split, 50 samples" in summary_table(report)


def test_an_npz_with_x_val_gives_the_validation_set(tmp_path):
    model, data = _tiny_problem()
    file = tmp_path / "with-val.npz"
    x_val, y_val = data.x_test[:25], data.y_test[:25]
    train, test = (
        {"x_train": data.x_train, "y_train": data.y_train},
        {
            "x_test": data.x_test[25:],
            "y_test": data.y_test[25:],
        },
    )
    np.savez(file, **train, **test, x_val=x_val, y_val=y_val)
    loaded = load_data(f"npz:{file}")
    np.testing.assert_array_equal(loaded.x_val, x_val)
    np.testing.assert_array_equal(loaded.y_val, y_val)
    report = oamip.prune(model, loaded, max_drop=100.0, **ONE_WEIGHT)
    assert report.validation == {"source": "given", "samples": 25}
    assert report.val_accuracy_before == _numpy_accuracy(model, _masks({}), x_val, y_val)
    without = oamip.prune(model, loaded, **FAST)
    assert without.validation is None and without.path == []


def test_load_validation_reads_x_val_else_the_test_split(tmp_path):
    x = np.random.default_rng(0).random((6, 1, 2, 2)).astype(np.float32)
    y = np.array([0, 1, 2, 0, 1, 2])
    np.savez(tmp_path / "val.npz", x_val=x, y_val=y, x_test=x[:2], y_test=y[:2])
    np.savez(tmp_path / "test.npz", x_test=x[:4], y_test=y[:4])
    np.savez(tmp_path / "none.npz", x_train=x, y_train=y)
    assert len(load_validation(f"npz:{tmp_path / 'val.npz'}")[1]) == 6
    assert len(load_validation(str(tmp_path / "test.npz"))[1]) == 4
    with pytest.raises(InvalidInputError, match="neither x_val and y_val nor x_test"):
        load_validation(str(tmp_path / "none.npz"))
    with pytest.raises(InvalidInputError, match="does not exist"):
        load_validation(str(tmp_path / "missing.npz"))
    x_val, y_val = load_validation("digits")
    assert x_val.shape[1:] == (1, 8, 8) and len(y_val) == len(load_data("digits").y_test)


@pytest.mark.parametrize(
    ("x_val", "y_val", "message"),
    [
        (np.zeros((3, 1, 2, 3)), np.zeros(3), "validation inputs"),
        (np.zeros((3, 1, 2, 2)), np.zeros(2), "3 inputs and 2 labels"),
        (np.zeros((3, 1, 2, 2)), np.array([0, 1, 9]), "class 9"),
        (np.full((3, 1, 2, 2), 2.0), np.zeros(3), "outside \\[0, 1\\]"),
        (np.zeros((0, 1, 2, 2)), np.zeros(0), "at least one"),
    ],
)
def test_bad_validation_sets_are_refused(x_val, y_val, message):
    _, data = _tiny_problem()
    with pytest.raises(InvalidInputError, match=message):
        given_validation(data, x_val, y_val)


def test_an_npz_validation_set_is_checked_like_the_other_splits():
    x, y = np.zeros((4, 1, 2, 2)), np.array([0, 1, 0, 1])
    with pytest.raises(InvalidInputError, match="both x_val and y_val"):
        make_dataset("half", x, y, x, y, x_val=x)
    with pytest.raises(InvalidInputError, match="validation inputs"):
        make_dataset("shape", x, y, x, y, x_val=np.zeros((2, 1, 3, 3)), y_val=y[:2])
    with pytest.raises(InvalidInputError, match="y_val"):
        make_dataset("labels", x, y, x, y, x_val=x, y_val=np.array([0, 1, 0.5, 1]))
    assert make_dataset("ok", x, y, x, y, x_val=x, y_val=np.array([0, 2, 0, 1])).num_classes == 3


def test_val_data_without_max_drop_is_refused_before_any_work(monkeypatch):
    model, data = _tiny_problem()

    def fail(*args, **kwargs):
        raise AssertionError("the pipeline started working on bad input")

    monkeypatch.setattr(pipeline, "_prune", fail)
    with pytest.raises(InvalidInputError, match="give max_drop"):
        oamip.prune(model, data, val_data=(data.x_test, data.y_test))
    with pytest.raises(InvalidInputError, match="pair"):
        oamip.prune(model, data, max_drop=1.0, val_data=data.x_test)


# --- warnings ----------------------------------------------------------------------------


def test_a_model_evaluated_on_its_own_training_data_is_warned_of():
    """An MLP trained on 100 digits scores them far better than the test split."""
    digits = load_data("digits")
    few = make_dataset(
        "few", digits.x_train[:100], digits.y_train[:100], digits.x_test, digits.y_test
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = train(build("mlp", few, (16,), seed=0), few, epochs=60, lr=1e-2, progress=False)
    finally:
        torch.set_num_threads(threads)
    with pytest.warns(ValidationWarning, match="probably been trained on them") as caught:
        report = oamip.prune(
            model, digits, max_drop=50.0, val_data=(few.x_train, few.y_train), **ONE_WEIGHT
        )
    assert any("--val-data" in str(w.message) for w in caught)
    assert any("probably been trained" in text for text in report.warnings)
    assert "warning: the dense network scores" in summary_table(report)


def test_a_20_sample_validation_set_is_warned_of():
    model, data = _tiny_problem()
    val = (data.x_test[:20], data.y_test[:20])
    with pytest.warns(ValidationWarning, match="one sample is 5.00 points") as caught:
        report = oamip.prune(model, data, max_drop=1.0, val_data=val, **ONE_WEIGHT)
    (text,) = [str(w.message) for w in caught if "20 validation samples" in str(w.message)]
    assert "one point needs 100 samples" in text and "at least 200" in text
    assert text in report.warnings


def _dense(val: float, test: float) -> Evaluation:
    return Evaluation(0, {}, 10, 10, val, test)


def test_validation_warnings_thresholds():
    assert validation_warnings(_dense(0.95, 0.94), 400, 1.0) == []
    assert validation_warnings(_dense(0.95, 0.925), 400, 1.0) == []
    (seen,) = validation_warnings(_dense(0.96, 0.92), 400, 1.0)
    assert "4.00 points higher" in seen
    (few,) = validation_warnings(_dense(0.9, 0.9), 199, 1.0)
    assert "at least 200" in few
    assert validation_warnings(_dense(0.9, 0.9), 200, 1.0) == []
    assert validation_warnings(_dense(0.9, 0.9), 10, 0.0) == []  # no budget to resolve
    (two,) = validation_warnings(_dense(0.9, 0.9), 50, 2.0)
    assert "budget of 2 points" in two and "at least 100" in two


def _paired_error_by_hand(dense_right: list[int], right: list[int]) -> float:
    """The paired standard error from the counts: ``b`` answers lost, ``c`` gained, ``n``
    samples: ``sqrt(((b + c) / n - ((c - b) / n) ** 2) / n)``, in points."""
    n = len(right)
    lost = sum(d and not r for d, r in zip(dense_right, right, strict=True))
    gained = sum(r and not d for d, r in zip(dense_right, right, strict=True))
    return 100 * np.sqrt(((lost + gained) / n - ((gained - lost) / n) ** 2) / n)


@pytest.mark.parametrize(
    "dense_right, right",
    [
        ([1, 1, 1, 1, 0], [1, 0, 1, 1, 1]),
        ([1, 1, 1, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1, 0, 0]),
        ([1, 0, 1, 0], [1, 0, 1, 0]),
        ([1] * 800, [1] * 760 + [0] * 40),
    ],
)
def test_drop_error_is_the_paired_standard_error(dense_right, right):
    found = drop_error(np.array(dense_right, bool), np.array(right, bool))
    assert found == pytest.approx(_paired_error_by_hand(dense_right, right), abs=1e-9)


def test_drop_error_grows_with_changed_answers_not_with_the_drop():
    """Swapping answers (as many lost as gained) leaves the accuracy but not the doubt."""
    dense = np.array([True] * 50 + [False] * 50)
    swapped = np.array([False] * 10 + [True] * 40 + [True] * 10 + [False] * 40)
    assert np.mean(swapped) == np.mean(dense)
    assert drop_error(dense, dense) == 0.0
    assert drop_error(dense, swapped) == pytest.approx(100 * np.sqrt(0.2 / 100))


def test_every_evaluation_carries_its_drop_error_against_torch():
    """The evaluator's error is the paired one of the masked and dense networks' answers on
    the validation samples, computed here with torch directly; the dense network's is 0. The
    same for the test drop, which is left out (None) with the test accuracy."""
    model, data = _tiny_problem()
    split = split_validation(data, 0.5, 0)
    evaluator = Evaluator(model, split)
    dense = evaluator(keep_all(model))
    assert (dense.val_drop_error, dense.test_drop_error) == (0.0, 0.0)
    test = split.train
    dense_right = {}
    for name, x, y in (("val", split.x_val, split.y_val), ("test", test.x_test, test.y_test)):
        with torch.no_grad():
            dense_right[name] = (model(torch.from_numpy(x)).argmax(1).numpy() == y).tolist()
    changed = 0
    for unit in range(LAYERS["1"]):
        masks = _masks({"1": [unit], "3": [0]})
        right = [a >= 0.5 for a in _per_sample(model, masks, split.x_val, split.y_val)]
        test_right = [a >= 0.5 for a in _per_sample(model, masks, test.x_test, test.y_test)]
        seen = evaluator(masks)
        by_hand = _paired_error_by_hand(dense_right["val"], right)
        assert seen.val_drop_error == pytest.approx(by_hand)
        by_hand = _paired_error_by_hand(dense_right["test"], test_right)
        assert seen.test_drop_error == pytest.approx(by_hand)
        assert evaluator(masks, test=False).test_drop_error is None
        changed += (right != dense_right["val"]) + (test_right != dense_right["test"])
    assert changed  # some mask changes answers: the error is not trivially 0


def _per_sample(model, masks, x, y) -> list[float]:
    """Per sample, 1.0 where the masked network answers right (numpy forward)."""
    return [_numpy_accuracy(model, masks, x[i : i + 1], y[i : i + 1]) for i in range(len(y))]


def _entry(val: float, error: float) -> BudgetEntry:
    return BudgetEntry(MIP_METHOD, 10, 5, 5, 5, 5, val, val, val_drop_error=error)


def test_the_noisy_warning_fires_over_half_the_budget_and_sizes_the_fix():
    assert noisy_warning(_entry(0.94, 0.5), 0.95, 800, 1.0) is None
    assert noisy_warning(_entry(0.94, 0.9), 0.95, 800, 0.0) is None  # no budget
    text = noisy_warning(_entry(0.94, 0.8), 0.95, 800, 1.0)
    assert "validation drop, 1.00 points" in text and "standard error of 0.80" in text
    assert "about 2.6" in text
    needed = int(text.split("about ")[2].split(" ")[0])
    assert needed == 2048  # 800 * (0.8 / 0.5) ** 2: the error falls as one over sqrt(n)
    assert 0.8 * np.sqrt(800 / needed) <= 0.5


def test_a_kept_mask_validation_cannot_resolve_is_warned_of_and_reported():
    """On 30 validation samples a pruned mask's error is large: a 10-point budget keeps a mask
    whose error (over 5 points) the report carries and whose warning says so."""
    model, data = _tiny_problem()
    val = (data.x_test[:30], data.y_test[:30])
    with pytest.warns(ValidationWarning) as caught:
        report = oamip.prune(model, data, max_drop=10.0, val_data=val, **ONE_WEIGHT)
    (mip,) = [entry for entry in report.budget if entry.method == MIP_METHOD]
    assert mip.units_pruned > 0 and mip.val_drop_error > 5.0
    texts = [str(w.message) for w in caught if "standard error" in str(w.message)]
    assert texts == [t for t in report.warnings if "standard error" in t]
    assert len(texts) == 1 and f"{mip.val_drop_error:.2f} points on 30 samples" in texts[0]
    data_json = json.loads(json.dumps(report.to_dict()))
    assert data_json["budget"][0]["val_drop_error"] == pytest.approx(mip.val_drop_error)


def test_the_cli_takes_val_data_and_prints_warnings_on_stderr(tmp_path):
    model, data = _tiny_problem()
    oamip.save_model(model, tmp_path / "model.pt")
    np.savez(
        tmp_path / "data.npz",
        x_train=data.x_train,
        y_train=data.y_train,
        x_test=data.x_test,
        y_test=data.y_test,
    )
    np.savez(tmp_path / "val.npz", x_test=data.x_test[:20], y_test=data.y_test[:20])
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "oamip", "prune", "--model", str(tmp_path / "model.pt")]
        + ["--data", f"npz:{tmp_path / 'data.npz'}", "--val-data", str(tmp_path / "val.npz")]
        + ["--max-drop", "1", "--lams", "10", "--refine-steps", "0", "--interpolate-steps", "0"]
        + ["--time-limit", "1", "--finetune-epochs", "0", "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert report["validation"] == {"source": "given", "samples": 20}
    warned = [line for line in done.stderr.splitlines() if line.startswith("warning: ")]
    assert any("20 validation samples" in line for line in warned)
    refused = subprocess.run(
        [sys.executable, "-m", "oamip", "prune", "--val-data", str(tmp_path / "val.npz")]
        + ["--out", str(tmp_path / "refused")],
        capture_output=True,
        text=True,
    )
    assert refused.returncode == 2 and "--max-drop" in refused.stderr


# --- every criterion, per layer and global, by enumeration ---------------------------------


def test_global_order_ranks_layer_normalised_scores_and_keeps_min_keep():
    scores = {"a": np.array([3.0, 4.0, 0.0]), "b": np.array([1.0, 1.0, 1.0, 1.0])}
    # a / 5 = [0.6, 0.8, 0]; b / 2 = [0.5] * 4
    assert global_order(scores, 1) == [("a", 2), ("b", 0), ("b", 1), ("b", 2), ("a", 0)]
    assert global_order(scores, 3) == [("b", 0)]
    masks = global_step_masks(scores, 3 / 7, 1)
    assert masks["a"].tolist() == [True, True, False]
    assert masks["b"].tolist() == [False, False, True, True]
    everything = global_step_masks(scores, 1.0, 2)
    assert [int(m.sum()) for m in everything.values()] == [2, 2]
    zero = global_step_masks({"z": np.zeros(3)}, 1.0, 1)
    assert zero["z"].tolist() == [False, False, True]


def _by_hand(layer_scores, fraction: float, schedule: str, layers=LAYERS) -> dict[str, np.ndarray]:
    """A step's masks recomputed independently: per layer (``""``), or one ranking of scores
    divided by their layer's L2 norm (``"global"``), or of scores as given (``"given"``, a
    global-only criterion's; ``inf`` never pruned); one unit kept per layer."""
    if schedule == "":
        masks = {}
        for name, values in layer_scores.items():
            drop = min(round(fraction * len(values)), len(values) - 1)
            order = sorted(range(len(values)), key=lambda i: (values[i], i))
            masks[name] = np.isin(np.arange(len(values)), order[:drop], invert=True)
        return masks
    units = []
    for position, (name, values) in enumerate(layer_scores.items()):
        norm = np.linalg.norm(values) if schedule == "global" else 1.0
        ranked = sorted(range(len(values)), key=lambda i: (values[i], i))[: len(values) - 1]
        units += [
            (values[i] / norm if norm else 0.0, position, i, name)
            for i in ranked
            if values[i] != np.inf
        ]
    total = sum(len(v) for v in layer_scores.values())
    masks = {name: np.ones(size, dtype=bool) for name, size in layers.items()}
    for _, _, unit, name in sorted(units)[: round(fraction * total)]:
        masks[name][unit] = False
    return masks


def _schedule_of(method: str) -> tuple[str, str]:
    """A budget entry's criterion and how :func:`_by_hand` steps it: ``magnitude`` per layer,
    ``magnitude-global`` layer-normalised, ``tp-magnitude-global`` as given."""
    if not method.endswith("-global"):
        return method, ""
    criterion = method.removesuffix("-global")
    return criterion, "given" if criterion.startswith("tp-") else "global"


def _best_enumerated(model, split, floor) -> int:
    """The most units any mask removes within the floor."""
    best = 0
    for bits in itertools.product([True, False], repeat=sum(LAYERS.values())):
        masks = {"1": np.array(bits[:5]), "3": np.array(bits[5:])}
        if _numpy_accuracy(model, masks, split.x_val, split.y_val) >= floor - 1e-12:
            best = max(best, int((~masks["1"]).sum() + (~masks["3"]).sum()))
    return best


def _tiny_run(
    max_drop: float, refine_steps: int, interpolate_steps: int, rank: bool = False
) -> SimpleNamespace:
    """The tiny problem's validation split, every criterion's steps and the MIP's path on six
    training samples (weights 0.01, 1, 100; ``rank``: with the ranked points), cut at
    ``max_drop``."""
    model, data = _tiny_problem()
    split = split_validation(data, 0.5, 0)
    evaluator = Evaluator(model, split)
    dense = evaluator(keep_all(model))
    floor = budget_floor(dense.val_accuracy, max_drop)
    scores = all_scores(model, split.train.x_train, split.train.y_train, 0)
    steps = schedule_steps(scores, evaluator, min_keep=1, floor=floor)
    x, y = split.train.x_train[:6], split.train.y_train[:6]
    path = lam_path(
        lambda lams: oamip.score_sweep(model, x, y, lams, time_limit=5.0),
        evaluator,
        [0.01, 1.0, 100.0],
        floor,
        0.5,
        refine_steps,
        interpolate_steps=interpolate_steps,
        tie_break=scores["magnitude"],
        rank=rank,
    )
    return SimpleNamespace(
        model=model,
        split=split,
        evaluator=evaluator,
        dense=dense,
        floor=floor,
        scores=scores,
        steps=steps,
        path=path,
    )


@pytest.mark.parametrize("max_drop", [0.0, 5.0, 20.0])
def test_every_methods_budget_entry_by_enumeration(max_drop):
    """On a 4-5-4-3 MLP every mask can be enumerated: the best within the validation budget is
    known. Every method (the MIP, every criterion per layer and global, Torch-Pruning's
    importances global only and ranked as given) gets the most units of its own steps within the
    budget (recomputed by hand), never more than the best mask, its parameters and MACs removed
    counted by hand."""
    tiny = _tiny_run(max_drop, refine_steps=1, interpolate_steps=4)
    model, split, dense = tiny.model, tiny.split, tiny.dense
    floor, scores, steps, path = tiny.floor, tiny.scores, tiny.steps, tiny.path
    table = budget_table(path, steps, floor, dense)
    per_layer = [m + s for m in criteria() if not m.startswith("tp-") for s in ("", "-global")]
    tp = ["tp-magnitude-global", "tp-taylor-global", "tp-lamp-global"] if installed() else []
    assert [entry.method for entry in table] == [MIP_METHOD, *per_layer, *tp]
    best = _best_enumerated(model, split, floor)
    params, macs = _tiny_cost(keep_all(model))
    for entry in table:
        assert entry.units_pruned <= best
        assert entry.val_accuracy >= floor - 1e-12
        assert entry.macs_removed + entry.macs_after == macs
        assert entry.params_removed + entry.params_after == params
    for entry in table[1:]:
        criterion, schedule = _schedule_of(entry.method)
        found = [0]
        for step in range(BASELINE_STEPS + 1):
            masks = _by_hand(scores[criterion], step / BASELINE_STEPS, schedule)
            if _numpy_accuracy(model, masks, split.x_val, split.y_val) >= floor - 1e-12:
                found.append(sum(int((~m).sum()) for m in masks.values()))
        assert entry.units_pruned == max(found), entry.method
        if entry.units_pruned:
            point = max(
                (p for p in steps[entry.method] if p.val_accuracy >= floor - 1e-12),
                key=lambda p: (p.units_pruned, p.val_accuracy),
            )
            layers = {n: np.arange(LAYERS[n]) >= point.layers_pruned[n] for n in LAYERS}
            assert (entry.params_after, entry.macs_after) == _tiny_cost(layers)
    within = [p.units_pruned for p in path.points if p.val_accuracy >= floor - 1e-12]
    assert table[0].units_pruned == max(within, default=0)


def test_only_the_reported_masks_are_evaluated_on_test():
    """Every path point (solved, interpolated, ranked) and every budget entry carries its own
    mask's test accuracy (a numpy forward pass); a baseline's steps other than its budget step
    carry none."""
    tiny = _tiny_run(20.0, refine_steps=1, interpolate_steps=4, rank=True)
    model, evaluator, dense, floor = tiny.model, tiny.evaluator, tiny.dense, tiny.floor
    scores, steps, path, test = tiny.scores, tiny.steps, tiny.path, tiny.split.train
    assert any(point.status == "ranked" for point in path.points)
    for point, masks in zip(path.points, path.masks, strict=True):
        assert point.test_accuracy == _numpy_accuracy(model, masks, test.x_test, test.y_test)
        assert point.test_drop_error is not None
    table = budget_table(path, steps, floor, dense)
    masks = budget_masks(path, steps, scores, floor, 1, keep_all(model))
    for entry in table:
        by_hand = _numpy_accuracy(model, masks[entry.method], test.x_test, test.y_test)
        assert entry.test_accuracy == pytest.approx(by_hand, abs=1e-12), entry.method
        assert entry.test_drop_error == evaluator(masks[entry.method]).test_drop_error
    for method, points in steps.items():
        assert all((p.test_accuracy is None) == (p.test_drop_error is None) for p in points)
        tested = [p.units_pruned for p in points if p.test_accuracy is not None]
        assert tested == [next(e.units_pruned for e in table if e.method == method)]


def test_the_baselines_score_on_up_to_baseline_samples_training_rows(monkeypatch):
    model, data = _tiny_problem()
    seen = []
    score = pipeline.all_scores
    monkeypatch.setattr(
        pipeline, "all_scores", lambda m, x, y, s: seen.append(np.asarray(x)) or score(m, x, y, s)
    )
    split = split_validation(data, 0.5, 0)
    for size, expected in ((16, 16), (512, 50)):
        report = oamip.prune(
            model, data, max_drop=100.0, val_fraction=0.5, baseline_samples=size, **ONE_WEIGHT
        )
        rows = {row.tobytes() for row in seen[-1]}
        assert len(seen[-1]) == expected == report.n_baseline_samples
        assert rows <= {row.tobytes() for row in split.train.x_train}
        assert not rows & {row.tobytes() for row in split.x_val}
    with pytest.raises(InvalidInputError, match="baseline samples"):
        oamip.prune(model, data, baseline_samples=0)


# --- the path's rules -----------------------------------------------------------------------


def _point(lam: float, pruned: int, status: str = "optimal") -> PathPoint:
    return PathPoint(
        units_pruned=pruned,
        layers_pruned={},
        params_after=0,
        macs_after=0,
        val_accuracy=0.5,
        test_accuracy=0.5,
        lam=lam,
        status=status,
        gap=0.0,
        seconds=0.0,
    )


def test_the_path_is_monotone_in_lambda_or_says_why_not():
    """A larger weight on the loss keeps at least as many units; interpolated points do not
    count; a break names both weights and its cause."""
    assert monotony_note([]) is None
    monotone = [_point(0.1, 9), _point(0.5, 9), _point(1.0, 4), _point(0.5, 12, INTERPOLATED)]
    assert monotony_note(monotone) is None
    note = monotony_note([_point(0.7401, 57), _point(1.0, 58), _point(0.1, 70)])
    assert "lambda 1 prunes 58 units, more than lambda 0.7401 (57)" in note
    assert "units' scores" in note and "proven" not in note
    unproven = monotony_note([_point(0.7401, 57, "time_limit"), _point(1.0, 58)])
    assert "not every solve was proven optimal (lambda 0.7401: time_limit)" in unproven


def test_the_report_carries_the_paths_monotony_note():
    model, data = _tiny_problem()
    report = oamip.prune(
        model, data, max_drop=20.0, val_fraction=0.5, lams=[0.01, 0.3, 3.0, 100.0], **FAST
    )
    assert report.path_note == monotony_note(report.path)
    if report.path_note:
        assert report.path_note in summary_table(report)


def test_an_interpolated_mask_never_goes_past_the_solution_it_steps_towards():
    """The chosen mask prunes a unit the sparser solution keeps: the interpolated masks keep
    it, prune only units the sparser solution prunes, and so never more units."""
    model, data = _tiny_problem()
    split = split_validation(data, 0.5, 0)
    evaluator = Evaluator(model, split)
    chosen, sparser = _masks({"1": [0, 1]}), _masks({"1": [1, 2, 3], "3": [0, 1, 2]})
    path = LamPath()
    for lam, masks in ((1.0, chosen), (0.1, sparser)):
        path.points.append(
            PathPoint(lam=lam, status="optimal", gap=0.0, seconds=0.0, **vars(evaluator(masks)))
        )
        scores = {name: np.linspace(0, 1, LAYERS[name]) for name in LAYERS}
        path.results.append(SimpleNamespace(scores=scores))
        path.masks.append(masks)
    path.points.sort(key=lambda p: p.lam)
    path.masks.reverse()
    path.results.reverse()
    path.chosen = 1
    interpolate(path, evaluator, 10, {}, 0.0)
    found = [k for k, p in enumerate(path.points) if p.status == INTERPOLATED]
    assert found
    for k in found:
        for name, keep in path.masks[k].items():
            assert not (~keep & sparser[name]).any()
        assert path.points[k].units_pruned <= 6 and path.masks[k]["1"][0]


# --- the budget plot reads what the budget table reads -------------------------------------


def test_the_budget_plot_draws_validation_against_the_budget_and_test_beside_it():
    """Left panel: every curve's validation accuracies, the dense validation accuracy and the
    budget line at it less ``max_drop``, as the budget table reads them; right panel: the
    path's test accuracies, each baseline's at its budget step (the one it reports), and the
    dense test accuracy, no budget line."""
    model, data = _tiny_problem()
    report = oamip.prune(
        model, data, max_drop=20.0, val_fraction=0.5, lams=[0.1, 10.0], refine_steps=0, **FAST
    )
    validation, test = path_figure(report).axes
    mip = sorted(report.path, key=lambda p: p.units_pruned)
    chosen = report.path[report.chosen]
    for ax, field, name, dense in (
        (validation, "val_accuracy", "validation accuracy", report.val_accuracy_before),
        (test, "test_accuracy", "test accuracy", report.accuracy_before),
    ):
        lines = {line.get_label(): line for line in ax.get_lines()}
        assert list(lines["mip"].get_xdata()) == [0, *(p.units_pruned for p in mip)]
        assert list(lines["mip"].get_ydata()) == [dense, *(getattr(p, field) for p in mip)]
        for method in {step.method for step in report.baseline_path}:
            steps = [s for s in report.baseline_path if s.method == method]
            if field == "test_accuracy":
                entry = next(b for b in report.budget if b.method == method)
                steps = [s for s in steps if s.test_accuracy is not None]
                assert [(s.units_pruned, s.test_accuracy) for s in steps] == [
                    (entry.units_pruned, entry.test_accuracy)
                ]
            assert list(lines[method].get_xdata()) == [s.units_pruned for s in steps]
            assert list(lines[method].get_ydata()) == [getattr(s, field) for s in steps]
        assert list(lines["chosen"].get_ydata()) == [getattr(chosen, field)]
        assert list(lines["dense"].get_ydata()) == [dense, dense]
        assert ax.get_ylabel().startswith(name)
    budget = report.val_accuracy_before - 0.2
    assert list(validation.get_lines()[-1].get_ydata()) == [budget, budget]
    assert validation.get_lines()[-1].get_label() == "dense - 20 points"
    assert not [line for line in test.get_lines() if line.get_label().startswith("dense -")]
    tp = [m for m in ("tp-magnitude-global", "tp-taylor-global") if installed()]
    assert all(m in {line.get_label() for line in validation.get_lines()} for m in tp)


# --- every method fine-tuned -------------------------------------------------------------


def test_budget_masks_redo_every_entry():
    """The masks behind each budget entry, redone from its scores and step, prune the entry's
    units and give its validation accuracy."""
    tiny = _tiny_run(20.0, refine_steps=0, interpolate_steps=0)
    table = budget_table(tiny.path, tiny.steps, tiny.floor, tiny.dense)
    masks = budget_masks(tiny.path, tiny.steps, tiny.scores, tiny.floor, 1, keep_all(tiny.model))
    assert set(masks) == {entry.method for entry in table}
    assert any(entry.units_pruned for entry in table[1:])
    for entry in table:
        seen = tiny.evaluator(masks[entry.method])
        assert seen.units_pruned == entry.units_pruned, entry.method
        assert seen.val_accuracy == entry.val_accuracy, entry.method


def test_with_finetuning_every_entry_is_finetuned_on_its_own_mask(monkeypatch):
    """``finetune_epochs`` fine-tunes every method's budget mask with the same recipe; without,
    no entry says it was fine-tuned."""
    model, data = _tiny_problem()
    tuned = []
    real = pipeline.finetuned

    def spy(masked, dataset, masks, settings, *args, **kwargs):
        tuned.append(sum(int((~m).sum()) for m in masks.values()))
        return real(masked, dataset, masks, settings, *args, **kwargs)

    monkeypatch.setattr(pipeline, "finetuned", spy)
    settings = {**ONE_WEIGHT, "finetune_epochs": 1}
    report = oamip.prune(model, data, max_drop=20.0, val_fraction=0.5, **settings)
    assert all(entry.test_accuracy_finetuned is not None for entry in report.budget)
    assert tuned[: len(report.budget)] == [entry.units_pruned for entry in report.budget]
    mip = report.budget[0]
    assert mip.test_accuracy_finetuned == report.accuracy_after_finetune
    plain = oamip.prune(model, data, max_drop=20.0, val_fraction=0.5, **ONE_WEIGHT)
    assert all(entry.test_accuracy_finetuned is None for entry in plain.budget)
