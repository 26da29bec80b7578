"""The neuron-importance MIP (docs/mathematics.md §4), written once as a Pyomo model.

    minimise  sum_l (1/n_l) sum_i s^l_i + lam * (1/N) sum_k loss(z_k, y_k)
    s.t.      the network, with h^l_{k,i} = ReLU(a^l_{k,i} - (1 - s^l_i) M^l_i), on the batch
              sum_i s^l_i >= min_keep in every scored layer,  s in [0, 1] or {0, 1}

(``sparsity="unit"`` weighs every unit ``L/N_units`` instead of ``1/n_l``.)

The model is built from a :class:`~oamip.network.Network` and a fixed batch; its large linear
parts are ``MatrixConstraint`` blocks. :class:`ImportanceModel` keeps the handles needed to read
scores and logits back, to set every variable from a score vector (warm starts, checks) and to add
cross-entropy cuts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cached_property

import numpy as np
import pyomo.environ as pyo
from pyomo.common.gc_manager import PauseGC
from pyomo.core.expr.numeric_expr import LinearExpression

from oamip import checks
from oamip.bounds import NetworkBounds, interval_bounds
from oamip.errors import InvalidInputError
from oamip.formulations.blocks import RowBlock, VarTable
from oamip.formulations.encodings import (
    Operand,
    PoolPlan,
    ReluEntries,
    encode_max_pool,
    encode_scored_activation,
    plan_pooling,
)
from oamip.formulations.ideal_cuts import CutSite, separate
from oamip.formulations.losses import Loss, LossSite, get_loss
from oamip.network import Affine, MaxPoolLayer, Network, ResidualLayer, ScoreAffine, Trace

SCORE_MODES = ("continuous", "binary")
SPARSITY_MODES = ("layer", "unit")
"""How the sparsity term weighs a unit: ``layer`` (the paper's), ``1/n_l`` in a layer of ``n_l``
units, so every layer counts the same; ``unit``, ``L/N`` for ``N`` units in ``L`` scored layers,
so every unit counts the same (and the term's maximum is ``L`` in both)."""
ENCODINGS = ("tight", "big-m")


LAM_MAX = 1e6
"""Largest loss weight: beyond it the sparsity term (at most 1 per scored layer) is lost in the
solver's tolerances next to the loss term, and weights near 1e20 make the solvers fail."""


@dataclass
class ImportanceSettings:
    """The knobs of the objective and the score domain (defaults: the authors' settings).

    The first layer of the one options type: :class:`oamip.solve.options.ScoringOptions` adds
    the solve's options to these, and the prune pipeline's settings add its own.
    """

    loss: str | Loss = checks.option(
        "ce",
        "the loss on the logits: a registered name (ce, hinge, ...) or a Loss object with its "
        "parameters, e.g. Hinge(margin=0.5)",
    )
    lam: float = checks.option(5.0, "the weight of the mean loss against the sparsity term")
    scores: str = checks.option(
        "continuous", "'continuous' scores in [0, 1] (the paper's) or 'binary' (subset selection)"
    )
    min_keep: int = checks.option(1, "units every scored layer keeps")
    sparsity: str = checks.option(
        "layer",
        "'layer' (the paper's): each layer's scores weigh 1/units, every layer counts the same; "
        "'unit': every unit counts the same",
    )
    encoding: str = checks.option(
        "tight", "'tight' (per-sample bounds, facets) or 'big-m' (the textbook encoding)"
    )

    def validate(self) -> None:
        """Check every field (an InvalidInputError names the culprit) and normalise: numbers
        become plain floats and ints, the loss a Loss object."""
        self.loss = get_loss(self.loss)
        self.scores = checks.choice("scores", self.scores, SCORE_MODES)
        self.sparsity = checks.choice("sparsity", self.sparsity, SPARSITY_MODES)
        self.encoding = checks.choice("encoding", self.encoding, ENCODINGS)
        self.lam = checked_lam(self.lam)
        self.min_keep = checks.whole("min_keep", self.min_keep, 0)

    @property
    def loss_fn(self) -> Loss:
        """The loss as a Loss object (the field may still hold a name before ``validate``)."""
        return get_loss(self.loss)


def checked_lam(lam) -> float:
    """``lam`` as a float in [0, LAM_MAX], or a clear error."""
    lam = checks.real("lam", lam, 0.0)
    if lam > LAM_MAX:
        raise InvalidInputError(
            f"lam must be at most {LAM_MAX:g}, got {lam:g}: beyond that the loss term swamps "
            "the sparsity term within the solver's tolerances (nothing more to gain)"
        )
    return lam


@dataclass
class ImportanceModel:
    """A built importance MIP and the handles to work with it."""

    model: pyo.ConcreteModel
    network: Network
    x: np.ndarray
    y: np.ndarray
    settings: ImportanceSettings
    bounds: NetworkBounds
    table: VarTable
    score_ids: dict[int, np.ndarray] = field(default_factory=dict)
    logit_ids: np.ndarray | None = None
    loss_ids: np.ndarray | None = None
    setters: list[Callable[[list[Trace]], None]] = field(default_factory=list)
    pre_ids: dict[int, np.ndarray] = field(default_factory=dict)
    """Per affine layer fed by variables: the variable of each (sample, output)'s
    pre-activation, -1 where there is none (bound tightening optimises over these)."""
    cut_sites: list[CutSite] = field(default_factory=list)
    cut_blocks: int = 0
    relu_entries: dict[str, int] = field(default_factory=dict)
    """How many ReLU entries (per sample, output or pooled output, and ramp of an activation)
    each case of :func:`encode_scored_relu` encoded, and ``dead``: those that can never be
    positive, which get no variable; ``folded``: those of a model built on :attr:`affine`
    (per pooled output where a max pooling follows, and per ramp, as the layered model counts),
    which encodes no unit at all."""
    affine: ScoreAffine | None = None
    """Where the logits are an affine map of the binary scores, that map: the model is then
    built on it (one row per logit, §4.8), not on the layers."""

    @property
    def big_m(self) -> dict[int, np.ndarray]:
        return self.bounds.big_m

    def score_values(self) -> dict[int, np.ndarray]:
        """The scores currently held by the model's variables, clipped to [0, 1]."""
        return {i: np.clip(self.table.values(ids), 0.0, 1.0) for i, ids in self.score_ids.items()}

    def logit_values(self) -> np.ndarray:
        """The logits currently held by the model's variables."""
        return self.table.values(self.logit_ids).reshape(self.logit_ids.shape)

    def forward(self, scores: dict[int, np.ndarray]) -> np.ndarray:
        """The network's logits on the batch with docs/mathematics.md (1) applied (float64)."""
        return self.network.forward(self.x, scores, self.big_m)

    def objective_at(self, scores: dict[int, np.ndarray]) -> float:
        """The objective (2) of docs/mathematics.md §4.2 at ``scores``, with the exact loss."""
        sparsity = sparsity_term(self.network, scores, self.settings.sparsity)
        return sparsity + self.settings.lam * float(np.mean(self.losses_at(self.forward(scores))))

    def losses_at(self, logits: np.ndarray, repeats: int = 1) -> np.ndarray:
        """The exact per-sample loss of logits computed on the batch (``repeats`` times over,
        one batch after the other)."""
        loss = self.settings.loss_fn
        targets = loss.targets(self.y, self.trained_logits)
        return loss.values(logits, np.tile(targets, (repeats,) + (1,) * (targets.ndim - 1)))

    @cached_property
    def trained_logits(self) -> np.ndarray:
        """The dense network's logits on the batch (every score 1)."""
        return self.network.forward(self.x)

    def assign(self, scores: dict[int, np.ndarray]) -> None:
        """Set every variable to its value when the network runs with ``scores``."""
        trace = self.network.trace(self.x, scores, self.big_m)
        for i, ids in self.score_ids.items():
            self.table.set_values(ids, scores[i])
        for setter in self.setters:
            setter(trace)
        self.table.set_values(self.loss_ids, self.losses_at(trace[-1].out))

    def fix_scores(self, scores: dict[int, np.ndarray]) -> None:
        """Fix the score variables to ``scores`` (the rest of the network follows)."""
        for i, ids in self.score_ids.items():
            for var, val in zip((self.table.variables[j] for j in ids), scores[i].tolist()):
                var.fix(val)

    def unfix_scores(self) -> None:
        for ids in self.score_ids.values():
            for j in ids.tolist():
                self.table.variables[j].unfix()

    def all_ones(self) -> dict[int, np.ndarray]:
        """The trained network's scores: every unit kept (always feasible)."""
        return {i: np.ones(len(ids)) for i, ids in self.score_ids.items()}

    def set_lam(self, lam: float) -> None:
        """Change the loss weight in place: the network encoding and every cut stay valid, so a
        sweep over ``lam`` reuses one model (and the last solution as a warm start)."""
        self.settings.lam = checked_lam(lam)
        _set_objective(self)

    def add_ideal_cuts(self, values: np.ndarray) -> int:
        """Separate ideal ReLU cuts at ``values`` (every variable's value, by global id) and add
        the violated ones as a new constraint block; returns how many were added."""
        rows = RowBlock()
        added = sum(separate(site, values, rows) for site in self.cut_sites)
        if added:
            self.cut_blocks += 1
            rows.attach(self.table, f"ideal_cuts_{self.cut_blocks}")
        return added

    @property
    def loss_site(self) -> LossSite:
        return LossSite(self.model, self.table, self.loss_ids, self.logit_ids, self.y)

    def add_cuts(self, points: np.ndarray, samples: np.ndarray) -> None:
        """Refine an inexact loss (cross-entropy) at ``points[k]`` (logits) for the samples."""
        self.settings.loss_fn.add_cuts(self.loss_site, points, samples)


def unit_weights(network: Network, sparsity: str) -> dict[int, float]:
    """The sparsity term's weight of one unit of each scored layer (see SPARSITY_MODES)."""
    if sparsity == "layer":
        return {i: 1.0 / network.layers[i].n_units for i in network.scored}
    total = sum(network.layers[i].n_units for i in network.scored)
    return dict.fromkeys(network.scored, len(network.scored) / total)


def sparsity_term(network: Network, scores: dict[int, np.ndarray], sparsity: str) -> float:
    """``sum_l w_l sum_i s^l_i`` over the score vectors (a coupled group counts once), with
    the unit weights ``w_l`` of :func:`unit_weights`."""
    weights = unit_weights(network, sparsity)
    return float(sum(np.sum(scores[i]) * weights[i] for i in network.scored))


def build_importance_model(
    network: Network,
    x: np.ndarray,
    y: np.ndarray,
    settings: ImportanceSettings | None = None,
    bounds: NetworkBounds | None = None,
    fold: bool = True,
) -> ImportanceModel:
    """Build the importance MIP of ``network`` on the batch ``(x, y)``.

    ``bounds`` may be tighter than the interval bounds (bound tightening); the constants ``M``
    of the score term must be the interval ones so the problem does not change. With binary
    scores and logits affine in them (:meth:`~oamip.network.Network.score_affine`: one scored
    layer reading constants, as a decomposed piece's), the model is built on that affine map
    unless ``fold`` is False: the same problem without a variable per unit and sample.
    """
    settings = replace(settings) if settings is not None else ImportanceSettings()
    settings.validate()
    x = network.check_input(x)
    y = check_labels(y, len(x), network.num_classes)
    if not network.scored:
        raise InvalidInputError(
            "the network has no hidden activation layer: there is nothing to score"
        )
    bounds = bounds or interval_bounds(network, x)
    model = pyo.ConcreteModel(name="neuron_importance")
    im = ImportanceModel(model, network, x, y, settings, bounds, VarTable(model))
    if fold and folded_layer(network, settings) is not None:
        im.affine = network.score_affine(x, bounds.big_m)
    with PauseGC():
        _Builder(im).build()
    return im


def folded_layer(network: Network, settings: ImportanceSettings) -> int | None:
    """The scored layer whose binary scores the logits are affine in, where the model is built
    on that map (docs/mathematics.md §4.8: binary scores, :meth:`Network.foldable`); None
    where the model encodes the layers."""
    return network.foldable() if settings.scores == "binary" else None


def check_labels(y, n: int, classes: int) -> np.ndarray:
    y = np.asarray(y)
    if y.shape != (n,):
        raise InvalidInputError(f"labels have shape {y.shape}; expected ({n},), one per sample")
    whole = y.dtype.kind in "iu" or (y.dtype.kind == "f" and np.all(np.mod(y, 1) == 0))
    if not whole:
        raise InvalidInputError(f"labels must be whole class indices, got dtype {y.dtype}")
    y = y.astype(np.int64)
    if y.min() < 0 or y.max() >= classes:
        raise InvalidInputError(f"labels must lie in 0..{classes - 1}; got {y.min()}..{y.max()}")
    return y


class _Builder:
    """Walks the network layer by layer and adds its encoding to the model."""

    def __init__(self, im: ImportanceModel) -> None:
        self.im = im
        self.rows = RowBlock()
        self.table = im.table
        self.binary = im.settings.scores == "binary"
        self.tight = im.settings.encoding == "tight"
        self.outputs: list[Operand | None] = []
        """What each layer hands on (None for a scored layer pooled with its max pooling)."""

    def build(self) -> None:
        self.im.logit_ids = self._folded() if self.im.affine is not None else self._layers()
        self._score_rows()
        self._loss()
        self.rows.attach(self.table, "network")
        _set_objective(self.im)

    def _layers(self) -> np.ndarray:
        """Encode the network layer by layer; returns the logits' variables."""
        x = self.im.x.reshape(len(self.im.x), -1)
        state = Operand(np.full(x.shape, -1, dtype=np.int64), x, x, x)
        layers = self.im.network.layers
        sources = {layer.source for layer in layers if isinstance(layer, ResidualLayer)}
        i = 0
        while i < len(layers):
            layer = layers[i]
            pool = layers[i + 1] if i + 1 < len(layers) else None
            if isinstance(layer, MaxPoolLayer):
                state = self._max_pool(i, layer, state)
            elif self.tight and _pooled(layer, pool) and i not in sources:
                state = self._pooled_relu(i, layer, pool, state)
                self.outputs.append(None)
                i += 1
            else:
                state = self._affine(i, layer, self._input(i, state), i == len(layers) - 1)
            self.outputs.append(state)
            i += 1
        return state.var

    def _folded(self) -> np.ndarray:
        """The logits as ``base + slope @ s`` (:class:`~oamip.network.ScoreAffine`): one row
        per logit over the scored layer's scores, no variable for any unit's output."""
        affine = self.im.affine
        layers = self.im.network.layers
        layer = layers[affine.key]
        scores, _ = self._scores(affine.key, layer)
        base = affine.base.ravel()
        logits = self.table.add("logits", np.full(base.shape, -np.inf), np.full(base.shape, np.inf))
        r = self.rows.new_rows(base, base)
        self.rows.terms(r, logits, 1.0)
        slope = affine.slope.reshape(len(base), -1)
        row, unit = np.nonzero(slope)
        self.rows.terms(r[row], scores[unit], -slope[row, unit])
        logits = logits.reshape(affine.base.shape)
        self._record_values(len(layers) - 1, logits, "out")
        pool = layers[affine.key + 1] if affine.key + 1 < len(layers) else None
        entries = pool.n_out if _pooled(layer, pool) else layer.n_out
        ramps = len(layer.activation.ramps)
        self.im.relu_entries["folded"] = len(self.im.x) * entries * ramps
        return logits

    def _input(self, i: int, state: Operand) -> Operand:
        """What layer ``i`` acts on: ``state``, the previous layer's output, concatenated with
        the source's output for a residual layer (docs/mathematics.md §4.10)."""
        layer = self.im.network.layers[i]
        if not isinstance(layer, ResidualLayer):
            return state
        source = self.outputs[layer.source]
        both = (np.concatenate([getattr(state, f), getattr(source, f)], 1) for f in Operand.FIELDS)
        return Operand(*both)

    def _affine(self, i: int, layer: Affine, state: Operand, is_output: bool) -> Operand:
        b = self.im.bounds.layers[i]
        act = layer.activation
        needed = act.reach(b.lower, b.upper) > 0 if act else np.ones(b.upper.shape, dtype=bool)
        pre_var, pre_const = self._pre_activations(i, layer, state, needed, is_output)
        if act is None:
            self._record_values(i, pre_var, "pre")
            return Operand(pre_var, pre_const, b.lower, b.upper)
        return self._scored_relu(i, layer, state, pre_var, pre_const, needed)

    def _pre_activations(self, i, layer: Affine, state: Operand, needed, is_output=False):
        """The layer's pre-activations as (variable ids, constants): constants when every
        input is a constant (the logits always get variables), else one variable per
        ``needed`` entry."""
        shape = needed.shape
        if (state.var < 0).all() and not is_output:
            return np.full(shape, -1, dtype=np.int64), layer.forward(state.const)
        return self._pre_activation_rows(i, layer, state, needed), np.zeros(shape)

    def _pre_activation_rows(self, i, layer: Affine, state: Operand, needed) -> np.ndarray:
        """``a_kj - sum_i A_ji h_ki = c_j + sum_i A_ji const_ki`` for every needed (k, j)."""
        b = self.im.bounds.layers[i]
        pre_var = np.full(needed.shape, -1, dtype=np.int64)
        pre_var[needed] = self.table.add(f"L{i}_pre", b.lower[needed], b.upper[needed])
        self.im.pre_ids[i] = pre_var
        matrix = layer.matrix
        for k in range(needed.shape[0]):
            outs = np.flatnonzero(needed[k])
            rhs = (matrix[outs] @ state.const[k]) + layer.offset[outs]
            r = self.rows.new_rows(rhs, rhs)
            self.rows.terms(r, pre_var[k, outs], 1.0)
            inputs = np.flatnonzero(state.var[k] >= 0)
            sub = matrix[outs][:, inputs].tocoo()
            self.rows.terms(r[sub.row], state.var[k, inputs][sub.col], -sub.data)
        return pre_var

    def _cut_sites(self, layer, state: Operand, enc, k, j) -> None:
        """Remember the big-M ramps fed by variables, where ideal cuts can be separated (a
        ramp's pre-activation is ``side (A h + c) - offset``)."""
        for part in enc.parts:
            ramp = part.ramp
            matrix, offset = ramp.side * layer.matrix, ramp.side * layer.offset - ramp.offset
            pick = part.needed
            self._cut_site(matrix, offset, state, part.entries, part.encoding, k[pick], j[pick])

    def _cut_site(self, matrix, offset, state: Operand, entries: ReluEntries, enc, k, j) -> None:
        pick = (enc.v >= 0) & (entries.pre_id >= 0) & (entries.score_id >= 0)
        if not pick.any():
            return
        site = CutSite(
            matrix=matrix,
            offset=offset,
            in_var=state.var,
            in_const=state.const,
            in_lower=state.lower,
            in_upper=state.upper,
            k=k[pick],
            j=j[pick],
            h=enc.h[pick],
            v=enc.v[pick],
            s=entries.score_id[pick],
            big_m=entries.big_m[pick],
            h_upper=entries.upper[pick],
        )
        self.im.cut_sites.append(site)

    def _scores(self, i: int, layer: Affine) -> tuple[np.ndarray, np.ndarray]:
        """Per unit of layer ``i``'s activation: its score variable and its constant ``M``; a
        plain activation has neither (-1 and 0), a coupled group's layers share the first one's
        variables."""
        key = self.im.network.score_key(i)
        if key is None:
            return np.full(layer.n_units, -1, dtype=np.int64), np.zeros(layer.n_units)
        if key not in self.im.score_ids:
            n_units = layer.n_units
            self.im.score_ids[key] = self.table.add(
                f"L{i}_score", np.zeros(n_units), np.ones(n_units), binary=self.binary
            )
        return self.im.score_ids[key], self.im.big_m[i]

    def _scored_relu(self, i, layer: Affine, state: Operand, pre_var, pre_const, needed):
        b = self.im.bounds.layers[i]
        scores, big_m = self._scores(i, layer)
        big_m = big_m[layer.unit_of]
        k, j = np.nonzero(needed)
        entries = ReluEntries(
            pre_id=pre_var[k, j],
            pre_const=pre_const[k, j],
            lower=b.lower[k, j],
            upper=b.upper[k, j],
            big_m=big_m[j],
            score_id=scores[layer.unit_of[j]],
        )
        self._record_values(i, pre_var, "pre")
        enc = self._encode(layer, entries, f"L{i}", needed.size)
        self.im.setters.append(
            lambda t: enc.set_values(t[i].pre[k, j], t[i].shift[k, j], t[i].out[k, j])
        )
        self._cut_sites(layer, state, enc, k, j)
        out_var = np.full(needed.shape, -1, dtype=np.int64)
        out_var[k, j] = enc.out
        out = self.im.bounds.output_bounds(self.im.network, i)
        return Operand(out_var, np.zeros(needed.shape), out.lower, out.upper)

    def _pooled_relu(self, i: int, layer: Affine, pool: MaxPoolLayer, state: Operand):
        """A scored ReLU followed by max pooling, encoded pooling first. A window lies in one
        channel, so its units share the shift ``(1 - s) M`` and
        ``max_t ReLU(a_t - (1 - s) M) = ReLU(max_t a_t - (1 - s) M)``: one ReLU (and at most
        one binary) per pooled output instead of one per tap, and a first layer, whose
        pre-activations are constants, pools them for free."""
        b = self.im.bounds.layers[i]
        plan = plan_pooling(pool.windows, b.lower, b.upper, layer.activation)
        pre_var, pre_const = self._pre_activations(i, layer, state, plan.needed)
        self._record_values(i, pre_var, "pre")
        live = plan.live
        pooled = Operand(
            np.full(live.shape, -1, dtype=np.int64), np.zeros(live.shape), *plan.pooled_bounds()
        )
        for k in range(live.shape[0]):
            self._pool_sample(i, k, plan, np.flatnonzero(live[k]), pre_var, pre_const, pooled)
        return self._relu_of_pooled(i, layer, pool, plan, pooled)

    def _pool_sample(self, i, k, plan: PoolPlan, windows, pre_var, pre_const, pooled) -> None:
        """Max pooling of sample ``k``'s pre-activations over its live ``windows``."""
        pad, safe = plan.pad[windows], plan.safe[windows]
        entries = Operand(
            var=np.where(pad, -1, pre_var[k][safe]),
            const=np.where(pad, 0.0, pre_const[k][safe]),
            lower=plan.lower[k, windows],
            upper=plan.upper[k, windows],
        )
        out, set_pool = encode_max_pool(self.table, self.rows, entries, f"L{i}_k{k}")
        for name in Operand.FIELDS:
            getattr(pooled, name)[k, windows] = getattr(out, name)
        self.im.setters.append(
            lambda trace: set_pool(np.where(pad, -np.inf, trace[i].pre[k][safe]))
        )

    def _relu_of_pooled(self, i, layer: Affine, pool: MaxPoolLayer, plan: PoolPlan, pooled):
        """The scored ReLU of every live pooled output, with its window's unit (channel)."""
        scores, big_m = self._scores(i, layer)
        unit = layer.unit_of[plan.first_tap]
        k, o = np.nonzero(plan.live)
        entries = ReluEntries(
            pre_id=pooled.var[k, o],
            pre_const=pooled.const[k, o],
            lower=pooled.lower[k, o],
            upper=pooled.upper[k, o],
            big_m=big_m[unit[o]],
            score_id=scores[unit[o]],
        )
        enc = self._encode(layer, entries, f"L{i}", plan.live.size)
        self.im.setters.append(
            lambda t: enc.set_values(
                pool.forward(t[i].pre)[k, o], pool.forward(t[i].shift)[k, o], t[i + 1].out[k, o]
            )
        )
        out_var = np.full(plan.live.shape, -1, dtype=np.int64)
        out_var[k, o] = enc.out
        act = layer.activation
        scored = self.im.network.score_key(i) is not None
        bounds = act.scored_range if scored else act.range
        return Operand(out_var, np.zeros(plan.live.shape), *bounds(pooled.lower, pooled.upper))

    def _encode(self, layer: Affine, entries: ReluEntries, name: str, total: int):
        """The layer's activation on ``entries``, the ones of its ``total`` that can be
        positive (:func:`encode_scored_activation`); each ramp's entries counted by case."""
        act = layer.activation
        enc = encode_scored_activation(
            self.table, self.rows, act, entries, self.binary, name, self.tight
        )
        tally = self.im.relu_entries
        for part in enc.parts:
            tally["dead"] = tally.get("dead", 0) + total - len(part.needed)
            for case, count in part.encoding.counts().items():
                tally[case] = tally.get(case, 0) + count
        return enc

    def _max_pool(self, i: int, layer: MaxPoolLayer, state: Operand) -> Operand:
        windows = layer.windows
        pad = windows < 0
        safe = np.where(pad, 0, windows)
        n = state.var.shape[0]
        outs = []
        for k in range(n):
            entries = Operand(
                var=np.where(pad, -1, state.var[k][safe]),
                const=np.where(pad, 0.0, state.const[k][safe]),
                lower=np.where(pad, -np.inf, state.lower[k][safe]),
                upper=np.where(pad, -np.inf, state.upper[k][safe]),
            )
            out, set_pool = encode_max_pool(self.table, self.rows, entries, f"L{i}_k{k}")
            x = self.im.x.reshape(n, -1)
            self.im.setters.append(_pool_setter(set_pool, i, k, safe, pad, x))
            outs.append(out)
        return Operand(*(np.stack([getattr(o, f) for o in outs]) for f in Operand.FIELDS))

    def _record_values(self, i: int, ids: np.ndarray, field_name: str) -> None:
        mask = ids >= 0
        picked = ids[mask]
        self.im.setters.append(
            lambda trace: self.table.set_values(picked, getattr(trace[i], field_name)[mask])
        )

    def _score_rows(self) -> None:
        keep = self.im.settings.min_keep
        for i, ids in self.im.score_ids.items():
            layer = self.im.network.layers[i]
            if keep > layer.n_units:
                raise InvalidInputError(
                    f"min_keep={keep} but layer '{layer.name}' has only {layer.n_units} units"
                )
            r = self.rows.new_rows([keep], np.inf)
            self.rows.terms(np.repeat(r, len(ids)), ids, 1.0)

    def _loss(self) -> None:
        im = self.im
        n = len(im.y)
        im.loss_ids = self.table.add("loss", np.zeros(n), np.full(n, np.inf))
        im.settings.loss_fn.encode(im.loss_site, self.rows, im.trained_logits)


def _set_objective(im: ImportanceModel) -> None:
    """``sum_l w_l sum_i s_i + lam/N sum_k t_k``, replacing any objective there was."""
    coefs, ids = [], []
    weights = unit_weights(im.network, im.settings.sparsity)
    for i, score in im.score_ids.items():
        coefs += [weights[i]] * len(score)
        ids += score.tolist()
    coefs += [im.settings.lam / len(im.y)] * len(im.loss_ids)
    ids += im.loss_ids.tolist()
    variables = [im.table.variables[j] for j in ids]
    if hasattr(im.model, "objective"):
        im.model.del_component(im.model.objective)
    im.model.objective = pyo.Objective(
        expr=LinearExpression(constant=0.0, linear_coefs=coefs, linear_vars=variables),
        sense=pyo.minimize,
    )


def _pooled(layer, pool) -> bool:
    """Whether ``layer``'s activation is followed by a max pooling, which commutes with it (the
    activation is non-decreasing and the score term constant per channel)."""
    return getattr(layer, "activation", None) is not None and isinstance(pool, MaxPoolLayer)


def _pool_setter(set_pool, i: int, k: int, safe: np.ndarray, pad: np.ndarray, x: np.ndarray):
    """Sets the pooling's variables of sample ``k`` from the values of its input layer."""

    def setter(trace: list[Trace]) -> None:
        inputs = trace[i - 1].out[k] if i > 0 else x[k]
        set_pool(np.where(pad, -np.inf, inputs[safe]))

    return setter
