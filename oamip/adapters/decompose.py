"""Cutting a network's importance MIP into pieces: per scored layer, per class, or both.

Per layer, the network is cut after every scored layer and the pooling right after it (a
*block*). Each block's inputs on the batch come from the dense network (float64); each block but
the last hands its outputs to an auxiliary head fit on ``aux_data`` (:mod:`oamip.solve.heads`),
the last keeps the network's own remaining layers. Per class, each class's samples form their
own batch. The pieces are solved by :mod:`oamip.solve.decompose`; a layer's scores are the
mean of its pieces' scores (over classes). On a network with one scored layer, ``"layer"`` is
the whole-network MIP.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from oamip.errors import InvalidInputError
from oamip.formulations.importance import check_labels, unit_weights
from oamip.network import AffineLayer, MaxPoolLayer, Network
from oamip.solve.decompose import ERROR, Piece, PieceResult
from oamip.solve.heads import fit_head
from oamip.solve.interrupt import INTERRUPTED
from oamip.solve.options import ScoringOptions


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
    if options.sparsity == "unit" and any(len(_scored_in(network, b)) > 1 for b in blocks(network)):
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
    trace = network.trace(x)
    aux_trace = network.trace(aux[0]) if aux is not None else None
    labels = np.unique(y).tolist() if "class" in kinds else [None]
    pieces = []
    for j, block in enumerate(cut):
        sub, accuracy = _sub_network(network, block, j == len(cut) - 1, aux_trace, aux)
        inputs = x if block.start == 0 else trace[block.start - 1].out
        inputs = inputs.reshape(len(x), *sub.input_shape)
        name = None if block.scored is None else network.layers[block.scored].name
        own = solo if block.scored is None else _priced(solo, network, block.scored)
        for label in labels:
            pick = np.ones(len(y), dtype=bool) if label is None else y == label
            pieces.append(Piece(sub, inputs[pick], y[pick], own, name, label, accuracy))
    return pieces


def _priced(options: ScoringOptions, network: Network, scored: int) -> ScoringOptions:
    """``options`` for the piece of one scored layer (or of a producer of a coupled group): in
    the piece, its units weigh ``1/n``; in the whole network ``w`` each, so ``lam`` is divided
    by ``w * n``."""
    key = network.score_key(scored)
    weight = unit_weights(network, options.sparsity)[key]
    return replace(options, lam=options.lam / (weight * network.layers[key].n_units))


def _sub_network(network: Network, block: Block, last: bool, aux_trace, aux):
    """The block's layers, then the network's own (last block) or a head fit on ``aux``."""
    segment = network.segment(block.start, block.stop)
    if last:
        return segment, None
    end = network.layers[block.stop - 1]
    head = fit_head(
        aux_trace[block.stop - 1].out,
        aux[1],
        network.num_classes,
        tuple(end.out_shape),
        network.layers[block.scored].name,
    )
    return Network(segment.input_shape, [*segment.layers, *head.layers]), head.accuracy


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
