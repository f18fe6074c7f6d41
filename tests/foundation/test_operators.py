"""Operators: adjoint identity, norms, composition, dtype/device handling, errors."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from unrollsci.operators import (
    Convolution,
    LinearOperator,
    Mask,
    MatrixOperator,
    SparseOperator,
    check_adjoint,
)

F64 = torch.float64


def _ops(device: torch.device) -> dict[str, LinearOperator]:
    g = torch.Generator().manual_seed(0)
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=F64)  # noqa: E731
    a_sp = sp.random(40, 30, density=0.2, format="csr", random_state=np.random.default_rng(0))
    mask = torch.rand(6, 7, generator=g) > 0.4
    ops = {
        "matrix": MatrixOperator(rnd(12, 9)),
        "sparse_scipy": SparseOperator(a_sp),
        "sparse_torch_coo": SparseOperator(torch.tensor(a_sp.toarray()).to_sparse()),
        "conv1d_zero": Convolution(rnd(5), (23,)),
        "conv1d_circular": Convolution(rnd(4), (23,), boundary="circular"),
        "conv2d_zero": Convolution(rnd(3, 4), (11, 9)),
        "conv2d_circular": Convolution(rnd(5, 3), (11, 9), boundary="circular"),
        "conv2d_channels": Convolution(rnd(3, 3), (2, 8, 8), boundary="zero"),
        "mask": Mask(mask),
        "mask_subsample": Mask(mask, subsample=True),
    }
    ops["composed"] = ops["matrix"].T @ ops["matrix"]
    ops["sum_scaled"] = ops["conv1d_zero"] - 2.0 * ops["conv1d_circular"]
    return {k: v.to(device) for k, v in ops.items()}


OP_NAMES = list(_ops(torch.device("cpu")).keys())


@pytest.mark.parametrize("name", OP_NAMES)
def test_adjoint_identity_float64(name, device):
    op = _ops(device)[name]
    assert check_adjoint(op, dtype=F64, device=device) < 1e-12  # acceptance: < 1e-6


@pytest.mark.parametrize("name", OP_NAMES)
def test_adjoint_identity_float32(name, device):
    op = _ops(device)[name]
    assert check_adjoint(op, dtype=torch.float32, device=device) < 1e-5


@pytest.mark.parametrize("name", OP_NAMES)
def test_norm_matches_dense_svd(name, device):
    op = _ops(device)[name]
    dense = op.to_dense().cpu()
    expected = torch.linalg.matrix_norm(dense, ord=2).item()
    assert op.norm() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("name", OP_NAMES)
def test_dense_matches_application(name, device):
    op = _ops(device)[name]
    x = torch.randn(3, *op.in_shape, dtype=F64, device=device)
    dense = op.to_dense()
    expected = (x.reshape(3, -1) @ dense.T).reshape(3, *op.out_shape)
    torch.testing.assert_close(op(x), expected)


def test_convolution_matches_numpy_reference():
    # Zero-boundary "same" convolution against numpy.convolve (an independent reference).
    h = np.array([0.2, 0.5, -0.1, 0.7])
    x = np.random.default_rng(1).standard_normal(15)
    op = Convolution(torch.tensor(h), (15,))
    full = np.convolve(x, h, mode="full")
    c = (len(h) - 1) // 2
    expected = full[c : c + 15]
    np.testing.assert_allclose(op(torch.tensor(x)[None])[0].numpy(), expected, atol=1e-12)


def test_circular_convolution_matches_fft():
    rng = np.random.default_rng(2)
    h, x = rng.standard_normal((3, 5)), rng.standard_normal((8, 9))
    op = Convolution(torch.tensor(h), (8, 9), boundary="circular")
    hp = np.zeros((8, 9))
    hp[:3, :5] = h
    hp = np.roll(hp, (-1, -2), axis=(0, 1))  # centre at ((3-1)//2, (5-1)//2)
    expected = np.real(np.fft.ifft2(np.fft.fft2(x) * np.fft.fft2(hp)))
    np.testing.assert_allclose(op(torch.tensor(x)[None])[0].numpy(), expected, atol=1e-12)


@pytest.mark.parametrize(
    ("kernel_shape", "in_shape", "boundary"),
    [
        ((4,), (9,), "zero"),
        ((12,), (7,), "zero"),  # kernel longer than the signal
        ((7,), (7,), "circular"),  # kernel as long as the signal
        ((2, 5), (6, 7), "zero"),
        ((6, 3), (6, 5), "circular"),
        ((9, 9), (4, 5), "zero"),
        ((3, 2), (2, 5, 4), "circular"),
    ],
)
def test_convolution_adjoint_is_dense_transpose(kernel_shape, in_shape, boundary):
    # The adjoint (a flipped-kernel correlation) against the transpose of the matrix
    # assembled column by column from the forward, for odd/even kernels and both
    # boundaries, including kernels longer than the signal (zero boundary).
    g = torch.Generator().manual_seed(3)
    op = Convolution(torch.randn(kernel_shape, generator=g, dtype=F64), in_shape, boundary=boundary)
    y = torch.randn(3, *op.out_shape, generator=g, dtype=F64)
    expected = (y.reshape(3, -1) @ op.to_dense()).reshape(3, *op.in_shape)
    torch.testing.assert_close(op.adjoint(y), expected, rtol=0, atol=1e-12)


def test_dtype_follows_input(device):
    op = MatrixOperator(torch.randn(4, 3, dtype=F64)).to(device)
    x32 = torch.randn(2, 3, device=device)
    assert op(x32).dtype == torch.float32
    assert op.adjoint(torch.randn(2, 4, device=device)).dtype == torch.float32


def test_gradients_flow_through_operator(device):
    op = Convolution(torch.randn(3, dtype=F64), (6,)).to(device)
    x = torch.randn(2, 6, dtype=F64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: op.adjoint(op(v)), (x,))


def test_learnable_matrix_gets_gradient():
    w = torch.nn.Parameter(torch.randn(3, 4, dtype=F64))
    op = MatrixOperator(w)
    op(torch.randn(2, 4, dtype=F64)).sum().backward()
    assert w.grad is not None and w.grad.abs().sum() > 0


def test_shape_mismatch_raises():
    op = MatrixOperator(torch.randn(4, 3))
    with pytest.raises(ValueError, match=r"Expected 'x' of shape \(batch, 3\).*got shape \(2, 5\)"):
        op(torch.randn(2, 5))
    with pytest.raises(ValueError, match=r"Expected 'y' of shape \(batch, 4\)"):
        op.adjoint(torch.randn(2, 3))


def test_bad_constructor_inputs():
    with pytest.raises(ValueError, match="finite"):
        MatrixOperator(torch.tensor([[1.0, float("nan")]]))
    with pytest.raises(TypeError, match="torch.Tensor"):
        MatrixOperator(np.eye(2))
    with pytest.raises(ValueError, match="boundary"):
        Convolution(torch.ones(3), (5,), boundary="reflect")
    with pytest.raises(ValueError, match="in_shape"):
        Convolution(torch.ones(3, 3), (5,))
    with pytest.raises(ValueError, match="only 0 and 1"):
        Mask(torch.tensor([0.5, 1.0]))
    with pytest.raises(ValueError, match="Cannot compose"):
        MatrixOperator(torch.randn(3, 4)) @ MatrixOperator(torch.randn(5, 6))
    with pytest.raises(TypeError, match="MatrixOperator"):
        check_adjoint(torch.eye(3))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs two devices")
def test_device_mismatch_raises():
    op = MatrixOperator(torch.randn(3, 3)).to("cuda")
    with pytest.raises(ValueError, match="one device"):
        op(torch.randn(1, 3))


def test_sparse_operator_transpose_is_lazy_and_not_saved(device):
    rng = np.random.default_rng(0)
    a = sp.random(30, 20, density=0.2, random_state=1, format="csr")
    op = SparseOperator(a).to(device)
    assert op.matrix_t is None and "matrix_t" not in op.state_dict()
    x = torch.from_numpy(rng.standard_normal((2, 20))).to(device)
    y = torch.from_numpy(rng.standard_normal((2, 30))).to(device)
    lhs = (op(x) * y).sum()
    rhs = (x * op.T(y)).sum()
    torch.testing.assert_close(lhs, rhs)
    torch.testing.assert_close(op.T(y).cpu(), torch.from_numpy((a.T @ y.cpu().numpy().T).T))
    # a state dict written when A^T was a saved buffer still loads
    old = dict(op.state_dict())
    old["matrix_t"] = torch.zeros(1)
    fresh = SparseOperator(a).to(device)
    fresh.load_state_dict(old)
    torch.testing.assert_close(fresh(x), op(x))


def test_sparse_operator_from_scipy_keeps_the_callers_matrix_and_values():
    """Non-canonical scipy input (unsorted, duplicate entries): products equal the dense
    matrix with duplicates summed, in float64 and float32, gradients included; the caller's
    arrays are not reordered; A^T is formed only when an adjoint or backward needs it."""
    # row 0: columns 3, 1, 1 (unsorted, a duplicate); row 2: column 0 twice
    data = np.array([1.0, 2.0, -1.0, 4.0, -3.0, 0.5, 6.0])
    idx = np.array([3, 1, 1, 2, 0, 0, 4], dtype=np.int32)
    a = sp.csr_matrix((data, idx, np.array([0, 3, 4, 6, 7])), shape=(4, 5))
    assert not a.has_canonical_format
    data0, idx0 = a.data.copy(), a.indices.copy()
    dense = torch.from_numpy(a.toarray())  # toarray sums duplicates
    op = SparseOperator(a)
    np.testing.assert_array_equal(a.data, data0)
    np.testing.assert_array_equal(a.indices, idx0)
    x = torch.randn(3, 5, dtype=F64, requires_grad=True)
    torch.testing.assert_close(op(x), x @ dense.T)
    assert op._scipy_pair(F64)._t is None  # forward only: no transpose
    assert torch.autograd.gradcheck(op, (x,))
    assert op._scipy_pair(F64)._t is not None
    y = torch.randn(2, 4, dtype=F64)
    torch.testing.assert_close(op.adjoint(y), y @ dense)
    op32 = SparseOperator(a, dtype=torch.float32)
    torch.testing.assert_close(op32(x.detach().float()), (x @ dense.T).float().detach())


def test_sparse_operator_rejects_inconsistent_csr_and_nonfinite_values():
    bad = sp.csr_matrix((3, 3))
    bad.indices = np.array([0, 5], dtype=np.int32)
    bad.data = np.array([1.0, 2.0])
    bad.indptr = np.array([0, 1, 2, 2], dtype=np.int32)
    with pytest.raises(ValueError, match="valid CSR"):
        SparseOperator(bad)
    nan = sp.csr_matrix(np.array([[1.0, np.nan], [0.0, np.inf]]))
    with pytest.raises(ValueError, match=r"finite \(got 1 NaN and 1 Inf"):
        SparseOperator(nan)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("batch", [1, 7, 8, 9, 64])
def test_sparse_operator_batched_cpu_products_are_exact(batch, dtype):
    """CPU products of a large batch go through scipy in blocks of rows (the whole-batch
    call is slower on matrices that do not fit in cache): the same entries as one call on
    the whole batch (bit for bit) and as one mat-vec per row, for a strided batch too; the
    adjoint and the gradient are the products with A^T."""
    import numpy as np
    import scipy.sparse as sp

    from unrollsci.operators import SparseOperator, _matrix

    rng = np.random.default_rng(batch)
    n, m = 35_000, 3_000  # batch x n reaches the blocking threshold at 8 rows
    a = sp.random(m, n, density=1e-3, random_state=rng, format="csr", dtype=np.float64)
    op = SparseOperator(a, dtype=dtype)
    x = torch.randn(batch, 2 * n, dtype=dtype)[:, ::2]  # a strided (non-contiguous) batch
    blocked = batch >= _matrix._BLOCKED_ROWS and x.numel() >= _matrix._BLOCKED_ENTRIES
    assert blocked == (batch >= 8)
    x.requires_grad_(True)
    y = op.mv(x)
    ac = op._scipy_pair(dtype).a
    xn = x.detach().numpy()
    whole = np.ascontiguousarray((ac @ xn.T).T)
    assert np.array_equal(y.detach().numpy(), whole)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    per_row = np.stack([ac @ xn[i] for i in range(batch)])
    np.testing.assert_allclose(y.detach().numpy(), per_row, rtol=tol, atol=tol)
    w = torch.randn(batch, m, dtype=dtype)
    (y * w).sum().backward()
    ref = np.stack([ac.T @ w.numpy()[i] for i in range(batch)])
    np.testing.assert_allclose(x.grad.numpy(), ref, rtol=tol, atol=tol)
    np.testing.assert_allclose(op.rmv(w).numpy(), ref, rtol=tol, atol=tol)
