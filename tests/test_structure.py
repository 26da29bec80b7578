"""A network is read once: one torch.fx trace per architecture for a whole budgeted prune run,
and the shared graph gives the same answers for a copy as a fresh trace does."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import fx, nn

import oamip
from oamip.adapters import chain
from oamip.adapters import structure as structures
from oamip.adapters.chain import architecture_key, trace_graph
from oamip.adapters.structure import Structure
from oamip.training.data import load_digits
from oamip.training.models import build
from oamip.training.train import train


@pytest.fixture
def count_traces(monkeypatch):
    """Empty the cache of traced graphs and count every fx trace from now on."""
    monkeypatch.setattr(chain, "_GRAPHS", type(chain._GRAPHS)())
    monkeypatch.setattr(structures, "_STRUCTURES", {})
    calls = []
    real = fx.symbolic_trace

    def counting(model, *args, **kwargs):
        calls.append(type(model).__name__)
        return real(model, *args, **kwargs)

    monkeypatch.setattr(fx, "symbolic_trace", counting)
    return calls


@pytest.mark.parametrize("polish_samples", [0, 50])
def test_a_budgeted_prune_run_traces_each_network_once(count_traces, polish_samples):
    """The dense network is traced once for the whole run; polishing traces the smaller network
    it solves on once more (none without polishing, or when no method removes a unit within
    the budget, so that there is nothing to polish)."""
    digits = load_digits()
    torch.manual_seed(0)
    model = train(build("mlp", digits, (12, 8), seed=0), digits, epochs=3, lr=1e-2)
    count_traces.clear()
    report = oamip.prune(
        model,
        digits,
        max_drop=1.0,
        lams=[0.1, 10.0],
        refine_steps=1,
        time_limit=1.0,
        threads=1,
        finetune_epochs=1,
        polish_samples=polish_samples,
    )
    assert len(report.path) >= 2
    started = bool(polish_samples) and max(entry.units_pruned for entry in report.budget) > 0
    assert count_traces == ["Sequential"] * (1 + started)


def test_a_copy_shares_the_graph_and_reads_its_own_modules(count_traces):
    model = _residual()
    copied = copy.deepcopy(model)
    assert architecture_key(model) == architecture_key(copied)
    assert trace_graph(model) is trace_graph(copied)
    assert len(count_traces) == 1
    groups = Structure.of(copied).row_groups(copied)
    own = {id(p) for p in copied.parameters()}
    assert all(id(p) in own for g in groups for p in g.params)


def test_a_changed_attribute_or_module_is_traced_again(count_traces):
    model = _residual()
    trace_graph(model)
    changed = copy.deepcopy(model)
    changed.skip = False
    assert architecture_key(changed) != architecture_key(model)
    assert not Structure.of(changed).residual
    assert Structure.of(model).residual
    swapped = copy.deepcopy(model)
    swapped.fc = nn.Sequential(nn.Linear(4, 3))
    assert architecture_key(swapped) != architecture_key(model)
    trace_graph(swapped)
    assert len(count_traces) == 3


def test_a_forward_replaced_on_the_instance_is_never_shared(count_traces):
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    model.forward = lambda x: model[2](model[1](model[0](x)))
    assert architecture_key(model) is None


def test_masks_of_a_copy_match_a_fresh_read():
    model = _residual()
    x = torch.randn(5, 4)
    structure = Structure.of(model)
    masks = {unit.name: np.arange(unit.size) % 2 == 0 for unit in structure.units}
    masked = oamip.apply_masks(copy.deepcopy(model), masks)
    chain._GRAPHS.clear()
    structures._STRUCTURES.clear()
    fresh = oamip.apply_masks(copy.deepcopy(model), masks)
    torch.testing.assert_close(masked(x), fresh(x), rtol=0, atol=0)


class _Skip(nn.Module):
    """A residual block whose skip connection is a plain attribute: the graph depends on it."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(4, 4)
        self.body = nn.Linear(4, 4)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(4, 3)
        self.skip = True

    def forward(self, x):
        h = self.relu(self.stem(x))
        out = self.body(h)
        if self.skip:
            out = out + h
        return self.fc(self.relu(out))


def _residual() -> nn.Module:
    torch.manual_seed(0)
    return _Skip().eval()
