"""Solvers, CG and its preconditioners, an adversarial audit (round "dec10"): each test fails
on the code before it. References are numpy / scipy computations or the known answer."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from unrollsci.operators import LinearOperator, MatrixOperator
from unrollsci.precond import DiagonalPreconditioner, unrolled_pcg
from unrollsci.solvers import admm, amp, bg_amp, cg, check_symmetric, fista, gradient_descent, ista

F64 = torch.float64
F32 = torch.float32


def _soft(v: np.ndarray, t: float) -> np.ndarray:
    return np.sign(v) * np.maximum(np.abs(v) - t, 0.0)


def _kkt(a: np.ndarray, x: np.ndarray, y: np.ndarray, lam: float) -> float:
    """numpy lasso KKT residual ``||x - soft(x - t A^T(Ax - y), t lam)|| / t`` relative to
    ``||A^T y||``, ``t = 1 / ||A||^2``."""
    t = 1.0 / np.linalg.norm(a, 2) ** 2
    step = _soft(x - t * a.T @ (a @ x - y), t * lam)
    return float(np.linalg.norm(x - step) / t / np.linalg.norm(a.T @ y))


def _lasso_problem(m: int = 20, n: int = 40, dtype: torch.dtype = F64):
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(m, n, generator=gen, dtype=F64) / m**0.5
    x = torch.zeros(n, dtype=F64)
    x[:3] = torch.tensor([1.0, -2.0, 3.0], dtype=F64)
    return a.to(dtype), (a @ x).to(dtype)


# ------------------------------------------------------------------ 1. admm stopping rule


def test_admm_stopping_rule_does_not_depend_on_the_scale_of_a():
    """Scaling A by c and rho by c^2 is the same problem (z scaled by 1/c), but the primal
    residual ||x - z|| / ||A^T y|| mixed units: converged=True after 23 iterations with 1e-3
    error at c=1e5, never converged at c=1e-5."""
    a, y = _lasso_problem()
    rho0 = 0.01 * float(torch.linalg.matrix_norm(a, 2)) ** 2  # small rho: the primal binds
    tol = 1e-6
    runs = {}
    for c in (1.0, 1e5, 1e-5):
        sol = admm(a * c, y, 0.01 * c, rho=rho0 * c * c, tol=tol, max_iter=5000)
        assert sol.converged, c
        ac = (a * c).numpy()
        # the returned z is a lasso solution to 2 tol (the primal + dual bound)
        assert _kkt(ac, sol.x.numpy(), y.numpy(), 0.01 * c) <= 2 * tol, c
        runs[c] = sol.iterations
    assert max(runs.values()) - min(runs.values()) <= 2, runs


# ------------------------------------------------------------------ 2. bg_amp units


@pytest.mark.parametrize("s", [1e-5, 1e20])
def test_bg_amp_float32_scales_with_sigma_x(s):
    """Data and sigma_x scaled by s: float32 returned x ~ 0 marked converged (the noise std
    floored at an absolute 1.9e-5; sigma_x**2 overflowed at 1e20)."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(50, 100, generator=gen, dtype=F64) / 50**0.5
    x = torch.zeros(100, dtype=F64)
    x[:5] = torch.randn(5, generator=gen, dtype=F64)
    y = a @ x
    sol = bg_amp(a.to(F32), (y * s).to(F32), 0.05, sigma_x=s, max_iter=2000, tol=1e-5)
    assert sol.converged
    err = float((sol.x.double() / s - x).norm() / x.norm())
    assert err < 1e-3, err


def test_bg_amp_huge_sigma_x_in_float64_and_out_of_range_in_float32():
    """sigma_x = 1e200 raised OverflowError (sigma_x**2) in float64."""
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(50, 100, generator=gen, dtype=F64) / 50**0.5
    x = torch.zeros(100, dtype=F64)
    x[:5] = torch.randn(5, generator=gen, dtype=F64)
    sol = bg_amp(a, a @ x * 1e200, 0.05, sigma_x=1e200, tol=1e-8)
    assert sol.converged
    assert float((sol.x / 1e200 - x).norm() / x.norm()) < 1e-6
    with pytest.raises(ValueError, match="sigma_x"):
        bg_amp(a.float(), (a @ x).float(), 0.05, sigma_x=1e200)


# ------------------------------------------------------------------ 3. gradient_descent


@pytest.mark.parametrize(("s", "dtype"), [(1e19, F32), (1e20, F32), (1e-20, F32), (1e155, F64)])
def test_gradient_descent_residual_is_scale_free(s, dtype):
    """A plain norm of the gradient overflowed (float32 s=1e19: 'converged' after 1
    iteration at half the answer; s=1e20: 'diverged') or underflowed (s=1e-20)."""
    tol = 1e-5 if dtype == F32 else 1e-8
    sol = gradient_descent(lambda v: 2 * (v - s), torch.zeros(1, 2, dtype=dtype), 0.25, tol=tol)
    assert sol.converged
    np.testing.assert_allclose(sol.x.double().numpy() / s, np.ones((1, 2)), rtol=1e-4)


@pytest.mark.parametrize(
    "grad",
    [lambda v: v.numpy(), lambda v: 1, lambda v: v.double()],
    ids=["numpy", "int", "float64"],
)
def test_gradient_descent_refuses_a_grad_that_is_not_a_tensor_of_x0s_dtype(grad):
    """numpy / int gave AttributeError; float64 for float32 x0 promoted x silently."""
    with pytest.raises(TypeError, match="'grad' to return"):
        gradient_descent(grad, torch.ones(2, dtype=F32), 0.1)


# ------------------------------------------------------------------ 4. check_symmetric


@pytest.mark.parametrize(
    "make",
    [
        lambda m: torch.tensor(m, dtype=F64),
        lambda m: torch.tensor(m, dtype=F64).to_sparse(),
        lambda m: sp.csr_matrix(np.array(m)),
    ],
    ids=["dense", "torch-sparse", "scipy-csr"],
)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_check_symmetric_refuses_non_finite_entries(make, bad):
    """max|A - A^T| is NaN and 'NaN > tol' is False: any matrix with a NaN passed, however
    asymmetric (A[0, 1] = 2, A[1, 0] = 100 here)."""
    with pytest.raises(ValueError, match="finite"):
        check_symmetric(make([[1.0, 2.0], [100.0, bad]]))


def test_check_symmetric_refuses_a_bool_matrix_with_a_type_error():
    """A bool tensor gave torch's RuntimeError on A - A^T."""
    with pytest.raises(TypeError, match="numeric dtype"):
        check_symmetric(torch.tensor([[True, False], [False, True]]))


# ------------------------------------------------------------------ 5. unrolled_pcg


@pytest.mark.parametrize(("dtype", "s"), [(F32, 1e-20), (F32, 1e20), (F64, 1e-160), (F64, 1e160)])
def test_unrolled_pcg_scales_b(dtype, s):
    """r^T z under/overflowed: float32 b * 1e-20 gave a wrong x, b * 1e20 NaN."""
    a = np.array([[4.0, 1, 0], [1, 3, 1], [0, 1, 2]])
    b = np.array([[1.0, 1.0, 1.0], [1.0, -2.0, 0.5]])
    at = torch.tensor(a, dtype=dtype)
    x = unrolled_pcg(lambda v: v @ at, torch.tensor(b * s, dtype=dtype), lambda r: r, 3)
    ref = np.linalg.solve(a, b.T).T  # n = 3 steps of CG are exact
    np.testing.assert_allclose(x.double().numpy() / s, ref, rtol=1e-4, atol=1e-5)


def test_unrolled_pcg_gradients_match_finite_differences():
    """The row scaling is detached: the gradient in b and in M's parameters stays exact."""
    a = torch.tensor([[4.0, 1, 0], [1, 3, 1], [0, 1, 2]], dtype=F64)
    b0 = torch.tensor([[3.0, -1.0, 2.0]], dtype=F64)
    d0 = torch.tensor([0.3, 0.5, 0.7], dtype=F64)

    def f(d, b):
        return unrolled_pcg(lambda v: v @ a, b, lambda r: r * d, 2)

    assert torch.autograd.gradcheck(f, (d0.clone().requires_grad_(), b0.clone().requires_grad_()))


@pytest.mark.parametrize(("steps", "err"), [(-3, ValueError), (1.5, TypeError)])
def test_unrolled_pcg_validates_steps(steps, err):
    """steps=-3 returned zeros silently."""
    a = torch.eye(3, dtype=F64)
    with pytest.raises(err, match="steps"):
        unrolled_pcg(lambda v: v @ a, torch.ones(1, 3, dtype=F64), lambda r: r, steps)


# ------------------------------------------------------------------ 6. cg breakdown


class _NanOperator(LinearOperator):
    def __init__(self) -> None:
        super().__init__()
        self.in_shape = self.out_shape = (3,)

    def _mv(self, x):
        return x * float("nan")

    _rmv = _mv


@pytest.mark.parametrize("case", ["M-nan", "A-nan"], ids=["preconditioner-nan", "operator-nan"])
def test_cg_non_finite_curvature_is_a_breakdown(case):
    """A NaN r^T M r or p^T A p ran to max_iter and returned NaN with 'Try increasing
    max_iter'."""
    a = torch.tensor([[4.0, 1, 0], [1, 3, 1], [0, 1, 2]], dtype=F64)
    b = torch.ones(2, 3, dtype=F64)
    with pytest.raises(ValueError, match="not finite"):
        if case == "M-nan":
            cg(a, b, M=lambda r: r * float("nan"))
        else:
            cg(_NanOperator(), b)


@pytest.mark.parametrize(
    "diag",
    [[1.0, 0.0, 1.0], [1.0, -2.0, 1.0], [1.0, float("nan"), 1.0], [[1.0, 2.0], [3.0, 4.0]]],
    ids=["zero", "negative", "nan", "2-d"],
)
def test_diagonal_preconditioner_refuses_a_bad_diagonal(diag):
    """A 0 gave an infinite inverse (then NaN in cg), a 2-D diagonal was flattened."""
    with pytest.raises(ValueError, match="'diag'"):
        DiagonalPreconditioner(torch.tensor(diag, dtype=F64))


def test_cg_on_an_empty_matrix_says_so():
    """A 0 x 0 matrix gave IndexError from amax (the library refuses empty problems)."""
    with pytest.raises(ValueError, match="at least 1 x 1"):
        cg(torch.zeros(0, 0, dtype=F64), torch.zeros(0, dtype=F64))


# ------------------------------------------------------------------ 7. admm cg float32


def test_admm_cg_float32_converges_without_inner_warnings():
    """The inner CG used tol=1e-12 in float32: a ConvergenceWarning at every ADMM
    iteration of a run that converged."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(30, 60, generator=gen) / 30**0.5
    x = torch.randn(2, 60, generator=gen) * (torch.rand(2, 60, generator=gen) < 0.1)
    y = x @ a.T
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sol = admm(MatrixOperator(a), y, 0.05, method="cg", tol=1e-3, max_iter=2000)
    assert sol.converged
    assert not caught, [str(w.message)[:80] for w in caught]
    an, yn = a.double().numpy(), y.double().numpy()
    for i in range(2):  # as accurate as the tolerance asks (a numpy KKT residual)
        assert _kkt(an, sol.x[i].double().numpy(), yn[i], 0.05) <= 4e-3


# ------------------------------------------------------------------ 8. x0 dtype


@pytest.mark.parametrize("solver", [ista, fista, amp, admm, bg_amp])
def test_lasso_solvers_refuse_an_x0_of_another_dtype(solver):
    """float32 y with a float64 x0: a float64 result from ista / fista / amp (the solver's
    dtype changed silently), a raw RuntimeError from admm."""
    a, y = _lasso_problem(dtype=F32)
    x0 = torch.zeros(40, dtype=F64)
    with pytest.raises(TypeError, match="dtype and device of 'y'"):
        solver(a, y, 0.1, x0=x0, max_iter=5)


def test_cg_refuses_an_x0_or_preconditioner_output_of_another_dtype():
    """cg returned float64 for float32 b with a float64 x0; a callable M returning float64
    failed in torch.linalg.vecdot."""
    a = torch.eye(4) * 2.0
    b = torch.ones(2, 4)
    with pytest.raises(TypeError, match="dtype and device of 'b'"):
        cg(a, b, x0=torch.zeros(2, 4, dtype=F64))
    with pytest.raises(TypeError, match="callable 'M'"):
        cg(a, b, M=lambda r: r.double())
    sol = cg(a, b, M=lambda r: r / 2.0)  # a well-behaved callable is unaffected
    np.testing.assert_allclose(sol.x.numpy(), np.full((2, 4), 0.5), rtol=1e-6)
