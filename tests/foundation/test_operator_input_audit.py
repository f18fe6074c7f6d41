"""Operator inputs found by an audit: integer matrices, non-finite scales, bad shapes and
kernels, sparse tensors given to MatrixOperator, complex angles, huge Radon geometries."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from unrollsci.operators import Convolution, MatrixOperator, Radon, SparseOperator
from unrollsci.operators._radon import radon_memory_estimate


def test_integer_scipy_matrix_products_are_exact_in_float64():
    """Integer entries were stored as float32 (16777217 became 16777216)."""
    a = sp.csr_matrix(np.array([[16777217, 3], [0, 123456789]], dtype=np.int64))
    op = SparseOperator(a)
    x = torch.eye(2, dtype=torch.float64)
    assert op.matrix.dtype == torch.float64
    np.testing.assert_array_equal(op(x).numpy(), (a @ np.eye(2)).T)


@pytest.mark.parametrize("scale", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_scale_is_refused(scale):
    with pytest.raises(ValueError, match="finite scale"):
        MatrixOperator(torch.eye(2, dtype=torch.float64)) * scale


def test_bad_shapes_and_kernels_are_refused_clearly():
    k = torch.ones(3, dtype=torch.float64)
    for shape in ((-5,), (0,)):
        with pytest.raises(ValueError, match="positive in_shape"):
            Convolution(k, shape)
    with pytest.raises(ValueError, match="non-empty kernel"):
        Convolution(torch.ones(0, dtype=torch.float64), (5,))
    with pytest.raises(TypeError, match="SparseOperator"):
        MatrixOperator(torch.eye(3, dtype=torch.float64).to_sparse_csr())
    with pytest.raises(ValueError, match="2-dimensional"):
        SparseOperator(torch.ones(3))
    with pytest.raises(ValueError, match="2-dimensional"):
        SparseOperator(torch.ones(2, 2, 2).to_sparse())


def test_complex_angles_are_refused():
    with pytest.raises(TypeError, match="real angles"):
        Radon(8, torch.tensor([30 + 5j]))
    with pytest.raises(TypeError, match="real angles"):
        Radon(8, np.array([30 + 5j]))


def test_memory_guard_of_a_huge_geometry_allocates_nothing_first():
    """The estimate counted the support pixels with an N x N array: a numpy MemoryError
    instead of the guard's ValueError for N = 60,000."""
    assert radon_memory_estimate(60_000, 10) > 10**12
    with pytest.raises(ValueError, match="memory"):
        Radon(60_000, 10, method="matrix")
