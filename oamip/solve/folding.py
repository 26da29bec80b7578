"""Folding stably active units into the next layer (docs/mathematics.md §3.1).

On a box where every unit of a set ``A`` of a Linear layer is active, each of them outputs its
pre-activation, an affine function ``w_j . h + b_j`` of the layer's input. When the rows
``w_j`` (restricted to the inputs that vary on the box; fixed inputs go into the constant) have
rank ``r < |A|``, the layer needs only ``r`` of them: a unit ``j`` whose row is a combination
``w_j = sum_k c_k w_k`` of kept active units ``k`` outputs ``sum_k c_k h_k + d_j`` with
``d_j = b_j - sum_k c_k b_k``, so the next Linear layer reads it through its basis columns
(``W'[:, k] += c_k W'[:, j]``) and its bias (``b' += d_j W'[:, j]``) instead, exactly. A whole
layer of active units with more units than varying inputs thus shrinks to at most that many.

Only a Linear layer whose ReLU feeds the next Linear layer directly is folded (the caller says
which); a convolution (a constant reads as 0 in the next layer's zero padding) and the layers of
residual networks are not.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg

from oamip.network import AffineLayer, Network
from oamip.solve.stability import StabilityProof, plain

FOLD_TOLERANCE = 1e-9
"""A row counts as a combination of the basis when every entry of the difference is at most
this times ``1 + max |row|``: dependence forced by the dimensions (more active units than
varying inputs) leaves differences near 1e-15, so nothing approximate is folded."""


@dataclass
class Fold:
    """Unit ``unit`` of network layer ``layer`` outputs ``coefs @ h[basis] + shift`` on the box;
    the next layer reads it that way instead."""

    layer: int
    unit: int
    basis: np.ndarray
    coefs: np.ndarray
    shift: float


def plan_folds(network: Network, proof: StabilityProof, layers: list[int]) -> list[Fold]:
    """The folds of the active units of ``layers`` (indices of Linear layers with a ReLU whose
    next layer is Linear), in order; each layer keeps at least one unit."""
    network = plain(network)
    weights = {i: layer.weight.copy() for i, layer in enumerate(network.layers) if _linear(layer)}
    biases = {i: layer.bias.copy() for i in weights for layer in [network.layers[i]]}
    folds: list[Fold] = []
    for i in sorted(layers):
        stability = proof.layers[i]
        value, varies = _inputs(network, proof, i)
        found = _fold_layer(i, weights[i], biases[i], value, varies, stability)
        for fold in found:
            _apply(weights[i + 1], biases[i + 1], fold)
        folds += found
    return folds


def _linear(layer) -> bool:
    return isinstance(layer, AffineLayer) and layer.kind == "linear"


def _inputs(network: Network, proof: StabilityProof, i: int) -> tuple[np.ndarray, np.ndarray]:
    """The value of each input of layer ``i`` that is fixed on the box (0 where it varies) and
    which inputs vary. A dead unit before is fixed at 0 (its bounds are); a folded one may
    count as varying: its column is 0 by then."""
    if i == 0:
        lower, upper = proof.lower, proof.upper
    else:
        box = proof.bounds.input_bounds(network, i)
        lower, upper = box.lower[0], box.upper[0]
    varies = lower < upper
    return np.where(varies, 0.0, lower), varies


def _fold_layer(i, weight, bias, value, varies, stability) -> list[Fold]:
    """The folds of layer ``i``: pivoted QR picks a basis of the active rows, the others that
    are combinations of it fold."""
    active = np.flatnonzero(stability.active & ~stability.dead)
    if len(active) == 0:
        return []
    rows = weight[active][:, varies]
    offsets = bias[active] + weight[active][:, ~varies] @ value[~varies]
    rank, order = _rank(rows)
    basis = order[:rank]
    kept = len(weight) - int(stability.dead.sum()) - len(active) + rank
    folds = []
    for j in order[rank:]:
        if kept == 0 and j == order[-1]:
            break  # a layer keeps one unit
        coefs = _combination(rows[basis], rows[j])
        if coefs is None:
            kept += 1
            continue
        shift = float(offsets[j] - coefs @ offsets[basis])
        folds.append(Fold(i, int(active[j]), active[basis], coefs, shift))
    return folds


def _rank(rows: np.ndarray) -> tuple[int, np.ndarray]:
    """The numerical rank of ``rows`` and an order of them whose first ``rank`` are a basis."""
    if rows.shape[1] == 0 or not np.abs(rows).any():
        return 0, np.arange(len(rows))
    _, r, order = scipy.linalg.qr(rows.T, mode="economic", pivoting=True)
    diag = np.abs(np.diag(r))
    rank = int((diag > diag[0] * len(rows) * np.finfo(float).eps * 10).sum())
    return rank, np.asarray(order)


def _combination(basis: np.ndarray, row: np.ndarray) -> np.ndarray | None:
    """``c`` with ``c @ basis == row`` within FOLD_TOLERANCE, or None."""
    if len(basis) == 0:
        return np.zeros(0) if not np.abs(row).any() else None
    coefs = np.linalg.lstsq(basis.T, row, rcond=None)[0]
    error = np.abs(coefs @ basis - row).max()
    return coefs if error <= FOLD_TOLERANCE * (1 + np.abs(row).max()) else None


def _apply(weight: np.ndarray, bias: np.ndarray, fold: Fold) -> None:
    """The next layer reads unit ``fold.unit`` through its basis and its bias."""
    column = weight[:, fold.unit].copy()
    weight[:, fold.basis] += np.outer(column, fold.coefs)
    bias += column * fold.shift
    weight[:, fold.unit] = 0.0
