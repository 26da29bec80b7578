"""Cutting a network's importance MIP into pieces: per scored layer, per class, or both.

Per layer, the network is cut after every scored layer and the pooling right after it (a
*block*). Each block's inputs on the batch come from the dense network (float64); each block but
the last hands its outputs to an auxiliary head fit on a sample of at most ``aux_samples`` rows
of ``aux_data`` (:mod:`oamip.solve.heads`), the last keeps the network's own remaining layers.
The dense network is traced ``TRACE_BATCH`` rows at a time, keeping only the layers a piece
needs (a block's inputs; a block end's outputs, pooled as its head takes them), and each head is
fit where its pieces are solved (:meth:`oamip.solve.decompose.Piece.with_head`), so workers fit
them in parallel. Per class, each class's samples form their
own batch. The pieces are solved by :mod:`oamip.solve.decompose`; a layer's scores are the
mean of its pieces' scores (over classes). On a network with one scored layer, ``"layer"`` is
the whole-network MIP.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from oamip.errors import InvalidInputError
from oamip.formulations.importance import check_labels, unit_weights
from oamip.formulations.size import ModelSize, estimate_size
from oamip.network import AffineLayer, MaxPoolLayer, Network
from oamip.solve.decompose import ERROR, Piece, PieceResult
from oamip.solve.heads import HeadData, head_pool
from oamip.solve.interrupt import INTERRUPTED
from oamip.solve.options import ScoringOptions

TRACE_BATCH = 256
"""Rows of the batch or of the auxiliary sample traced through the dense network at once: at
most this many rows of the layers not kept are held at a time."""
AUX_SEED = 0
"""Seed of the draw of the auxiliary sample (``aux_samples`` rows of ``aux_data``)."""


@dataclass
class Block:
    """Layers ``start..stop - 1`` of a network; ``scored`` is the index of its scored layer
    (None for a block that is the whole network)."""

    start: int
    stop: int
    scored: int | None


def blocks(network: Network) -> list[Block]:
    """The network cut after every activation (and the pooling that follows it) that ends a
    block with a scored layer and that no residual connection crosses (a residual network is
    cut between its residual blocks); the last block runs to the logits."""
    layers, found, start, scored = network.layers, [], 0, None
    for i, layer in enumerate(layers):
        scored = i if network.score_key(i) is not None else scored
        if scored is None or isinstance(layer, MaxPoolLayer) or layer.activation is None:
            continue
        stop = i + 1
        while stop < len(layers) and _is_pooling(layers[stop]):
            stop += 1
        if not network.crossed(stop - 1):
            found.append(Block(start, stop, scored))
            start, scored = stop, None
    found[-1].stop = len(layers)
    return found


def prices_each_piece(network: Network, options: ScoringOptions) -> bool:
    """Whether every per-layer piece can be priced on its own: always with the paper's
    sparsity term, and with ``sparsity="unit"`` when no piece (a residual block) scores several
    layers."""
    return options.sparsity != "unit" or all(
        len(_scored_in(network, block)) <= 1 for block in blocks(network)
    )


def can_cut_by_layer(network: Network, options: ScoringOptions) -> bool:
    """Whether a solve with ``options`` could be cut into per-layer pieces in its place: it
    asks for no decomposition of its own, the network has several scored layers, and every
    piece can be priced apart (:func:`prices_each_piece`)."""
    return (
        options.decompose is None
        and len(network.scored) >= 2
        and prices_each_piece(network, options)
    )


def largest_piece_size(network: Network, samples: int, options: ScoringOptions) -> ModelSize:
    """An estimate of the largest per-layer piece of ``network`` on ``samples`` samples, to
    size a decomposed solve before any work: each block's MIP by
    :func:`~oamip.formulations.size.estimate_size` (an upper bound), its head (the pooling of
    :func:`~oamip.solve.heads.head_pool` and one logit per class) a variable and a row per
    output and sample."""
    cut = blocks(network)
    sizes = []
    for j, block in enumerate(cut):
        sub = network.segment(block.start, block.stop)
        own = estimate_size(sub, samples, options)
        head = 0
        if j < len(cut) - 1:
            pool = head_pool(tuple(sub.layers[-1].out_shape), "size")
            head = samples * (network.num_classes + (0 if pool is None else pool.n_out))
        sizes.append(ModelSize(own.variables + head, own.constraints + head))
    return max(sizes, key=lambda size: size.variables)


def _scored_in(network: Network, block: Block) -> set:
    """The score keys of the units a block scores (a coupled group counts once)."""
    return {network.score_key(i) for i in range(block.start, block.stop)} - {None}


def _is_pooling(layer) -> bool:
    return isinstance(layer, MaxPoolLayer) or (
        isinstance(layer, AffineLayer) and layer.kind == "avgpool"
    )


def check_decomposition(
    network: Network, x: np.ndarray, y: np.ndarray, options: ScoringOptions, aux
):
    """Checks made before any work: the batch, and ``aux`` (``aux_data`` as numpy arrays)
    where heads are needed. Returns ``aux`` checked (None when no head is needed)."""
    x = network.check_input(x)
    check_labels(y, len(x), network.num_classes)
    if not network.scored:
        raise InvalidInputError(
            "the network has no hidden activation layer: there is nothing to score"
        )
    if "layer" not in options.decompose.split(",") or len(network.scored) == 1:
        return None
    if not prices_each_piece(network, options):
        raise InvalidInputError(
            "sparsity='unit' with decompose='layer' prices each piece by its one scored layer, "
            "but this network's pieces (its residual blocks) score several: use "
            "sparsity='layer', or decompose='class'"
        )
    if aux is None:
        raise InvalidInputError(
            "decompose='layer' on a network with several scored layers fits an auxiliary head "
            "per layer: give aux_data=(x, y), training inputs and labels (never the test set)"
        )
    aux_x, aux_y = aux
    if aux_x.ndim < 1 or len(aux_x) == 0:
        raise InvalidInputError("aux_data is empty: give training inputs and labels")
    try:
        aux_x = network.check_input(aux_x)
        aux_y = check_labels(aux_y, len(aux_x), network.num_classes)
    except InvalidInputError as exc:
        raise InvalidInputError(f"aux_data: {exc}") from None
    return aux_x, aux_y


def decomposed_pieces(
    network: Network, x: np.ndarray, y: np.ndarray, options: ScoringOptions, aux
) -> list[Piece]:
    """The pieces of ``options.decompose`` (checked by :func:`check_decomposition`, whose
    ``aux`` it takes), in order of block, then class. A per-layer piece trades its units
    against its loss at the whole network's price: its ``lam`` is divided by the whole
    network's weight of its units times their number (1 with the paper's sparsity term)."""
    kinds = options.decompose.split(",")
    x = network.check_input(x)
    y = check_labels(y, len(x), network.num_classes)
    solo = options.solo()
    cut = blocks(network) if "layer" in kinds else [Block(0, len(network.layers), None)]
    before = traced(network, x, {b.start - 1: None for b in cut if b.start > 0})
    heads = _head_data(network, cut[:-1], aux, options.aux_samples)
    labels = np.unique(y).tolist() if "class" in kinds else [None]
    pieces = []
    for j, block in enumerate(cut):
        sub = network.segment(block.start, block.stop)
        inputs = x if block.start == 0 else before[block.start - 1]
        inputs = inputs.reshape(len(x), *sub.input_shape)
        name = None if block.scored is None else network.layers[block.scored].name
        own = solo if block.scored is None else _priced(solo, network, block.scored)
        head = heads[j] if j < len(heads) else None
        for label in labels:
            pick = np.ones(len(y), dtype=bool) if label is None else y == label
            pieces.append(Piece(sub, inputs[pick], y[pick], own, name, label, head=head))
    return pieces


def traced(
    network: Network, x: np.ndarray, keep: dict[int, Callable | None], batch: int = TRACE_BATCH
) -> dict[int, np.ndarray]:
    """The outputs of the layers ``keep`` names on ``x`` (each passed through its function,
    if any), the network traced ``batch`` rows at a time: the other layers' values are never
    held for more than ``batch`` rows."""
    parts: dict[int, list] = {i: [] for i in keep}
    for first in range(0, len(x) if keep else 0, batch):
        trace = network.trace(x[first : first + batch])
        for i, change in keep.items():
            parts[i].append(trace[i].out if change is None else change(trace[i].out))
        del trace
    return {i: np.concatenate(found) for i, found in parts.items()}


def aux_sample(aux, limit: int | None):
    """``aux`` (inputs, labels), or ``limit`` of its rows drawn with ``AUX_SEED`` (in their
    order) when it has more."""
    if limit is None or len(aux[0]) <= limit:
        return aux
    rows = np.sort(np.random.default_rng(AUX_SEED).choice(len(aux[0]), limit, replace=False))
    return aux[0][rows], aux[1][rows]


def _head_data(network: Network, ends: list[Block], aux, limit: int | None) -> list[HeadData]:
    """What the head after each of the blocks ``ends`` is fit on: the block's outputs on the
    auxiliary sample, pooled as the head takes them, traced in batches."""
    if not ends:
        return []
    aux_x, aux_y = aux_sample(aux, limit)
    names = [network.layers[block.scored].name for block in ends]
    pools = [
        head_pool(tuple(network.layers[b.stop - 1].out_shape), name)
        for b, name in zip(ends, names, strict=True)
    ]
    keep = {
        b.stop - 1: None if pool is None else pool.forward
        for b, pool in zip(ends, pools, strict=True)
    }
    features = traced(network, aux_x, keep)
    labels = np.asarray(aux_y, dtype=np.int64)
    return [
        HeadData(features[b.stop - 1], labels, network.num_classes, name, pool)
        for b, name, pool in zip(ends, names, pools, strict=True)
    ]


def _priced(options: ScoringOptions, network: Network, scored: int) -> ScoringOptions:
    """``options`` for the piece of one scored layer (or of a producer of a coupled group): in
    the piece, its units weigh ``1/n``; in the whole network ``w`` each, so ``lam`` is divided
    by ``w * n``."""
    key = network.score_key(scored)
    weight = unit_weights(network, options.sparsity)[key]
    return replace(options, lam=options.lam / (weight * network.layers[key].n_units))


def combined_scores(network: Network, results: list[PieceResult]) -> dict[int, np.ndarray]:
    """Each scored layer's scores: the mean over the pieces that scored it; every unit kept
    (score 1) in a layer whose pieces all failed."""
    combined = {}
    for i in network.scored:
        layer = network.layers[i]
        names = [n.name for j, n in enumerate(network.layers) if network.score_key(j) == i]
        found = [r.scores[n] for r in results for n in names if n in r.scores]
        combined[i] = np.mean(found, axis=0) if found else np.ones(layer.n_units)
    return combined


def overall_status(results: list[PieceResult]) -> str:
    """ "optimal" when every piece is proven optimal, "error" when one failed, "interrupted"
    when Ctrl-C stopped or skipped one, else "feasible"."""
    statuses = {r.status for r in results}
    if statuses == {"optimal"}:
        return "optimal"
    for status in (ERROR, INTERRUPTED):
        if status in statuses:
            return status
    return "feasible"
