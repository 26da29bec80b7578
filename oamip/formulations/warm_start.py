"""A greedy incumbent for the importance MIP: remove units one at a time while it pays.

Starting from the trained network (every score 1), each step evaluates every possible single
removal with one batched forward pass and takes the best one if it lowers the objective. The
result is a binary score vector, feasible in both score modes, that gives the solver a far
better starting point than the trained network.
"""

from __future__ import annotations

import time

import numpy as np

from oamip.formulations.importance import ImportanceModel, sparsity_term

MAX_ROWS = 20_000
"""Rows (candidates times samples) evaluated in one batched forward pass."""


def greedy_scores(im: ImportanceModel, time_budget: float = 5.0) -> dict[int, np.ndarray]:
    """Binary scores found by greedy removal within ``time_budget`` seconds."""
    deadline = time.perf_counter() + time_budget
    scores = im.all_ones()
    current = im.objective_at(scores)
    while time.perf_counter() < deadline:
        moves = _candidates(im, scores)
        if not moves:
            break
        values = _evaluate(im, scores, moves, deadline)
        best = int(np.argmin(values))
        if not values[best] < current - 1e-12:
            break
        layer, unit = moves[best]
        scores[layer][unit] = 0.0
        current = values[best]
    return scores


def _candidates(im: ImportanceModel, scores: dict[int, np.ndarray]) -> list[tuple[int, int]]:
    keep = im.settings.min_keep
    return [
        (i, int(u)) for i, s in scores.items() if s.sum() > keep for u in np.flatnonzero(s > 0.5)
    ]


def _evaluate(im, scores, moves, deadline) -> np.ndarray:
    """The objective after each single removal (inf for those not reached before the deadline)."""
    n = len(im.x)
    chunk = max(1, MAX_ROWS // n)
    values = np.full(len(moves), np.inf)
    for start in range(0, len(moves), chunk):
        if start and time.perf_counter() > deadline:
            break
        part = moves[start : start + chunk]
        values[start : start + len(part)] = _objectives(im, scores, part)
    return values


def _objectives(im: ImportanceModel, scores, moves) -> np.ndarray:
    n = len(im.x)
    rows = {i: np.repeat(s[None, :], len(moves), axis=0) for i, s in scores.items()}
    for c, (layer, unit) in enumerate(moves):
        rows[layer][c, unit] = 0.0
    per_row = {i: np.repeat(r, n, axis=0) for i, r in rows.items()}
    first = np.tile(im.network.layers[0].forward(im.x.reshape(n, -1)), (len(moves), 1))
    x = np.broadcast_to(im.x[:1], (len(first), *im.x.shape[1:]))
    logits = im.network.trace(x, per_row, im.big_m, first_pre=first)[-1].out
    losses = im.losses_at_labels(logits, np.tile(im.y, len(moves))).reshape(len(moves), n)
    sparsity = np.array(
        [sparsity_term(im.network, {i: r[c] for i, r in rows.items()}) for c in range(len(moves))]
    )
    return sparsity + im.settings.lam * losses.mean(axis=1)
