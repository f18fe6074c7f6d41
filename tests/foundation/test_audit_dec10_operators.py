"""Operator defects found by the audit round "dec10": cache keys fooled by a reused ``id()``
or broken by inference tensors, arrays shared with the caller (``to_scipy``, ``to_dense``,
the cached Radon system matrix), ``norm()`` over- and underflowing, unclear errors."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from unrollsci.operators import (
    AdjointOperator,
    ComposedOperator,
    Convolution,
    IdentityOperator,
    LinearOperator,
    MatrixOperator,
    Radon,
    ReshapeOperator,
    ScaledOperator,
    SparseOperator,
    SumOperator,
    to_torch_sparse,
)
from unrollsci.operators._checks import tensor_key

F64 = torch.float64


def _spectral_norm(a: np.ndarray) -> float:
    return float(np.linalg.svd(a, compute_uv=False)[0])


# ------------------------------------------------- 1. keys on id(): a freed tensor's id


def test_norm_of_a_replaced_matrix_is_never_the_freed_one_s():
    """op.matrix reassigned: the new tensor often got the freed one's id() and address,
    and norm() returned the old matrix's norm."""
    op = MatrixOperator(torch.ones(30, 20, dtype=F64))
    for i in range(40):
        op.matrix = torch.full((30, 20), float(i + 1), dtype=F64)
        if i % 2:
            continue
        want = _spectral_norm(np.full((30, 20), float(i + 1)))
        assert op.norm() == pytest.approx(want, rel=1e-10), f"step {i}"


def test_cast_of_a_replaced_matrix_is_never_the_freed_one_s():
    """The float32 cast cache shares the key (a guard: the old key was rarely fooled here)."""
    op = MatrixOperator(torch.ones(4, 3, dtype=F64))
    x = torch.ones(1, 3, dtype=torch.float32)
    for i in range(40):
        op.matrix = torch.full((4, 3), float(i + 1), dtype=F64)
        np.testing.assert_allclose(op(x).numpy(), np.full((1, 4), 3.0 * (i + 1)), rtol=1e-6)


def test_replaced_radon_angles_are_always_refused():
    """A replacement angles tensor that reused the freed original's id() (version 0)
    skipped the check: the projector silently kept its old ray tables."""
    x = torch.rand(1, 16, 16, dtype=F64)
    for _ in range(20):
        r = Radon(16, 8, method="matrix")
        r(x)
        r.angles = torch.linspace(0.0, 90.0, 8, dtype=F64)  # another geometry
        r.angles = torch.linspace(0.0, 90.0, 8, dtype=F64)
        with pytest.raises(ValueError, match="angles are fixed"):
            r(x)


def test_tensor_key_is_identity_while_alive_and_copies_refer_to_nothing():
    t = torch.ones(3)
    k = tensor_key(t)
    assert k == tensor_key(t)
    assert k != tensor_key(t.clone())
    assert copy.deepcopy(k) != tensor_key(t)
    assert pickle.loads(pickle.dumps(k)) != tensor_key(t)
    t.add_(1.0)
    assert k != tensor_key(t)


# ------------------------------------------------------------- 2. inference tensors


def test_operator_built_from_an_inference_tensor_works():
    with torch.inference_mode():
        m = torch.randn(6, 4, dtype=F64)
    ref = m.clone().numpy()
    op = MatrixOperator(m)
    x32 = torch.ones(1, 4)
    np.testing.assert_allclose(op(x32).numpy(), ref.sum(1)[None], rtol=1e-5)
    assert op.norm() == pytest.approx(_spectral_norm(ref), rel=1e-10)


def test_inference_tensor_changed_in_place_is_not_served_stale():
    """An inference tensor has no version counter: nothing cached for it may be reused."""
    with torch.inference_mode():
        m = torch.eye(3, dtype=F64)
        op = MatrixOperator(m)
        x32 = torch.ones(1, 3)
        assert op(x32).tolist() == [[1.0, 1.0, 1.0]]
        assert op.norm() == pytest.approx(1.0, rel=1e-12)
        m.mul_(2.0)
        assert op(x32).tolist() == [[2.0, 2.0, 2.0]]
        assert op.norm() == pytest.approx(2.0, rel=1e-12)


def test_sparse_operator_and_radon_built_under_inference_mode():
    a = sp.random(7, 5, density=0.5, random_state=1, format="csr")
    x = np.random.default_rng(0).standard_normal((2, 5))
    with torch.inference_mode():
        op = SparseOperator(a)
        np.testing.assert_allclose(op(torch.from_numpy(x)).numpy(), (a @ x.T).T, rtol=1e-12)
        r = Radon(16, 8)
        img = torch.rand(1, 16, 16, dtype=F64)
        y = r(img)
    ref = Radon(16, 8)(img.clone())
    np.testing.assert_allclose(y.numpy(), ref.numpy(), rtol=1e-12, atol=1e-12)


# ------------------------------------------------------ 3. SparseOperator.to_scipy copy


def test_to_scipy_returns_a_copy_the_caller_may_change():
    a = sp.random(40, 30, density=0.2, random_state=0, format="csr")
    op = SparseOperator(a)
    x = np.random.default_rng(1).standard_normal((1, 30))
    b = op.to_scipy()
    b.data *= 2.0
    np.testing.assert_allclose(op(torch.from_numpy(x)).numpy(), (a @ x.T).T, rtol=1e-12)
    assert op.norm(recompute=True) == pytest.approx(_spectral_norm(a.toarray()), rel=1e-8)
    z = sp.csr_matrix(np.array([[1.0, 0.0, 2.0], [0.0, 3.0, 0.0], [4.0, 0.0, 5.0]]))
    z.data[z.data == 3.0] = 0.0  # an explicitly stored zero
    op2 = SparseOperator(z)
    op2.to_scipy().eliminate_zeros()
    np.testing.assert_array_equal(op2.to_dense().numpy(), z.toarray())
    np.testing.assert_array_equal(op2.to_scipy(np.float32).toarray(), z.toarray())


# --------------------------------------------- 4. Radon matrices shared with the cache


def test_editing_one_radon_matrix_changes_no_other_and_keeps_its_adjoint():
    from unrollsci.operators import _radon

    _radon.clear_radon_cache()
    x = torch.rand(2, 16, 16, dtype=F64)
    other = Radon(16, 8, method="matrix")
    ref = other(x).clone()
    r1 = Radon(16, 8, method="matrix")
    r1.matrix.values().mul_(2.0)
    np.testing.assert_array_equal(other(x).numpy(), ref.numpy())
    np.testing.assert_array_equal(Radon(16, 8, method="matrix")(x).numpy(), ref.numpy())
    np.testing.assert_allclose(r1(x).numpy(), 2.0 * ref.numpy(), rtol=1e-13)
    dense = r1.matrix.to_dense().numpy()  # the edited operator's own matrix
    y = torch.rand(2, 8, r1.n_detectors, dtype=F64)
    want = (y.reshape(2, -1).numpy() @ dense).reshape(2, 16, 16)
    np.testing.assert_allclose(r1.adjoint(y).numpy(), want, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------ 5. MatrixOperator.to_dense copy


def test_matrix_to_dense_is_a_copy_and_keeps_gradients():
    op = MatrixOperator(torch.eye(3, dtype=F64))
    d = op.to_dense()
    d[0, 0] = 99.0
    assert op(torch.tensor([[1.0, 0.0, 0.0]], dtype=F64)).tolist() == [[1.0, 0.0, 0.0]]
    w = torch.nn.Parameter(torch.randn(3, 2, dtype=F64))
    MatrixOperator(w).to_dense().pow(2).sum().backward()
    np.testing.assert_allclose(w.grad.numpy(), 2.0 * w.detach().numpy(), rtol=1e-15)


# ------------------------------------------------------------ 6. norm() out of range

_M = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], dtype=F64)


@pytest.mark.parametrize("scale", [1e160, 1e-170, 2.0**600, 2.0**-600])
def test_norm_of_huge_and_tiny_operators(scale):
    want = _spectral_norm(_M.numpy()) * scale
    assert MatrixOperator(_M * scale).norm() == pytest.approx(want, rel=1e-12, abs=0.0)


def test_norm_rescaling_is_exact_for_powers_of_two():
    base = MatrixOperator(_M).norm()
    assert MatrixOperator(_M * 2.0**600).norm() == base * 2.0**600
    assert MatrixOperator(_M * 2.0**-600).norm() == base * 2.0**-600


def test_norm_of_a_nan_operator_raises():
    class NanOperator(LinearOperator):
        in_shape = out_shape = (2,)

        def _mv(self, x):
            return x * float("nan")

        _rmv = _mv

    with pytest.raises(ValueError, match="not finite"):
        NanOperator().norm()


# ---------------------------------------------------------------- 7. clearer errors


def test_composition_of_a_tensor_is_a_type_error():
    m = torch.eye(2, dtype=F64)
    op = MatrixOperator(m)
    for make in (
        lambda: ScaledOperator(m, 2.0),
        lambda: SumOperator(op, m),
        lambda: ComposedOperator(op, m),
        lambda: AdjointOperator(m),
    ):
        with pytest.raises(TypeError, match="Expected .* LinearOperator .*got Tensor"):
            make()


def test_shapes_accept_ints_and_refuse_non_integers():
    k = torch.ones(3, dtype=F64)
    with pytest.raises(TypeError, match="in_shape.*float"):
        Convolution(k, (4.5,))
    conv = Convolution(k, 4)
    assert conv.in_shape == (4,)
    x = torch.rand(1, 4, dtype=F64)
    want = np.convolve(x[0].numpy(), np.ones(3), mode="same")
    np.testing.assert_allclose(conv(x)[0].numpy(), want, rtol=1e-14)
    assert Convolution(k, (np.int64(5),)).in_shape == (5,)
    assert IdentityOperator(np.int64(3)).in_shape == (3,)
    assert ReshapeOperator((np.int32(6),), (2, 3)).out_shape == (2, 3)
    with pytest.raises(TypeError, match="in_shape"):
        IdentityOperator(3.0)


@pytest.mark.parametrize("shape", [(3,), (2, 2, 2)])
def test_to_torch_sparse_refuses_other_than_two_dims(shape):
    with pytest.raises(ValueError, match=r"2-dimensional matrix .*got shape"):
        to_torch_sparse(torch.ones(shape))
