"""Fast loading: the Pyomo path into HiGHS against the same matrix built with numpy and highspy.

Two timings per network, taken in alternating rounds in one run (median reported):

* Pyomo path: ``build_importance_model`` (interval bounds included) + ``compile_model`` (standard
  form) + the HiGHS backend's model translation and ``passModel``. No solve.
* direct path: the same interval bounds and the same rows and columns built with numpy, handed to
  highspy's array ``passModel``. It reuses the formulation's numpy encoders
  (``encode_scored_relu``, ``encode_max_pool``, ``RowBlock`` triplets) with a numpy column table in
  place of Pyomo variables, and writes the layer walk, the cross-entropy tangent rows and the
  objective itself, vectorised. So the two paths differ exactly by Pyomo and the compilation.

Before timing, the direct matrix is checked against the compiled Pyomo one (same sizes, nonzeros,
bounds, costs and per-column coefficients once columns are matched). Networks: LeNet-5 on MNIST
with 10 samples (one per class) and an MLP 784-256-256-10 with 16 samples, both trained by
:mod:`oamip.training.zoo`. Writes ``benchmarks/results/loading-<date>.json`` and ``.md``.

    python benchmarks/bench_loading.py [--data PATH] [--rounds R]
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import highspy
import numpy as np
import scipy.sparse as sp
import torch
from common import MNIST, add_data_arguments, data_spec, run_info, today, write_results
from scipy.special import logsumexp, softmax

from oamip.adapters import extract
from oamip.backends import compile_model
from oamip.backends.highs import pass_model
from oamip.bounds import NetworkBounds, interval_bounds
from oamip.formulations.blocks import RowBlock
from oamip.formulations.encodings import (
    Operand,
    ReluEntries,
    encode_max_pool,
    encode_scored_relu,
    plan_pooling,
)
from oamip.formulations.importance import (
    ImportanceSettings,
    build_importance_model,
    folded_layer,
    unit_weights,
)
from oamip.network import Affine, MaxPoolLayer, Network, ResidualLayer
from oamip.training.data import Dataset, load_data, mip_batch
from oamip.training.zoo import Recipe, trained

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "benchmarks" / ".cache"
TARGET_RATIO = 3.0
CASES = {
    "lenet5, 10 samples": (Recipe("lenet5", epochs=3), 10),
    "mlp 784-256-256-10, 16 samples": (Recipe("mlp", hidden=(256, 256), epochs=3), 16),
}
_COLWISE = 1
_MINIMIZE = 1
_INF = 1e30


@dataclass
class Case:
    """One network with its batch, and the two paths' timings in seconds."""

    name: str
    network: Network
    x: np.ndarray
    y: np.ndarray
    pyomo_seconds: list[float]
    direct_seconds: list[float]
    parts: dict[str, list[float]]
    size: dict[str, int]


# --- the direct path -------------------------------------------------------------------------


class _Columns:
    """Numpy stand-in for the formulation's variable table: bounds and integrality only."""

    def __init__(self) -> None:
        self.lower: list[np.ndarray] = []
        self.upper: list[np.ndarray] = []
        self.integer: list[np.ndarray] = []
        self.count = 0

    def add(self, _name: str, lower, upper, binary: bool = False) -> np.ndarray:
        lower = np.asarray(lower, dtype=float).ravel()
        upper = np.asarray(upper, dtype=float).ravel()
        self.lower.append(lower)
        self.upper.append(upper)
        self.integer.append(np.full(len(lower), binary))
        ids = np.arange(self.count, self.count + len(lower), dtype=np.int64)
        self.count += len(lower)
        return ids

    def set_values(self, ids, values) -> None:
        """Never called while building (the encoders only capture it for warm starts)."""


@dataclass
class DirectModel:
    """The importance MIP as arrays: columns, CSC matrix, row bounds, costs."""

    col_lower: np.ndarray
    col_upper: np.ndarray
    integer: np.ndarray
    cost: np.ndarray
    A: sp.csc_matrix
    row_lower: np.ndarray
    row_upper: np.ndarray


def direct_build(
    network: Network, x: np.ndarray, y: np.ndarray, settings: ImportanceSettings
) -> DirectModel:
    """The importance MIP of ``network`` on ``(x, y)`` built with numpy only (CE loss, ReLUs;
    affine and residual layers, max pooling right after a scored ReLU); folded as the
    formulation folds it (binary scores, one scored layer: docs/mathematics.md §4.8)."""
    bounds = interval_bounds(network, x)
    if folded_layer(network, settings) is not None:
        return _direct_folded(network, x, y, settings, bounds)
    walk = _Walk(network, bounds, settings.scores == "binary")
    flat = x.reshape(len(x), -1).astype(float)
    state = Operand(np.full(flat.shape, -1, dtype=np.int64), flat, flat, flat)
    layers = network.layers
    sources = {layer.source for layer in layers if isinstance(layer, ResidualLayer)}
    outputs: list[Operand | None] = []
    i = 0
    while i < len(layers):
        layer, pool = layers[i], layers[i + 1] if i + 1 < len(layers) else None
        if isinstance(layer, MaxPoolLayer):
            raise ValueError("the direct path pools only right after a ReLU layer")
        if layer.activation is not None and isinstance(pool, MaxPoolLayer) and i not in sources:
            state = walk.pooled_relu(i, layer, pool, state)
            outputs.append(None)
            i += 1
        else:
            state = walk.affine(i, layer, _joined(layer, state, outputs), i == len(layers) - 1)
        outputs.append(state)
        i += 1
    cols, rows = walk.cols, walk.rows
    for ids in walk.scores.values():
        r = rows.new_rows([settings.min_keep], np.inf)
        rows.terms(np.repeat(r, len(ids)), ids, 1.0)
    loss = cols.add("loss", np.zeros(len(y)), np.full(len(y), np.inf))
    trained_logits = network.forward(x)
    for point in (trained_logits, np.zeros_like(trained_logits)):
        _ce_rows(rows, loss, state.var, y, point)
    weights = unit_weights(network, settings.sparsity)
    return _assemble(cols, rows, walk.scores, weights, loss, settings.lam / len(y))


def _direct_folded(network, x, y, settings, bounds: NetworkBounds) -> DirectModel:
    """The folded model with numpy: scores, logits ``z = base + slope @ s`` and the loss."""
    affine = network.score_affine(x, bounds.big_m)
    cols, rows = _Columns(), RowBlock()
    units = affine.slope.shape[2]
    scores = cols.add("score", np.zeros(units), np.ones(units), binary=True)
    base = affine.base.ravel()
    logits = cols.add("logits", np.full(base.shape, -np.inf), np.full(base.shape, np.inf))
    r = rows.new_rows(base, base)
    rows.terms(r, logits, 1.0)
    slope = affine.slope.reshape(len(base), units)
    row, unit = np.nonzero(slope)
    rows.terms(r[row], scores[unit], -slope[row, unit])
    r = rows.new_rows([settings.min_keep], np.inf)
    rows.terms(np.repeat(r, units), scores, 1.0)
    loss = cols.add("loss", np.zeros(len(y)), np.full(len(y), np.inf))
    trained_logits = network.forward(x)
    for point in (trained_logits, np.zeros_like(trained_logits)):
        _ce_rows(rows, loss, logits.reshape(affine.base.shape), y, point)
    weights = unit_weights(network, settings.sparsity)
    key = {affine.key: scores}
    return _assemble(cols, rows, key, weights, loss, settings.lam / len(y))


def _joined(layer, state: Operand, outputs: list[Operand | None]) -> Operand:
    """What ``layer`` acts on: ``state``, concatenated with its source's output for a residual
    layer."""
    if not isinstance(layer, ResidualLayer):
        return state
    source = outputs[layer.source]
    return Operand(
        *(np.concatenate([getattr(state, f), getattr(source, f)], 1) for f in Operand.FIELDS)
    )


class _Walk:
    """The direct path's layer walk: its column table, rows and score columns by score key."""

    def __init__(self, network: Network, bounds: NetworkBounds, binary: bool) -> None:
        self.network, self.bounds, self.binary = network, bounds, binary
        self.cols, self.rows = _Columns(), RowBlock()
        self.scores: dict[int, np.ndarray] = {}

    def affine(self, i, layer, state: Operand, is_output: bool) -> Operand:
        b = self.bounds.layers[i]
        needed = b.upper > 0 if layer.activation else np.ones(b.upper.shape, dtype=bool)
        if (state.var < 0).all() and not is_output:
            pre_var = np.full(b.upper.shape, -1, dtype=np.int64)
            pre_const = layer.forward(state.const)
        else:
            pre_var = _pre_rows(self.cols, self.rows, b, layer, state, needed)
            pre_const = np.zeros(b.upper.shape)
        pre = Operand(pre_var, pre_const, b.lower, b.upper)
        if layer.activation is None:
            return pre
        return self.relu(i, layer, pre, needed, layer.unit_of)

    def unit_scores(self, i: int, layer) -> tuple[np.ndarray, np.ndarray]:
        """Per unit: its score column (-1 for a plain ReLU) and its constant ``M``."""
        key = self.network.score_key(i)
        if key is None:
            return np.full(layer.n_units, -1, dtype=np.int64), np.zeros(layer.n_units)
        if key not in self.scores:
            n = layer.n_units
            self.scores[key] = self.cols.add(f"L{i}_score", np.zeros(n), np.ones(n), self.binary)
        return self.scores[key], self.bounds.big_m[i]

    def relu(self, i, layer, pre: Operand, live, unit) -> Operand:
        """Scored ReLUs on the ``live`` entries of ``pre``; ``unit`` maps an entry to its unit."""
        score, big_m = self.unit_scores(i, layer)
        k, j = np.nonzero(live)
        entries = ReluEntries(
            pre_id=pre.var[k, j],
            pre_const=pre.const[k, j],
            lower=pre.lower[k, j],
            upper=pre.upper[k, j],
            big_m=big_m[unit[j]],
            score_id=score[unit[j]],
        )
        enc = encode_scored_relu(self.cols, self.rows, entries, self.binary, f"L{i}")
        out = np.full(live.shape, -1, dtype=np.int64)
        out[k, j] = enc.h
        zeros = np.zeros(live.shape)
        return Operand(out, zeros, zeros, np.maximum(pre.upper, 0.0))

    def pooled_relu(self, i, layer, pool: MaxPoolLayer, state: Operand) -> Operand:
        """Max pooling of the pre-activations, then one scored ReLU per pooled output."""
        b = self.bounds.layers[i]
        cols, rows = self.cols, self.rows
        plan = plan_pooling(pool.windows, b.lower, b.upper, layer.activation)
        pad, safe, live = plan.pad, plan.safe, plan.live
        if (state.var < 0).all():
            pre_var = np.full(b.upper.shape, -1, dtype=np.int64)
            pre_const = layer.forward(state.const)
        else:
            pre_var = _pre_rows(cols, rows, b, layer, state, plan.needed)
            pre_const = np.zeros(b.upper.shape)
        pooled = Operand(
            np.full(live.shape, -1, dtype=np.int64), np.zeros(live.shape), *plan.pooled_bounds()
        )
        for k in range(live.shape[0]):
            w = np.flatnonzero(live[k])
            entries = Operand(
                var=np.where(pad[w], -1, pre_var[k][safe[w]]),
                const=np.where(pad[w], 0.0, pre_const[k][safe[w]]),
                lower=plan.lower[k, w],
                upper=plan.upper[k, w],
            )
            out = encode_max_pool(cols, rows, entries, f"L{i}_k{k}")[0]
            for name in Operand.FIELDS:
                getattr(pooled, name)[k, w] = getattr(out, name)
        return self.relu(i, layer, pooled, live, layer.unit_of[plan.first_tap])


def _pre_rows(cols, rows, b, layer: Affine, state: Operand, needed) -> np.ndarray:
    """``a_kj - sum_i A_ji h_ki = c_j + sum_i A_ji const_ki``, all samples at once."""
    pre_var = np.full(needed.shape, -1, dtype=np.int64)
    pre_var[needed] = cols.add("pre", b.lower[needed], b.upper[needed])
    rhs = layer.forward(state.const)[needed]
    r = rows.new_rows(rhs, rhs)
    row_of = np.full(needed.shape, -1, dtype=np.int64)
    row_of[needed] = r
    rows.terms(r, pre_var[needed], 1.0)
    matrix = layer.matrix.tocoo()
    for k in range(needed.shape[0]):
        use = needed[k, matrix.row] & (state.var[k, matrix.col] >= 0)
        rows.terms(row_of[k, matrix.row[use]], state.var[k, matrix.col[use]], -matrix.data[use])
    return pre_var


def _ce_rows(rows: RowBlock, loss, logit_ids, y, points) -> None:
    """Tangent planes of ``logsumexp`` at ``points``: ``t_k + (e_y - p) . z_k >= lse - p . z0``."""
    p = softmax(points, axis=1)
    coefs = -p
    coefs[np.arange(len(y)), y] += 1.0
    rhs = logsumexp(points, axis=1) - np.sum(p * points, axis=1)
    r = rows.new_rows(rhs, np.inf)
    rows.terms(r, loss, 1.0)
    rows.terms(r[:, None], logit_ids, coefs)


def _assemble(cols: _Columns, rows: RowBlock, scores, weights, loss, loss_weight) -> DirectModel:
    cost = np.zeros(cols.count)
    for i, ids in scores.items():
        cost[ids] = weights[i]
    cost[loss] = loss_weight
    A, row_lower, row_upper = rows.matrix(cols.count)
    return DirectModel(
        np.concatenate(cols.lower),
        np.concatenate(cols.upper),
        np.concatenate(cols.integer),
        cost,
        A.tocsc(),
        row_lower,
        row_upper,
    )


def direct_load(model: DirectModel) -> highspy.Highs:
    """Hand the arrays to HiGHS (no solve)."""
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    A = model.A
    h.passModel(
        A.shape[1],
        A.shape[0],
        A.nnz,
        _COLWISE,
        _MINIMIZE,
        0.0,
        model.cost,
        np.clip(model.col_lower, -_INF, _INF),
        np.clip(model.col_upper, -_INF, _INF),
        np.clip(model.row_lower, -_INF, _INF),
        np.clip(model.row_upper, -_INF, _INF),
        A.indptr.astype(np.int32),
        A.indices.astype(np.int32),
        A.data,
        model.integer.astype(np.int32),
    )
    return h


# --- the Pyomo path --------------------------------------------------------------------------


def pyomo_load(network, x, y, settings, parts: dict[str, float] | None = None) -> highspy.Highs:
    """Build the Pyomo model, compile it and pass it to HiGHS as the HiGHS backend does."""
    t0 = time.perf_counter()
    im = build_importance_model(network, x, y, settings)
    t1 = time.perf_counter()
    form = compile_model(im.model)
    t2 = time.perf_counter()
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    pass_model(highspy, h, form)
    t3 = time.perf_counter()
    if parts is not None:
        parts.update(build=t1 - t0, compile=t2 - t1, load=t3 - t2)
    return h


# --- checks and timing -----------------------------------------------------------------------


def same_matrix(network, x, y, settings) -> dict[str, int]:
    """Check that both paths give one model up to the order of rows and columns; its sizes."""
    im = build_importance_model(network, x, y, settings)
    form = compile_model(im.model)
    direct = direct_build(network, x, y, settings)
    ids = {id(v): j for j, v in enumerate(im.table.variables)}
    order = np.array([ids[id(v)] for v in form.variables])
    pyomo_A = form.A.tocsc()
    direct_A = direct.A[:, order].tocsc()
    checks = {
        "shape": pyomo_A.shape == direct_A.shape,
        "nonzeros": pyomo_A.nnz == direct_A.nnz,
        "costs": np.allclose(form.c, direct.cost[order]),
        "column bounds": np.array_equal(form.col_lower, direct.col_lower[order])
        and np.array_equal(form.col_upper, direct.col_upper[order]),
        "integrality": np.array_equal(form.integer, direct.integer[order]),
        "row bounds": _same_sorted(form.row_lower, direct.row_lower)
        and _same_sorted(form.row_upper, direct.row_upper),
        "columns": _same_columns(pyomo_A, direct_A),
    }
    failed = [name for name, ok in checks.items() if not ok]
    if failed:
        raise SystemExit(f"the direct build differs from the Pyomo model in: {', '.join(failed)}")
    return {
        "columns": form.num_cols,
        "rows": form.num_rows,
        "nonzeros": int(form.A.nnz),
        "integer": int(form.integer.sum()),
    }


def _same_sorted(a: np.ndarray, b: np.ndarray) -> bool:
    return np.allclose(np.sort(a), np.sort(b), rtol=1e-12, atol=1e-12)


def _same_columns(a: sp.csc_matrix, b: sp.csc_matrix) -> bool:
    """Each column holds the same multiset of coefficients (rows may come in another order)."""
    if not np.array_equal(np.diff(a.indptr), np.diff(b.indptr)):
        return False
    owner = np.repeat(np.arange(a.shape[1]), np.diff(a.indptr))
    sa = np.lexsort((a.data, owner))
    sb = np.lexsort((b.data, owner))
    return np.allclose(a.data[sa], b.data[sb], rtol=1e-12, atol=1e-12)


def measure(case: Case, settings: ImportanceSettings, rounds: int) -> None:
    """Alternate the two paths ``rounds`` times (after one warm-up each)."""
    net, x, y = case.network, case.x, case.y
    pyomo_load(net, x, y, settings)
    direct_load(direct_build(net, x, y, settings))
    for _ in range(rounds):
        parts: dict[str, float] = {}
        start = time.perf_counter()
        pyomo_load(net, x, y, settings, parts)
        middle = time.perf_counter()
        model = direct_build(net, x, y, settings)
        built = time.perf_counter()
        direct_load(model)
        end = time.perf_counter()
        case.direct_seconds.append(end - middle)
        case.pyomo_seconds.append(middle - start)
        parts.update(direct_build=built - middle, direct_load=end - built)
        for key, value in parts.items():
            case.parts.setdefault(key, []).append(value)


def make_case(name: str, recipe: Recipe, samples: int, dataset: Dataset) -> Case:
    model = trained(dataset, recipe, CACHE).model
    batch = mip_batch(model, dataset, samples_per_class=-(-samples // dataset.num_classes))
    rank = np.arange(len(batch.y)) % (len(batch.y) // dataset.num_classes)
    pick = np.lexsort((batch.y, rank))[:samples]
    x, y = batch.x[pick], batch.y[pick]
    network = extract(model, x).network
    return Case(name, network, x, y, [], [], {}, {})


# --- report ----------------------------------------------------------------------------------


def summary(case: Case) -> dict:
    pyomo_s = statistics.median(case.pyomo_seconds)
    direct_s = statistics.median(case.direct_seconds)
    return {
        "case": case.name,
        "size": case.size,
        "pyomo_seconds": pyomo_s,
        "direct_seconds": direct_s,
        "ratio": pyomo_s / direct_s,
        "target_met": pyomo_s / direct_s <= TARGET_RATIO,
        "parts": {k: statistics.median(v) for k, v in case.parts.items()},
        "pyomo_all": case.pyomo_seconds,
        "direct_all": case.direct_seconds,
    }


def markdown(record: dict, meta: dict) -> str:
    lines = [
        f"# Fast loading into HiGHS, {today(meta)}",
        "",
        f"Median of {record['rounds']} alternating rounds; no solve. Target: Pyomo path <= "
        f"{TARGET_RATIO:g}x the direct path. Both paths give the same matrix (checked).",
        "",
        "| network | columns | rows | nonzeros | Pyomo build | compile | HiGHS load "
        "| Pyomo path (s) | direct build | direct load | direct (s) | ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in record["results"]:
        s, p = r["size"], r["parts"]
        mark = "met" if r["target_met"] else "MISSED"
        lines.append(
            f"| {r['case']} | {s['columns']} | {s['rows']} | {s['nonzeros']} | {p['build']:.2f} "
            f"| {p['compile']:.2f} | {p['load']:.2f} | {r['pyomo_seconds']:.2f} "
            f"| {p['direct_build']:.2f} | {p['direct_load']:.2f} "
            f"| {r['direct_seconds']:.2f} | {r['ratio']:.2f}x ({mark}) |"
        )
    lines += [
        "",
        "Where the Pyomo path's time goes (build minus the same numpy work = Pyomo objects):",
    ]
    lines += [""] + [_where(r) for r in record["results"]]
    return "\n".join(lines) + "\n"


def _where(result: dict) -> str:
    p, total = result["parts"], result["pyomo_seconds"]
    pyomo_objects = max(p["build"] - p["direct_build"], 0.0)
    return (
        f"* {result['case']}: Pyomo variables and MatrixConstraint rows {pyomo_objects:.2f} s "
        f"({pyomo_objects / total:.0%}), compiling them back to matrices {p['compile']:.2f} s "
        f"({p['compile'] / total:.0%}), HiGHS load {p['load']:.2f} s ({p['load'] / total:.0%})."
    )


def main() -> None:
    args = _parse()
    meta = run_info()
    torch.set_num_threads(1)
    dataset = load_data(data_spec(args, MNIST, "mnist"))
    settings = ImportanceSettings()
    results = []
    for name, (recipe, samples) in CASES.items():
        case = make_case(name, recipe, samples, dataset)
        case.size = same_matrix(case.network, case.x, case.y, settings)
        measure(case, settings, args.rounds)
        results.append(summary(case))
    record = {
        "rounds": args.rounds,
        "settings": settings,
        "target_ratio": TARGET_RATIO,
        "results": results,
    }
    table = markdown(record, meta)
    write_results(f"loading-{today(meta)}", record, table, meta)
    print(table)


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_arguments(parser, MNIST)
    parser.add_argument("--rounds", type=int, default=3, help="alternating timing rounds")
    return parser.parse_args()


if __name__ == "__main__":
    main()
