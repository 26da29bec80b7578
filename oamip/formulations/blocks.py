"""Vectorised building blocks: variable tables and sparse row blocks for Pyomo models.

Formulations describe their large linear parts as triplets (row, column, coefficient) over a flat
numbering of variables; :class:`RowBlock` turns them into one ``MatrixConstraint`` so Pyomo never
builds an expression per row (docs/mathematics.md §7).
"""

from __future__ import annotations

import numpy as np
import pyomo.environ as pyo
import scipy.sparse as sp
from pyomo.core.base.matrix_constraint import MatrixConstraint


class VarTable:
    """Creates Pyomo variable blocks and numbers their entries globally."""

    def __init__(self, model: pyo.ConcreteModel) -> None:
        self.model = model
        self.variables: list = []

    def add(self, name: str, lower, upper, binary: bool = False) -> np.ndarray:
        """Add ``len(lower)`` variables called ``name[i]``; return their global ids.

        Bounds are written straight into the variables: Pyomo's bounds rule costs several
        microseconds per variable, which dominates building large models."""
        lower = _none_if_infinite(np.asarray(lower, dtype=float).ravel())
        upper = _none_if_infinite(np.asarray(upper, dtype=float).ravel())
        domain = pyo.Binary if binary else pyo.Reals
        var = pyo.Var(range(len(lower)), domain=domain, dense=True)
        self.model.add_component(name, var)
        start = len(self.variables)
        for data, lo, hi in zip(var.values(), lower, upper):
            data._lb = lo
            data._ub = hi
        self.variables.extend(var.values())
        return np.arange(start, len(self.variables), dtype=np.int64)

    def set_values(self, ids: np.ndarray, values: np.ndarray) -> None:
        for i, val in zip(ids.tolist(), np.asarray(values, dtype=float).ravel().tolist()):
            self.variables[i].set_value(val, skip_validation=True)

    def values(self, ids: np.ndarray) -> np.ndarray:
        return np.array([self.variables[i].value for i in np.asarray(ids).ravel()], dtype=float)


def _none_if_infinite(values: np.ndarray) -> list:
    """Row bounds as Pyomo wants them: floats, with None for an infinite bound."""
    out = np.where(np.isfinite(values), values, None)
    return out.tolist()


class RowBlock:
    """Collects linear rows ``lower <= sum coef * var <= upper`` as sparse triplets."""

    def __init__(self) -> None:
        self.rows: list[np.ndarray] = []
        self.cols: list[np.ndarray] = []
        self.vals: list[np.ndarray] = []
        self.lower: list[np.ndarray] = []
        self.upper: list[np.ndarray] = []
        self.count = 0

    def new_rows(self, lower, upper) -> np.ndarray:
        """Open ``len(lower)`` rows with these bounds; return their ids."""
        lower = np.atleast_1d(np.asarray(lower, dtype=float))
        upper = np.broadcast_to(np.asarray(upper, dtype=float), lower.shape)
        ids = np.arange(self.count, self.count + len(lower), dtype=np.int64)
        self.count += len(lower)
        self.lower.append(lower)
        self.upper.append(np.array(upper))
        return ids

    def terms(self, rows, cols, vals) -> None:
        """Add ``vals * var[cols]`` to ``rows`` (arrays broadcast against each other)."""
        rows, cols, vals = np.broadcast_arrays(rows, cols, np.asarray(vals, dtype=float))
        self.rows.append(rows.ravel())
        self.cols.append(cols.ravel())
        self.vals.append(vals.ravel())

    def attach(self, table: VarTable, name: str) -> None:
        """Add the collected rows to the model as one ``MatrixConstraint`` called ``name``."""
        if self.count == 0:
            return
        rows = np.concatenate(self.rows)
        cols = np.concatenate(self.cols)
        vals = np.concatenate(self.vals)
        columns = table.variables[: cols.max() + 1] if len(cols) else []
        matrix = sp.csr_matrix((vals, (rows, cols)), shape=(self.count, len(columns)))
        matrix.sum_duplicates()
        lower = _none_if_infinite(np.concatenate(self.lower))
        upper = _none_if_infinite(np.concatenate(self.upper))
        block = MatrixConstraint(
            matrix.data,
            matrix.indices,
            matrix.indptr,
            lower,
            upper,
            columns,
        )
        table.model.add_component(name, block)
