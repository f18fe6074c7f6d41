"""Solvers and operators, an adversarial audit (December 9): each test fails on the code
before it."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from unrollsci.operators import MatrixOperator, SparseOperator
from unrollsci.solvers import admm, cg, chebyshev_roots, fista, gradient_descent, ista

F64 = torch.float64


def test_cg_refuses_a_non_finite_or_negative_adjoint_tol():
    """adjoint_tol=inf ended the adjoint solve at v = 0: a zero gradient, no warning."""
    a = torch.tensor([[4.0, 1.0], [1.0, 3.0]], dtype=F64)
    for bad in (float("inf"), float("nan"), -1.0):
        b = torch.ones(2, dtype=F64, requires_grad=True)
        with pytest.raises(ValueError, match="adjoint_tol"):
            cg(a, b, grad="implicit", adjoint_tol=bad).x.sum().backward()
    b = torch.ones(2, dtype=F64, requires_grad=True)
    cg(a, b, grad="implicit", adjoint_tol=1e-12).x.sum().backward()
    torch.testing.assert_close(b.grad, torch.linalg.solve(a, torch.ones(2, dtype=F64)))


def test_cg_refuses_a_preconditioner_that_is_not_square():
    a = torch.eye(4, dtype=F64) * 2
    m = MatrixOperator(torch.ones(5, 4, dtype=F64))
    with pytest.raises(ValueError, match="out_shape"):
        cg(a, torch.ones(4, dtype=F64), M=m)


@pytest.mark.parametrize("solver", [ista, fista])
def test_ista_fista_refuse_divergence(solver):
    """A step above 2 / ||A||^2 made the iterates NaN; the solvers ran to max_iter and
    returned them with 'Try increasing max_iter' (gd and AMP raised)."""
    gen = torch.Generator().manual_seed(0)
    a = MatrixOperator(torch.randn(20, 30, generator=gen, dtype=F64))
    y = torch.randn(20, generator=gen, dtype=F64)
    step = 3.0 / a.norm() ** 2
    with pytest.raises(ValueError, match="diverged"):
        solver(a, y, 0.1, step=step, max_iter=3000)


def test_gradient_descent_at_a_stationary_start():
    """x0 with a zero gradient: IndexError (an empty residual history)."""
    sol = gradient_descent(lambda x: 2 * (x - 1), torch.ones(1, 2, dtype=F64), 0.25)
    assert sol.converged and sol.iterations == 0
    torch.testing.assert_close(sol.x, torch.ones(1, 2, dtype=F64))


def test_gradient_descent_step_per_batch_entry():
    """A (batch,) step multiplied the coordinates, not the batch entries: the batched run
    diverged where each entry alone converges (batch != n: a raw RuntimeError)."""
    lip = torch.tensor([[10.0], [1.0], [4.0]], dtype=F64)

    def grad(x):
        return lip[: x.shape[0]] * (x - 1)

    step = 1.5 / lip[:, 0]
    for shape in ((3,), (3, 1)):
        sol = gradient_descent(grad, torch.zeros(3, 3, dtype=F64), step.reshape(shape))
        assert sol.converged
        torch.testing.assert_close(sol.x, torch.ones(3, 3, dtype=F64))
    elementwise = step[:, None].expand(3, 3).contiguous()
    sol = gradient_descent(grad, torch.zeros(3, 3, dtype=F64), elementwise)
    torch.testing.assert_close(sol.x, torch.ones(3, 3, dtype=F64))
    sol = gradient_descent(lambda x: lip[:2] * (x - 1), torch.zeros(2, 3, dtype=F64), step[:2])
    torch.testing.assert_close(sol.x, torch.ones(2, 3, dtype=F64))
    with pytest.raises(ValueError, match=r"shape \(2,\) or \(2, 1\)"):
        gradient_descent(grad, torch.zeros(2, 3, dtype=F64), torch.full((3,), 0.1, dtype=F64))


def test_sparse_operator_to_scipy_takes_a_dtype():
    m = sp.random(6, 5, density=0.5, random_state=0, format="csr")
    op = SparseOperator(m)
    for dt in (np.float32, torch.float32, None):
        out = op.to_scipy(dt) if dt is not None else op.to_scipy()
        assert sp.issparse(out)
        assert out.dtype == (np.float64 if dt is None else np.float32)
        np.testing.assert_allclose(out.toarray(), m.toarray(), rtol=1e-6)


def test_admm_with_a_rho_below_rounding_says_so():
    """rho=1e-20 on a wide A: a raw torch LinAlgError from the Cholesky step."""
    gen = torch.Generator().manual_seed(1)
    a = MatrixOperator(torch.randn(16, 32, generator=gen, dtype=F64))
    with pytest.raises(ValueError, match="'rho' large enough"):
        admm(a, torch.randn(16, generator=gen, dtype=F64), 0.05, rho=1e-20)


def test_chebyshev_roots_takes_a_numpy_integer():
    torch.testing.assert_close(chebyshev_roots(np.int64(3)), chebyshev_roots(3))


@pytest.mark.parametrize("solver", [ista, fista])
def test_ista_fista_tiny_step_is_not_called_converged(solver):
    """A step so small that ``t grad`` is below the iterates' rounding left them unchanged:
    residual 0, 'converged' after one iteration, 16.7 away from the minimizer. A true
    convergence at a smaller-than-default step still passes (the check at 1/||A||^2)."""
    from unrollsci import ConvergenceWarning

    gen = torch.Generator().manual_seed(0)
    a = MatrixOperator(torch.randn(20, 30, generator=gen, dtype=F64))
    y = torch.randn(20, generator=gen, dtype=F64)
    with pytest.warns(ConvergenceWarning, match="step this small"):
        sol = solver(a, y, 0.1, step=1e-20, x0=torch.full((30,), 3.0, dtype=F64))
    assert not sol.converged
    ref = solver(a, y, 0.1)
    ok = solver(a, y, 0.1, step=0.5 / a.norm() ** 2, max_iter=50_000)
    assert ok.converged
    torch.testing.assert_close(ok.x, ref.x, rtol=0, atol=1e-7)
