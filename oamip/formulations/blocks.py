"""Vectorised building blocks: variable tables and sparse row blocks for Pyomo models.

Formulations describe their large linear parts as triplets (row, column, coefficient) over a flat
numbering of variables; :class:`RowBlock` turns them into one ``MatrixConstraint`` so Pyomo never
builds an expression per row (docs/mathematics.md §7).
"""

from __future__ import annotations

import numpy as np
import pyomo.environ as pyo
from pyomo.core.base.matrix_constraint import MatrixConstraint

from oamip.sparse import SparseRows


class VarTable:
    """Creates Pyomo variable blocks and numbers their entries globally."""

    def __init__(self, model: pyo.ConcreteModel) -> None:
        self.model = model
        self.variables: list = []

    def add(self, name: str, lower, upper, binary: bool = False) -> np.ndarray:
        """Add ``len(lower)`` variables called ``name[i]``; return their global ids.

        A bound shared by every variable of the block is given to ``pyo.Var`` (Pyomo copies it
        from the first variable to the others); the others are set through each variable's
        ``lower`` or ``upper`` after construction: a bounds rule costs more per variable, which
        shows when building large models."""
        lower = np.asarray(lower, dtype=float).ravel()
        upper = np.asarray(upper, dtype=float).ravel()
        same_lower, same_upper = _is_shared(lower), _is_shared(upper)
        bounds = (
            _none_if_infinite(lower[:1])[0] if same_lower else None,
            _none_if_infinite(upper[:1])[0] if same_upper else None,
        )
        domain = pyo.Binary if binary else pyo.Reals
        var = pyo.Var(range(len(lower)), domain=domain, dense=True, bounds=bounds)
        self.model.add_component(name, var)
        start = len(self.variables)
        if not same_lower:
            for data, lo in zip(var.values(), _none_if_infinite(lower)):
                data.lower = lo
        if not same_upper:
            for data, hi in zip(var.values(), _none_if_infinite(upper)):
                data.upper = hi
        self.variables.extend(var.values())
        return np.arange(start, len(self.variables), dtype=np.int64)

    def set_values(self, ids: np.ndarray, values: np.ndarray) -> None:
        for i, val in zip(ids.tolist(), np.asarray(values, dtype=float).ravel().tolist()):
            self.variables[i].set_value(val, skip_validation=True)

    def values(self, ids: np.ndarray) -> np.ndarray:
        return np.array([self.variables[i].value for i in np.asarray(ids).ravel()], dtype=float)


def _is_shared(values: np.ndarray) -> bool:
    """Whether every entry of ``values`` (at least one) is the same bound."""
    return len(values) > 0 and bool(np.all(values == values[0]))


def _none_if_infinite(values: np.ndarray) -> list:
    """Row bounds as Pyomo wants them: floats, with None for an infinite bound."""
    out = np.where(np.isfinite(values), values, None)
    return out.tolist()


class RowBlock(SparseRows):
    """Collects linear rows ``lower <= sum coef * var <= upper`` over a :class:`VarTable`'s ids
    and attaches them to its model as one ``MatrixConstraint``."""

    def attach(self, table: VarTable, name: str) -> None:
        """Add the collected rows to the model as one ``MatrixConstraint`` called ``name``."""
        if self.count == 0:
            return
        matrix, lower, upper = self.matrix()
        block = MatrixConstraint(
            matrix.data,
            matrix.indices,
            matrix.indptr,
            _none_if_infinite(lower),
            _none_if_infinite(upper),
            table.variables[: matrix.shape[1]],
        )
        table.model.add_component(name, block)
