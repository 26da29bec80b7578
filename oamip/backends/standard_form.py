"""Compile a Pyomo model once into standard-form matrices that every backend can load.

    minimise (or maximise)  c0 + c x + sum q_ij x_i x_j
    subject to              row_lower <= A x <= row_upper
                            qrow_lower <= a x + sum q_ij x_i x_j <= qrow_upper   (quadratic rows)
                            col_lower <= x <= col_upper,  x_j integer where ``integer[j]``

Pyomo stays the single description of the model. ``MatrixConstraint`` components, which the
formulations use for their large linear blocks, are copied as sparse matrices without touching
Pyomo's expression system; every other constraint goes through Pyomo's standard representation.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field, replace
from functools import partial
from itertools import compress
from operator import attrgetter

import numpy as np
import pyomo.environ as pyo
import scipy.sparse as sp
from pyomo.common.gc_manager import PauseGC
from pyomo.core.base.matrix_constraint import MatrixConstraint
from pyomo.repn.standard_repn import generate_standard_repn

from oamip.errors import CapabilityError, InvalidInputError


@dataclass
class QuadraticRow:
    """One constraint with quadratic terms: ``lower <= lin . x + sum coef x_i x_j <= upper``."""

    lin_index: np.ndarray
    lin_coef: np.ndarray
    quad_i: np.ndarray
    quad_j: np.ndarray
    quad_coef: np.ndarray
    lower: float
    upper: float


@dataclass
class StandardForm:
    """A model as matrices; ``variables[j]`` is the Pyomo variable of column ``j``."""

    variables: list
    col_lower: np.ndarray
    col_upper: np.ndarray
    integer: np.ndarray
    c: np.ndarray
    c0: float
    maximize: bool
    A: sp.csr_matrix
    row_lower: np.ndarray
    row_upper: np.ndarray
    q_i: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    q_j: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    q_coef: np.ndarray = field(default_factory=lambda: np.zeros(0))
    quadratic_rows: list[QuadraticRow] = field(default_factory=list)

    @property
    def num_cols(self) -> int:
        return len(self.variables)

    @property
    def num_rows(self) -> int:
        return self.A.shape[0] + len(self.quadratic_rows)

    @property
    def has_quadratic_objective(self) -> bool:
        return len(self.q_coef) > 0

    def objective_value(self, x: np.ndarray) -> float:
        """The objective at ``x`` (in the model's own sense)."""
        quad = float(np.sum(self.q_coef * x[self.q_i] * x[self.q_j]))
        return self.c0 + float(self.c @ x) + quad

    def start_values(self) -> np.ndarray | None:
        """The variables' current values as a start vector, or None if any is missing."""
        values = [v.value for v in self.variables]
        if any(val is None for val in values):
            return None
        return np.asarray(values, dtype=float)

    def load_solution(self, x: np.ndarray) -> None:
        """Write a solution vector back into the Pyomo variables (integers rounded)."""
        x = np.where(self.integer, np.round(x), x)
        for var, val in zip(self.variables, x.tolist()):
            if not var.fixed:
                var.set_value(val, skip_validation=True)


def lp_relaxation(form: StandardForm) -> StandardForm:
    """``form`` with integrality dropped and a zero objective (bound tightening's LPs)."""
    if form.has_quadratic_objective or form.quadratic_rows:
        raise CapabilityError("the LP relaxation of a model with quadratic terms is not an LP")
    return replace(
        form,
        integer=np.zeros_like(form.integer),
        c=np.zeros(form.num_cols),
        c0=0.0,
        maximize=False,
    )


class _Columns:
    """Assigns a column to each variable the first time it is seen."""

    def __init__(self) -> None:
        self.index: dict[int, int] = {}
        self.variables: list = []

    def of_many(self, variables) -> np.ndarray:
        """The columns of ``variables``, new ones numbered in order of first appearance."""
        variables = list(variables)
        ids = list(map(id, variables))
        known = list(map(self.index.get, ids))
        if None in known:
            fresh = list(map(_IS_NONE, known))
            new = dict(zip(compress(ids, fresh), compress(variables, fresh)))
            start = len(self.variables)
            self.index.update(zip(new, range(start, start + len(new))))
            self.variables.extend(new.values())
            known = list(map(self.index.__getitem__, ids))
        return np.array(known, dtype=np.int64)


_IS_NONE = partial(operator.is_, None)


def _bound(value, default: float) -> float:
    return default if value is None else float(pyo.value(value))


def _matrix_block(comp: MatrixConstraint, cols: _Columns):
    """The CSR data of a MatrixConstraint with its columns renumbered, without expressions."""
    col_of_x = cols.of_many(comp._x)
    indptr = np.asarray(comp._A_indptr, dtype=np.int64)
    indices = col_of_x[np.asarray(comp._A_indices, dtype=np.int64)]
    data = np.asarray(comp._A_data, dtype=float)
    active = np.fromiter(map(_ACTIVE, comp._data), dtype=bool, count=len(comp._data))
    return (
        indptr,
        indices,
        data,
        _row_bounds(comp._lower, -np.inf),
        _row_bounds(comp._upper, np.inf),
        active,
    )


_ACTIVE = attrgetter("_active")


def _row_bounds(values, missing: float) -> np.ndarray:
    """A MatrixConstraint's row bounds as floats (None: ``missing``)."""
    if {*map(type, values)} <= _PLAIN_TYPES:
        return _floats(values, missing)
    return np.array([missing if v is None else float(pyo.value(v)) for v in values])


class _RowBuilder:
    """Accumulates linear rows as CSR pieces and quadratic rows as QuadraticRow objects."""

    def __init__(self) -> None:
        self.indptr_parts: list[np.ndarray] = []
        self.indices: list[np.ndarray] = []
        self.data: list[np.ndarray] = []
        self.lower: list[np.ndarray] = []
        self.upper: list[np.ndarray] = []
        self.nnz = 0
        self.quadratic: list[QuadraticRow] = []

    def add_block(self, indptr, indices, data, lower, upper, active) -> None:
        if not active.all():
            keep = np.flatnonzero(active)
            lengths = np.diff(indptr)[keep]
            picks = np.concatenate([np.arange(indptr[r], indptr[r + 1]) for r in keep] or [[]])
            picks = picks.astype(np.int64)
            indptr = np.concatenate([[0], np.cumsum(lengths)])
            indices, data, lower, upper = indices[picks], data[picks], lower[keep], upper[keep]
        self.indptr_parts.append(indptr[1:] + self.nnz)
        self.indices.append(indices)
        self.data.append(data)
        self.lower.append(lower)
        self.upper.append(upper)
        self.nnz += len(data)

    def add_row(self, index: np.ndarray, coef: np.ndarray, lower: float, upper: float) -> None:
        self.add_block(
            np.array([0, len(index)]),
            index,
            coef,
            np.array([lower]),
            np.array([upper]),
            np.ones(1, dtype=bool),
        )

    def matrix(self, num_cols: int):
        if not self.data:
            return sp.csr_matrix((0, num_cols)), np.zeros(0), np.zeros(0)
        indptr = np.concatenate([[0]] + self.indptr_parts)
        A = sp.csr_matrix(
            (np.concatenate(self.data), np.concatenate(self.indices), indptr),
            shape=(len(indptr) - 1, num_cols),
        )
        A.sum_duplicates()
        return A, np.concatenate(self.lower), np.concatenate(self.upper)


def _add_expression_row(con, cols: _Columns, rows: _RowBuilder) -> None:
    repn = generate_standard_repn(con.body, quadratic=True, compute_values=True)
    if repn.nonlinear_expr is not None:
        raise CapabilityError(
            f"constraint '{con.name}' is nonlinear beyond quadratic terms; "
            "the standard-form backends accept linear and quadratic models only"
        )
    offset = float(pyo.value(repn.constant))
    lower = _bound(con.lower, -np.inf) - offset
    upper = _bound(con.upper, np.inf) - offset
    index = cols.of_many(repn.linear_vars)
    coef = np.asarray([float(pyo.value(c)) for c in repn.linear_coefs], dtype=float)
    if not repn.quadratic_vars:
        rows.add_row(index, coef, lower, upper)
        return
    qi = cols.of_many([pair[0] for pair in repn.quadratic_vars])
    qj = cols.of_many([pair[1] for pair in repn.quadratic_vars])
    qc = np.asarray([float(pyo.value(c)) for c in repn.quadratic_coefs], dtype=float)
    rows.quadratic.append(QuadraticRow(index, coef, qi, qj, qc, lower, upper))


def _objective(model: pyo.ConcreteModel):
    objectives = list(model.component_data_objects(pyo.Objective, active=True))
    if len(objectives) != 1:
        raise InvalidInputError(
            f"the model has {len(objectives)} active objectives; exactly one is needed"
        )
    return objectives[0]


def compile_model(model: pyo.ConcreteModel) -> StandardForm:
    """Translate ``model`` into a :class:`StandardForm` (linear and quadratic parts only).

    The garbage collector is paused meanwhile: the walk creates many small objects and the
    collector's passes over a large model would otherwise cost more than the walk itself.
    """
    with PauseGC():
        return _compile(model)


def _compile(model: pyo.ConcreteModel) -> StandardForm:
    cols = _Columns()
    rows = _RowBuilder()
    obj = _objective(model)
    repn = generate_standard_repn(obj.expr, quadratic=True, compute_values=True)
    if repn.nonlinear_expr is not None:
        raise CapabilityError("the objective is nonlinear beyond quadratic terms")
    obj_cols = cols.of_many(repn.linear_vars)
    obj_coef = [float(pyo.value(c)) for c in repn.linear_coefs]
    q_i = cols.of_many([pair[0] for pair in repn.quadratic_vars])
    q_j = cols.of_many([pair[1] for pair in repn.quadratic_vars])
    q_coef = np.asarray([float(pyo.value(c)) for c in repn.quadratic_coefs], dtype=float)
    for comp in model.component_objects(pyo.Constraint, active=True, descend_into=True):
        if isinstance(comp, MatrixConstraint):
            rows.add_block(*_matrix_block(comp, cols))
            continue
        for con in comp.values():
            if con.active:
                _add_expression_row(con, cols, rows)
    n = len(cols.variables)
    c = np.zeros(n)
    np.add.at(c, obj_cols, obj_coef)
    A, row_lower, row_upper = rows.matrix(n)
    col_lower, col_upper, integer = _column_data(cols.variables)
    return StandardForm(
        variables=cols.variables,
        col_lower=col_lower,
        col_upper=col_upper,
        integer=integer,
        c=c,
        c0=float(pyo.value(repn.constant)),
        maximize=obj.sense == pyo.maximize,
        A=A,
        row_lower=row_lower,
        row_upper=row_upper,
        q_i=q_i,
        q_j=q_j,
        q_coef=q_coef,
        quadratic_rows=rows.quadratic,
    )


def _column_data(variables: list):
    """Bounds (fixed variables become equal bounds) and integrality of each column.

    Read in bulk from the variables' own state: a Python call per variable costs more than the
    rest of the compilation on models with a hundred thousand columns. Bounds that are Pyomo
    expressions (mutable parameters) take Pyomo's own ``bounds`` per variable."""
    if not variables:
        return np.zeros(0), np.zeros(0), np.zeros(0, dtype=bool)
    lbs, ubs, domains, fixed, values = zip(*map(_VAR_STATE, variables))
    if not {*map(type, lbs), *map(type, ubs)} <= _PLAIN_TYPES:
        return _column_data_by_variable(variables)
    lower = _floats(lbs, -np.inf)
    upper = _floats(ubs, np.inf)
    ids = list(map(id, domains))
    unique = dict(zip(ids, domains))
    code_of = {key: code for code, key in enumerate(unique)}
    code = np.fromiter(map(code_of.__getitem__, ids), dtype=np.int64, count=len(ids))
    intervals = np.array([_interval(d) for d in unique.values()], dtype=float)[code]
    lower = np.maximum(lower, intervals[:, 0])
    upper = np.minimum(upper, intervals[:, 1])
    fixed = np.array(fixed, dtype=bool)
    if fixed.any():
        at = np.array([values[j] for j in np.flatnonzero(fixed)], dtype=float)
        lower[fixed] = upper[fixed] = at
    return lower, upper, intervals[:, 2] == 1


_VAR_STATE = attrgetter("_lb", "_ub", "_domain", "_fixed", "_value")
_PLAIN_TYPES = {float, int, np.float64, np.int64, type(None)}


def _floats(values, missing: float) -> np.ndarray:
    """Numbers or None as a float array, None becoming ``missing``."""
    out = np.array(values, dtype=float)
    out[np.isnan(out)] = missing
    return out


def _interval(domain) -> tuple[float, float, float]:
    """A domain's ``(lower, upper, step)``; step 1 marks integers, 0 reals."""
    lo, hi, step = domain.get_interval()
    return (
        -np.inf if lo is None else lo,
        np.inf if hi is None else hi,
        0 if step is None else step,
    )


def _column_data_by_variable(variables: list):
    """``_column_data`` through Pyomo's per-variable API (bounds given as expressions)."""
    n = len(variables)
    lower = np.empty(n)
    upper = np.empty(n)
    integer = np.empty(n, dtype=bool)
    for j, var in enumerate(variables):
        integer[j] = var.is_integer()
        if var.fixed:
            lower[j] = upper[j] = float(var.value)
            continue
        lb, ub = var.bounds
        lower[j] = -np.inf if lb is None else lb
        upper[j] = np.inf if ub is None else ub
    return lower, upper, integer
