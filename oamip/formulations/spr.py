"""Structured pruning of one layer in Pyomo, big-M and perspective (docs/mathematics.md §5).

For inputs ``X`` (N x n_in), targets ``Y`` (N x n_out) and weights ``W`` (n_out x n_in), the loss
is the least-squares reconstruction ``sum_k ||W x_k - y_k||^2``. Structures are the output units:
unit ``j`` owns the row ``w_j`` and an on/off variable ``z_j`` (1 = keep). The layer has no bias
variable, so a group is exactly a row of ``W`` (fit a bias by centring ``X`` and ``Y`` first).

    big-M:        min loss + sum_j (a ||w_j||^2 + b z_j)  s.t. |w_ji| <= M z_j
    perspective:  min loss + sum_j (a t_j + b z_j)        s.t. |w_ji| <= M z_j,
                                                               ||w_j||^2 <= t_j z_j

``z`` is binary in the MIPs and in ``[0, 1]`` in the relaxations. The perspective constraint is
a rotated second-order cone (convex for ``t, z >= 0``), written as the quadratic constraint
``sum_i w_ji^2 - t_j z_j <= 0``. The residuals ``r = X W^T - Y`` are variables tied to ``W`` by
one sparse matrix block, so the objective stays diagonal. Pyomo and numpy only; any backend with
the needed capabilities solves these models.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyomo.environ as pyo
import scipy.sparse as sp
from pyomo.core.base.matrix_constraint import MatrixConstraint

from oamip.errors import InvalidInputError


@dataclass(frozen=True)
class SPRParams:
    """The constants of docs/mathematics.md §5.1: ``a`` (ridge), ``b`` (per unit kept), ``M``."""

    a: float
    b: float
    M: float

    def __post_init__(self) -> None:
        for name in ("a", "b", "M"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise InvalidInputError(f"SPR needs a finite {name} >= 0, got {name}={value}")
        if self.M <= 0:
            raise InvalidInputError(
                f"SPR needs M > 0 (a bound on every kept weight), got M={self.M}"
            )

    @classmethod
    def from_lam_alpha(cls, lam: float, alpha: float, M: float) -> SPRParams:
        """The authors' parametrisation: ``a = lam * alpha``, ``b = lam * (1 - alpha)``."""
        if not 0.0 <= alpha <= 1.0:
            raise InvalidInputError(f"SPR needs alpha in [0, 1], got alpha={alpha}")
        if not math.isfinite(lam) or lam < 0:
            raise InvalidInputError(f"SPR needs a finite lam >= 0, got lam={lam}")
        return cls(a=float(lam * alpha), b=float(lam * (1.0 - alpha)), M=float(M))


@dataclass
class SPRModel:
    """A built SPR model and handles to its variables (``t`` is None in the big-M form)."""

    model: pyo.ConcreteModel
    W: pyo.Var
    z: pyo.Var
    t: pyo.Var | None
    params: SPRParams
    perspective: bool
    relaxed: bool

    @property
    def shape(self) -> tuple[int, int]:
        """``(n_out, n_in)``, the shape of ``W``."""
        n_out = len(self.z)
        return n_out, len(self.W) // n_out

    def weights(self) -> np.ndarray:
        """The current values of ``W`` as an ``n_out x n_in`` array."""
        n_out, n_in = self.shape
        return np.array([[self.W[j, i].value for i in range(n_in)] for j in range(n_out)])

    def keep(self) -> np.ndarray:
        """The current values of ``z`` (1 = keep the unit)."""
        return np.array([self.z[j].value for j in range(len(self.z))])


def reconstruction_loss(W: np.ndarray, X: np.ndarray, Y: np.ndarray) -> float:
    """``sum_k ||W x_k - y_k||^2``, the loss every SPR layer model minimises."""
    residual = np.asarray(X, dtype=float) @ np.asarray(W, dtype=float).T - np.asarray(Y, float)
    return float(np.sum(residual * residual))


def build_spr_model(
    X: np.ndarray,
    Y: np.ndarray,
    params: SPRParams,
    perspective: bool = True,
    relaxed: bool = False,
) -> SPRModel:
    """The SPR model of one layer: big-M or perspective form, MIP or continuous relaxation."""
    X, Y = _check_data(X, Y)
    n_out, n_in = Y.shape[1], X.shape[1]
    m = pyo.ConcreteModel(name=_name(perspective, relaxed))
    M = params.M
    m.W = pyo.Var(range(n_out), range(n_in), bounds=(-M, M), initialize=0.0)
    m.r = pyo.Var(range(X.shape[0]), range(n_out), initialize=0.0)
    m.z = pyo.Var(range(n_out), domain=pyo.UnitInterval if relaxed else pyo.Binary)
    m.residual = _residual_block(m, X, Y)
    m.big_m = _big_m_block(m, M, n_out, n_in)
    loss = pyo.quicksum(v * v for v in m.r.values())
    kept = params.b * pyo.quicksum(m.z.values())
    if perspective:
        # With |w| <= M z, the optimal t = ||w||^2 / z is at most n_in M^2.
        m.t = pyo.Var(range(n_out), bounds=(0.0, n_in * M * M), initialize=0.0)
        m.cone = pyo.Constraint(range(n_out), rule=lambda mm, j: _cone(mm, j, n_in))
        ridge = params.a * pyo.quicksum(m.t.values())
    else:
        ridge = params.a * pyo.quicksum(v * v for v in m.W.values())
    m.objective = pyo.Objective(expr=loss + ridge + kept, sense=pyo.minimize)
    t = m.t if perspective else None
    return SPRModel(m, m.W, m.z, t, params, perspective, relaxed)


def _check_data(X: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray(X, dtype=float)
    Y = np.asarray(Y, dtype=float)
    if X.ndim != 2 or Y.ndim != 2 or X.shape[0] != Y.shape[0]:
        raise InvalidInputError(
            f"SPR layer data must be X (N x n_in) and Y (N x n_out) with the same N; "
            f"got X {X.shape} and Y {Y.shape}"
        )
    if X.size == 0 or Y.size == 0:
        raise InvalidInputError(f"SPR layer data is empty: X {X.shape}, Y {Y.shape}")
    if not (np.isfinite(X).all() and np.isfinite(Y).all()):
        raise InvalidInputError("SPR layer data contains NaN or infinite values")
    return X, Y


def _name(perspective: bool, relaxed: bool) -> str:
    form = "perspective" if perspective else "big-M"
    return f"SPR {form} {'relaxation' if relaxed else 'MIP'}"


def _matrix_constraint(A: sp.spmatrix, lower, upper, x: list) -> MatrixConstraint:
    A = sp.csr_matrix(A)
    A.eliminate_zeros()
    return MatrixConstraint(A.data.tolist(), A.indices.tolist(), A.indptr.tolist(), lower, upper, x)


def _residual_block(m: pyo.ConcreteModel, X: np.ndarray, Y: np.ndarray) -> MatrixConstraint:
    """``sum_i X_ki W_ji - r_kj = Y_kj`` for every (k, j); W's columns are in (i, j) order."""
    N, n_in = X.shape
    n_out = Y.shape[1]
    A = sp.hstack([sp.kron(sp.csr_matrix(X), sp.identity(n_out)), -sp.identity(N * n_out)])
    x = [m.W[j, i] for i in range(n_in) for j in range(n_out)]
    x += [m.r[k, j] for k in range(N) for j in range(n_out)]
    rhs = Y.reshape(-1).tolist()
    return _matrix_constraint(A, rhs, rhs, x)


def _big_m_block(m: pyo.ConcreteModel, M: float, n_out: int, n_in: int) -> MatrixConstraint:
    """``w_ji - M z_j <= 0`` and ``-w_ji - M z_j <= 0``; W's columns are in (j, i) order."""
    eye = sp.identity(n_out * n_in)
    owner = sp.kron(sp.identity(n_out), np.ones((n_in, 1))) * M
    A = sp.vstack([sp.hstack([eye, -owner]), sp.hstack([-eye, -owner])])
    x = [m.W[j, i] for j in range(n_out) for i in range(n_in)] + [m.z[j] for j in range(n_out)]
    rows = 2 * n_out * n_in
    return _matrix_constraint(A, [None] * rows, [0.0] * rows, x)


def _cone(m: pyo.ConcreteModel, j: int, n_in: int):
    """The rotated cone ``||w_j||^2 <= t_j z_j`` as a quadratic constraint."""
    return pyo.quicksum(m.W[j, i] * m.W[j, i] for i in range(n_in)) - m.t[j] * m.z[j] <= 0
