"""LinearOperator -> scipy: ``to_scipy()`` and the numpy products (``matvec`` and friends)
against the torch products they wrap; scipy's solvers on the converted operator."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

from unrollsci.operators import Convolution, MatrixOperator, SparseOperator


def _ops(device: torch.device) -> list:
    g = torch.Generator().manual_seed(0)
    dense = torch.randn(7, 5, generator=g, dtype=torch.float64)
    s = sp.random(6, 6, density=0.4, random_state=1, format="csr") + sp.eye(6)
    conv = Convolution(torch.randn(3, generator=g, dtype=torch.float64), (9,))
    return [MatrixOperator(dense).to(device), SparseOperator(s).to(device), conv.to(device)]


def test_to_scipy_products_match_torch(device):
    rng = np.random.default_rng(0)
    for op in _ops(device):
        m, n = op.shape
        native = op.to_scipy()  # SparseOperator: its scipy CSR matrix; others: a wrapper
        assert native.shape == (m, n) and native.dtype == np.float64
        if not isinstance(op, SparseOperator):
            assert isinstance(native, spla.LinearOperator) and native.operator is op
        so = spla.aslinearoperator(native)
        x, y = rng.standard_normal(n), rng.standard_normal(m)
        xs, ys = rng.standard_normal((n, 3)), rng.standard_normal((m, 2))
        with torch.no_grad():
            ref = op(torch.from_numpy(x).to(device).reshape(1, *op.in_shape)).reshape(-1)
            ref_t = op.adjoint(torch.from_numpy(y).to(device).reshape(1, *op.out_shape))
        np.testing.assert_allclose(so.matvec(x), ref.cpu().numpy(), rtol=1e-13, atol=1e-13)
        np.testing.assert_allclose(so.rmatvec(y), ref_t.reshape(-1).cpu().numpy(), atol=1e-13)
        np.testing.assert_allclose(so.H.matvec(y), so.rmatvec(y), atol=0)
        cols = np.stack([so.matvec(xs[:, j]) for j in range(3)], 1)
        np.testing.assert_allclose(so.matmat(xs), cols, rtol=1e-13, atol=1e-13)
        np.testing.assert_allclose(so @ xs, cols, rtol=1e-13, atol=1e-13)
        rcols = np.stack([so.rmatvec(ys[:, j]) for j in range(2)], 1)
        np.testing.assert_allclose(so.rmatmat(ys), rcols, rtol=1e-13, atol=1e-13)
        # the duck-typed numpy products on the operator itself, (n,) and (n, 1) layouts
        np.testing.assert_allclose(op.matvec(x), so.matvec(x), atol=0)
        assert op.matvec(x[:, None]).shape == (m,) or op.matvec(x[:, None]).shape == (m, 1)
        np.testing.assert_allclose(op.matmat(xs), cols, atol=1e-13)
        np.testing.assert_allclose(op.rmatvec(y), so.rmatvec(y), atol=0)
        np.testing.assert_allclose(op.rmatmat(ys), rcols, atol=1e-13)


def test_to_scipy_dtype_and_integer_input():
    op = MatrixOperator(torch.arange(6, dtype=torch.float64).reshape(2, 3))
    so32 = op.to_scipy(np.float32)
    assert so32.dtype == np.float32
    out = so32.matvec(np.ones(3))
    assert out.dtype == np.float32 and out.tolist() == [3.0, 12.0]
    assert op.to_scipy(torch.float32).dtype == np.float32
    # integer input computes in float64 (scipy probes operators with int8 vectors)
    assert op.matvec(np.array([1, 0, 0], dtype=np.int8)).tolist() == [0.0, 3.0]
    assert op.matvec([1, 1, 1]).dtype == np.float64
    # an operator without tensors of its own converts as float64
    assert MatrixOperator(torch.eye(2, dtype=torch.float32)).to_scipy().dtype == np.float32


def test_scipy_solvers_on_converted_operator():
    rng = np.random.default_rng(3)
    a = rng.standard_normal((12, 8))
    op = MatrixOperator(torch.from_numpy(a))
    b = rng.standard_normal(12)
    x_ref = np.linalg.lstsq(a, b, rcond=None)[0]
    x = spla.lsqr(op.to_scipy(), b, atol=1e-14, btol=1e-14)[0]
    np.testing.assert_allclose(x, x_ref, rtol=1e-8)
    spd = a.T @ a + np.eye(8)
    sop = MatrixOperator(torch.from_numpy(spd))
    x, info = spla.cg(sop.to_scipy(), a.T @ b, rtol=1e-12)
    assert info == 0
    np.testing.assert_allclose(x, np.linalg.solve(spd, a.T @ b), rtol=1e-9)
    # eigsh through the operator: the largest eigenvalue of the SPD matrix
    lam = spla.eigsh(sop.to_scipy(), k=1, which="LA", return_eigenvectors=False)[0]
    assert lam == pytest.approx(np.linalg.eigvalsh(spd)[-1], rel=1e-10)


def test_bad_numpy_input():
    op = MatrixOperator(torch.ones(2, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"shape \(3,\) or \(3, k\).*got shape \(4,\)"):
        op.matvec(np.ones(4))
    with pytest.raises(ValueError, match=r"shape \(2,\) or \(2, k\)"):
        op.rmatvec(np.ones(3))
    with pytest.raises(ValueError, match="got shape"):
        op.matvec(np.ones((3, 1, 1)))
    with pytest.raises(TypeError, match="complex"):
        op.matvec(np.ones(3, dtype=complex))
    with pytest.raises(TypeError, match="numeric"):
        op.matvec(np.array(["a", "b", "c"]))
    with pytest.raises(TypeError, match="real floating dtype"):
        op.to_scipy(np.int64)
    with pytest.raises(TypeError, match="real floating dtype"):
        op.to_scipy(torch.int32)


def test_numpy_calls_run_torch_serial_for_mid_sized_arrays():
    """Called from numpy (scipy's Krylov solvers), an operator runs with torch
    single-threaded for arrays from torch's grain size to 2^20 entries (its spinning idle
    workers would slow the numpy steps between calls); tiny and large arrays keep the
    caller's thread count, which is restored after every call, also after an error."""
    import numpy as np
    import pytest
    import torch

    from unrollsci.operators import LinearOperator, _scipy

    seen = []

    class Probe(LinearOperator):
        def __init__(self, n, fail=False):
            super().__init__()
            self.in_shape = self.out_shape = (n,)
            self.fail = fail

        def _mv(self, x):
            seen.append(torch.get_num_threads())
            if self.fail:
                raise RuntimeError("boom")
            return 2.0 * x

        _rmv = _mv

    lo, hi = _scipy._SERIAL_ENTRIES
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for n, k, want in ((lo - 1, 1, 2), (lo, 1, 1), (hi // 4, 4, 1), (hi // 4, 5, 2)):
            seen.clear()
            x = np.ones((n, k))
            y = Probe(n).to_scipy().matmat(x) if k > 1 else Probe(n).to_scipy().matvec(x[:, 0])
            assert seen == [want] and torch.get_num_threads() == 2
            assert np.array_equal(np.asarray(y).reshape(n, -1), 2.0 * x)
        with pytest.raises(RuntimeError, match="boom"):
            Probe(lo, fail=True).to_scipy().matvec(np.ones(lo))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
