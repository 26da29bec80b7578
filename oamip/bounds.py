"""Per-sample interval bounds that hold for every score vector (docs/mathematics.md §3).

A scored unit outputs ``ReLU(a - (1 - s) M)``, which lies between 0 (pruned) and ``ReLU(a)``
(kept), so a ReLU's output is bounded by ``[0, max(U, 0)]`` whatever the scores are; another
activation ``sigma``'s by ``[sigma(min(L, 0)), sigma(max(U, 0))]`` (:mod:`oamip.activations`). The
first layer's pre-activations are exact numbers because the inputs are fixed. A residual layer's
input box is the concatenation of its two inputs' boxes (docs/mathematics.md §4.10).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from oamip.network import Affine, MaxPoolLayer, Network


@dataclass
class LayerBounds:
    """``lower <= value <= upper`` per sample and flat output: the pre-activation of an affine
    layer, or the output of a max pooling."""

    lower: np.ndarray
    upper: np.ndarray


@dataclass
class NetworkBounds:
    """Bounds of every layer, and the constants ``M`` of the scored layers."""

    layers: list[LayerBounds]
    big_m: dict[int, np.ndarray]

    def output_bounds(self, network: Network, index: int) -> LayerBounds:
        """Bounds of what layer ``index`` hands to the next layer (after its activation, if
        any): a scored unit's output may be 0 whatever its argument, a plain activation's is
        the activation of it."""
        b = self.layers[index]
        layer = network.layers[index]
        if isinstance(layer, MaxPoolLayer) or layer.activation is None:
            return b
        if network.score_key(index) is None:
            return LayerBounds(*layer.activation.range(b.lower, b.upper))
        return LayerBounds(*layer.activation.scored_range(b.lower, b.upper))

    def input_bounds(self, network: Network, index: int) -> LayerBounds:
        """Bounds of what layer ``index > 0`` acts on (for a residual layer, the concatenation
        of the previous layer's and the source's outputs)."""
        outs = [None] * index
        for i in {index - 1, getattr(network.layers[index], "source", index - 1)}:
            outs[i] = self.output_bounds(network, i)
        lower = network.layer_input(index, [o if o is None else o.lower for o in outs])
        upper = network.layer_input(index, [o if o is None else o.upper for o in outs])
        return LayerBounds(lower, upper)


def affine_bounds(layer: Affine, lower: np.ndarray, upper: np.ndarray) -> LayerBounds:
    """Interval arithmetic through ``A h + c`` for a batch of boxes ``[lower, upper]``."""
    matrix = layer.matrix
    pos = matrix.maximum(0)
    neg = matrix.minimum(0)
    lo = _apply(pos, lower) + _apply(neg, upper) + layer.offset
    hi = _apply(pos, upper) + _apply(neg, lower) + layer.offset
    return LayerBounds(lo, hi)


def maxpool_bounds(layer: MaxPoolLayer, lower: np.ndarray, upper: np.ndarray) -> LayerBounds:
    """Bounds of a max over each window: max of the lower and of the upper bounds."""
    return LayerBounds(layer.forward(lower), layer.forward(upper))


def _apply(matrix: sp.csr_matrix, values: np.ndarray) -> np.ndarray:
    return np.asarray(matrix @ values.T).T


def interval_bounds(network: Network, x: np.ndarray) -> NetworkBounds:
    """Bounds valid for every score vector, propagated from the fixed batch ``x``."""
    h = x.reshape(x.shape[0], -1).astype(float)
    return box_bounds(network, h, h)


def box_bounds(network: Network, lower: np.ndarray, upper: np.ndarray) -> NetworkBounds:
    """Bounds valid for every score vector and every input in ``[lower, upper]`` (flat inputs,
    one row per sample). With the whole input domain this is what a generic encoder uses."""
    layers = [layer_bounds(network.layers[0], lower, upper)]
    for i in range(1, len(network.layers)):
        box = NetworkBounds(layers, {}).input_bounds(network, i)
        layers.append(layer_bounds(network.layers[i], box.lower, box.upper))
    return NetworkBounds(layers, score_constants(network, layers))


def layer_bounds(layer, lower: np.ndarray, upper: np.ndarray) -> LayerBounds:
    """Bounds of a layer's values (pre-activations, or a max pooling's outputs) over a box."""
    if isinstance(layer, MaxPoolLayer):
        return maxpool_bounds(layer, lower, upper)
    return affine_bounds(layer, lower, upper)


def propagate_after(network: Network, bounds: NetworkBounds, index: int) -> NetworkBounds:
    """``bounds`` with every layer after ``index`` re-propagated by interval arithmetic from
    layer ``index`` (tightened, say) and intersected with what it had; ``M`` is kept."""
    layers = list(bounds.layers)
    for i in range(index + 1, len(network.layers)):
        box = NetworkBounds(layers, bounds.big_m).input_bounds(network, i)
        b = layer_bounds(network.layers[i], box.lower, box.upper)
        old = layers[i]
        layers[i] = LayerBounds(np.maximum(b.lower, old.lower), np.minimum(b.upper, old.upper))
    return NetworkBounds(layers, bounds.big_m)


def score_constants(network: Network, layers: list[LayerBounds]) -> dict[int, np.ndarray]:
    """``M_i = max over samples and positions of max(U, 0)`` for each unit of each scored ReLU
    (of every ramp's largest argument for another activation, :meth:`Activation.reach`), keyed
    by its layer (the layers of a coupled group share scores but each has its own M)."""
    big_m = {}
    for i in range(len(network.layers)):
        if network.score_key(i) is None:
            continue
        layer = network.layers[i]
        per_output = layer.activation.reach(layers[i].lower, layers[i].upper).max(axis=0)
        m = np.zeros(layer.n_units)
        np.maximum.at(m, layer.unit_of, per_output)
        big_m[i] = m
    return big_m
