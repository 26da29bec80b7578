"""One accumulator of sparse linear rows ``lower <= sum coef * x[col] <= upper``.

The formulations add rows as triplets (row, column, coefficient), opening rows first and adding
terms to them in any order; the standard-form compiler adds whole blocks of rows that are
already in CSR form. Both end in one CSR matrix with its row bounds, built with numpy and scipy
only (no Pyomo), so the same code serves the model builder and the compiler.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


class SparseRows:
    """Collects linear rows as triplet or CSR pieces and returns them as one CSR matrix."""

    def __init__(self) -> None:
        self._rows: list[np.ndarray] = []
        self._cols: list[np.ndarray] = []
        self._vals: list[np.ndarray] = []
        self._lower: list[np.ndarray] = []
        self._upper: list[np.ndarray] = []
        self.count = 0
        """Rows opened so far."""

    def new_rows(self, lower, upper) -> np.ndarray:
        """Open ``len(lower)`` rows with these bounds (``upper`` broadcast); return their ids."""
        lower = np.atleast_1d(np.asarray(lower, dtype=float))
        upper = np.broadcast_to(np.asarray(upper, dtype=float), lower.shape)
        ids = np.arange(self.count, self.count + len(lower), dtype=np.int64)
        self.count += len(lower)
        self._lower.append(lower)
        self._upper.append(np.array(upper))
        return ids

    def terms(self, rows, cols, vals) -> None:
        """Add ``vals * x[cols]`` to ``rows`` (arrays broadcast against each other)."""
        rows, cols, vals = np.broadcast_arrays(rows, cols, np.asarray(vals, dtype=float))
        self._rows.append(rows.ravel().astype(np.int64, copy=False))
        self._cols.append(cols.ravel().astype(np.int64, copy=False))
        self._vals.append(vals.ravel())

    def add_csr(self, indptr, indices, data, lower, upper) -> None:
        """Add whole rows given in CSR form (``indptr`` from 0) with their bounds."""
        indptr = np.asarray(indptr, dtype=np.int64)
        ids = self.new_rows(lower, upper)
        self.terms(np.repeat(ids, np.diff(indptr)), np.asarray(indices), data)

    def matrix(self, num_cols: int | None = None) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
        """The rows as a CSR matrix (duplicates summed) with their lower and upper bounds.

        ``num_cols`` defaults to one past the largest column used."""
        cols = np.concatenate(self._cols) if self._cols else np.zeros(0, dtype=np.int64)
        if num_cols is None:
            num_cols = int(cols.max()) + 1 if len(cols) else 0
        rows = np.concatenate(self._rows) if self._rows else np.zeros(0, dtype=np.int64)
        vals = np.concatenate(self._vals) if self._vals else np.zeros(0)
        shape = (self.count, num_cols)
        if np.all(rows[1:] >= rows[:-1]):
            # already in row order (whole CSR blocks): the row pointers are counts, no sort
            indptr = np.zeros(self.count + 1, dtype=np.int64)
            np.cumsum(np.bincount(rows, minlength=self.count), out=indptr[1:])
            A = sp.csr_matrix((vals, cols, indptr), shape=shape)
        else:
            A = sp.csr_matrix((vals, (rows, cols)), shape=shape)
        A.sum_duplicates()
        lower = np.concatenate(self._lower) if self._lower else np.zeros(0)
        upper = np.concatenate(self._upper) if self._upper else np.zeros(0)
        return A, lower, upper


def keep_rows(indptr, indices, data, keep: np.ndarray):
    """The CSR arrays of the rows ``keep`` (indices into the rows) only, in that order."""
    indptr = np.asarray(indptr, dtype=np.int64)
    lengths = np.diff(indptr)[keep]
    starts = indptr[:-1][keep]
    new_indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    picks = np.repeat(starts - new_indptr[:-1], lengths) + np.arange(new_indptr[-1])
    return new_indptr, np.asarray(indices)[picks], np.asarray(data)[picks]
