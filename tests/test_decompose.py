"""Decomposition of the importance MIP (issue 13): per-layer pieces with auxiliary heads,
per-class pieces, run here, on local processes or on a Dask cluster, resumable from a checkpoint.

The oracles enumerate every mask: with binary scores a unit scored 0 outputs exactly 0, so a
piece's optimum is the best mask by a plain forward pass (PyTorch's ``apply_masks`` for whole
networks, numpy layer by layer for a block with its head).
"""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest
import torch

import oamip
from oamip.adapters.decompose import blocks, check_decomposition, decomposed_pieces
from oamip.adapters.extract import extract
from oamip.errors import InvalidInputError
from oamip.formulations.importance import build_importance_model
from oamip.network import AffineLayer
from oamip.solve.decompose import Piece, expected_work, longest_first, run_pieces
from oamip.solve.heads import HEAD_GRID, fit_head, grid_average_pool
from oamip.solve.options import ScoringOptions
from tests.nets import convnet, mlp

SETTINGS = {"scores": "binary", "loss": "hinge", "lam": 1.0}
TOL = 1e-7


def _batch(seed: int, n: int = 6, features: int = 6, classes: int = 3):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, features)), np.arange(n) % classes


def _masks(sizes: dict[str, int]):
    """Every mask keeping at least one unit per layer."""
    per_layer = [
        [np.array(b, dtype=bool) for b in itertools.product([0, 1], repeat=n) if sum(b) >= 1]
        for n in sizes.values()
    ]
    for combo in itertools.product(*per_layer):
        yield dict(zip(sizes, combo))


def _hinge_objective(z: np.ndarray, y: np.ndarray, masks: dict) -> float:
    true = z[np.arange(len(y)), y]
    other = z.copy()
    other[np.arange(len(y)), y] = -np.inf
    loss = np.maximum(0.0, 1.0 + other.max(axis=1) - true).mean()
    return sum(m.sum() / len(m) for m in masks.values()) + SETTINGS["lam"] * loss


def _torch_optimum(model, x, y) -> float:
    """The best objective over every mask of the model's scored layers, by PyTorch."""
    sizes = {name: len(m.bias) for name, m in _scored_modules(model)}
    best = np.inf
    for masks in _masks(sizes):
        with torch.no_grad():
            z = oamip.apply_masks(model, masks).double()(torch.as_tensor(x)).numpy()
        best = min(best, _hinge_objective(z, y, masks))
    return best


def _scored_modules(model):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)][:-1]


def _block_optimum(piece: Piece) -> float:
    """The best objective over every mask of the piece's one scored layer, by numpy."""
    (scored,) = piece.network.scored
    layer = piece.network.layers[scored]
    best = np.inf
    for masks in _masks({layer.name: layer.n_units}):
        h = piece.x.reshape(len(piece.x), -1)
        for i, other in enumerate(piece.network.layers):
            h = other.forward(h)
            if i == scored:
                h = np.maximum(h, 0.0) * masks[layer.name]
        best = min(best, _hinge_objective(h, piece.y, masks))
    return best


def test_layer_pieces_of_a_one_layer_network_are_the_whole_network_mip():
    model = mlp(0, sizes=(6, 5, 3))
    x, y = _batch(0)
    whole = oamip.score_neurons(model, x, y, **SETTINGS)
    split = oamip.score_neurons(model, x, y, decompose="layer", **SETTINGS)
    (piece,) = split.subproblems
    optimum = _torch_optimum(model, x, y)
    assert whole.status == split.status == piece.status == "optimal"
    assert piece.objective == pytest.approx(optimum, abs=TOL)
    assert split.objective == pytest.approx(whole.objective, abs=TOL)
    assert piece.head_accuracy is None and piece.label is None and piece.samples == len(y)
    assert split.bound is None and split.formulation is None


def test_per_class_pieces_are_optimal_on_their_samples_and_scores_are_their_mean():
    model = mlp(1, sizes=(6, 4, 3, 3))
    x, y = _batch(1, n=9)
    res = oamip.score_neurons(model, x, y, decompose="class", **SETTINGS)
    assert [p.label for p in res.subproblems] == [0, 1, 2]
    for piece in res.subproblems:
        pick = y == piece.label
        assert piece.samples == pick.sum() and piece.status == "optimal"
        assert piece.objective == pytest.approx(_torch_optimum(model, x[pick], y[pick]), abs=TOL)
    for name, scores in res.scores.items():
        mean = np.mean([p.scores[name] for p in res.subproblems], axis=0)
        np.testing.assert_array_equal(scores, mean)
    assert res.status == "optimal"


def test_layer_and_class_pieces_with_heads_are_optimal():
    model = mlp(2, sizes=(6, 4, 3, 3))
    x, y = _batch(2)
    aux = _batch(3, n=60)
    res = oamip.score_neurons(model, x, y, decompose="layer,class", aux_data=aux, **SETTINGS)
    assert [(p.layer, p.label) for p in res.subproblems] == [
        (layer, label) for layer in ("1", "3") for label in (0, 1, 2)
    ]
    first, last = res.subproblems[:3], res.subproblems[3:]
    assert all(0.0 <= p.head_accuracy <= 1.0 for p in first)
    assert all(p.head_accuracy is None for p in last)
    options = ScoringOptions(decompose="layer,class", **SETTINGS)
    options.validate()
    network = extract(model, x).network
    pieces = decomposed_pieces(
        network, x, y, options, check_decomposition(network, x, y, options, aux)
    )
    for piece, result in zip(pieces, res.subproblems):
        assert piece.key == result.key
        assert result.objective == pytest.approx(_block_optimum(piece.with_head()), abs=TOL)
        with_head = piece.with_head()
        built = build_importance_model(with_head.network, piece.x, piece.y, with_head.options)
        assert result.relu_entries == built.relu_entries and result.relu_entries
        assert built.affine is not None and set(result.relu_entries) == {"folded"}
    assert set(res.scores) == {"1", "3"} and res.status == "optimal"


def test_a_conv_block_gets_grid_average_pooling_and_one_linear_layer():
    model = convnet(0)
    rng = np.random.default_rng(0)
    x, y = rng.uniform(0, 1, size=(3, 1, 8, 8)), np.array([0, 1, 2])
    aux = (rng.uniform(0, 1, size=(30, 1, 8, 8)), np.arange(30) % 3)
    network = extract(model, x).network
    cut = blocks(network)
    assert [(b.start, b.stop) for b in cut] == [(0, 2), (2, 3), (3, len(network.layers))]
    options = ScoringOptions(decompose="layer", **SETTINGS)
    options.validate()
    pieces = decomposed_pieces(
        network, x, y, options, check_decomposition(network, x, y, options, aux)
    )
    assert pieces[0].network.layers[2:] == [] and pieces[0].head is not None
    pool, head = pieces[0].with_head().network.layers[2:]
    assert pool.kind == "avgpool" and pool.out_shape == (3, HEAD_GRID, HEAD_GRID)
    assert head.kind == "linear" and head.weight.shape == (3, 3 * HEAD_GRID**2)
    assert pieces[0].x.shape == (3, 1, 8, 8) and pieces[1].x.shape == (3, 3, 4, 4)


@pytest.mark.parametrize("side", [1, 2, 3, 4, 5, 7, 14])
def test_grid_pooling_averages_equal_windows_that_cover_every_position(side):
    rng = np.random.default_rng(side)
    h = rng.normal(size=(4, 2 * side * side))
    pool = grid_average_pool((2, side, side), 2, "p")
    cells = min(2, side)
    assert pool.out_shape == (2, cells, cells)
    k = -(-side // cells)
    starts = [0] if cells == 1 else [0, side - k]
    grid = h.reshape(4, 2, side, side)
    expected = [grid[:, :, r : r + k, c : c + k].mean(axis=(2, 3)) for r in starts for c in starts]
    expected = np.stack(expected, axis=2).reshape(4, -1)
    np.testing.assert_allclose(pool.forward(h), expected, atol=1e-12)


def test_a_head_acts_on_raw_outputs_though_fit_on_standardised_ones():
    rng = np.random.default_rng(5)
    labels = np.arange(120) % 3
    features = 1e3 + 50.0 * rng.normal(size=(120, 4)) + 200.0 * np.eye(4)[labels]
    head = fit_head(features, labels, 3, (4,), "fc")
    logits = head.layers[-1].forward(features)
    assert np.mean(np.argmax(logits, axis=1) == labels) == pytest.approx(head.accuracy)
    assert head.accuracy >= 0.95


def test_a_head_fits_separable_data_deterministically():
    rng = np.random.default_rng(4)
    labels = np.arange(90) % 3
    features = rng.normal(size=(90, 5)) + 4.0 * np.eye(5)[labels]
    head = fit_head(features, labels, 3, (5,), "fc")
    again = fit_head(features, labels, 3, (5,), "fc")
    assert head.accuracy >= 0.95
    np.testing.assert_array_equal(head.layers[-1].weight, again.layers[-1].weight)
    assert isinstance(head.layers[-1], AffineLayer) and head.layers[-1].activation is None


@pytest.fixture(scope="module")
def dask_client():
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


@pytest.mark.slow
def test_sequential_processes_and_dask_give_the_same_scores(dask_client):
    model = mlp(5, sizes=(6, 4, 3, 3))
    x, y = _batch(5, n=9)
    runs = [
        oamip.score_neurons(model, x, y, decompose="class", **SETTINGS, **how)
        for how in ({}, {"n_jobs": 2}, {"executor": dask_client})
    ]
    for other in runs[1:]:
        for a, b in zip(runs[0].subproblems, other.subproblems):
            assert (a.key, a.label, a.objective, a.status) == (
                b.key,
                b.label,
                b.objective,
                b.status,
            )
            for name in a.scores:
                np.testing.assert_array_equal(a.scores[name], b.scores[name])
        for name in runs[0].scores:
            np.testing.assert_array_equal(runs[0].scores[name], other.scores[name])


def _pieces_with_a_bad_one() -> list[Piece]:
    """Three pieces; the second has a label the network does not have, so it raises."""
    options = ScoringOptions(**SETTINGS)
    options.validate()
    network = extract(mlp(6, sizes=(6, 4, 3)), np.zeros((1, 6))).network
    x, y = _batch(6)
    return [
        Piece(network, x, y, options, label=0),
        Piece(network, x, np.full(len(y), 7), options, label=1),
        Piece(network, x[:3], y[:3], options, label=2),
    ]


@pytest.mark.parametrize("how", ["here", "processes", "dask"])
def test_a_piece_that_raises_is_reported_and_the_others_kept(how, request):
    pieces = _pieces_with_a_bad_one()
    run = {"here": {}, "processes": {"n_jobs": 2}}.get(how)
    if run is None:
        run = {"executor": request.getfixturevalue("dask_client")}
    good, bad, other = run_pieces(pieces, **run)
    assert good.status == other.status == "optimal" and good.error is other.error is None
    assert bad.status == "error" and bad.scores == {}
    assert "InvalidInputError" in bad.error and "labels must lie in 0..2" in bad.error


def test_a_rerun_with_the_checkpoint_solves_nothing(tmp_path):
    model = mlp(7, sizes=(6, 4, 3, 3))
    x, y = _batch(7, n=9)
    folder = tmp_path / "pieces"
    first = oamip.score_neurons(model, x, y, decompose="class", checkpoint=folder, **SETTINGS)
    assert not any(p.resumed for p in first.subproblems)
    assert len(list(folder.glob("piece-*.json"))) == 3
    again = oamip.score_neurons(model, x, y, decompose="class", checkpoint=folder, **SETTINGS)
    assert all(p.resumed for p in again.subproblems)
    for a, b in zip(first.subproblems, again.subproblems):
        assert (a.key, a.objective, a.bound, a.status) == (b.key, b.objective, b.bound, b.status)
        assert a.relu_entries == b.relu_entries and a.relu_entries
        np.testing.assert_array_equal(a.scores["1"], b.scores["1"])
    other = oamip.score_neurons(
        model, x[:6], y[:6], decompose="class", checkpoint=folder, **SETTINGS
    )
    assert not any(p.resumed for p in other.subproblems)
    assert len(list(folder.glob("piece-*.json"))) == 6


def test_a_checkpoint_file_that_does_not_match_its_piece_is_ignored(tmp_path):
    model = mlp(8, sizes=(6, 5, 3))
    x, y = _batch(8)
    res = oamip.score_neurons(model, x, y, decompose="layer", checkpoint=tmp_path, **SETTINGS)
    (path,) = tmp_path.glob("piece-*.json")
    path.write_text(path.read_text().replace(res.subproblems[0].key, "0" * 32))
    with pytest.warns(UserWarning, match="does not match its piece"):
        again = oamip.score_neurons(model, x, y, decompose="layer", checkpoint=tmp_path, **SETTINGS)
    assert not again.subproblems[0].resumed
    assert again.subproblems[0].objective == res.subproblems[0].objective


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"decompose": "rows"}, "unknown decompose 'rows'"),
        ({"decompose": "layer"}, "give aux_data=\\(x, y\\)"),
        ({"n_jobs": 2}, "only apply to a decomposed solve"),
        ({"decompose": "class", "aux_data": "train"}, "aux_data must be a pair"),
        ({"decompose": "class", "executor": 3}, "executor must be None"),
    ],
)
def test_bad_decomposition_options_are_refused_before_any_work(changes, message):
    model = mlp(9, sizes=(6, 4, 3, 3))
    x, y = _batch(9)
    with pytest.raises(InvalidInputError, match=message):
        oamip.score_neurons(model, x, y, **SETTINGS, **changes)


def test_a_decomposed_sweep_gives_each_weight_the_decomposed_solve(tmp_path):
    model = mlp(9, sizes=(6, 4, 3, 3))
    x, y = _batch(9)
    aux = _batch(11, n=60)
    lams = [0.2, 3.0]
    settings = {"scores": "binary", "loss": "hinge", "aux_data": aux}
    swept = oamip.score_sweep(
        model, x, y, lams, decompose="layer,class", checkpoint=tmp_path, **settings
    )
    assert len(swept) == 2 and len(list(tmp_path.glob("piece-*.json"))) == 12
    for lam, res in zip(lams, swept):
        alone = oamip.score_neurons(
            model, x, y, lam=lam, decompose="layer,class", checkpoint=tmp_path, **settings
        )
        assert all(p.resumed for p in alone.subproblems)
        fresh = oamip.score_neurons(model, x, y, lam=lam, decompose="layer,class", **settings)
        assert res.status == fresh.status == "optimal"
        assert res.objective == pytest.approx(fresh.objective, abs=TOL)
        for a, b in zip(res.subproblems, fresh.subproblems):
            assert (a.key, a.layer, a.label) == (b.key, b.layer, b.label)
            assert a.objective == pytest.approx(b.objective, abs=TOL)
        for name in fresh.scores:
            np.testing.assert_array_equal(res.scores[name], fresh.scores[name])
    assert any(not np.array_equal(swept[0].scores[n], swept[1].scores[n]) for n in swept[0].scores)


def test_an_unreachable_scheduler_is_a_clear_error_within_seconds(tmp_path):
    pytest.importorskip("distributed")
    x, y = _batch(10)
    folder = tmp_path / "never"
    started = time.perf_counter()
    with pytest.raises(InvalidInputError, match="cannot reach the Dask scheduler"):
        oamip.score_neurons(
            mlp(10, sizes=(6, 4, 3)),
            x,
            y,
            decompose="class",
            executor="tcp://127.0.0.1:9",
            checkpoint=folder,
            **SETTINGS,
        )
    assert time.perf_counter() - started < 15
    assert not folder.exists()


@pytest.mark.parametrize("scores", ["binary", "continuous"])
def test_workers_are_handed_the_hardest_pieces_first(scores):
    model = mlp(2, sizes=(6, 3, 5, 3))
    x, y = _batch(2)
    network = extract(model, x).network
    options = ScoringOptions(decompose="layer", scores=scores, loss="hinge")
    options.validate()
    aux = check_decomposition(network, x, y, options, _batch(3, n=60))
    pieces = decomposed_pieces(network, x, y, options, aux)
    work = [expected_work(piece) for piece in pieces]
    order = longest_first(pieces, [0, 1])
    assert sorted(order) == [0, 1] and work[order[0]] >= work[order[1]]
    if scores == "binary":
        assert work == [3, 5] and order == [1, 0]
