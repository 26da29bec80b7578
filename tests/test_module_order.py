"""One definition of units: a model that declares its modules out of forward order.

``OutputFirst`` declares its output layer first and its BatchNorm right after ``fc1``, but the
BatchNorm normalises ``fc2`` (same width, so only the forward tells them apart). Every part of
oamip must see the units fc1, fc2, in forward order, with the BatchNorm grouped with fc2.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import oamip
from oamip.adapters import extract
from oamip.adapters.chain import units
from oamip.pipelines.report import REPORT_FILE, write_report
from oamip.training.criteria import all_scores, criteria, get_criterion, is_global_only
from oamip.training.data import Dataset, load_digits
from oamip.training.spr import SPRRegularizer
from oamip.training.train import finetune, train

FORWARD = ["fc1", "fc2"]


class OutputFirst(nn.Module):
    """flatten, fc1, ReLU, fc2, bn, ReLU, out: declared as out, fc1, bn, fc2."""

    def __init__(self) -> None:
        super().__init__()
        self.out = nn.Linear(12, 10)
        self.fc1 = nn.Linear(64, 12)
        self.bn = nn.BatchNorm1d(12)
        self.fc2 = nn.Linear(12, 12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.fc1(torch.flatten(x, 1)))
        x = F.relu(self.bn(self.fc2(x)))
        return self.out(x)


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_digits()


@pytest.fixture(scope="module")
def trained(digits) -> OutputFirst:
    torch.manual_seed(0)
    return train(OutputFirst(), digits, epochs=3, lr=1e-2, progress=False)


def test_declaration_order_differs_from_forward_order():
    names = [name for name, m in OutputFirst().named_modules() if isinstance(m, nn.Linear)]
    assert names == ["out", "fc1", "fc2"]


def test_units_are_in_forward_order_with_the_batchnorm_that_follows_each():
    model = OutputFirst()
    found = units(model)
    assert [u.name for u in found] == FORWARD
    assert [u.batchnorm for u in found] == [None, "bn"]
    assert found[1].batchnorm_module is model.bn and found[0].module is model.fc1
    assert found[1].row_parameters() == [model.fc2.weight, model.fc2.bias, *model.bn.parameters()]


def test_mip_criteria_and_spr_see_the_same_units(digits):
    torch.manual_seed(0)
    model = OutputFirst().eval()
    x, y = digits.x_train[:8], digits.y_train[:8]
    assert list(extract(model, x).units) == FORWARD
    assert extract(model, x).units["fc2"].batchnorm == "bn"
    scores = all_scores(model, x, y, seed=0)
    assert list(scores) == [name for name in criteria() if get_criterion(name).applies(model)]
    assert all(list(s) == FORWARD for s in scores.values())
    groups = SPRRegularizer(model, lam=0.5, alpha=0.5).groups()
    assert {name: tuple(g.shape) for name, g in groups.items()} == {
        "fc1": (12, 64 + 1),
        "fc2": (12, 12 + 1 + 2),
    }


def test_finetune_holds_the_batchnorm_of_the_right_layer_at_zero(digits):
    torch.manual_seed(0)
    model = OutputFirst()
    keep = np.arange(12) >= 5
    finetune(model, digits, {"fc2": keep}, epochs=1, progress=False)
    pruned = [model.fc2.weight, model.fc2.bias, model.bn.weight, model.bn.bias]
    assert all(torch.all(p[~keep] == 0) for p in pruned)
    assert torch.all(model.fc1.weight != 0)


def test_apply_masks_zeroes_the_batchnorm_of_the_masked_layer():
    model = OutputFirst()
    keep = np.arange(12) >= 5
    masked = oamip.apply_masks(model, {"fc2": keep})
    assert torch.all(masked.bn.weight[~keep] == 0) and torch.all(masked.bn.bias[~keep] == 0)
    assert torch.equal(masked.fc1.weight, model.fc1.weight)


@pytest.mark.slow
def test_prune_scores_masks_and_reports_fc1_and_fc2(trained, digits, tmp_path):
    report = oamip.prune(trained, digits, time_limit=5, finetune_epochs=1)
    assert [layer.name for layer in report.layers] == FORWARD
    assert [b.method for b in report.baselines] == [m for m in criteria() if not is_global_only(m)]
    assert all(set(point.layers_pruned) == set(FORWARD) for point in report.curve)
    kept = [layer.units - layer.units_pruned for layer in report.layers]
    widths = [m.out_features for m in report.model if isinstance(m, nn.Linear)]
    assert widths == [*kept, 10]
    write_report(report, tmp_path)
    written = json.loads((tmp_path / REPORT_FILE).read_text())
    assert [layer["name"] for layer in written["layers"]] == FORWARD


def test_spr_prune_regularises_and_removes_fc1_and_fc2(trained, digits, tmp_path):
    out = tmp_path / "out"
    report = oamip.spr_prune(
        trained, digits, out=out, epochs=1, finetune_epochs=1, progress=False, group_lasso_scales=()
    )
    assert [layer.name for layer in report.layers] == FORWARD
    assert list(report.M) == FORWARD
    model = oamip.load_model(out / "pruned.pt")
    kept = [layer.units - layer.units_pruned for layer in report.layers]
    assert [m.out_features for m in model if isinstance(m, nn.Linear)] == [*kept, 10]
