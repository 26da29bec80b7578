"""The auxiliary data of ``decompose="layer"`` (issue 25): the dense trace streamed in batches on
a sample of at most ``aux_samples`` rows, keeping only the layers the pieces need, and each head
fit where its pieces are solved, with the same results here and on workers."""

from __future__ import annotations

import numpy as np
import pytest

import oamip
from oamip.adapters import decompose
from oamip.adapters.decompose import (
    AUX_SEED,
    TRACE_BATCH,
    blocks,
    check_decomposition,
    decomposed_pieces,
    traced,
)
from oamip.adapters.extract import extract
from oamip.errors import InvalidInputError
from oamip.solve.heads import fit_head
from oamip.solve.options import DEFAULT_AUX_SAMPLES, ScoringOptions
from tests.nets import convnet, mlp

SETTINGS = {"scores": "binary", "loss": "hinge", "lam": 1.0}


def _images(seed: int, n: int):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 1, size=(n, 1, 8, 8)), np.arange(n) % 3


def _pieces(network, x, y, aux, **changes):
    options = ScoringOptions(decompose="layer", **SETTINGS, **changes)
    options.validate()
    return decomposed_pieces(
        network, x, y, options, check_decomposition(network, x, y, options, aux)
    )


def test_the_heads_are_those_fit_by_hand_on_the_same_sample():
    x, y = _images(0, 3)
    aux = _images(1, 60)
    network = extract(convnet(0), x).network
    pieces = _pieces(network, x, y, aux, aux_samples=20)
    rows = np.sort(np.random.default_rng(AUX_SEED).choice(60, 20, replace=False))
    full = network.trace(aux[0][rows])
    for piece, block in zip(pieces[:-1], blocks(network)[:-1], strict=True):
        end = network.layers[block.stop - 1]
        by_hand = fit_head(full[block.stop - 1].out, aux[1][rows], 3, end.out_shape, piece.layer)
        fitted = piece.with_head()
        layers = fitted.network.layers[-len(by_hand.layers) :]
        assert [layer.name for layer in layers] == [layer.name for layer in by_hand.layers]
        for mine, theirs in zip(layers, by_hand.layers, strict=True):
            np.testing.assert_array_equal(mine.weight, theirs.weight)
            np.testing.assert_array_equal(mine.bias, theirs.bias)
        assert fitted.head_accuracy == by_hand.accuracy
    assert pieces[-1].head is None


def test_the_default_sample_has_at_most_aux_samples_rows_and_none_takes_them_all():
    x, y = _images(2, 3)
    aux = _images(3, DEFAULT_AUX_SAMPLES + 37)
    network = extract(convnet(1), x).network
    sampled = _pieces(network, x, y, aux)[0].head
    assert len(sampled.features) == len(sampled.labels) == DEFAULT_AUX_SAMPLES
    every = _pieces(network, x, y, aux, aux_samples=None)[0].head
    assert len(every.features) == DEFAULT_AUX_SAMPLES + 37


def test_the_streamed_trace_equals_the_full_trace_at_the_kept_layers():
    x, _ = _images(4, 53)
    network = extract(convnet(2), x).network
    keep = {1: None, 2: lambda out: 2.0 * out, len(network.layers) - 1: None}
    streamed = traced(network, x, keep, batch=7)
    full = network.trace(x)
    assert set(streamed) == set(keep)
    np.testing.assert_allclose(streamed[1], full[1].out, rtol=0, atol=1e-12)
    np.testing.assert_allclose(streamed[2], 2.0 * full[2].out, rtol=0, atol=1e-12)
    last = len(network.layers) - 1
    np.testing.assert_allclose(streamed[last], full[last].out, rtol=0, atol=1e-12)


def test_the_trace_never_holds_more_than_a_batch_of_rows(monkeypatch):
    x, y = _images(5, 3)
    aux = _images(6, 2 * TRACE_BATCH + 41)
    network = extract(convnet(3), x).network
    sizes = []
    real = type(network).trace

    def spy(self, rows, *args, **kwargs):
        sizes.append(len(rows))
        return real(self, rows, *args, **kwargs)

    monkeypatch.setattr(type(network), "trace", spy)
    pieces = _pieces(network, x, y, aux, aux_samples=None)
    assert max(sizes) <= TRACE_BATCH
    assert sum(sizes) == len(x) + len(aux[0])  # the batch once, the aux rows once
    widths = {piece.head.features.shape[1] for piece in pieces[:-1]}
    biggest = max(int(np.prod(layer.out_shape)) for layer in network.layers)
    assert max(widths) < biggest  # a conv block's outputs are kept pooled, not whole


def test_a_bad_aux_samples_is_refused():
    with pytest.raises(InvalidInputError, match="aux_samples"):
        ScoringOptions(decompose="layer", aux_samples=0).validate()


def _runs(**how):
    model = mlp(8, sizes=(6, 5, 4, 3))
    rng = np.random.default_rng(8)
    x, y = rng.normal(size=(9, 6)), np.arange(9) % 3
    aux = (rng.normal(size=(400, 6)), np.arange(400) % 3)
    return oamip.score_neurons(
        model, x, y, decompose="layer,class", aux_data=aux, aux_samples=150, **SETTINGS, **how
    )


def _assert_same(a, b) -> None:
    assert len(a.subproblems) == len(b.subproblems) == 6
    for p, q in zip(a.subproblems, b.subproblems, strict=True):
        assert (p.key, p.layer, p.label, p.objective, p.status, p.head_accuracy) == (
            q.key,
            q.layer,
            q.label,
            q.objective,
            q.status,
            q.head_accuracy,
        )
        for name in p.scores:
            np.testing.assert_array_equal(p.scores[name], q.scores[name])
    for name in a.scores:
        np.testing.assert_array_equal(a.scores[name], b.scores[name])


def test_heads_fit_on_worker_processes_give_the_same_pieces_and_results():
    here, workers = _runs(), _runs(n_jobs=2)
    assert all(p.head_accuracy is not None for p in here.subproblems[:3])
    _assert_same(here, workers)


@pytest.mark.slow
def test_heads_fit_on_dask_workers_give_the_same_pieces_and_results():
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        _assert_same(_runs(), _runs(executor=client))


def test_each_process_fits_a_blocks_head_once(monkeypatch):
    calls = []
    real = decompose.HeadData.fit

    def spy(self, *args, **kwargs):
        calls.append(self.name)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(decompose.HeadData, "fit", spy)
    monkeypatch.setattr("oamip.solve.heads._FITTED", {})
    result = _runs()
    assert sorted(calls) == sorted({p.layer for p in result.subproblems[:3]})


def test_a_head_is_fit_on_one_blas_thread_and_gives_the_same_head(monkeypatch):
    """The fit's products run on HEAD_BLAS_THREADS (1) BLAS thread, whatever the process's
    own setting, and give the head a fit on two threads gives."""
    from threadpoolctl import threadpool_info, threadpool_limits

    from oamip.solve import heads

    rng = np.random.default_rng(3)
    outputs, labels = rng.standard_normal((300, 2 * 3 * 3)), rng.integers(0, 4, 300)
    seen = []
    fit = heads.minimize

    def recorded(function, *args, **kwargs):
        def counted(theta):
            seen.append({pool["num_threads"] for pool in threadpool_info()})
            return function(theta)

        return fit(counted, *args, **kwargs)

    monkeypatch.setattr(heads, "minimize", recorded)
    with threadpool_limits(2):
        limited = fit_head(outputs, labels, 4, (2, 3, 3), "c")
        assert seen and all(threads == {1} for threads in seen)
        monkeypatch.setattr(heads, "HEAD_BLAS_THREADS", 2)
        seen.clear()
        two = fit_head(outputs, labels, 4, (2, 3, 3), "c")
        assert {2} in seen or not any(pool["num_threads"] > 1 for pool in threadpool_info())
    for a, b in zip(two.layers, limited.layers, strict=True):
        np.testing.assert_allclose(a.weight, b.weight, rtol=1e-6, atol=1e-9)
