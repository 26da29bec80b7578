"""Which ReLU units of a trained network are stable on a box of inputs: the proofs of exact
compression (docs/mathematics.md §3.1).

A unit is *dead* on the box when its pre-activation is at most 0 at every input of the box (and,
for a channel, at every position): it always outputs 0 and can be removed with no change to
the network's outputs on the box. It is *active* when its pre-activation is never negative:
its ReLU is the identity there, so it is affine in the layer's input. Proofs go from cheap to
expensive, and each question is asked only while it is open:

1. interval bounds over the box (:func:`oamip.bounds.box_bounds`): ``upper <= 0`` is dead;
2. witnesses: the network run at sample points of the box (its centre, random points, random
   corners, and data when given); a unit positive at one of them is not dead, one negative at
   one of them is not active, whatever a bound says;
3. the LP relaxation of the exact MILP of :mod:`oamip.formulations.reach` (bounds widened by
   ``SAFETY``), with the bounds of earlier layers already tightened;
4. the MILP itself, one per open entry, as a feasibility question within the time left: can
   the entry exceed ``-SAFETY`` (or go below ``SAFETY``)? Infeasible settles it; a solution is
   a new witness.

What the time limit leaves open is reported as undecided and kept: only what is proven goes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np

from oamip import backends
from oamip.backends import SolveOptions, SolveResult, StandardForm, Status
from oamip.bounds import LayerBounds, NetworkBounds, box_bounds, propagate_after
from oamip.errors import InvalidInputError
from oamip.formulations.reach import build_reach_model
from oamip.network import MaxPoolLayer, Network
from oamip.solve.tightening import SAFETY

PROOFS = ("interval", "lp", "milp")
"""How a unit's stability was proven, from cheapest to strongest."""
STATUSES = ("proven", "partial")
"""``proven``: every unit's question was settled (stable, or witnessed unstable); ``partial``:
the time limit (or ``milp=False``) left some open, and those units were kept."""
WITNESS_POINTS = 1024
"""Random points of the box the network is run at (half inside, half at corners)."""
WITNESS_BATCH = 64
"""Points run through the network at once (its whole trace is held for one batch)."""
FIRST_SOLUTION_GAP = 1e9
"""The MILPs are sign questions: any solution answers one, so the solver stops at the first."""
MIN_MILP_SECONDS = 1.0
"""The least time one MILP gets, even when many are left to solve."""


@dataclass
class LayerStability:
    """One ReLU layer's units: proven ``dead`` or ``active`` on the box, by which proof
    (``how``: one of PROOFS, "" for none), and ``open`` where the time limit left the
    question unsettled."""

    dead: np.ndarray
    active: np.ndarray
    how: np.ndarray
    open: np.ndarray


@dataclass
class StabilityProof:
    """What :func:`prove_stability` found, per ReLU layer index of the network."""

    layers: dict[int, LayerStability]
    bounds: NetworkBounds
    lower: np.ndarray
    upper: np.ndarray
    """The box, flat."""
    status: str
    seconds: float
    lps: int = 0
    milps: int = 0
    witnesses: int = 0

    def proofs(self) -> dict[str, int]:
        """How many stable units each kind of proof settled."""
        counts = dict.fromkeys(PROOFS, 0)
        for layer in self.layers.values():
            for how in layer.how[layer.dead | layer.active]:
                counts[str(how)] += 1
        return counts


def plain(network: Network) -> Network:
    """``network`` with every ReLU the trained one (no scores), as the box questions need:
    its bounds through a ReLU are ``[max(L, 0), max(U, 0)]``."""
    layers = [
        layer if isinstance(layer, MaxPoolLayer) else replace(layer, scored=False, share=None)
        for layer in network.layers
    ]
    return Network(network.input_shape, layers)


def prove_stability(
    network: Network,
    lower: np.ndarray,
    upper: np.ndarray,
    *,
    active_layers: tuple[int, ...] = (),
    points: np.ndarray | None = None,
    backend: str = "highs",
    time_limit: float = 60.0,
    milp: bool = True,
    threads: int | None = None,
    seed: int = 0,
) -> StabilityProof:
    """Prove which units of each ReLU layer of ``network`` are dead on the box
    ``[lower, upper]`` (flat inputs), and which units of ``active_layers`` are active.

    ``points`` (flat rows inside the box) join the random witnesses; ``milp=False`` stops after
    the LP relaxation. Within ``time_limit`` seconds; what is left open is reported."""
    start = time.perf_counter()
    net = plain(network)
    lower, upper = checked_box(lower, upper, int(np.prod(net.input_shape)))
    witnesses = box_points(lower, upper, WITNESS_POINTS, seed, points)
    run = _Prover(net, lower, upper, backend, threads, start + time_limit, milp)
    run.signs = witnessed_signs(net, witnesses)
    layers = {}
    for i, layer in enumerate(net.layers):
        if _has_relu(layer):
            layers[i] = run.layer(i, i in active_layers)
    undecided = any(s.open.any() for s in layers.values())
    return StabilityProof(
        layers=layers,
        bounds=run.bounds,
        lower=lower,
        upper=upper,
        status=STATUSES[1] if undecided else STATUSES[0],
        seconds=time.perf_counter() - start,
        lps=run.lps,
        milps=run.milps,
        witnesses=len(witnesses) + run.found,
    )


def checked_box(lower, upper, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The box ``[lower, upper]`` (numbers, or arrays of ``n`` values in any shape) as two flat
    float arrays; refused unless finite and non-empty."""
    lower, upper = np.asarray(lower, dtype=float), np.asarray(upper, dtype=float)
    for name, side in (("lower", lower), ("upper", upper)):
        if side.size not in (1, n):
            raise InvalidInputError(
                f"the box's {name} bound has {side.size} values; give one number or one per "
                f"input ({n})"
            )
    lower = np.broadcast_to(lower.ravel(), (n,)).copy()
    upper = np.broadcast_to(upper.ravel(), (n,)).copy()
    if not (np.isfinite(lower).all() and np.isfinite(upper).all()):
        raise InvalidInputError("the box must have finite bounds; give numbers, not inf or NaN")
    bad = np.flatnonzero(lower > upper)
    if len(bad):
        raise InvalidInputError(
            f"the box is empty: input {bad[0]} has lower bound {lower[bad[0]]:g} above its "
            f"upper bound {upper[bad[0]]:g}; give lower <= upper"
        )
    return lower, upper


def witnessed_signs(
    network: Network, points: np.ndarray
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per ReLU layer, per unit: whether its pre-activation is positive, and whether negative,
    at one of ``points`` (and one of its positions), run in batches of WITNESS_BATCH points."""
    relus = [i for i, layer in enumerate(network.layers) if _has_relu(layer)]
    signs = {i: tuple(np.zeros(network.layers[i].n_units, bool) for _ in "+-") for i in relus}
    for start in range(0, len(points), WITNESS_BATCH):
        trace = network.trace(points[start : start + WITNESS_BATCH])
        for i in relus:
            layer = network.layers[i]
            positive, negative = signs[i]
            positive |= _any_per_unit(trace[i].pre > 0, layer.unit_of, layer.n_units)
            negative |= _any_per_unit(trace[i].pre < 0, layer.unit_of, layer.n_units)
    return signs


def _has_relu(layer) -> bool:
    return not isinstance(layer, MaxPoolLayer) and layer.activation is not None


def box_points(lower, upper, count: int, seed: int, points=None) -> np.ndarray:
    """The box's centre, ``count`` random points (half inside, half at corners) and
    ``points`` (clipped into the box), as flat rows."""
    rng = np.random.default_rng(seed)
    half = count // 2
    inside = lower + rng.random((half, len(lower))) * (upper - lower)
    corners = np.where(rng.random((half, len(lower))) < 0.5, lower, upper)
    found = [((lower + upper) / 2)[None], inside, corners]
    if points is not None:
        found.append(
            np.clip(np.asarray(points, dtype=float).reshape(len(points), -1), lower, upper)
        )
    return np.concatenate(found)


@dataclass
class _Open:
    """The open questions of one layer: entries (flat outputs) and, per entry, the direction
    (-1: is it ever positive? +1: is it ever negative?)."""

    entries: list[int] = field(default_factory=list)
    signs: list[float] = field(default_factory=list)


class _Prover:
    """The proofs of :func:`prove_stability`, layer by layer, with tightened bounds carried on."""

    def __init__(self, network, lower, upper, backend, threads, deadline, milp) -> None:
        self.network = network
        self.lower, self.upper = lower, upper
        self.bounds = box_bounds(network, lower[None], upper[None])
        self.solver = backends.get(backend)
        self.options = SolveOptions(threads=threads)
        self.deadline = deadline
        self.milp = milp
        self.signs: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.lps = self.milps = self.found = 0

    def layer(self, i: int, want_active: bool) -> LayerStability:
        layer = self.network.layers[i]
        unit_of = layer.unit_of
        n = layer.n_units
        b = self.bounds.layers[i]
        lo, hi = b.lower[0].copy(), b.upper[0].copy()
        positive, negative = self.signs[i]
        how = np.full(n, "", dtype=object)
        how[~_any_per_unit((hi > 0)[None], unit_of, n)] = "interval"
        how[~_any_per_unit((lo < 0)[None], unit_of, n) & want_active] = "interval"
        asks = _Open()
        for unit in range(n):
            if how[unit] == "":
                entries = np.flatnonzero(unit_of == unit)
                if not positive[unit]:
                    for e in entries[np.argsort(-hi[entries])]:
                        if hi[e] > 0:
                            asks.entries.append(int(e))
                            asks.signs.append(-1.0)
                if want_active and not negative[unit]:
                    for e in entries[np.argsort(lo[entries])]:
                        if lo[e] < 0:
                            asks.entries.append(int(e))
                            asks.signs.append(1.0)
        if asks.entries:
            self._settle(i, asks, lo, hi, how, positive, negative)
        dead = ~_any_per_unit((hi > 0)[None], unit_of, n)
        active = ~_any_per_unit((lo < 0)[None], unit_of, n) & want_active & ~dead
        open_ = _open_units(asks, lo, hi, unit_of, n, positive, negative) & ~dead & ~active
        how[~(dead | active)] = ""
        self._tighten(i, lo, hi)
        return LayerStability(dead, active, how, open_)

    def _settle(self, i, asks: _Open, lo, hi, how, positive, negative) -> None:
        """LP, then MILP, for the open questions of layer ``i``; updates ``lo``/``hi``."""
        unit_of = self.network.layers[i].unit_of
        wanted = np.zeros(len(lo), dtype=bool)
        wanted[asks.entries] = True
        reach = build_reach_model(self.network, self.lower, self.upper, self.bounds, i, wanted)
        form = backends.compile_model(reach.model)
        columns = form.columns_of([reach.table.variables[v] for v in reach.target_ids[wanted]])
        column_of = dict(zip(np.flatnonzero(wanted).tolist(), columns.tolist()))
        inputs = form.columns_of(
            [reach.table.variables[v] for v in reach.input_ids[reach.input_ids >= 0]], missing=-1
        )
        lp_open = self._lp(asks, column_of, form, lo, hi, unit_of, positive, negative, how)
        if self.milp and lp_open.entries:
            self._milp(i, lp_open, column_of, form, inputs, lo, hi, how, positive, negative)

    def _lp(self, asks, column_of, form, lo, hi, unit_of, positive, negative, how) -> _Open:
        """Each question over the LP relaxation; the questions it cannot settle."""
        minimise = self.solver.lp_minimiser(
            backends.relaxation(form, objective=False), self.options, self.deadline
        )
        left = _Open()
        for e, sign in zip(asks.entries, asks.signs):
            unit = unit_of[e]
            if _settled(sign, unit, positive, negative) or time.perf_counter() >= self.deadline:
                continue
            value = minimise(column_of[e], sign)
            self.lps += 1
            if value is None or not _record(sign, sign * value, e, lo, hi, how, unit, "lp"):
                left.entries.append(e)
                left.signs.append(sign)
        return left

    def _milp(self, i, asks, column_of, form, inputs, lo, hi, how, positive, negative) -> None:
        """Each question the LP left open, as a MILP feasibility problem: is the entry ever
        above ``-SAFETY`` (below ``SAFETY`` for the active question)? Infeasible proves the
        unit's side; a solution is run through the network as a witness."""
        unit_of = self.network.layers[i].unit_of
        for k, (e, sign) in enumerate(zip(asks.entries, asks.signs)):
            unit = unit_of[e]
            left = self.deadline - time.perf_counter()
            if _settled(sign, unit, positive, negative) or left <= 0:
                continue
            per = max(MIN_MILP_SECONDS, left / (len(asks.entries) - k))
            result = self._solve(form, column_of[e], sign, min(per, left))
            self.milps += 1
            if result.status == Status.INFEASIBLE:
                _record(sign, 0.0, e, lo, hi, how, unit, "milp", widen=0.0)
            elif result.solution is not None:
                self._witness(i, result.solution, inputs, positive, negative)

    def _solve(self, form: StandardForm, column: int, sign: float, seconds: float):
        """Is ``column`` ever above ``-SAFETY`` (sign -1) / below ``SAFETY`` (sign +1) over the
        MILP? Searched towards the far side, stopping at the first solution (a huge gap)."""
        cost = np.zeros(form.num_cols)
        cost[column] = 1.0
        col_lower, col_upper = form.col_lower.copy(), form.col_upper.copy()
        if sign < 0:
            col_lower[column] = max(col_lower[column], -SAFETY)
        else:
            col_upper[column] = min(col_upper[column], SAFETY)
        if col_lower[column] > col_upper[column]:
            return SolveResult(self.solver.name, Status.INFEASIBLE, None, None, 0.0)
        question = replace(
            form, c=cost, c0=0.0, maximize=sign < 0, col_lower=col_lower, col_upper=col_upper
        )
        options = replace(self.options, time_limit=seconds, mip_gap=FIRST_SOLUTION_GAP)
        return self.solver.solve(question, options)

    def _witness(self, i, solution, inputs, positive, negative) -> None:
        """Run the network at the inputs of a MILP solution: a point of the box where some
        units may be seen positive (not dead) or negative (not active)."""
        x = (self.lower + self.upper) / 2
        free = np.flatnonzero(self.lower < self.upper)
        found = inputs >= 0
        picked = free[found]
        x[picked] = np.clip(solution[inputs[found]], self.lower[picked], self.upper[picked])
        pre = self.network.trace(x[None])[i].pre
        unit_of = self.network.layers[i].unit_of
        n = len(positive)
        positive |= _any_per_unit(pre > 0, unit_of, n)
        negative |= _any_per_unit(pre < 0, unit_of, n)
        self.found += 1

    def _tighten(self, i: int, lo: np.ndarray, hi: np.ndarray) -> None:
        """Layer ``i``'s bounds tightened, and every later layer's re-propagated."""
        layers = list(self.bounds.layers)
        layers[i] = LayerBounds(lo[None], hi[None])
        self.bounds = propagate_after(self.network, NetworkBounds(layers, {}), i)


def _record(sign, bound, e, lo, hi, how, unit, proof, widen=SAFETY) -> bool:
    """Take a proven bound of entry ``e`` (an upper bound for sign -1, a lower one for +1),
    widened by ``widen`` (relative); whether it settles the question (never positive / never
    negative)."""
    if sign < 0:
        hi[e] = min(hi[e], bound + widen * (1 + abs(bound)))
        settled = hi[e] <= 0
    else:
        lo[e] = max(lo[e], bound - widen * (1 + abs(bound)))
        settled = lo[e] >= 0
    if settled:
        how[unit] = max(how[unit], proof, key=lambda p: PROOFS.index(p) if p else -1)
    return settled


def _settled(sign: float, unit: int, positive: np.ndarray, negative: np.ndarray) -> bool:
    """Whether a witness already answered the question for ``unit``."""
    return bool(positive[unit] if sign < 0 else negative[unit])


def _any_per_unit(flags: np.ndarray, unit_of: np.ndarray, n: int) -> np.ndarray:
    """Per unit, whether any row and any of its flat outputs is flagged."""
    out = np.zeros(n, dtype=bool)
    np.logical_or.at(out, unit_of, flags.any(axis=0))
    return out


def _open_units(asks: _Open, lo, hi, unit_of, n, positive, negative) -> np.ndarray:
    """Units with a question neither a proof nor a witness settled."""
    open_ = np.zeros(n, dtype=bool)
    for e, sign in zip(asks.entries, asks.signs):
        unit = unit_of[e]
        proven = hi[e] <= 0 if sign < 0 else lo[e] >= 0
        if not proven and not _settled(sign, unit, positive, negative):
            open_[unit] = True
    return open_
