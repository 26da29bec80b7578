"""Torch-Pruning's own importances as global-only criteria (``tp-magnitude``, ``tp-taylor``,
``tp-lamp``, ``tp-bn``): each unit scored with what Torch-Pruning's importance gives on the
dependency group it prunes (checked against Torch-Pruning's own groups as its pruner enumerates
them, and by hand), once per coupled group of a residual net; stepped only as one global ranking
of the scores as given, with every budget entry checked by enumerating the masks of a tiny CNN
with BatchNorm; absent where Torch-Pruning cannot be imported, ``tp-bn`` where there is no
BatchNorm."""

from __future__ import annotations

import copy
import itertools
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import oamip
from oamip.adapters import apply_masks
from oamip.adapters.structure import row_groups
from oamip.errors import InvalidInputError
from oamip.pipelines.budget import (
    BASELINE_STEPS,
    Evaluator,
    budget_floor,
    budget_masks,
    budget_table,
    global_order,
    lam_path,
    schedule_steps,
    split_validation,
)
from oamip.training import criteria as registry
from oamip.training.criteria import (
    MIP_METHOD,
    Criterion,
    all_scores,
    get_criterion,
    per_layer,
    register_criterion,
)
from oamip.training.data import make_dataset
from oamip.training.inference import evaluate
from oamip.training.models import resnet
from oamip.training.transfer import keep_all
from tests import nets
from tests.test_honest_budget import _by_hand, _tiny_problem

tp = pytest.importorskip("torch_pruning")

BUILT_IN = ["random", "magnitude", "snip", "taylor"]
TP = {
    "tp-magnitude": lambda: tp.importance.GroupMagnitudeImportance(p=2),
    "tp-taylor": lambda: tp.importance.GroupTaylorImportance(),
    "tp-lamp": lambda: tp.importance.LAMPImportance(p=2),
    "tp-bn": lambda: tp.importance.BNScaleImportance(),
}
CNN_LAYERS = {"0": 3, "4": 4, "8": 4}
"""The tiny CNN's units and their sizes: two convolutions with BatchNorm, a Linear without."""
FAST = {"time_limit": 1.0, "threads": 1, "finetune_epochs": 0}


def _tiny_cnn() -> tuple[nn.Sequential, object]:
    """Conv(1->3)+BN+ReLU+pool, Conv(3->4)+BN+ReLU, Flatten, Linear(16->4)+ReLU, Linear(4->3) on
    4x4 images, random BatchNorm statistics, and 160 images it labels (a tenth of the labels
    changed): 100 training, 60 test."""
    torch.manual_seed(4)
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1),
        nets.random_bn(nn.BatchNorm2d(3)),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(3, 4, 3, padding=1),
        nets.random_bn(nn.BatchNorm2d(4)),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16, 4),
        nn.ReLU(),
        nn.Linear(4, 3),
    ).eval()
    rng = np.random.default_rng(2)
    x = rng.random((160, 1, 4, 4)).astype(np.float32)
    with torch.no_grad():
        model[-1].bias -= model(torch.from_numpy(x)).mean(0)
        y = model(torch.from_numpy(x)).argmax(1).numpy()
    flip = rng.random(len(y)) < 0.1
    y[flip] = (y[flip] + 1) % 3
    return model, make_dataset("tiny-cnn", x[:100], y[:100], x[100:], y[100:])


def _resnet8() -> nn.Module:
    torch.manual_seed(0)
    model = resnet(1, in_channels=1, num_classes=3, input_size=8, widths=(2, 3, 4))
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            nets.random_bn(module)
    return model.eval()


def _inputs(model: nn.Module, shape: tuple[int, ...], n: int = 24):
    x = torch.as_tensor(np.random.default_rng(3).random((n, *shape)), dtype=torch.float32)
    with torch.no_grad():
        y = (model(x).argmax(1) + torch.arange(n)) % 3
    return x, y


def _reference(model: nn.Module, x, y, criterion: str) -> dict[tuple[str, ...], torch.Tensor]:
    """Torch-Pruning's importance of every group its pruner ranks (``get_all_groups`` with the
    output layer ignored, as ``MetaPruner`` does), keyed by the layers whose outputs the group
    prunes; gradients from ``loss.backward()`` as Torch-Pruning's examples take them."""
    twin = copy.deepcopy(model)
    graph = tp.DependencyGraph().build_dependency(twin, example_inputs=x[:1])
    twin.zero_grad()
    F.cross_entropy(twin(x), y).backward()
    names = {module: name for name, module in twin.named_modules()}
    output = [m for m in twin.modules() if isinstance(m, nn.Linear)][-1]
    found = {}
    for group in graph.get_all_groups(
        ignored_layers=[output], root_module_types=[nn.Conv2d, nn.Linear]
    ):
        key = tuple(
            sorted(
                names[dep.target.module]
                for dep, _ in group
                if graph.is_out_channel_pruning_fn(dep.handler)
                and isinstance(dep.target.module, nn.Conv2d | nn.Linear)
            )
        )
        assert key not in found, "a group enumerated twice"
        found[key] = TP[criterion]()(group)
    return found


NETS = {
    "mlp": (lambda: _tiny_problem()[0], (1, 2, 2)),
    "cnn": (lambda: _tiny_cnn()[0], (1, 4, 4)),
    "resnet8": (_resnet8, (1, 8, 8)),
}


@pytest.mark.parametrize("net", sorted(NETS))
@pytest.mark.parametrize("criterion", sorted(TP))
def test_each_unit_scores_what_torch_prunings_importance_gives_its_group(net, criterion):
    """Every group Torch-Pruning's pruner ranks is one unit (a residual net's coupled groups
    once each), and the unit's scores are the group's importance; a group the importance does
    not rank (BatchNorm scale without BatchNorm) scores +inf, one of all-zero importances
    (Taylor on a unit dead on the samples) 0."""
    build, shape = NETS[net]
    model = build()
    x, y = _inputs(model, shape)
    if not get_criterion(criterion).applies(model):
        assert criterion == "tp-bn" and net == "mlp"
        return
    scores = get_criterion(criterion).scores(model, x.numpy(), y.numpy(), 0)
    reference = _reference(model, x, y, criterion)
    units = {
        tuple(sorted(n for n, m in model.named_modules() if m in u.producers)): u.name
        for u in row_groups(model)
    }
    assert set(reference) == set(units)
    if net == "resnet8":
        assert any(len(key) > 1 for key in units)
    for key, values in reference.items():
        if values is None:
            expected = np.full(len(scores[units[key]]), np.inf)
        else:  # all-zero importances are 0/0 under the mean normaliser: scored 0
            expected = np.nan_to_num(values.double().numpy(), nan=0.0)
        np.testing.assert_allclose(scores[units[key]], expected, rtol=1e-12, atol=0)


def _by_formula(model: nn.Sequential, x, y) -> dict[str, dict[str, np.ndarray]]:
    """The tiny MLP's importances of unit ``1`` written out: per channel the mean over the
    group's two layers (its row of layer 1, its column of layer 3) of the squared L2 norm
    (magnitude) or of ``sum |w * dL/dw|`` (Taylor), divided by the mean over channels; LAMP
    divides each magnitude by the sum of those at least as large."""
    twin = copy.deepcopy(model)
    F.cross_entropy(twin(x), y).backward()
    first, second = twin[1].weight, twin[3].weight
    magnitude = ((first**2).sum(1) + (second**2).sum(0)) / 2
    taylor = ((first * first.grad).abs().sum(1) + (second * second.grad).abs().sum(0)) / 2
    magnitude, taylor = magnitude.detach().double().numpy(), taylor.detach().double().numpy()
    lamp = np.array([m / magnitude[magnitude >= m].sum() for m in magnitude])
    return {
        "tp-magnitude": magnitude / magnitude.mean(),
        "tp-taylor": taylor / taylor.mean(),
        "tp-lamp": lamp,
    }


def test_the_importances_by_hand_on_a_tiny_mlp_and_batchnorm_scale_on_a_cnn():
    model = _tiny_problem()[0]
    x, y = _inputs(model, (1, 2, 2))
    for criterion, expected in _by_formula(model, x, y).items():
        got = get_criterion(criterion).scores(model, x.numpy(), y.numpy(), 0)["1"]
        np.testing.assert_allclose(got, expected, rtol=1e-6, err_msg=criterion)
    cnn = _tiny_cnn()[0]
    x, y = _inputs(cnn, (1, 4, 4))
    scores = get_criterion("tp-bn").scores(cnn, x.numpy(), y.numpy(), 0)
    for unit, bn in (("0", cnn[1]), ("4", cnn[5])):
        gamma = bn.weight.detach().abs().double().numpy()
        np.testing.assert_allclose(scores[unit], gamma / gamma.mean(), rtol=1e-6)
    assert np.all(scores["8"] == np.inf)


def test_the_criteria_leave_the_model_untouched():
    model = _tiny_cnn()[0]
    x, y = _inputs(model, (1, 4, 4))
    model.train()
    before = copy.deepcopy(model.state_dict())
    all_scores(model, x.numpy(), y.numpy(), 0)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters()) and model.training


def test_present_with_torch_pruning_and_tp_bn_only_with_batchnorm():
    mlp, cnn = _tiny_problem()[0], _tiny_cnn()[0]
    x = np.random.default_rng(0).random((6, 1, 2, 2)).astype(np.float32)
    tp_names = ["tp-magnitude", "tp-taylor", "tp-lamp"]
    assert list(all_scores(mlp, x, np.arange(6) % 3, 0)) == [*BUILT_IN, *tp_names]
    x = np.random.default_rng(0).random((6, 1, 4, 4)).astype(np.float32)
    scores = all_scores(cnn, x, np.arange(6) % 3, 0)
    assert list(scores) == [*BUILT_IN, *tp_names, "tp-bn"]
    assert list(per_layer(scores)) == BUILT_IN


def test_absent_when_torch_pruning_cannot_be_imported(monkeypatch):
    """No tp-* criterion is scored, stepped or reported; asked for by name, one names the
    extra."""
    monkeypatch.setitem(sys.modules, "torch_pruning", None)
    model, data = _tiny_cnn()
    assert list(all_scores(model, data.x_train[:6], data.y_train[:6], 0)) == BUILT_IN
    report = oamip.prune(
        model, data, max_drop=5.0, val_fraction=0.5, lams=[10.0], refine_steps=0, **FAST
    )
    assert not [e.method for e in report.budget if e.method.startswith("tp-")]
    assert not [s.method for s in report.baseline_path if s.method.startswith("tp-")]
    with pytest.raises(InvalidInputError, match=r"oamip\[tp\]"):
        get_criterion("tp-magnitude").scores(model, data.x_train[:6], data.y_train[:6], 0)


def test_infinite_scores_only_from_a_global_only_criterion_and_never_pruned(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    model = _tiny_problem()[0]
    x = np.zeros((3, 1, 2, 2), dtype=np.float32)

    @register_criterion
    class Endless(Criterion):
        name = "endless"

        def scores(self, model, x, y, seed):
            return {"1": np.full(5, np.inf), "3": np.ones(4)}

    with pytest.raises(InvalidInputError, match="'endless' gave layer '1' NaN or infinite"):
        all_scores(model, x, np.arange(3), 0)
    Endless.global_only = True
    assert np.all(all_scores(model, x, np.arange(3), 0)["endless"]["1"] == np.inf)
    order = global_order({"a": np.array([0.5, np.inf, 0.1]), "b": np.array([0.3, 0.2])}, 1)
    assert order == [("a", 2), ("b", 1), ("a", 0)]


def _cnn_accuracies(model: nn.Sequential, masks: list[dict], x, y) -> np.ndarray:
    """The tiny CNN's accuracy under each of ``masks``, written out (all masks in one batch): a
    pruned channel's output after its ReLU is zero."""
    keep = {
        name: torch.as_tensor(np.array([m[name] for m in masks]), dtype=torch.float32)
        for name in CNN_LAYERS
    }
    n = len(x)

    def off(h: torch.Tensor, name: str) -> torch.Tensor:
        shape = (len(masks), n, *h.shape[1:])
        gate = keep[name].reshape(len(masks), 1, -1, *([1] * (h.dim() - 2)))
        return (h.reshape(shape) * gate).reshape(-1, *h.shape[1:])

    inputs = torch.as_tensor(x).repeat(len(masks), 1, 1, 1)
    with torch.no_grad():
        h = off(model[2](model[1](model[0](inputs))), "0")
        h = off(model[6](model[5](model[4](model[3](h)))), "4")
        h = off(model[9](model[8](model[7](h))), "8")
        predicted = model[10](h).argmax(1).numpy().reshape(len(masks), n)
    return (predicted == np.asarray(y)[None, :]).mean(1)


def _best_enumerated(model, split, floor) -> int:
    """The most units any mask of the tiny CNN removes within the floor."""
    total = sum(CNN_LAYERS.values())
    cuts = np.cumsum([0, *CNN_LAYERS.values()])
    masks = [
        {n: np.array(bits[a:b]) for n, a, b in zip(CNN_LAYERS, cuts, cuts[1:])}
        for bits in itertools.product([True, False], repeat=total)
    ]
    accuracies = _cnn_accuracies(model, masks, split.x_val, split.y_val)
    removed = [total - sum(int(m.sum()) for m in mask.values()) for mask in masks]
    return max(r for r, a in zip(removed, accuracies) if a >= floor - 1e-12)


def test_the_written_out_cnn_is_the_masked_cnn():
    model, data = _tiny_cnn()
    rng = np.random.default_rng(0)
    for _ in range(5):
        masks = {name: rng.random(size) < 0.6 for name, size in CNN_LAYERS.items()}
        expected = evaluate(apply_masks(model, masks), data.x_test, data.y_test)
        assert _cnn_accuracies(model, [masks], data.x_test, data.y_test)[0] == expected


def test_every_budget_entry_of_a_tiny_cnn_with_batchnorm_by_enumeration():
    """The tiny CNN's 2048 masks enumerated: every method's entry is the most units of its own
    steps within the budget (Torch-Pruning's stepped only globally, ranked as given, the
    BatchNorm-less Linear never pruned by tp-bn), never more than the best mask, and its mask
    redone (``budget_masks``, what fine-tuning starts from) gives the same entry."""
    model, data = _tiny_cnn()
    split = split_validation(data, 0.5, 0)
    evaluator = Evaluator(model, split)
    dense = evaluator(keep_all(model))
    floor = budget_floor(dense.val_accuracy, 10.0)
    scores = all_scores(model, split.train.x_train, split.train.y_train, 0)
    steps = schedule_steps(scores, evaluator, min_keep=1, floor=floor)
    x, y = split.train.x_train[:6], split.train.y_train[:6]
    path = lam_path(
        lambda lams: oamip.score_sweep(model, x, y, lams, time_limit=2.0),
        evaluator,
        [1.0],
        floor,
        0.5,
        0,
    )
    table = budget_table(path, steps, floor, dense)
    tp_methods = ["tp-magnitude-global", "tp-taylor-global", "tp-lamp-global", "tp-bn-global"]
    layer_methods = [m + s for m in BUILT_IN for s in ("", "-global")]
    assert [entry.method for entry in table] == [MIP_METHOD, *layer_methods, *tp_methods]
    best = _best_enumerated(model, split, floor)
    masks = budget_masks(path, steps, scores, floor, 1, keep_all(model))
    for entry in table:
        assert entry.units_pruned <= best and entry.val_accuracy >= floor - 1e-12
    for entry in table[1 + len(layer_methods) :]:
        criterion = entry.method.removesuffix("-global")
        found = [0]
        for step in range(BASELINE_STEPS + 1):
            step_masks = _by_hand(scores[criterion], step / BASELINE_STEPS, "given", CNN_LAYERS)
            if criterion == "tp-bn":
                assert step_masks["8"].all()
            accuracy = _cnn_accuracies(model, [step_masks], split.x_val, split.y_val)[0]
            if accuracy >= floor - 1e-12:
                found.append(sum(int((~m).sum()) for m in step_masks.values()))
        assert entry.units_pruned == max(found), entry.method
        redone = evaluator(masks[entry.method])
        assert (redone.units_pruned, redone.val_accuracy) == (
            entry.units_pruned,
            entry.val_accuracy,
        )


def test_prune_reports_them_in_the_budget_table_only():
    model, data = _tiny_cnn()
    report = oamip.prune(model, data, max_drop=10.0, val_fraction=0.5, lams=[10.0], **FAST)
    methods = [entry.method for entry in report.budget]
    assert methods[-4:] == [
        "tp-magnitude-global",
        "tp-taylor-global",
        "tp-lamp-global",
        "tp-bn-global",
    ]
    assert [b.method for b in report.baselines] == BUILT_IN
    assert set(report.curve[0].accuracy) == {MIP_METHOD, *BUILT_IN}
    assert {s.method for s in report.baseline_path} == set(methods[1:])
