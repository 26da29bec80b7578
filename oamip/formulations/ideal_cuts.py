"""Ideal-formulation cuts for scored ReLU units (Anderson, Huchette, Ma, Tjandraatmadja, Vielma,
"Strong mixed-integer programming formulations for trained neural networks", 2020).

A scored unit computes ``h = ReLU(sum_i w_i x_i + beta + M s)`` with ``beta = c - M``, where the
``x_i`` are the previous layer's outputs, each in a box, and ``s in [0, 1]``. The convex hull of
``(x, s, v, h)`` is described by one inequality per subset ``I`` of the inputs,

    h <= sum_{i in I} w_i (x_i - lo_i (1 - v)) + (beta + sum_{i not in I} w_i up_i) v,

with ``lo``/``up`` the input bounds oriented by the sign of ``w_i``. The most violated subset at a
point is found in linear time, so cuts are added in rounds at the relaxation's solutions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from oamip.formulations.blocks import RowBlock

CUT_TOL = 1e-6
"""A cut is added when it is violated by more than ``CUT_TOL * max(1, upper bound of h)``."""


@dataclass
class CutSite:
    """The big-M units of one scored layer whose pre-activation is affine in variables."""

    matrix: sp.csr_matrix
    offset: np.ndarray
    in_var: np.ndarray
    in_const: np.ndarray
    in_lower: np.ndarray
    in_upper: np.ndarray
    k: np.ndarray
    j: np.ndarray
    h: np.ndarray
    v: np.ndarray
    s: np.ndarray
    big_m: np.ndarray
    h_upper: np.ndarray


def separate(site: CutSite, values: np.ndarray, rows: RowBlock) -> int:
    """Add the most violated ideal cut of every unit whose cut is violated at ``values`` (the
    current value of every variable, by global id); returns how many were added."""
    added = 0
    for k in np.unique(site.k):
        pick = np.flatnonzero(site.k == k)
        added += _separate_sample(site, int(k), pick, values, rows)
    return added


def _separate_sample(site: CutSite, k: int, pick: np.ndarray, values, rows: RowBlock) -> int:
    sub = site.matrix[site.j[pick]].tocoo()
    row, col, w = sub.row, sub.col, sub.data
    var = site.in_var[k][col]
    is_var = var >= 0
    x = np.where(is_var, values[np.maximum(var, 0)], site.in_const[k][col])
    lo = np.where(w >= 0, site.in_lower[k][col], site.in_upper[k][col])
    up = np.where(w >= 0, site.in_upper[k][col], site.in_lower[k][col])
    lo = np.where(is_var, lo, x)
    up = np.where(is_var, up, x)
    v = values[site.v[pick]]
    s = values[site.s[pick]]
    h = values[site.h[pick]]
    m = site.big_m[pick]
    beta = site.offset[site.j[pick]] - m
    inside = w * (x - lo * (1 - v[row]))
    outside = w * up * v[row]
    member = is_var & (inside < outside)
    bound = np.bincount(row, np.where(member, inside, outside), minlength=len(pick))
    s_member = s < v
    bound += np.where(s_member, m * s, m * v) + beta * v
    violated = h > bound + CUT_TOL * np.maximum(1.0, site.h_upper[pick])
    if not violated.any():
        return 0
    _emit(site, pick, violated, row, var, w, lo, up, member, s_member, beta, rows)
    return int(violated.sum())


def _emit(site, pick, violated, row, var, w, lo, up, member, s_member, beta, rows) -> None:
    """``h - sum_I w x - M s [s in I] - coef_v v <= -sum_I w lo`` for each violated unit."""
    n = len(pick)
    in_lo = np.bincount(row, np.where(member, w * lo, 0.0), minlength=n)
    out_up = np.bincount(row, np.where(member, 0.0, w * up), minlength=n)
    coef_v = in_lo + beta + out_up + np.where(s_member, 0.0, site.big_m[pick])
    which = np.flatnonzero(violated)
    ids = rows.new_rows(np.full(len(which), -np.inf), -in_lo[which])
    new_id = np.full(n, -1)
    new_id[which] = ids
    rows.terms(ids, site.h[pick][which], 1.0)
    rows.terms(ids, site.v[pick][which], -coef_v[which])
    s_rows = which[s_member[which]]
    rows.terms(new_id[s_rows], site.s[pick][s_rows], -site.big_m[pick][s_rows])
    nz = member & violated[row]
    rows.terms(new_id[row[nz]], var[nz], -w[nz])
