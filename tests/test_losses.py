"""Losses are one class plus one registration: the worked example of docs/extending.md, run from
the page, is selectable by name and solves to the optimum of an enumeration of every mask."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import oamip
from oamip.formulations import LOSSES, CrossEntropy, Hinge, get_loss, loss_names, losses
from tests.nets import mlp

README = Path(__file__).resolve().parent.parent / "docs" / "extending.md"


@pytest.fixture
def readme_loss(monkeypatch):
    """Run the README's loss example against a copy of the registry (no leak into other tests)."""
    monkeypatch.setattr(losses, "LOSSES", dict(LOSSES))
    text = README.read_text()
    section = text[text.index("**A loss** is one class") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "docs/extending.md (A loss)", "exec"), namespace)
    return namespace["TrueLogitHinge"]


def test_the_readme_loss_is_registered_by_name(readme_loss):
    assert "true_hinge" in loss_names()
    assert isinstance(get_loss("true_hinge"), readme_loss)
    assert str(readme_loss(margin=0.5)) == "true_hinge(margin=0.5)"


def test_the_readme_loss_solves_to_the_enumerated_optimum(readme_loss):
    model = mlp(5, (4, 3, 3, 3))
    rng = np.random.default_rng(5)
    x, y = rng.uniform(0, 1, size=(4, 4)), np.array([0, 1, 2, 0])
    res = oamip.score_neurons(model, x, y, loss="true_hinge", lam=2.0, scores="binary")
    assert res.status == "optimal"
    best = np.inf
    for bits in itertools.product([0, 1], repeat=6):
        masks = {"1": np.array(bits[:3], bool), "3": np.array(bits[3:], bool)}
        if min(m.sum() for m in masks.values()) < 1:
            continue
        z = _logits(model, masks, x)
        loss = np.maximum(0.0, 1.0 - z[np.arange(4), y]).mean()
        best = min(best, sum(m.mean() for m in masks.values()) + 2.0 * loss)
    assert res.objective == pytest.approx(best, abs=1e-6)


def _logits(model, masks, x) -> np.ndarray:
    with torch.no_grad():
        return oamip.apply_masks(model, masks).double()(torch.as_tensor(x)).numpy()


def test_builtin_losses_are_classes_with_their_parameters():
    assert isinstance(get_loss("ce"), CrossEntropy) and not CrossEntropy.exact
    assert get_loss(Hinge(margin=0.0)).margin == 0.0
    assert str(Hinge()) == "hinge" and str(Hinge(margin=2.0)) == "hinge(margin=2.0)"
    with pytest.raises(
        oamip.InvalidInputError, match="unknown loss 'mse'; use one of ce, fidelity, hinge"
    ):
        get_loss("mse")
