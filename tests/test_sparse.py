"""The one sparse-row accumulator: triplets and CSR pieces, in any order, give one exact matrix;
the variable table gives every variable its bounds."""

from __future__ import annotations

import numpy as np
import pyomo.environ as pyo
import pytest
import scipy.sparse as sp

from oamip.formulations.blocks import VarTable
from oamip.sparse import SparseRows, keep_rows


def dense_rows(rows: SparseRows, num_cols: int | None = None) -> np.ndarray:
    A, _, _ = rows.matrix(num_cols)
    return A.toarray()


def test_triplets_added_in_any_order_are_summed_into_their_rows():
    rows = SparseRows()
    first = rows.new_rows([0.0, 1.0], np.inf)
    second = rows.new_rows([-np.inf], [5.0])
    rows.terms(second, [2, 0], [1.5, -1.0])
    rows.terms(first[:, None], [[0, 2]], [[1.0, 2.0], [3.0, 4.0]])
    rows.terms(first[0], 0, 0.5)  # a duplicate entry: summed
    A, lower, upper = rows.matrix()
    assert A.has_canonical_format
    np.testing.assert_array_equal(A.toarray(), [[1.5, 0, 2.0], [3.0, 0, 4.0], [-1.0, 0, 1.5]])
    np.testing.assert_array_equal(lower, [0.0, 1.0, -np.inf])
    np.testing.assert_array_equal(upper, [np.inf, np.inf, 5.0])


def test_csr_pieces_and_triplets_agree_with_a_dense_sum():
    rng = np.random.default_rng(4)
    blocks = [sp.random(n, 6, density=0.5, random_state=rng, format="csr") for n in (3, 4, 2)]
    ordered, shuffled = SparseRows(), SparseRows()
    for block in blocks:
        bounds = rng.uniform(-1, 1, block.shape[0])
        ordered.add_csr(block.indptr, block.indices, block.data, bounds, bounds + 1)
        ids = shuffled.new_rows(bounds, bounds + 1)
        coo = block.tocoo()
        order = rng.permutation(coo.nnz)
        shuffled.terms(ids[coo.row[order]], coo.col[order], coo.data[order])
    expected = sp.vstack(blocks).toarray()
    np.testing.assert_array_equal(dense_rows(ordered, 6), expected)
    np.testing.assert_array_equal(dense_rows(shuffled, 6), expected)
    for a, b in zip(ordered.matrix(6)[1:], shuffled.matrix(6)[1:], strict=True):
        np.testing.assert_array_equal(a, b)


def test_rows_without_terms_and_the_width():
    rows = SparseRows()
    rows.new_rows([1.0, 2.0], 3.0)
    A, lower, upper = rows.matrix(4)
    assert A.shape == (2, 4) and A.nnz == 0
    assert rows.matrix()[0].shape == (2, 0)
    rows.terms([1], [6], [2.0])
    assert rows.matrix()[0].shape == (2, 7)
    empty = SparseRows().matrix(3)
    assert empty[0].shape == (0, 3) and len(empty[1]) == len(empty[2]) == 0


@pytest.mark.parametrize("keep", [[0, 2, 3], [1], [], [3, 0]])
def test_keep_rows_keeps_exactly_those_rows(keep):
    rng = np.random.default_rng(1)
    dense = sp.random(4, 5, density=0.6, random_state=rng).toarray()
    dense[1] = 0  # an empty row
    A = sp.csr_matrix(dense)
    keep = np.array(keep, dtype=np.int64)
    indptr, indices, data = keep_rows(A.indptr, A.indices, A.data, keep)
    kept = sp.csr_matrix((data, indices, indptr), shape=(len(keep), 5))
    np.testing.assert_array_equal(kept.toarray(), A.toarray()[keep])


@pytest.mark.parametrize(
    ("lower", "upper"),
    [
        ([0.0, 0.0, 0.0], [1.0, 2.0, np.inf]),
        ([-1.0, 0.5, -np.inf], [3.0, 3.0, 3.0]),
        ([0.0, 0.0], [np.inf, np.inf]),
        ([-np.inf, -np.inf], [2.0, 2.0]),
        ([1.5], [1.5]),
        ([], []),
    ],
)
def test_a_variable_table_gives_each_variable_its_bounds(lower, upper):
    """Bounds shared by a whole block go to ``pyo.Var``, the others one by one: either way
    every variable ends with its own, None for an infinite one."""
    table = VarTable(pyo.ConcreteModel())
    ids = table.add("x", lower, upper)
    assert ids.tolist() == list(range(len(lower)))
    for var, lo, hi in zip(table.variables, lower, upper, strict=True):
        assert var.lb == (None if lo == -np.inf else lo)
        assert var.ub == (None if hi == np.inf else hi)
    binary = table.add("v", np.zeros(2), np.ones(2), binary=True)
    assert [(table.variables[j].lb, table.variables[j].ub) for j in binary] == [(0, 1)] * 2
    assert all(table.variables[j].is_binary() for j in binary)
