"""Losses on the logits: hinge (exact epigraph rows) and cross-entropy (tangent-plane cuts).

Both add one epigraph variable ``t_k`` per sample that the objective minimises, so ``t_k`` equals
the sample's loss at an optimum (for cross-entropy, the cut approximation of it from below).
"""

from __future__ import annotations

import numpy as np
import pyomo.environ as pyo
from pyomo.core.expr.numeric_expr import LinearExpression
from scipy.special import logsumexp, softmax

from oamip.formulations.blocks import RowBlock, VarTable

LOSSES = ("ce", "hinge")


def hinge_values(logits: np.ndarray, labels: np.ndarray, margin: float) -> np.ndarray:
    """``max(0, margin + max_{j != y} z_j - z_y)`` per sample."""
    rows = np.arange(len(labels))
    true = logits[rows, labels]
    others = logits.copy()
    others[rows, labels] = -np.inf
    return np.maximum(0.0, margin + others.max(axis=1) - true)


def ce_values(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Cross-entropy ``logsumexp(z) - z_y`` per sample."""
    return logsumexp(logits, axis=1) - logits[np.arange(len(labels)), labels]


def loss_values(loss: str, logits: np.ndarray, labels: np.ndarray, margin: float) -> np.ndarray:
    """The exact per-sample loss (what the objective means, whatever the encoding)."""
    if loss == "hinge":
        return hinge_values(logits, labels, margin)
    return ce_values(logits, labels)


def add_hinge_rows(
    rows: RowBlock, t: np.ndarray, logit_ids: np.ndarray, labels: np.ndarray, margin: float
) -> None:
    """``t_k >= margin + z_kj - z_ky`` for every wrong class ``j`` (and ``t_k >= 0``)."""
    n, classes = logit_ids.shape
    k, j = np.nonzero(np.arange(classes)[None, :] != labels[:, None])
    r = rows.new_rows(np.full(len(k), margin), np.inf)
    rows.terms(r, t[k], 1.0)
    rows.terms(r, logit_ids[k, j], -1.0)
    rows.terms(r, logit_ids[k, labels[k]], 1.0)


def add_ce_cuts(
    model: pyo.ConcreteModel,
    table: VarTable,
    t: np.ndarray,
    logit_ids: np.ndarray,
    labels: np.ndarray,
    points: np.ndarray,
    samples: np.ndarray,
) -> None:
    """Tangent planes of ``logsumexp`` at ``points[k]`` for each ``k`` in ``samples``:
    ``t_k >= p . z_k + logsumexp(z0) - p . z0 - z_ky`` with ``p = softmax(z0)``."""
    if not hasattr(model, "ce_cuts"):
        model.ce_cuts = pyo.ConstraintList()
    for k in np.asarray(samples).tolist():
        z0 = points[k]
        p = softmax(z0)
        coefs = -p
        coefs[labels[k]] += 1.0
        rhs = float(logsumexp(z0) - p @ z0)
        variables = [table.variables[i] for i in [t[k], *logit_ids[k].tolist()]]
        expr = LinearExpression(
            constant=0.0, linear_coefs=[1.0, *coefs.tolist()], linear_vars=variables
        )
        model.ce_cuts.add(expr >= rhs)
