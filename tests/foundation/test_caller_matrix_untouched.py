"""The library never changes a caller's scipy matrix: validation canonicalizes (sums
duplicate entries, sorts indices, drops explicit zeros) a copy, not the caller's arrays,
which scipy's format conversions would otherwise share."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch


def _messy_symmetric() -> sp.csr_matrix:
    """A symmetric 4 x 4 CSR matrix stored non-canonically: unsorted indices, a duplicate
    entry (split in two halves) and an explicit zero."""
    dense = np.array([[4.0, 1, 0, 0], [1, 4, 2, 0], [0, 2, 4, 1], [0, 0, 1, 4]])
    indptr = np.array([0, 3, 7, 11, 13])
    indices = np.array([1, 0, 3, 2, 1, 0, 1, 3, 2, 1, 1, 3, 2])
    data = np.array([1.0, 4, 0, 2, 2, 1, 2, 1, 4, 1, 1, 4, 1])
    a = sp.csr_matrix((data, indices, indptr), shape=(4, 4))
    # row 1 holds (1, 1) twice: 2 + 2 = 4; row 2 holds (2, 1) twice: 1 + 1 = 2
    assert not a.has_canonical_format
    np.testing.assert_array_equal(a.toarray(), dense)
    return a


def _snapshot(a):
    return a.indptr.copy(), a.indices.copy(), a.data.copy()


def _unchanged(a, snap):
    for now, before in zip((a.indptr, a.indices, a.data), snap, strict=True):
        np.testing.assert_array_equal(now, before)
    assert not a.has_canonical_format


def test_graph_problem_leaves_the_adjacency_alone():
    from unrollsci.graph import GraphInverseProblem

    # a path 0 - 1 - 2 - 3 with weights 1, 2, 1: unsorted, (1, 2) split in two halves and an
    # explicit zero at (0, 3)
    indptr = np.array([0, 2, 5, 7, 8])
    indices = np.array([3, 1, 2, 0, 2, 3, 1, 2])
    data = np.array([0.0, 1, 1, 1, 1, 1, 2, 1])
    a = sp.csr_matrix((data, indices, indptr), shape=(4, 4))
    assert not a.has_canonical_format
    snap = _snapshot(a)
    dense = a.toarray()
    p = GraphInverseProblem.from_scipy(a, torch.zeros(4, dtype=torch.float64), lam=1.0)
    _unchanged(a, snap)
    lap = np.diag(dense.sum(1)) - dense
    np.testing.assert_allclose(p.lap_scipy.toarray(), lap)
    assert p.adjacency.has_canonical_format and np.all(p.adjacency.data != 0)


@pytest.mark.parametrize("what", ["check_spd_input", "ic0", "jacobi", "chebyshev"])
def test_preconditioners_leave_the_matrix_alone(what):
    from unrollsci import precond
    from unrollsci.precond._sparse import check_spd_input

    a = _messy_symmetric()
    snap = _snapshot(a)
    dense = a.toarray()
    if what == "check_spd_input":
        out = check_spd_input(a)
        np.testing.assert_array_equal(out.toarray(), dense)
        assert out.has_canonical_format
    else:
        m = getattr(precond, what)(a)
        r = torch.ones(1, 4, dtype=torch.float64)
        assert torch.isfinite(m(r)).all()
    _unchanged(a, snap)


def test_canonical_input_is_not_copied():
    """A matrix that needs no change is used as it is (no copy for large graphs)."""
    from unrollsci.graph._laplacian import validate_adjacency

    a = sp.csr_matrix(np.array([[0.0, 1.0], [1.0, 0.0]]))
    assert np.may_share_memory(validate_adjacency(a).data, a.data)


def test_sparse_operator_copy_false_keeps_the_values():
    """``SparseOperator(a, copy=False)`` reads the given values (no copy); the default owns
    a copy, so changing the matrix afterwards changes only the first."""
    from unrollsci.operators import SparseOperator

    a = sp.csr_matrix(np.array([[2.0, 1.0], [1.0, 3.0]]))
    b = a.copy()
    shared, owned = SparseOperator(a, copy=False), SparseOperator(b)
    a.data[:] *= 2.0
    b.data[:] *= 2.0
    x = torch.ones(1, 2, dtype=torch.float64)
    torch.testing.assert_close(shared(x), torch.tensor([[6.0, 8.0]], dtype=torch.float64))
    torch.testing.assert_close(owned(x), torch.tensor([[3.0, 4.0]], dtype=torch.float64))


@pytest.mark.parametrize("what", ["cg", "check_symmetric"])
def test_cg_and_the_symmetry_check_leave_the_matrix_alone(what):
    """scipy's abs / max / subtraction merged duplicates in the caller's matrix (audit)."""
    from unrollsci.solvers import cg, check_symmetric

    a = _messy_symmetric()
    snap = _snapshot(a)
    if what == "cg":
        sol = cg(a, torch.ones(4, dtype=torch.float64), tol=1e-12)
        np.testing.assert_allclose(a.toarray() @ sol.x.numpy(), np.ones(4), atol=1e-10)
    else:
        check_symmetric(a)
    _unchanged(a, snap)
    coo = sp.coo_matrix(([1.0, 1.0, 2.0], ([0, 0, 1], [0, 0, 1])), shape=(2, 2))
    rows = coo.row.copy()
    check_symmetric(coo) if what == "check_symmetric" else cg(coo, torch.ones(2))
    assert coo.nnz == 3 and np.array_equal(coo.row, rows)
