"""check_adjoint detects wrong adjoints, and every built-in operator's adjoint is the transpose
of its forward map (audit round "dec10").

Before, no test showed check_adjoint flagging a wrong adjoint (a check_adjoint returning 0.0
passed the whole suite), and the operators' adjoints were checked only through it. Here the
adjoint of each built-in operator is compared, entry by entry, with the transpose of a dense
matrix built without the adjoint: the matrix the operator was made from, a convolution matrix
written out in numpy, or the operator applied to the basis vectors.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from unrollsci.operators import (
    Convolution,
    FanBeam,
    IdentityOperator,
    LinearOperator,
    Mask,
    MatrixOperator,
    Radon,
    ReshapeOperator,
    SparseOperator,
    check_adjoint,
    gram,
)

F64 = torch.float64


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _forward_matrix(op: LinearOperator) -> np.ndarray:
    """``(m, n)`` matrix of ``op`` from its forward map on the basis vectors (no adjoint)."""
    m, n = op.shape
    eye = torch.eye(n, dtype=F64).reshape(n, *op.in_shape)
    with torch.no_grad():
        return op(eye).reshape(n, m).T.numpy()


def _adjoint_matrix(op: LinearOperator) -> np.ndarray:
    """``(n, m)`` matrix of ``op.adjoint`` from its action on the output basis vectors."""
    m, n = op.shape
    eye = torch.eye(m, dtype=F64).reshape(m, *op.out_shape)
    with torch.no_grad():
        return op.adjoint(eye).reshape(m, n).T.numpy()


def _assert_adjoint_is_transpose(op: LinearOperator, forward: np.ndarray) -> None:
    adj = _adjoint_matrix(op)
    assert adj.shape == forward.T.shape
    scale = max(float(np.abs(forward).max()), 1e-300)
    np.testing.assert_allclose(adj, forward.T, rtol=0, atol=1e-12 * scale)
    assert check_adjoint(op) < 1e-12  # and check_adjoint agrees: a correct adjoint


# ------------------------------------------------------------ wrong adjoints are flagged


class _ScaledAdjoint(LinearOperator):
    """``A x = M x`` with the adjoint ``1.01 M^T y``: one percent off."""

    def __init__(self, matrix: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("matrix", matrix)
        self.in_shape, self.out_shape = (matrix.shape[1],), (matrix.shape[0],)

    def _mv(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.matrix.T

    def _rmv(self, y: torch.Tensor) -> torch.Tensor:
        return 1.01 * (y @ self.matrix)


class _UnflippedAdjoint(LinearOperator):
    """A convolution whose "adjoint" convolves with the same kernel (not the flipped one)."""

    def __init__(self, conv: Convolution) -> None:
        super().__init__()
        self.conv = conv
        self.in_shape = self.out_shape = conv.in_shape

    def _mv(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv.mv(x)

    def _rmv(self, y: torch.Tensor) -> torch.Tensor:
        return self.conv.mv(y)


def test_check_adjoint_flags_a_scaled_adjoint():
    """For a 1.01 A^T the relative error is ``0.01 |<Ax, y>| / (||Ax|| ||y|| + 1.01 ||x||
    ||A^T y||)``: up to 0.005 for ``Ax`` along ``y``; on a 3 x 3 operator some of 64 random
    pairs come close to that, while a correct adjoint gives rounding (< 1e-13)."""
    a = _rand(3, 3)
    assert check_adjoint(_ScaledAdjoint(a), batch=64) > 1e-3
    assert check_adjoint(MatrixOperator(a), batch=64) < 1e-13
    # a larger operator, the default batch of 3
    big = _rand(20, 30, seed=1)
    assert check_adjoint(_ScaledAdjoint(big)) > 1e-3
    assert check_adjoint(MatrixOperator(big)) < 1e-13


@pytest.mark.parametrize("shape", [(9,), (6, 7)], ids=["1d", "2d"])
@pytest.mark.parametrize("boundary", ["zero", "circular"])
def test_check_adjoint_flags_an_unflipped_convolution_kernel(shape, boundary):
    kernel = torch.tensor([1.0, 2.0, -3.5], dtype=F64)
    if len(shape) == 2:
        kernel = torch.outer(kernel, torch.tensor([0.5, -1.0, 2.0], dtype=F64))
    conv = Convolution(kernel, shape, boundary=boundary)
    assert check_adjoint(_UnflippedAdjoint(conv)) > 1e-3
    assert check_adjoint(conv) < 1e-13


# ------------------------------------------- built-in adjoints are exact transposes


def test_matrix_operator_adjoint_is_the_transpose():
    a = _rand(5, 7)
    _assert_adjoint_is_transpose(MatrixOperator(a), a.numpy())


def test_sparse_operator_adjoint_is_the_transpose():
    a = sp.random(6, 9, density=0.4, format="csr", random_state=np.random.default_rng(0))
    _assert_adjoint_is_transpose(SparseOperator(a), a.toarray())


def _conv_matrix(kernel: np.ndarray, n: int, circular: bool) -> np.ndarray:
    """1D "same" convolution matrix, kernel centre at ``(k - 1) // 2`` (numpy, by loops)."""
    k, c = len(kernel), (len(kernel) - 1) // 2
    out = np.zeros((n, n))
    for i in range(n):
        for j in range(k):
            src = i - j + c  # y[i] = sum_j h[j] x[i - j + c]
            if circular:
                out[i, src % n] += kernel[j]
            elif 0 <= src < n:
                out[i, src] += kernel[j]
    return out


@pytest.mark.parametrize("boundary", ["zero", "circular"])
@pytest.mark.parametrize("klen", [3, 4])
def test_convolution_1d_adjoint_is_the_transpose(boundary, klen):
    kernel = np.array([1.0, 2.0, -3.5, 0.25])[:klen]
    op = Convolution(torch.tensor(kernel), (7,), boundary=boundary)
    dense = _conv_matrix(kernel, 7, boundary == "circular")
    np.testing.assert_allclose(_forward_matrix(op), dense, rtol=0, atol=1e-14)
    _assert_adjoint_is_transpose(op, dense)


@pytest.mark.parametrize("boundary", ["zero", "circular"])
def test_convolution_2d_adjoint_is_the_transpose(boundary):
    kr, kc = np.array([1.0, -2.0, 0.5]), np.array([3.0, 1.0])  # separable, even width
    op = Convolution(torch.tensor(np.outer(kr, kc)), (5, 6), boundary=boundary)
    circ = boundary == "circular"
    dense = np.kron(_conv_matrix(kr, 5, circ), _conv_matrix(kc, 6, circ))  # row-major
    np.testing.assert_allclose(_forward_matrix(op), dense, rtol=0, atol=1e-14)
    _assert_adjoint_is_transpose(op, dense)


def test_convolution_with_channels_adjoint_is_the_transpose():
    kernel = np.array([1.0, 2.0, -3.5])
    op = Convolution(torch.tensor(kernel), (2, 6))
    dense = np.kron(np.eye(2), _conv_matrix(kernel, 6, False))
    np.testing.assert_allclose(_forward_matrix(op), dense, rtol=0, atol=1e-14)
    _assert_adjoint_is_transpose(op, dense)


@pytest.mark.parametrize("method", ["matrix", "matfree"])
@pytest.mark.parametrize("circle", [True, False])
def test_radon_adjoint_is_the_transpose(method, circle):
    op = Radon(8, torch.tensor([0.0, 17.0, 45.0, 90.0, 133.0]), circle=circle, method=method)
    _assert_adjoint_is_transpose(op, _forward_matrix(op))


def test_fanbeam_adjoint_is_the_transpose():
    op = FanBeam(8, 5, source_distance=12.0, detector_distance=24.0)
    _assert_adjoint_is_transpose(op, _forward_matrix(op))


@pytest.mark.parametrize("subsample", [False, True])
def test_mask_adjoint_is_the_transpose(subsample):
    mask = torch.tensor([[True, False, True], [False, True, True]])
    flat = mask.reshape(-1).numpy()
    dense = np.eye(6)[flat] if subsample else np.diag(flat.astype(float))
    op = Mask(mask, subsample=subsample)
    np.testing.assert_allclose(_forward_matrix(op), dense, rtol=0, atol=0)
    _assert_adjoint_is_transpose(op, dense)


def test_composite_adjoints_are_the_transposes():
    a, b = _rand(4, 6, seed=2), _rand(6, 5, seed=3)
    c = _rand(4, 6, seed=4)
    A, B, C = MatrixOperator(a), MatrixOperator(b), MatrixOperator(c)  # noqa: N806
    an, bn, cn = a.numpy(), b.numpy(), c.numpy()
    cases = {
        "A @ B": (A @ B, an @ bn),
        "A + C": (A + C, an + cn),
        "2.5 * A": (2.5 * A, 2.5 * an),
        "A.T": (A.T, an.T),
        "gram(A)": (gram(A), an.T @ an),
        "gram(A, 0.3)": (gram(A, 0.3), an.T @ an + 0.3 * np.eye(6)),
        "(A @ B).T @ C": ((A @ B).T @ C, (an @ bn).T @ cn),
        "identity": (IdentityOperator(5), np.eye(5)),
    }
    for name, (op, dense) in cases.items():
        np.testing.assert_allclose(
            _forward_matrix(op), dense, rtol=0, atol=1e-12, err_msg=f"{name}: forward"
        )
        _assert_adjoint_is_transpose(op, dense)
    # a reshape (a permutation-free orthogonal map) and a blur of an image as a flat vector
    blur = Convolution(torch.tensor([[0.0, 1.0], [2.0, -1.0]], dtype=F64), (3, 4))
    flat = blur @ ReshapeOperator((12,), (3, 4))
    _assert_adjoint_is_transpose(ReshapeOperator((12,), (3, 4)), np.eye(12))
    _assert_adjoint_is_transpose(flat, _forward_matrix(blur))
