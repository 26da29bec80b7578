"""Exact MIP encodings of a scored unit (docs/mathematics.md (1), §4.11) and of max pooling.

A scored unit's activation is a sum of ramps (:mod:`oamip.activations`), each encoded as a
scored ReLU of ``side * pre - offset``; a ReLU is its one ramp.

Each encoder receives a flat list of entries (one per sample and flat output), adds variables
and rows, and returns the ids of the variables that carry the outputs together with a function
that sets every variable it created from a forward trace (used for warm starts and checks).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from oamip.activations import Activation, Ramp
from oamip.formulations.blocks import RowBlock, VarTable


@dataclass
class ReluEntries:
    """Inputs of the scored-ReLU encoder, one array element per (sample, flat output).

    The ReLU's pre-activation is ``sign * x + pre_const`` where ``pre_id`` is the variable
    ``x``, and the constant ``pre_const`` where ``pre_id`` is -1; ``lower``/``upper`` bound the
    pre-activation for every score vector; ``big_m`` and ``score_id`` belong to the entry's
    unit (a plain, unscored ReLU: ``big_m = 0`` and ``score_id = -1``).
    """

    pre_id: np.ndarray
    pre_const: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    big_m: np.ndarray
    score_id: np.ndarray
    sign: int = 1


RELU_CASES = ("linear", "equality", "gated", "binary")
"""The cases of :func:`encode_scored_relu`, in the order it tries them (``ReluEncoding.case``
indexes this tuple)."""


@dataclass
class ReluEncoding:
    """The variables of an encoded scored ReLU, per entry (``v = -1``: no binary), the case
    that encoded each entry (an index into :data:`RELU_CASES`), and a function setting the
    variables from the ReLU's argument and output."""

    h: np.ndarray
    v: np.ndarray
    case: np.ndarray
    set_values: Callable[[np.ndarray, np.ndarray], None]

    def counts(self) -> dict[str, int]:
        """How many entries each case encoded."""
        found = np.bincount(self.case, minlength=len(RELU_CASES))
        return dict(zip(RELU_CASES, found.tolist(), strict=True))


def encode_scored_relu(
    table: VarTable,
    rows: RowBlock,
    entries: ReluEntries,
    binary_scores: bool,
    name: str,
    tight: bool = True,
) -> ReluEncoding:
    """``h = ReLU(pre - (1 - s) M)`` for every entry.

    The ReLU's argument lies in ``[lower - M, upper]``. With ``tight`` (the default), four
    cases (:data:`RELU_CASES`), all exact:
    a constant pre-activation with a binary score gives ``h = pre * s`` (``linear``, no
    binary); an argument that can never be negative gives an equality (``equality``); a
    variable pre-activation that is never negative, with a binary score, is ``h = s * pre``,
    written with the score as the ReLU's indicator (``gated``, no binary); everything else
    takes the big-M encoding with one binary ``v`` per entry plus two facets of the unit's
    convex hull (``binary``). Without ``tight`` every entry takes the textbook big-M encoding
    (the baseline that benchmarks compare with).
    """
    e = entries
    h = table.add(f"{name}_h", np.zeros_like(e.upper), e.upper)
    arg_lower = e.lower - e.big_m
    constant = e.pre_id < 0
    by_score = binary_scores & tight & (e.score_id >= 0)
    linear = constant & (e.pre_const > 0) & by_score
    active = ~linear & (arg_lower >= 0) & tight
    gated = ~constant & ~active & by_score & (e.lower >= 0) & (e.upper <= e.big_m)
    bigm = ~linear & ~active & ~gated
    _linear_rows(rows, h[linear], e.pre_const[linear], e.score_id[linear])
    _argument_rows(rows, h[active], e, active, rhs_shift=np.zeros(active.sum()), equality=True)
    _gated_rows(rows, h[gated], e, gated)
    v = table.add(f"{name}_v", np.zeros(bigm.sum()), np.ones(bigm.sum()), binary=True)
    _bigm_rows(rows, h[bigm], v, e, bigm, arg_lower[bigm])
    if tight:
        _ideal_rows(rows, h[bigm], v, e, bigm)

    def set_values(arg: np.ndarray, out: np.ndarray) -> None:
        table.set_values(h, out)
        table.set_values(v, (arg[bigm] > 0).astype(float))

    v_of_entry = np.full(len(h), -1, dtype=np.int64)
    v_of_entry[bigm] = v
    case = np.select([linear, active, gated], [0, 1, 2], default=3)
    return ReluEncoding(h, v_of_entry, case, set_values)


@dataclass
class RampPart:
    """One ramp of an encoded activation: the entries it needed (``needed``, into the
    activation's entries), its ReLU entries and encoding."""

    ramp: Ramp
    needed: np.ndarray
    entries: ReluEntries
    encoding: ReluEncoding


@dataclass
class ActivationEncoding:
    """An encoded scored activation: the variable of each entry's output (-1: the constant 0),
    its ramps, and a function setting every variable from the pre-activations, the score
    shifts ``(1 - s) M`` and the outputs."""

    out: np.ndarray
    parts: list[RampPart]
    set_values: Callable[[np.ndarray, np.ndarray, np.ndarray], None]


def encode_scored_activation(
    table: VarTable,
    rows: RowBlock,
    activation: Activation,
    entries: ReluEntries,
    binary_scores: bool,
    name: str,
    tight: bool = True,
) -> ActivationEncoding:
    """``h = sum_t c_t ReLU(d_t pre - b_t - (1 - s) M)`` for every entry (``entries`` with
    ``sign = 1`` describe ``pre``): each ramp that can be positive is a scored ReLU
    (:func:`encode_scored_relu`, exact); a ReLU's output is its ramp's variable, another
    activation's a variable equal to the ramps' weighted sum."""
    e = entries
    parts = [
        _ramp_part(table, rows, r, e, binary_scores, f"{name}_r{t}", tight)
        for t, r in enumerate(activation.ramps)
    ]
    if activation.is_relu:
        out = np.full(len(e.upper), -1, dtype=np.int64)
        out[parts[0].needed] = parts[0].encoding.h
    else:
        out = _ramp_sum(table, rows, activation, e, parts, name)

    def set_values(pre: np.ndarray, shift: np.ndarray, values: np.ndarray) -> None:
        for part in parts:
            r, pick = part.ramp, part.needed
            arg = r.side * pre[pick] - r.offset - shift[pick]
            part.encoding.set_values(arg, np.maximum(arg, 0.0))
        if not activation.is_relu:
            used = out >= 0
            table.set_values(out[used], values[used])

    return ActivationEncoding(out, parts, set_values)


def _ramp_part(table, rows, ramp: Ramp, e: ReluEntries, binary, name, tight) -> RampPart:
    """The scored ReLU of ``side * pre - offset`` on the entries where it can be positive."""
    lower = (e.lower if ramp.side > 0 else -e.upper) - ramp.offset
    upper = (e.upper if ramp.side > 0 else -e.lower) - ramp.offset
    pick = np.flatnonzero(upper > 0)
    sub = ReluEntries(
        pre_id=e.pre_id[pick],
        pre_const=ramp.side * e.pre_const[pick] - ramp.offset,
        lower=lower[pick],
        upper=upper[pick],
        big_m=e.big_m[pick],
        score_id=e.score_id[pick],
        sign=ramp.side * e.sign,
    )
    return RampPart(ramp, pick, sub, encode_scored_relu(table, rows, sub, binary, name, tight))


def _ramp_sum(table, rows, activation: Activation, e: ReluEntries, parts, name) -> np.ndarray:
    """``y = sum_t c_t h_t`` for the entries some ramp reaches (the others output 0), bounded
    as :meth:`Activation.scored_range` (scored) or :meth:`Activation.range` (plain) says."""
    reached = np.zeros(len(e.upper), dtype=bool)
    for part in parts:
        reached[part.needed] = True
    pick = np.flatnonzero(reached)
    scored = e.score_id[pick] >= 0
    plain_lo, plain_hi = activation.range(e.lower[pick], e.upper[pick])
    any_lo, any_hi = activation.scored_range(e.lower[pick], e.upper[pick])
    out = np.full(len(e.upper), -1, dtype=np.int64)
    out[pick] = table.add(
        f"{name}_y", np.where(scored, any_lo, plain_lo), np.where(scored, any_hi, plain_hi)
    )
    r = rows.new_rows(np.zeros(len(pick)), np.zeros(len(pick)))
    rows.terms(r, out[pick], 1.0)
    row_of = np.full(len(e.upper), -1, dtype=np.int64)
    row_of[pick] = r
    for part in parts:
        rows.terms(row_of[part.needed], part.encoding.h, -part.ramp.coef)
    return out


def _linear_rows(rows: RowBlock, h, pre_const, score_id) -> None:
    """``h - pre * s = 0``: with a binary score and a fixed input the unit is ``s * ReLU(pre)``."""
    r = rows.new_rows(np.zeros(len(h)), np.zeros(len(h)))
    rows.terms(r, h, 1.0)
    rows.terms(r, score_id, -pre_const)


def _gated_rows(rows: RowBlock, h, e: ReluEntries, pick) -> None:
    """``h = s * pre`` for ``pre`` in ``[L, U]`` with ``L >= 0`` and ``U <= M``: with a binary
    score, ``s = 1`` makes the ReLU the identity and ``s = 0`` outputs 0, so the score is the
    ReLU's indicator. The rows are McCormick's envelope of the product (the convex hull over
    the box): ``h <= U s``, ``h >= L s``, ``h <= pre - L (1 - s)``, ``h >= pre - U (1 - s)``
    (the terms in ``L`` only where ``L > 0``: ``h >= 0`` is the variable's bound)."""
    s, x, const = e.score_id[pick], e.pre_id[pick], e.pre_const[pick]
    lower, upper = e.lower[pick], e.upper[pick]
    r = rows.new_rows(np.full(len(h), -np.inf), np.zeros(len(h)))
    rows.terms(r, h, 1.0)
    rows.terms(r, s, -upper)
    above = np.flatnonzero(lower > 0)
    r = rows.new_rows(np.zeros(len(above)), np.inf)
    rows.terms(r, h[above], 1.0)
    rows.terms(r, s[above], -lower[above])
    r = rows.new_rows(np.full(len(h), -np.inf), const - lower)
    rows.terms(r, h, 1.0)
    rows.terms(r, x, -e.sign)
    rows.terms(r[above], s[above], -lower[above])
    r = rows.new_rows(const - upper, np.inf)
    rows.terms(r, h, 1.0)
    rows.terms(r, x, -e.sign)
    rows.terms(r, s, -upper)


def _argument_rows(rows, h, e: ReluEntries, pick, rhs_shift, equality: bool, extra=None):
    """Rows ``h - sign x - M s (+ extra) >= or == -M + pre_const + rhs_shift``; returns row
    ids."""
    rhs = -e.big_m[pick] + e.pre_const[pick] + rhs_shift
    upper = rhs if equality else np.full(len(rhs), np.inf)
    r = rows.new_rows(rhs, upper)
    rows.terms(r, h, 1.0)
    _score_terms(rows, r, e.score_id[pick], -e.big_m[pick])
    has_var = e.pre_id[pick] >= 0
    rows.terms(r[has_var], e.pre_id[pick][has_var], -e.sign)
    return r


def _bigm_rows(rows: RowBlock, h, v, e: ReluEntries, pick, arg_lower) -> None:
    """``h >= arg``, ``h <= arg - arg_lower (1 - v)``, ``h <= upper v`` (and ``h >= 0``)."""
    _argument_rows(rows, h, e, pick, rhs_shift=np.zeros(len(h)), equality=False)
    base = -e.big_m[pick] + e.pre_const[pick]
    r = rows.new_rows(np.full(len(h), -np.inf), base - arg_lower)
    rows.terms(r, h, 1.0)
    _score_terms(rows, r, e.score_id[pick], -e.big_m[pick])
    has_var = e.pre_id[pick] >= 0
    rows.terms(r[has_var], e.pre_id[pick][has_var], -e.sign)
    rows.terms(r, v, -arg_lower)
    r = rows.new_rows(np.full(len(h), -np.inf), np.zeros(len(h)))
    rows.terms(r, h, 1.0)
    rows.terms(r, v, -e.upper[pick])


def _ideal_rows(rows: RowBlock, h, v, e: ReluEntries, pick) -> None:
    """The two further facets of the convex hull of ``h = ReLU(pre + M s - M)`` over the box
    ``pre in [lower, upper]``, ``s in [0, 1]`` (Anderson et al.'s ideal formulation):
    ``h <= pre - lower (1 - v)`` and ``h <= M s - (M - upper) v``. Without them the relaxation
    lets a unit with a tiny score output almost its full value."""
    has_var = e.pre_id[pick] >= 0
    lower = e.lower[pick][has_var]
    r = rows.new_rows(np.full(has_var.sum(), -np.inf), e.pre_const[pick][has_var] - lower)
    rows.terms(r, h[has_var], 1.0)
    rows.terms(r, e.pre_id[pick][has_var], -e.sign)
    rows.terms(r, v[has_var], -lower)
    big_m = e.big_m[pick]
    r = rows.new_rows(np.full(len(h), -np.inf), np.zeros(len(h)))
    rows.terms(r, h, 1.0)
    _score_terms(rows, r, e.score_id[pick], -big_m)
    rows.terms(r, v, big_m - e.upper[pick])


def _score_terms(rows: RowBlock, r: np.ndarray, score_id: np.ndarray, coef: np.ndarray) -> None:
    """``coef * s`` in rows ``r``, for the entries that have a score (a plain ReLU has none)."""
    scored = score_id >= 0
    rows.terms(r[scored], score_id[scored], coef[scored])


@dataclass
class Operand:
    """Values a layer takes in or hands on, element by element: a variable id, or -1 with a
    constant, and bounds valid for every score vector. Max pooling takes its windows with
    shape ``(outputs, taps)`` (padding taps have ``upper = lower = -inf``) and hands back one
    value per output."""

    var: np.ndarray
    const: np.ndarray
    lower: np.ndarray
    upper: np.ndarray

    FIELDS = ("var", "const", "lower", "upper")


def encode_max_pool(
    table: VarTable, rows: RowBlock, entries: Operand, name: str
) -> tuple[Operand, Callable[[np.ndarray], None]]:
    """``y = max(window)``. Entries whose upper bound cannot beat the largest lower bound are
    dropped; a window left with one entry passes it on unchanged; the others take one binary
    per remaining entry, exactly one of which marks the maximum."""
    e = entries
    best_lower = e.lower.max(axis=1)
    leader = e.lower.argmax(axis=1)
    kept = kept_taps(e.lower, e.upper)
    single = kept.sum(axis=1) == 1
    rowsel = np.arange(len(leader))
    out = Operand(
        var=e.var[rowsel, leader].copy(),
        const=e.const[rowsel, leader].copy(),
        lower=best_lower,
        upper=np.where(e.upper == -np.inf, -np.inf, e.upper).max(axis=1),
    )
    multi = np.flatnonzero(~single)
    y = table.add(f"{name}_y", best_lower[multi], out.upper[multi])
    out.var[multi] = y
    out.const[multi] = 0.0
    win, tap = np.nonzero(kept[multi])
    d = table.add(f"{name}_d", np.zeros(len(win)), np.ones(len(win)), binary=True)
    _pool_rows(rows, e, multi, y, win, tap, d, out.upper[multi])

    def set_values(window_values: np.ndarray) -> None:
        picked = np.where(kept[multi], window_values[multi], -np.inf)
        table.set_values(y, picked.max(axis=1))
        table.set_values(d, (tap == picked.argmax(axis=1)[win]).astype(float))

    return out, set_values


@dataclass
class PoolPlan:
    """Max pooling of a batch's pre-activations, before any variable exists: per sample and
    window, the taps' bounds (padding: ``-inf``) and whether the activation can be nonzero on
    the window's maximum (``live``), and per sample and input position whether it needs a
    variable (``needed``: it can be the maximum of a live window)."""

    pad: np.ndarray
    safe: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    live: np.ndarray
    needed: np.ndarray

    @property
    def first_tap(self) -> np.ndarray:
        """Each window's first input position that is not padding (its channel's witness)."""
        return self.safe[np.arange(len(self.pad)), np.argmax(~self.pad, axis=1)]

    def pooled_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Bounds of each window's maximum (0 for windows that are not live)."""
        return (
            np.where(self.live, self.lower.max(axis=2), 0.0),
            np.where(self.live, self.upper.max(axis=2), 0.0),
        )


def plan_pooling(
    windows: np.ndarray, lower: np.ndarray, upper: np.ndarray, activation: Activation
) -> PoolPlan:
    """The :class:`PoolPlan` of pooling ``windows`` (outputs x taps, -1: padding) over inputs
    with bounds ``lower``/``upper`` (samples x positions), before ``activation``: a window is
    live where some ramp of the activation can be positive on its maximum."""
    pad = windows < 0
    safe = np.where(pad, 0, windows)
    tap_lower = np.where(pad, -np.inf, lower[:, safe])
    tap_upper = np.where(pad, -np.inf, upper[:, safe])
    live = activation.reach(tap_lower.max(axis=2), tap_upper.max(axis=2)) > 0
    taps = kept_taps(tap_lower.reshape(-1, pad.shape[1]), tap_upper.reshape(-1, pad.shape[1]))
    taps = taps.reshape(tap_lower.shape) & live[..., None] & ~pad
    needed = np.zeros(upper.shape, dtype=bool)
    sample, window, tap = np.nonzero(taps)
    needed[sample, safe[window, tap]] = True
    return PoolPlan(pad, safe, tap_lower, tap_upper, live, needed)


def kept_taps(lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """Which entries of each window (rows of ``lower``/``upper``) can be its maximum: those whose
    upper bound beats the window's largest lower bound, and the entry holding that bound."""
    taps = np.arange(lower.shape[1])
    return (upper > lower.max(axis=1, keepdims=True)) | (
        taps[None, :] == lower.argmax(axis=1)[:, None]
    )


def _pool_rows(rows: RowBlock, e: Operand, multi, y, win, tap, d, top) -> None:
    """``y >= h_i``; ``y <= h_i + (top - lower_i)(1 - d_i)``; ``sum_i d_i = 1``."""
    src_var = e.var[multi][win, tap]
    src_const = e.const[multi][win, tap]
    src_lower = e.lower[multi][win, tap]
    is_var = src_var >= 0
    r = rows.new_rows(np.zeros(is_var.sum()), np.inf)
    rows.terms(r, y[win[is_var]], 1.0)
    rows.terms(r, src_var[is_var], -1.0)
    slack = top[win] - src_lower
    r = rows.new_rows(np.full(len(win), -np.inf), slack + np.where(is_var, 0.0, src_const))
    rows.terms(r, y[win], 1.0)
    rows.terms(r[is_var], src_var[is_var], -1.0)
    rows.terms(r, d, slack)
    r = rows.new_rows(np.ones(len(multi)), np.ones(len(multi)))
    rows.terms(r[win], d, 1.0)
