"""The sparsity term's two weightings: ``layer`` (the paper's, ``1/n_l`` per unit) and ``unit``
(every unit ``L/N``). Both are checked against brute force over every binary score vector, the
loss computed by the masked PyTorch model; per-layer pieces carry the whole network's price."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

import oamip
from oamip import backends
from oamip.adapters import apply_masks
from oamip.adapters.decompose import check_decomposition, decomposed_pieces
from oamip.adapters.extract import extract
from oamip.errors import InvalidInputError
from oamip.formulations import get_loss, unit_weights
from oamip.solve.options import ScoringOptions
from oamip.training.data import load_data
from oamip.training.models import resnet

LAM = 0.45
"""A weight where the two weightings' optima differ on this network (checked below)."""


@pytest.fixture(scope="module")
def problem():
    """An MLP 64-6-3-10 trained on digits (hidden layers of different widths) and one sample
    of each class."""
    data = load_data("digits")
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(64, 6), nn.ReLU(), nn.Linear(6, 3), nn.ReLU(), nn.Linear(3, 10)
    )
    x, y = torch.as_tensor(data.x_train, dtype=torch.float32), torch.as_tensor(data.y_train)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):
        optimiser.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimiser.step()
    first = [int(np.flatnonzero(data.y_train == c)[0]) for c in range(10)]
    return model.eval(), data.x_train[first], data.y_train[first], data


def brute_force(model, x, y, sparsity: str, lam: float) -> tuple[float, tuple[int, ...]]:
    """The hinge objective's minimum over every binary mask keeping one unit a layer, the
    loss from the masked model in float64, and the mask reaching it."""
    weights = {"1": 1 / 6, "3": 1 / 3} if sparsity == "layer" else {"1": 2 / 9, "3": 2 / 9}
    inputs = torch.as_tensor(x, dtype=torch.float64)
    best = (np.inf, ())
    for bits in itertools.product((False, True), repeat=9):
        masks = {"1": np.array(bits[:6]), "3": np.array(bits[6:])}
        if min(m.sum() for m in masks.values()) < 1:
            continue
        with torch.no_grad():
            logits = apply_masks(model, masks).double()(inputs).numpy()
        loss = get_loss("hinge").values(logits, y.astype(np.int64)).mean()
        value = sum(weights[n] * m.sum() for n, m in masks.items()) + lam * loss
        best = min(best, (float(value), tuple(int(b) for b in bits)))
    return best


def test_unit_weights(problem):
    model, x, _, _ = problem
    network = extract(model, x).network
    first, second = network.scored
    assert unit_weights(network, "layer") == {first: 1 / 6, second: 1 / 3}
    assert unit_weights(network, "unit") == {first: 2 / 9, second: 2 / 9}


def test_the_two_weightings_have_different_optima_here(problem):
    model, x, y, _ = problem
    assert brute_force(model, x, y, "layer", LAM)[1] != brute_force(model, x, y, "unit", LAM)[1]


@pytest.mark.parametrize("sparsity", ["layer", "unit"])
@pytest.mark.parametrize("backend", backends.available())
def test_the_optimum_is_the_brute_force_one(problem, sparsity, backend):
    model, x, y, _ = problem
    value, bits = brute_force(model, x, y, sparsity, LAM)
    found = oamip.score_neurons(
        model,
        x,
        y,
        backend=backend,
        loss="hinge",
        scores="binary",
        lam=LAM,
        sparsity=sparsity,
        time_limit=60,
        threads=1,
    )
    assert found.status == "optimal"
    assert found.objective == pytest.approx(value, abs=1e-6)
    kept = np.concatenate([found.scores[name] for name in ("1", "3")]).round().astype(int)
    assert tuple(kept.tolist()) == bits


def test_per_layer_pieces_carry_the_whole_networks_price(problem):
    """A piece scores one layer, whose units weigh 1/n_l there; with ``unit`` the whole network
    weighs them 2/9, so the piece's lam is divided by 2/9 * n_l; with ``layer`` it stays."""
    model, x, y, data = problem
    network = extract(model, x).network
    aux = (data.x_train, data.y_train)
    for sparsity, factors in (("layer", (1.0, 1.0)), ("unit", (9 / 12, 9 / 6))):
        options = ScoringOptions(lam=LAM, sparsity=sparsity, decompose="layer")
        pieces = decomposed_pieces(network, x, y, options, aux)
        assert [piece.layer for piece in pieces] == ["1", "3"]
        for piece, factor in zip(pieces, factors, strict=True):
            assert piece.options.lam == pytest.approx(LAM * factor)


def test_an_unknown_weighting_is_refused(problem):
    model, x, y, _ = problem
    with pytest.raises(InvalidInputError, match="sparsity"):
        oamip.score_neurons(model, x, y, sparsity="params")


@pytest.mark.parametrize("residual", ["both", "inner"])
def test_unit_pricing_of_residual_pieces_needs_one_scored_layer_per_piece(residual):
    """With ``both``, a ResNet's per-block pieces score the inner channels and the block's
    group: one price per piece cannot hold, so the request is refused before any work."""
    torch.manual_seed(0)
    model = resnet(1, num_classes=3, input_size=4, widths=(2, 3, 4)).eval()
    rng = np.random.default_rng(0)
    x, y = rng.uniform(0, 1, size=(3, 1, 4, 4)), np.array([0, 1, 2])
    aux = (rng.uniform(0, 1, size=(30, 1, 4, 4)), rng.integers(0, 3, 30))
    network = extract(model, x, residual=residual).network
    options = ScoringOptions(sparsity="unit", decompose="layer")
    if residual == "both":
        with pytest.raises(InvalidInputError, match="sparsity='layer'"):
            check_decomposition(network, x, y, options, aux)
        return
    check_decomposition(network, x, y, options, aux)
    pieces = decomposed_pieces(network, x, y, options, aux)
    weights = unit_weights(network, "unit")
    for piece in pieces:
        (scored,) = [i for i, layer in enumerate(network.layers) if layer.name == piece.layer]
        price = weights[scored] * network.layers[scored].n_units
        assert piece.options.lam == pytest.approx(options.lam / price)
    assert len({piece.options.lam for piece in pieces}) > 1
