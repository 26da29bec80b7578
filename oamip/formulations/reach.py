"""The trained network over a box of inputs, as a MILP: what values can a pre-activation take?

Unlike the importance MIP, the inputs are variables (``lower <= x <= upper``) and every ReLU is
the trained one (no scores). The model is exact: its feasible points, projected on the inputs
and a layer's pre-activations, are the pairs ``(x, a(x))`` for ``x`` in the box. Bounds that hold
on the whole box (:func:`oamip.bounds.box_bounds`, possibly tightened) decide which ReLUs are
stable: an entry never positive hands on the constant 0, one never negative its argument, and
only the others take a binary (the big-M encoding of :func:`~oamip.formulations.encodings.
encode_scored_relu` with its facets). Maximising a pre-activation over it proves a unit dead on
the box, over its LP relaxation gives a cheaper bound (docs/mathematics.md §3.1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyomo.environ as pyo
from pyomo.common.gc_manager import PauseGC

from oamip.bounds import NetworkBounds
from oamip.formulations.blocks import RowBlock, VarTable
from oamip.formulations.encodings import Operand, ReluEntries, encode_max_pool, encode_scored_relu
from oamip.network import Affine, MaxPoolLayer, Network, ResidualLayer


@dataclass
class ReachModel:
    """A built box model: the input variables (-1 where the box fixes an input) and the
    variables of the target layer's pre-activations asked for (-1 elsewhere)."""

    model: pyo.ConcreteModel
    table: VarTable
    input_ids: np.ndarray
    target_ids: np.ndarray


def build_reach_model(
    network: Network,
    lower: np.ndarray,
    upper: np.ndarray,
    bounds: NetworkBounds,
    target: int,
    entries: np.ndarray,
) -> ReachModel:
    """The layers ``0..target`` of ``network`` (its ReLUs plain: see
    :func:`oamip.solve.stability.plain`) over the box ``[lower, upper]`` (flat inputs), with a
    variable for each flat pre-activation of layer ``target`` where ``entries`` (bool) is set.

    ``bounds`` (one row per layer) must hold for every input of the box; the objective is 0, to
    be replaced by the caller (one column at a time)."""
    model = pyo.ConcreteModel(name="reach")
    table = VarTable(model)
    rows = RowBlock()
    with PauseGC():
        fixed = lower >= upper
        ids = np.full(len(lower), -1, dtype=np.int64)
        ids[~fixed] = table.add("x", lower[~fixed], upper[~fixed])
        state = Operand(ids, np.where(fixed, lower, 0.0), lower.copy(), upper.copy())
        outputs: list[Operand] = []
        for i in range(target):
            state = _layer(table, rows, network, bounds, i, _input(network, i, state, outputs))
            outputs.append(state)
        layer = network.layers[target]
        box = _input(network, target, state, outputs)
        targets = _pre_activations(table, rows, layer, bounds, target, box, entries)
        rows.attach(table, "network")
        model.objective = pyo.Objective(expr=0.0)
    return ReachModel(model, table, ids, targets)


def _input(network: Network, i: int, state: Operand, outputs: list[Operand]) -> Operand:
    """What layer ``i`` acts on: the previous output, with the source's for a residual layer."""
    layer = network.layers[i]
    if i == 0 or not isinstance(layer, ResidualLayer):
        return state
    source = outputs[layer.source]
    return Operand(
        *(np.concatenate([getattr(state, f), getattr(source, f)]) for f in Operand.FIELDS)
    )


def _layer(table, rows, network: Network, bounds: NetworkBounds, i: int, box: Operand) -> Operand:
    layer = network.layers[i]
    if isinstance(layer, MaxPoolLayer):
        return _max_pool(table, rows, layer, box, i)
    b = bounds.layers[i]
    lower, upper = b.lower[0], b.upper[0]
    needed = upper > 0 if layer.activation is not None else np.ones(len(upper), dtype=bool)
    pre = _pre_activations(table, rows, layer, bounds, i, box, needed)
    if layer.activation is None:
        return Operand(pre, np.zeros(len(pre)), lower, upper)
    out = np.where(lower >= 0, pre, -1)
    unstable = np.flatnonzero(needed & (lower < 0))
    entries = ReluEntries(
        pre_id=pre[unstable],
        pre_const=np.zeros(len(unstable)),
        lower=lower[unstable],
        upper=upper[unstable],
        big_m=np.zeros(len(unstable)),
        score_id=np.full(len(unstable), -1, dtype=np.int64),
    )
    out[unstable] = encode_scored_relu(table, rows, entries, False, f"L{i}").h
    return Operand(out, np.zeros(len(out)), np.maximum(lower, 0.0), np.maximum(upper, 0.0))


def _pre_activations(table, rows, layer: Affine, bounds, i, box: Operand, needed) -> np.ndarray:
    """A variable ``a_j = sum_i A_ji h_i + c_j`` for every ``needed`` output ``j``."""
    b = bounds.layers[i]
    outs = np.flatnonzero(needed)
    pre = np.full(len(needed), -1, dtype=np.int64)
    pre[outs] = table.add(f"L{i}_pre", b.lower[0, outs], b.upper[0, outs])
    matrix = layer.matrix[outs]
    rhs = matrix @ box.const + layer.offset[outs]
    r = rows.new_rows(rhs, rhs)
    rows.terms(r, pre[outs], 1.0)
    inputs = np.flatnonzero(box.var >= 0)
    sub = matrix[:, inputs].tocoo()
    rows.terms(r[sub.row], box.var[inputs][sub.col], -sub.data)
    return pre


def _max_pool(table, rows, layer: MaxPoolLayer, box: Operand, i: int) -> Operand:
    pad = layer.windows < 0
    safe = np.where(pad, 0, layer.windows)
    entries = Operand(
        var=np.where(pad, -1, box.var[safe]),
        const=np.where(pad, 0.0, box.const[safe]),
        lower=np.where(pad, -np.inf, box.lower[safe]),
        upper=np.where(pad, -np.inf, box.upper[safe]),
    )
    out, _ = encode_max_pool(table, rows, entries, f"L{i}")
    return out
