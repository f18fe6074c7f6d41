"""One home per concept: identity / reshape / normal operators, the shared Nesterov
sequence, the differentiable densifier, unchecked mat-vecs, the one symmetry rule and
the Chebyshev roots."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from unrollsci import ConvergenceWarning
from unrollsci._validation import SYMMETRY_EPS_FACTOR, check_symmetric
from unrollsci.operators import (
    Convolution,
    GramOperator,
    IdentityOperator,
    MatrixOperator,
    ReshapeOperator,
    SparseOperator,
    check_adjoint,
    gram,
)
from unrollsci.solvers import (
    admm,
    chebyshev_roots,
    fista,
    fista_momentum,
    gradient_descent,
    ista_step,
)
from unrollsci.solvers import check_symmetric as solvers_check_symmetric

F64 = torch.float64


def _matrix(m: int = 7, n: int = 5, seed: int = 0) -> torch.Tensor:
    return torch.randn(m, n, generator=torch.Generator().manual_seed(seed), dtype=F64)


# ------------------------------------------------------------ identity / gram
def test_identity_and_reshape_are_orthogonal():
    eye = IdentityOperator(4)
    assert eye.in_shape == eye.out_shape == (4,)
    assert check_adjoint(eye) == 0.0 and eye.norm() == 1.0
    torch.testing.assert_close(eye.to_dense(), torch.eye(4, dtype=F64), rtol=0, atol=0)
    x = torch.randn(2, 4, dtype=F64)
    assert eye(x) is x
    r = ReshapeOperator((6,), (2, 3))
    assert check_adjoint(r) == 0.0 and r.norm() == 1.0
    torch.testing.assert_close(r.to_dense(), torch.eye(6, dtype=F64), rtol=0, atol=0)
    assert IdentityOperator((2, 3)).in_shape == (2, 3)
    with pytest.raises(ValueError, match="Cannot reshape"):
        ReshapeOperator((6,), (4,))
    # in the algebra: A + c I
    a = _matrix(5, 5)
    shifted = MatrixOperator(a) + 2.0 * IdentityOperator(5)
    torch.testing.assert_close(shifted.to_dense(), a + 2 * torch.eye(5, dtype=F64))


@pytest.mark.parametrize("shift", [0.0, 0.7, -3.0])
def test_gram_operator_adjoint_dense_and_norm(shift):
    a = _matrix()
    op = MatrixOperator(a)
    g = gram(op, shift=shift)
    assert isinstance(g, GramOperator) and g.in_shape == g.out_shape == (5,)
    assert check_adjoint(g) < 1e-14
    ref = a.T @ a + shift * torch.eye(5, dtype=F64)
    torch.testing.assert_close(g.to_dense(), ref, rtol=1e-14, atol=1e-14)
    x = torch.randn(3, 5, dtype=F64)
    torch.testing.assert_close(g(x), op.gram(x) + shift * x, rtol=0, atol=0)
    exact = float(torch.linalg.matrix_norm(ref, ord=2))
    assert g.norm() == pytest.approx(exact, rel=1e-10)
    if shift >= 0:
        assert g.norm() == op.norm() ** 2 + shift


def test_gram_of_an_image_operator_flattened_for_cg():
    conv = Convolution(torch.rand(3, 3, dtype=F64), in_shape=(6, 6), boundary="circular")
    g = gram(conv @ ReshapeOperator((36,), (6, 6)), shift=0.1)
    assert g.in_shape == (36,) and check_adjoint(g) < 1e-14
    d = conv.to_dense()
    torch.testing.assert_close(g.to_dense(), d.T @ d + 0.1 * torch.eye(36, dtype=F64))


def test_gram_rejects_bad_shift():
    op = MatrixOperator(_matrix())
    with pytest.raises(ValueError, match="finite"):
        gram(op, shift=float("nan"))
    with pytest.raises(TypeError, match="LinearOperator"):
        gram(_matrix(), shift=1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="scalar"):
        gram(op, shift=torch.ones(2, dtype=F64))


# ------------------------------------------------------------ Nesterov sequence
def _reference_t(num: int) -> list[float]:
    """t_1 = 1, t_{k+1} = (1 + sqrt(1 + 4 t_k^2)) / 2 in float64 (numpy)."""
    t = [np.float64(1.0)]
    for _ in range(num):
        t.append((1.0 + np.sqrt(1.0 + 4.0 * t[-1] * t[-1])) / 2.0)
    return t


def _reference_t_torch(num: int, batch: int = 1) -> list[torch.Tensor]:
    """The same recurrence with torch float64 tensors (one ``t`` per batch entry)."""
    t = [torch.ones(batch, 1, dtype=F64)]
    for _ in range(num):
        t.append(0.5 * (1.0 + torch.sqrt(1.0 + 4.0 * t[-1] * t[-1])))
    return t


def test_fista_momentum_matches_the_reference_recurrence():
    ref, ref_t = _reference_t(200), _reference_t_torch(200, 3)
    tk, tt = 1.0, torch.ones(3, 1, dtype=F64)
    for k in range(200):
        t_next, beta = fista_momentum(tk)
        tt_next, tbeta = fista_momentum(tt)
        # Python floats: the correctly rounded recurrence, bit for bit
        assert t_next == float(ref[k + 1]) and beta == float((ref[k] - 1.0) / ref[k + 1])
        # tensors: torch's recurrence bit for bit; torch.sqrt on the CPU is not always
        # correctly rounded (1 ulp off, e.g. at t_12), so within a few ulps of the above
        assert torch.equal(tt_next, ref_t[k + 1])
        torch.testing.assert_close(tt_next, torch.full_like(tt, t_next), rtol=1e-15, atol=0)
        torch.testing.assert_close(tbeta, torch.full_like(tt, beta), rtol=1e-14, atol=1e-16)
        tk, tt = t_next, tt_next
    assert fista_momentum(1.0) == ((1.0 + math.sqrt(5.0)) / 2.0, 0.0)


def test_fista_and_nesterov_gd_use_the_shared_sequence_bit_for_bit():
    a = _matrix(12, 20, seed=1)
    op = MatrixOperator(a)
    y = torch.randn(2, 12, generator=torch.Generator().manual_seed(2), dtype=F64)
    lam, step, iters = 0.05, 1.0 / op.norm() ** 2, 40
    # FISTA without restart: a plain loop over the float64 reference sequence
    ref_t = _reference_t_torch(iters, 2)
    x = x_prev = torch.zeros(2, 20, dtype=F64)
    for k in range(iters):
        v = x + ((ref_t[k] - 1.0) / ref_t[k + 1]) * (x - x_prev)
        x_prev, x = x, ista_step(op, v, y, step, step * lam)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        sol = fista(op, y, lam, step=step, max_iter=iters, tol=0.0, restart=False)
    torch.testing.assert_close(sol.x, x, rtol=0, atol=0)
    # gradient descent with Nesterov momentum on 0.5 ||A x - y||^2 (Python-float sequence)
    ref = _reference_t(iters)
    q, b = a.T @ a, y @ a

    def grad(z: torch.Tensor) -> torch.Tensor:
        return z @ q - b

    x = x_prev = torch.zeros(2, 20, dtype=F64)
    for k in range(iters):
        beta = float((ref[k] - 1.0) / ref[k + 1])
        v = x + beta * (x - x_prev)
        x_prev, x = x, v - step * grad(v)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        sol = gradient_descent(
            grad, torch.zeros(2, 20, dtype=F64), step, momentum="nesterov", max_iter=iters, tol=0.0
        )
    torch.testing.assert_close(sol.x, x, rtol=0, atol=0)


def test_unrolled_fista_is_initialised_from_the_shared_sequence():
    from unrollsci.unrolled import UnrolledFISTA

    model = UnrolledFISTA(MatrixOperator(_matrix(8, 10)), 6, dtype=F64)
    tk, betas = 1.0, []
    for _ in range(6):
        tk, beta = fista_momentum(tk)
        betas.append(beta)
    torch.testing.assert_close(model.beta.detach(), torch.tensor(betas, dtype=F64))


# ------------------------------------------------------------ densifier
def test_to_dense_is_differentiable_in_the_operator():
    w = torch.nn.Parameter(_matrix(4, 3))
    assert torch.autograd.gradcheck(lambda m: MatrixOperator(m).to_dense(), (w,))
    k = torch.rand(3, 3, dtype=F64, requires_grad=True)

    def conv_dense(kernel: torch.Tensor) -> torch.Tensor:
        return Convolution(kernel, in_shape=(4, 4), boundary="circular").to_dense()

    assert torch.autograd.gradcheck(conv_dense, (k,))
    c = torch.tensor(0.3, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda m, s: gram(MatrixOperator(m), s).to_dense(), (w, c))
    # composed operators densify through their parts
    assert torch.autograd.gradcheck(
        lambda m: (MatrixOperator(m).T @ MatrixOperator(m)).to_dense(), (w,)
    )
    # ... and the constant snapshot is .detach()
    assert not MatrixOperator(w).to_dense().detach().requires_grad
    assert MatrixOperator(w).to_dense(dtype=torch.float32, device="cpu").dtype == torch.float32


def test_admm_cholesky_is_differentiable_in_the_matrix_and_rho():
    y = torch.randn(2, 6, generator=torch.Generator().manual_seed(3), dtype=F64)

    def f(m: torch.Tensor, rho: torch.Tensor) -> torch.Tensor:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            return admm(MatrixOperator(m), y, 0.05, rho=rho, method="cholesky", max_iter=3).x

    m = _matrix(6, 4).requires_grad_()
    rho = torch.tensor(2.0, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(f, (m, rho))


# ------------------------------------------------------------ unchecked mat-vecs
def test_mv_rmv_equal_the_checked_calls():
    ops = [
        MatrixOperator(_matrix()),
        SparseOperator(sp.random(7, 5, density=0.5, format="csr", random_state=0)),
        Convolution(torch.rand(3, 3, dtype=F64), in_shape=(5, 5)),
    ]
    for op in ops:
        x = torch.randn(2, *op.in_shape, dtype=F64)
        y = torch.randn(2, *op.out_shape, dtype=F64)
        assert torch.equal(op.mv(x), op(x)) and torch.equal(op.rmv(y), op.adjoint(y))
        composed = 2.0 * op.T
        assert torch.equal(composed.mv(y), composed(y))


# ------------------------------------------------------------ symmetry rule
def _perturbed(
    n: int, rel: float, dtype: torch.dtype, *, spd: bool = False, nonneg: bool = False
) -> torch.Tensor:
    """A symmetric matrix with one asymmetric pair: ``max|A - A^T| = rel * max|A|``."""
    a = torch.randn(n, n, generator=torch.Generator().manual_seed(4), dtype=F64)
    a = a + a.T
    if spd:  # non-negative, diagonally dominant
        a = a.abs() + 2 * n * torch.eye(n, dtype=F64)
    if nonneg:  # weights of a graph
        a = a.abs()
    a = a.to(dtype)
    a[0, 1] = a[1, 0] + rel * float(a.abs().max())
    return a


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("form", ["dense", "torch_coo", "torch_csr", "scipy"])
def test_one_symmetry_rule(dtype, form):
    eps = torch.finfo(dtype).eps
    tol = SYMMETRY_EPS_FACTOR * eps

    def as_form(a: torch.Tensor):  # type: ignore[no-untyped-def]
        if form == "dense":
            return a
        if form == "torch_coo":
            return a.to_sparse_coo()
        if form == "torch_csr":
            return a.to_sparse_csr()
        return sp.csr_matrix(a.numpy())

    check_symmetric(as_form(_perturbed(6, 0.0, dtype)))
    check_symmetric(as_form(_perturbed(6, 0.4 * tol, dtype)))  # rounding: accepted
    solvers_check_symmetric(as_form(_perturbed(6, 0.4 * tol, dtype)))
    with pytest.raises(ValueError, match="symmetric"):
        check_symmetric(as_form(_perturbed(6, 3 * tol, dtype)))
    with pytest.raises(ValueError, match="symmetric"):
        solvers_check_symmetric(as_form(_perturbed(6, 3 * tol, dtype)))
    with pytest.raises(ValueError, match="symmetric"):
        check_symmetric(as_form(_perturbed(6, 1e-2, dtype)))


def test_the_three_callers_share_the_rule():
    from unrollsci.graph import validate_adjacency
    from unrollsci.precond._sparse import check_spd_input

    tol = SYMMETRY_EPS_FACTOR * torch.finfo(F64).eps
    for rel, ok in [(0.4 * tol, True), (3 * tol, False)]:
        spd = _perturbed(6, rel, F64, spd=True).numpy()
        adj = sp.csr_matrix(_perturbed(6, rel, F64, nonneg=True).numpy())
        checks = [
            lambda s=spd: check_spd_input(sp.csr_matrix(s)),
            lambda g=adj: validate_adjacency(g),
            lambda s=spd: solvers_check_symmetric(torch.from_numpy(s)),
        ]
        for check in checks:
            if ok:
                check()
            else:
                with pytest.raises(ValueError, match="symmetric"):
                    check()
    assert check_symmetric(sp.csr_matrix((3, 3))) is None  # all-zero: symmetric
    with pytest.raises(ValueError, match=r"square matrix \(got shape \(2, 3\)\)"):
        check_symmetric(torch.zeros(2, 3))
    with pytest.raises(TypeError, match="LinearOperator, a torch tensor or a scipy"):
        solvers_check_symmetric(np.eye(2))


# ------------------------------------------------------------ Chebyshev roots
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_chebyshev_roots_match_the_inline_formulas(dtype):
    for w in (1, 2, 5, 16):
        k = torch.arange(1, w + 1, dtype=dtype)
        inline = 0.5 * (1 + torch.cos((2 * k - 1) * torch.pi / (2 * w)))
        t = chebyshev_roots(w, dtype=dtype)
        assert t.dtype == dtype and torch.equal(t, inline)
        assert bool(((t > 0) & (t < 1)).all())
        # the roots of T_w on [-1, 1]
        cheb = np.polynomial.chebyshev.Chebyshev.basis(w)
        atol = 1e-12 if dtype == F64 else 1e-3
        np.testing.assert_allclose(cheb(2 * t.double().numpy() - 1), 0, atol=atol)
    with pytest.raises(ValueError, match="'num' >= 1"):
        chebyshev_roots(0)


def test_run_until_stops_at_tol_respects_may_stop_and_budget():
    from unrollsci.solvers._loop import run_until

    halve = lambda s: (s / 2, s / 2)  # noqa: E731 - residual = new state
    state, k, res, conv = run_until(halve, 1.0, max_iter=50, tol=0.1)
    assert (k, conv, res) == (4, True, [0.5, 0.25, 0.125, 0.0625]) and state == 0.0625
    # may_stop=False keeps going although the residual is below tol
    gated = lambda s: (s + 1, 0.0, s + 1 >= 3)  # noqa: E731
    state, k, res, conv = run_until(gated, 0, max_iter=10, tol=1e-3)
    assert (state, k, conv, len(res)) == (3, 3, True, 3)
    state, k, res, conv = run_until(halve, 1.0, max_iter=2, tol=0.0)
    assert (k, conv, res) == (2, False, [0.5, 0.25])
    assert run_until(halve, 1.0, max_iter=0, tol=1.0) == (1.0, 0, [], False)
