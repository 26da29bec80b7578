"""Write a model as a free MPS or CPLEX LP file, so that any other solver can run it.

Both writers work from the standard form (:mod:`oamip.backends.standard_form`), so they accept
the ``MatrixConstraint`` blocks that Pyomo's own LP writer cannot handle. Column ``j`` of the
standard form is written as ``x{j}``, linear row ``i`` as ``r{i}``, quadratic row ``k`` as
``q{k}``. In LP files an objective constant multiplies a column ``obj_constant`` fixed at 1,
the one spelling that HiGHS, SCIP and Gurobi all read. Files appear atomically: a reader never
sees a half-written file. A path ending in ``.gz`` is written gzipped, deterministically (no
file name and time 0 in the header): the same model gives the same bytes.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pyomo.environ as pyo
import scipy.sparse as sp

from oamip.backends.standard_form import QuadraticRow, StandardForm, compile_model
from oamip.errors import CapabilityError
from oamip.files import atomic_path

OBJECTIVE_ROW = "obj"
CONSTANT_COLUMN = "obj_constant"


def write_mps(model: pyo.ConcreteModel | StandardForm, path: str | os.PathLike) -> Path:
    """Write ``model`` as free MPS (integer markers, QUADOBJ for a quadratic objective).

    Quadratic constraints have no MPS section every solver reads; they are refused, and
    :func:`write_lp` writes them instead.
    """
    form = _as_form(model)
    if form.quadratic_rows:
        raise CapabilityError(
            f"the model has {len(form.quadratic_rows)} quadratic constraints, which this MPS "
            "writer does not write; use write_lp (LP format) for such a model"
        )
    return _write_atomic(path, _mps_lines(form))


def write_lp(model: pyo.ConcreteModel | StandardForm, path: str | os.PathLike) -> Path:
    """Write ``model`` in CPLEX LP format (quadratic objective and constraints included)."""
    return _write_atomic(path, _lp_lines(_as_form(model)))


def _as_form(model: pyo.ConcreteModel | StandardForm) -> StandardForm:
    form = model if isinstance(model, StandardForm) else compile_model(model)
    if form.nonlinear:
        raise CapabilityError(
            f"the model is nonlinear beyond quadratic terms ({', '.join(form.nonlinear)}); "
            "MPS and LP files hold linear and quadratic models only"
        )
    return form


def _write_atomic(path: str | os.PathLike, lines: Iterable[str]) -> Path:
    """Write ``lines`` to ``path`` all or nothing (:func:`oamip.files.atomic_path`), gzipped
    with a fixed header when ``path`` ends in ``.gz``."""
    target = Path(path)
    text = (line + "\n" for line in lines)
    with atomic_path(target) as tmp, open(tmp, "wb" if target.suffix == ".gz" else "w") as handle:
        if target.suffix != ".gz":
            handle.writelines(text)
            return target
        with gzip.GzipFile(filename="", mode="wb", fileobj=handle, mtime=0) as packed:
            packed.writelines(line.encode() for line in text)
    return target


def _num(value: float) -> str:
    return repr(float(value))


def _row_kind(lower: float, upper: float) -> str | None:
    """MPS row type of ``lower <= row <= upper``; None for a free row."""
    if lower == upper:
        return "E"
    if np.isfinite(upper):
        return "L"
    if np.isfinite(lower):
        return "G"
    return None


def _mps_lines(form: StandardForm) -> Iterator[str]:
    kinds = [_row_kind(lo, up) for lo, up in zip(form.row_lower, form.row_upper, strict=True)]
    yield "NAME oamip FREE"
    if form.maximize:
        yield "OBJSENSE"
        yield "    MAX"
    yield "ROWS"
    yield f" N {OBJECTIVE_ROW}"
    yield from (f" {kind} r{i}" for i, kind in enumerate(kinds) if kind)
    yield "COLUMNS"
    yield from _mps_columns(form, kinds)
    yield "RHS"
    yield from _mps_rhs(form, kinds)
    yield "RANGES"
    yield from (
        f" RNG r{i} {_num(up - lo)}"
        for i, (lo, up) in enumerate(zip(form.row_lower, form.row_upper, strict=True))
        if kinds[i] == "L" and np.isfinite(lo)
    )
    yield "BOUNDS"
    yield from _mps_bounds(form)
    if form.has_quadratic_objective:
        yield "QUADOBJ"
        yield from _mps_quadobj(form)
    yield "ENDATA"


def _mps_columns(form: StandardForm, kinds: list[str | None]) -> Iterator[str]:
    """Column-wise entries; every column appears (with a zero cost if it has nothing else)."""
    A = form.A.tocsc()
    kept = np.array([kind is not None for kind in kinds], dtype=bool)
    in_integer_block = False
    for j in range(form.num_cols):
        if bool(form.integer[j]) != in_integer_block:
            in_integer_block = not in_integer_block
            marker = "INTORG" if in_integer_block else "INTEND"
            yield f" MARKER 'MARKER' '{marker}'"
        rows = A.indices[A.indptr[j] : A.indptr[j + 1]]
        values = A.data[A.indptr[j] : A.indptr[j + 1]]
        if form.c[j] != 0 or not kept[rows].any():
            yield f" x{j} {OBJECTIVE_ROW} {_num(form.c[j])}"
        yield from (
            f" x{j} r{i} {_num(v)}"
            for i, v in zip(rows.tolist(), values.tolist(), strict=True)
            if kept[i]
        )
    if in_integer_block:
        yield " MARKER 'MARKER' 'INTEND'"


def _mps_rhs(form: StandardForm, kinds: list[str | None]) -> Iterator[str]:
    if form.c0 != 0:
        yield f" RHS {OBJECTIVE_ROW} {_num(-form.c0)}"
    for i, kind in enumerate(kinds):
        rhs = form.row_lower[i] if kind == "G" else form.row_upper[i]
        if kind and rhs != 0:
            yield f" RHS r{i} {_num(rhs)}"


def _column_bounds(form: StandardForm) -> Iterator[tuple[str, float, float, bool]]:
    """Each column's name, lower and upper bound, and whether it is integer."""
    lower, upper, integer = form.col_lower.tolist(), form.col_upper.tolist(), form.integer.tolist()
    for j, (lo, up, is_integer) in enumerate(zip(lower, upper, integer, strict=True)):
        yield f"x{j}", lo, up, is_integer


def _mps_bounds(form: StandardForm) -> Iterator[str]:
    for name, lo, up, integer in _column_bounds(form):
        if lo == up:
            yield f" FX BND {name} {_num(lo)}"
            continue
        if lo == -np.inf:
            yield f" {'FR' if up == np.inf else 'MI'} BND {name}"
        elif lo != 0 or up < 0:
            yield f" LO BND {name} {_num(lo)}"
        if np.isfinite(up):
            yield f" UP BND {name} {_num(up)}"
        elif integer and lo != -np.inf:
            yield f" PL BND {name}"


def _symmetric_lower(form: StandardForm) -> sp.coo_matrix:
    """Lower triangle of Q where the objective's quadratic part is ``1/2 x'Qx``."""
    n = form.num_cols
    q = sp.coo_matrix((form.q_coef, (form.q_i, form.q_j)), shape=(n, n)).tocsr()
    full = (q + q.T).tocoo()
    full.sum_duplicates()
    lower = sp.tril(full).tocoo()
    keep = lower.data != 0
    return sp.coo_matrix((lower.data[keep], (lower.row[keep], lower.col[keep])), shape=(n, n))


def _mps_quadobj(form: StandardForm) -> Iterator[str]:
    lower = _symmetric_lower(form)
    for i, j, v in zip(lower.row.tolist(), lower.col.tolist(), lower.data.tolist(), strict=True):
        yield f" x{j} x{i} {_num(v)}"


def _lp_sum(terms: Iterable[tuple[float, str]]) -> str:
    """``a x - b y + ...``: signs stand apart and only a negative first term carries one."""
    text = " ".join(f"{'-' if v < 0 else '+'} {_num(abs(v))} {name}" for v, name in terms)
    return text[2:] if text.startswith("+ ") else text


def _lp_linear(index: Iterable[int], coef: Iterable[float]) -> str:
    return _lp_sum((v, f"x{j}") for j, v in zip(index, coef, strict=True))


def _lp_quadratic(q_i, q_j, q_coef, scale: float) -> str:
    terms = _lp_sum(
        (scale * v, f"x{i}^2" if i == j else f"x{i} * x{j}")
        for i, j, v in zip(q_i.tolist(), q_j.tolist(), q_coef.tolist(), strict=True)
    )
    return f"[ {terms} ]"


def _lp_objective(form: StandardForm) -> str:
    nonzero = np.flatnonzero(form.c)
    text = _lp_linear(nonzero.tolist(), form.c[nonzero].tolist()) or "0 x0"
    if form.has_quadratic_objective:
        text += " + " + _lp_quadratic(form.q_i, form.q_j, form.q_coef, 2.0) + " / 2"
    if form.c0 != 0:
        text += f" {'-' if form.c0 < 0 else '+'} {_num(abs(form.c0))} {CONSTANT_COLUMN}"
    return text


def _lp_constraint(name: str, body: str, lower: float, upper: float) -> Iterator[str]:
    """One row, split into two when it is bounded on both sides by different values."""
    body = body or "0 x0"
    if lower == upper:
        yield f" {name}: {body} = {_num(upper)}"
        return
    if np.isfinite(lower) and np.isfinite(upper):
        yield f" {name}_lo: {body} >= {_num(lower)}"
        yield f" {name}_up: {body} <= {_num(upper)}"
    elif np.isfinite(lower):
        yield f" {name}: {body} >= {_num(lower)}"
    elif np.isfinite(upper):
        yield f" {name}: {body} <= {_num(upper)}"


def _lp_rows(form: StandardForm) -> Iterator[str]:
    A = form.A.tocsr()
    for i in range(A.shape[0]):
        span = slice(A.indptr[i], A.indptr[i + 1])
        body = _lp_linear(A.indices[span].tolist(), A.data[span].tolist())
        yield from _lp_constraint(f"r{i}", body, form.row_lower[i], form.row_upper[i])
    for k, row in enumerate(form.quadratic_rows):
        yield from _lp_constraint(f"q{k}", _lp_quadratic_row(row), row.lower, row.upper)


def _lp_quadratic_row(row: QuadraticRow) -> str:
    linear = _lp_linear(row.lin_index.tolist(), row.lin_coef.tolist())
    quadratic = _lp_quadratic(row.quad_i, row.quad_j, row.quad_coef, 1.0)
    return f"{linear} + {quadratic}" if linear else quadratic


def _lp_bounds(form: StandardForm) -> Iterator[str]:
    for name, lo, up, _ in _column_bounds(form):
        if lo == up:
            yield f" {name} = {_num(lo)}"
        elif lo == -np.inf and up == np.inf:
            yield f" {name} free"
        elif up == np.inf:
            if lo != 0:
                yield f" {name} >= {_num(lo)}"
        else:
            low = "-inf" if lo == -np.inf else _num(lo)
            yield f" {low} <= {name} <= {_num(up)}"


def _lp_lines(form: StandardForm) -> Iterator[str]:
    yield "\\ written by oamip"
    yield "Maximize" if form.maximize else "Minimize"
    yield f" {OBJECTIVE_ROW}: {_lp_objective(form)}"
    yield "Subject To"
    yield from _lp_rows(form)
    yield "Bounds"
    yield from _lp_bounds(form)
    if form.c0 != 0:
        yield f" {CONSTANT_COLUMN} = 1"
    integers = np.flatnonzero(form.integer).tolist()
    if integers:
        yield "General"
        yield from (f" x{j}" for j in integers)
    yield "End"
