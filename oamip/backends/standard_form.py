"""Compile a Pyomo model once into standard-form matrices that every backend can load.

    minimise (or maximise)  c0 + c x + sum q_ij x_i x_j
    subject to              row_lower <= A x <= row_upper
                            qrow_lower <= a x + sum q_ij x_i x_j <= qrow_upper   (quadratic rows)
                            col_lower <= x <= col_upper,  x_j integer where ``integer[j]``

Pyomo stays the single description of the model. ``MatrixConstraint`` components, which the
formulations use for their large linear blocks, are copied as sparse matrices without touching
Pyomo's expression system; every other constraint goes through Pyomo's standard representation.

For speed this module reads a few private attributes of Pyomo's variables and
``MatrixConstraint`` in bulk; it is the only module of oamip that does. They are checked, by
value, on the first compilation (:func:`check_pyomo_internals`), so a Pyomo that changed them
fails with a message naming the attribute instead of giving wrong matrices.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field, replace
from functools import cache, partial
from itertools import compress
from operator import attrgetter

import numpy as np
import pyomo.environ as pyo
import scipy.sparse as sp
from pyomo.common.gc_manager import PauseGC
from pyomo.core.base.matrix_constraint import MatrixConstraint
from pyomo.repn.standard_repn import generate_standard_repn
from pyomo.version import version as pyomo_version

from oamip.errors import CapabilityError, InvalidInputError, PyomoVersionError
from oamip.sparse import SparseRows, keep_rows

TESTED_PYOMO = ">=6.7,<6.11"
"""The Pyomo versions this module's reads of Pyomo internals are tested with (as in
pyproject.toml)."""


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

    def sides(self) -> list[tuple[str, float]]:
        """The row as one-sided constraints ``(sense, rhs)``, for solvers that take no ranged
        quadratic row: ``("==", upper)`` when both sides are equal, else ``("<=", upper)`` and
        then ``(">=", lower)`` for each finite side."""
        if self.lower == self.upper:
            return [("==", self.upper)]
        one_sided = [("<=", self.upper), (">=", self.lower)]
        return [(sense, rhs) for sense, rhs in one_sided if np.isfinite(rhs)]


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
    nonlinear: list[str] = field(default_factory=list)
    """The components with terms beyond quadratic ("constraint 'c'", "objective 'o'"), left out
    of the matrices: no backend solves such a form (the capability ``nonlinear``)."""

    @property
    def num_cols(self) -> int:
        return len(self.variables)

    @property
    def num_rows(self) -> int:
        return self.A.shape[0] + len(self.quadratic_rows)

    @property
    def has_quadratic_objective(self) -> bool:
        return len(self.q_coef) > 0

    def coefficient_range(self) -> tuple[float, float] | None:
        """The smallest and largest absolute nonzero of the constraint matrix."""
        values = np.abs(self.A.data[self.A.data != 0])
        return (float(values.min()), float(values.max())) if len(values) else None

    def objective_value(self, x: np.ndarray) -> float:
        """The objective at ``x`` (in the model's own sense)."""
        quad = float(np.sum(self.q_coef * x[self.q_i] * x[self.q_j]))
        return self.c0 + float(self.c @ x) + quad

    def columns_of(self, variables, missing: int | None = None) -> np.ndarray:
        """The column of each of ``variables`` (Pyomo variables). A variable the model does not
        use gets ``missing``, or, when that is None, raises an error naming it."""
        index = dict(zip(map(id, self.variables), range(self.num_cols)))
        columns = [index.get(id(var), missing) for var in variables]
        if missing is None and None in columns:
            var = variables[columns.index(None)]
            raise InvalidInputError(f"variable '{var.name}' is not used by the model")
        return np.array(columns, dtype=np.int64)

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


def relaxation(form: StandardForm, objective: bool = True) -> StandardForm:
    """``form`` with integrality dropped (root cuts); with ``objective=False`` also with a zero
    objective, leaving the LP over the feasible region that bound tightening optimises over."""
    if form.nonlinear:
        raise CapabilityError(f"the model is nonlinear ({', '.join(form.nonlinear)})")
    relaxed = replace(form, integer=np.zeros_like(form.integer))
    if objective:
        return relaxed
    if form.quadratic_rows:
        raise CapabilityError("the LP relaxation of a model with quadratic rows is not an LP")
    return replace(
        relaxed,
        c=np.zeros(form.num_cols),
        c0=0.0,
        maximize=False,
        q_i=np.zeros(0, dtype=np.int64),
        q_j=np.zeros(0, dtype=np.int64),
        q_coef=np.zeros(0),
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


def _matrix_block(comp: MatrixConstraint, cols: _Columns, rows: SparseRows) -> None:
    """Add a MatrixConstraint's active rows, columns renumbered, without building expressions."""
    col_of_x = cols.of_many(comp._x)
    indptr = np.asarray(comp._A_indptr, dtype=np.int64)
    indices = col_of_x[np.asarray(comp._A_indices, dtype=np.int64)]
    data = np.asarray(comp._A_data, dtype=float)
    lower = _row_bounds(comp._lower, -np.inf)
    upper = _row_bounds(comp._upper, np.inf)
    active = np.fromiter(map(_ACTIVE, comp._data), dtype=bool, count=len(comp._data))
    if not active.all():
        keep = np.flatnonzero(active)
        indptr, indices, data = keep_rows(indptr, indices, data, keep)
        lower, upper = lower[keep], upper[keep]
    rows.add_csr(indptr, indices, data, lower, upper)


_ACTIVE = attrgetter("_active")


def _row_bounds(values, missing: float) -> np.ndarray:
    """A MatrixConstraint's row bounds as floats (None: ``missing``)."""
    if {*map(type, values)} <= _PLAIN_TYPES:
        return _floats(values, missing)
    return np.array([missing if v is None else float(pyo.value(v)) for v in values])


def _add_expression_row(
    con, cols: _Columns, rows: SparseRows, quadratic: list[QuadraticRow], nonlinear: list[str]
) -> None:
    """Add one constraint through Pyomo's standard representation (skipped, and named in
    ``nonlinear``, when it has terms beyond quadratic)."""
    repn = generate_standard_repn(con.body, quadratic=True, compute_values=True)
    if repn.nonlinear_expr is not None:
        nonlinear.append(f"constraint '{con.name}'")
        return
    offset = float(pyo.value(repn.constant))
    lower = _bound(con.lower, -np.inf) - offset
    upper = _bound(con.upper, np.inf) - offset
    index = cols.of_many(repn.linear_vars)
    coef = np.asarray([float(pyo.value(c)) for c in repn.linear_coefs], dtype=float)
    if not repn.quadratic_vars:
        rows.add_csr([0, len(index)], index, coef, lower, upper)
        return
    qi = cols.of_many([pair[0] for pair in repn.quadratic_vars])
    qj = cols.of_many([pair[1] for pair in repn.quadratic_vars])
    qc = np.asarray([float(pyo.value(c)) for c in repn.quadratic_coefs], dtype=float)
    quadratic.append(QuadraticRow(index, coef, qi, qj, qc, lower, upper))


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
    check_pyomo_internals()
    with PauseGC():
        return _compile(model)


def _compile(model: pyo.ConcreteModel) -> StandardForm:
    cols = _Columns()
    rows = SparseRows()
    quadratic: list[QuadraticRow] = []
    nonlinear: list[str] = []
    obj = _objective(model)
    repn = generate_standard_repn(obj.expr, quadratic=True, compute_values=True)
    if repn.nonlinear_expr is not None:
        nonlinear.append(f"objective '{obj.name}'")
    obj_cols = cols.of_many(repn.linear_vars)
    obj_coef = [float(pyo.value(c)) for c in repn.linear_coefs]
    q_i = cols.of_many([pair[0] for pair in repn.quadratic_vars])
    q_j = cols.of_many([pair[1] for pair in repn.quadratic_vars])
    q_coef = np.asarray([float(pyo.value(c)) for c in repn.quadratic_coefs], dtype=float)
    for comp in model.component_objects(pyo.Constraint, active=True, descend_into=True):
        if isinstance(comp, MatrixConstraint):
            _matrix_block(comp, cols, rows)
            continue
        for con in comp.values():
            if con.active:
                _add_expression_row(con, cols, rows, quadratic, nonlinear)
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
        quadratic_rows=quadratic,
        nonlinear=nonlinear,
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


@cache
def check_pyomo_internals() -> None:
    """Check, once, that Pyomo's private attributes read here exist and mean what they meant.

    A tiny model is built through Pyomo's public API and each attribute is compared with the
    value that API gave it; the first that is missing or differs raises a
    :class:`~oamip.errors.PyomoVersionError` naming it."""
    m = pyo.ConcreteModel()
    m.x = pyo.Var([0, 1], domain=pyo.Integers, bounds=(1.5, 2.5))
    m.x[1].fix(2)
    m.rows = MatrixConstraint([3.0, 4.0], [0, 1], [0, 2], [1.0], [None], [m.x[0], m.x[1]])
    m.rows[0].deactivate()
    var, fixed = m.x[0], m.x[1]
    expected = [
        ("VarData._lb", var, "_lb", 1.5),
        ("VarData._ub", var, "_ub", 2.5),
        ("VarData._domain", var, "_domain", pyo.Integers),
        ("VarData._fixed", fixed, "_fixed", True),
        ("VarData._value", fixed, "_value", 2),
        ("MatrixConstraint._x", m.rows, "_x", (var, fixed)),
        ("MatrixConstraint._A_indptr", m.rows, "_A_indptr", [0, 2]),
        ("MatrixConstraint._A_indices", m.rows, "_A_indices", [0, 1]),
        ("MatrixConstraint._A_data", m.rows, "_A_data", [3.0, 4.0]),
        ("MatrixConstraint._lower", m.rows, "_lower", [1.0]),
        ("MatrixConstraint._upper", m.rows, "_upper", [None]),
        ("MatrixConstraint._data", m.rows, "_data", (m.rows[0],)),
        ("ConstraintData._active", m.rows[0], "_active", False),
    ]
    for label, owner, attribute, value in expected:
        _check_internal(label, owner, attribute, value)


_MISSING = object()


def _check_internal(label: str, owner, attribute: str, expected) -> None:
    """Raise if ``owner.attribute`` is missing or does not equal ``expected``."""
    found = getattr(owner, attribute, _MISSING)
    same = found is not _MISSING and _same(found, expected)
    if not same:
        what = "does not exist" if found is _MISSING else f"holds {found!r}, not {expected!r}"
        raise PyomoVersionError(
            f"Pyomo {pyomo_version} changed its private attribute {label}, which "
            f"oamip's standard-form compiler reads ({label} {what}). oamip is tested with "
            f"pyomo{TESTED_PYOMO}: install such a version (pip install 'pyomo{TESTED_PYOMO}')."
        )


def _same(found, expected) -> bool:
    """Equal numbers and flags, the same Pyomo objects (compared by identity: ``==`` on a
    Pyomo variable builds an expression), element by element in sequences."""
    if isinstance(expected, list | tuple):
        return (
            isinstance(found, list | tuple)
            and len(found) == len(expected)
            and all(map(_same, found, expected))
        )
    if isinstance(expected, bool | int | float):
        return isinstance(found, bool | int | float) and found == expected
    return found is expected
