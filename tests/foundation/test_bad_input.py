"""Regression tests for the trust issue: bad input, empty batches, stale caches, AMP's
stopping rule, CG's tol=0 and scale invariance, Radon's memory check. Grouped by module."""

from __future__ import annotations

import math
import tracemalloc
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from unrollsci.imaging import ramp_filter
from unrollsci.losses import kkt_residual, mse, nmse_db
from unrollsci.operators import (
    Convolution,
    Mask,
    MatrixOperator,
    Radon,
    SparseOperator,
    check_adjoint,
    fbp,
    to_torch_sparse,
)
from unrollsci.operators._radon import radon_memory_estimate
from unrollsci.solvers import (
    admm,
    amp,
    bg_amp,
    cg,
    fista,
    gradient_descent,
    ista,
    lasso_kkt_residual,
)

F64 = torch.float64
EMPTY = "at least one problem"
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


def _lasso_problem(seed=0, m=20, n=40):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(m, n, generator=g, dtype=F64) / m**0.5
    x = torch.zeros(n, dtype=F64)
    x[torch.randperm(n, generator=g)[:3]] = 1.0
    return a, a @ x


def _spd(n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=F64))
    a = q @ torch.diag(torch.linspace(1.0, 10.0, n, dtype=F64)) @ q.T
    return (a + a.T) / 2, torch.randn(n, generator=g, dtype=F64)


# --------------------------------------------------------------------------- operators


def test_operators_empty_batch_forward_and_adjoint():
    ops = [
        MatrixOperator(torch.randn(3, 4, dtype=F64)),
        SparseOperator(sp.random(3, 4, density=0.5, format="csr", random_state=0)),
        Convolution(torch.ones(3, dtype=F64), in_shape=(8,)),
        Mask(torch.tensor([True, False, True])),
    ]
    for op in ops:
        with pytest.raises(ValueError, match=f"'x' to hold {EMPTY}"):
            op(torch.zeros(0, *op.in_shape, dtype=F64))
        with pytest.raises(ValueError, match=f"'y' to hold {EMPTY}"):
            op.adjoint(torch.zeros(0, *op.out_shape, dtype=F64))
    composed = ops[0].T @ ops[0]
    with pytest.raises(ValueError, match=EMPTY):
        composed(torch.zeros(0, 4, dtype=F64))


def test_check_adjoint_rejects_batch_zero_bad_dtype_and_missing_device():
    op = MatrixOperator(torch.randn(3, 4, dtype=F64))
    with pytest.raises(ValueError, match=r"'batch' >= 1 \(got 0\)"):
        check_adjoint(op, batch=0)
    with pytest.raises(TypeError, match="real floating-point dtype"):
        check_adjoint(op, dtype=torch.complex128)
    assert check_adjoint(op, batch=1) < 1e-14


@NO_CUDA
def test_device_arguments_without_cuda_raise_valueerror():
    op = MatrixOperator(torch.randn(3, 4, dtype=F64))
    with pytest.raises(ValueError, match="CUDA is not available"):
        check_adjoint(op, device="cuda")
    with pytest.raises(ValueError, match="CUDA is not available"):
        Radon(16, 4).support(device="cuda")
    with pytest.raises(ValueError, match="CUDA is not available"):
        ramp_filter(16, device="cuda")
    with pytest.raises(ValueError, match="CUDA is not available"):
        to_torch_sparse(sp.eye(3, format="csr"), device="cuda")


def test_complex_matrices_are_refused_at_construction():
    g = torch.Generator().manual_seed(0)
    c = torch.randn(4, 5, generator=g, dtype=torch.complex128)
    with pytest.raises(
        TypeError, match=r"'matrix' to be real \(got complex dtype torch.complex128"
    ):
        MatrixOperator(c)
    with pytest.raises(TypeError, match="'matrix' to be real"):
        SparseOperator(c.to_sparse_csr())
    scipy_c = sp.random(4, 5, density=0.5, format="csr", random_state=0) * (1 + 2j)
    with pytest.raises(TypeError, match="'matrix' to be real.*complex128"):
        SparseOperator(scipy_c)
    with pytest.raises(TypeError, match="'kernel' to be real"):
        Convolution(torch.ones(3, dtype=torch.complex64), in_shape=(8,))


def test_complex_inputs_are_refused_by_operators_and_solvers():
    a, y = _lasso_problem()
    op = MatrixOperator(a)
    yc = y.to(torch.complex128)
    with pytest.raises(TypeError, match="'x' to be real"):
        op(torch.zeros(1, 40, dtype=torch.complex128))
    with pytest.raises(TypeError, match="'y' to be real"):
        op.adjoint(yc[None])
    for solver in (ista, fista, admm, amp):
        with pytest.raises(TypeError, match="'y' to be real"):
            solver(op, yc, 0.1)
    with pytest.raises(TypeError, match="'y' to be real"):
        bg_amp(op, yc, 0.1)
    spd, b = _spd()
    with pytest.raises(TypeError, match="'b' to be real"):
        cg(spd, b.to(torch.complex128))
    with pytest.raises(TypeError, match="'x0' to be real"):
        gradient_descent(lambda v: v, torch.zeros(2, dtype=torch.complex128), 0.1)


def _stale_norm_case(op, mutate, factor):
    n0 = op.norm()
    mutate()
    n1 = op.norm()
    assert n1 == pytest.approx(factor * n0, rel=1e-8)
    dense = op.to_dense()
    assert n1 == pytest.approx(float(torch.linalg.matrix_norm(dense, ord=2)), rel=1e-8)


def test_matrix_operator_norm_follows_in_place_change():
    m = torch.randn(30, 20, dtype=F64, generator=torch.Generator().manual_seed(0))
    op = MatrixOperator(m)
    _stale_norm_case(op, lambda: m.mul_(10), 10.0)


def test_sparse_operator_norm_transpose_and_products_follow_in_place_change():
    s = sp.random(30, 20, density=0.3, format="csr", random_state=1)
    op = SparseOperator(s)
    x = torch.randn(2, 20, dtype=F64)
    yv = torch.randn(2, 30, dtype=F64)
    op.adjoint(yv)  # forms and caches the transpose
    _stale_norm_case(op, lambda: op.matrix.values().mul_(10), 10.0)
    ref = torch.tensor(s.toarray()) * 10
    torch.testing.assert_close(op(x), x @ ref.T)
    torch.testing.assert_close(op.adjoint(yv), yv @ ref)
    # float32 products (a cast copy) and the torch path also see the change
    op32 = SparseOperator(s, dtype=torch.float32)
    op32.adjoint(yv.float())
    op32.matrix.values().mul_(3)
    torch.testing.assert_close(
        op32.adjoint(yv.float()), (yv @ (3 * torch.tensor(s.toarray()))).float()
    )


def test_sparse_operator_owns_a_copy_of_the_scipy_entries():
    s = sp.random(10, 10, density=0.5, format="csr", random_state=2)
    op = SparseOperator(s)
    before = op.to_dense().clone()
    n0 = op.norm()
    s.data *= 5  # the caller changes its own matrix
    torch.testing.assert_close(op.to_dense(), before)
    assert op.norm() == n0


def test_fista_after_in_place_matrix_change_uses_the_new_norm():
    a, y = _lasso_problem()
    op = MatrixOperator(a)
    fista(op, y, 0.05)  # caches ||A||
    a.mul_(10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sol = fista(op, y, 0.05)
    assert sol.converged and bool(torch.isfinite(sol.x).all())
    assert float(lasso_kkt_residual(op, sol.x[None], y[None], 0.05, 1 / op.norm() ** 2)) < 1e-8


def test_scaled_operator_norm_follows_its_scale():
    op = 2.0 * MatrixOperator(torch.eye(3, dtype=F64))
    assert op.norm() == pytest.approx(2.0)
    op.scale = 5.0
    assert op.norm() == pytest.approx(5.0)


def test_sparse_operator_and_radon_refuse_half_precision():
    s = sp.random(6, 6, density=0.5, format="csr", random_state=0)
    with pytest.raises(
        TypeError, match=r"SparseOperator supports float32/float64 \(got torch.float16\)"
    ):
        SparseOperator(s, dtype=torch.float16)
    op = SparseOperator(s)
    with pytest.raises(
        TypeError, match=r"supports float32/float64 \(got torch.float16\).*\.float\(\)"
    ):
        op(torch.ones(1, 6, dtype=torch.float16))
    with pytest.raises(TypeError, match=r"supports float32/float64 \(got torch.bfloat16\)"):
        op.adjoint(torch.ones(1, 6, dtype=torch.bfloat16))
    with pytest.raises(TypeError, match=r"supports float32/float64 \(got torch.float16\)"):
        (op @ MatrixOperator(torch.eye(6)))(torch.ones(1, 6, dtype=torch.float16))
    r = Radon(16, 4)
    with pytest.raises(TypeError, match=r"Radon supports float32/float64 \(got torch.float16\)"):
        r(torch.zeros(1, 16, 16, dtype=torch.float16))
    with pytest.raises(TypeError, match=r"supports float32/float64 \(got torch.bfloat16\)"):
        r.adjoint(torch.zeros(1, 4, 16, dtype=torch.bfloat16))


# ------------------------------------------------------------------------------ radon


def test_radon_empty_batch():
    r = Radon(16, 4)
    with pytest.raises(ValueError, match=f"'x' to hold {EMPTY}"):
        r(torch.zeros(0, 16, 16))
    with pytest.raises(ValueError, match=f"'x' to hold {EMPTY}"):
        r(torch.zeros(0, 1, 16, 16))
    with pytest.raises(ValueError, match=f"'y' to hold {EMPTY}"):
        r.adjoint(torch.zeros(0, 4, 16))
    with pytest.raises(ValueError, match=f"'y' to hold {EMPTY}"):
        fbp(torch.zeros(0, 4, 16), r)


def test_radon_refuses_a_geometry_larger_than_max_memory():
    need = radon_memory_estimate(64, 30)
    with pytest.raises(ValueError, match=r"needs about 0\.\d+ GB.*only 0\.00 GB is allowed"):
        Radon(64, 30, max_memory=1e6)
    op = Radon(64, 30, max_memory=2 * need)
    assert op.nnz > 0
    with pytest.raises(ValueError, match="'max_memory' > 0"):
        Radon(16, 4, max_memory=0)


def test_radon_refuses_more_than_available_memory(monkeypatch):
    from unrollsci.operators import _radon

    monkeypatch.setattr(_radon, "available_memory", lambda: 10_000_000)
    with pytest.raises(ValueError, match=r"only 0\.01 GB is available.*max_memory=float\('inf'\)"):
        Radon(64, 30)
    assert Radon(16, 4).nnz > 0  # small enough
    assert Radon(64, 30, max_memory=float("inf")).nnz > 0
    monkeypatch.setattr(_radon, "available_memory", lambda: None)  # unknown: no refusal
    assert Radon(64, 30).nnz > 0


def test_radon_memory_estimate_counts_entries_and_matches_measured_peak():
    for n, a, circle in ((32, 10, True), (48, 7, False)):
        op = Radon(n, a, circle=circle)
        est_nnz = radon_memory_estimate(n, a, circle=circle) / 128
        assert 0.9 < op.nnz / est_nnz < 1.1
    # measured peak of the construction (numpy's allocations, traced), geometry not cached
    from unrollsci.operators import _radon

    _radon.clear_radon_cache()
    tracemalloc.start()
    try:
        op = Radon(88, 37)
        measured = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    est = radon_memory_estimate(88, 37)
    assert 0.67 < measured / est < 1.5, (measured, est)
    assert 0.9 < op.nnz / (est / 128) < 1.1


# ------------------------------------------------------------------------------ solvers


@pytest.mark.parametrize("name", ["ista", "fista", "admm", "amp", "bg_amp"])
def test_lasso_solvers_empty_batch(name):
    a, _ = _lasso_problem()
    solver = {"ista": ista, "fista": fista, "admm": admm, "amp": amp, "bg_amp": bg_amp}[name]
    with pytest.raises(ValueError, match=f"'y' to hold {EMPTY}"):
        solver(MatrixOperator(a), torch.zeros(0, 20, dtype=F64), 0.1)


def test_cg_and_gradient_descent_empty_batch():
    spd, _ = _spd()
    with pytest.raises(ValueError, match=f"'b' to hold {EMPTY}"):
        cg(spd, torch.zeros(0, 12, dtype=F64))
    with pytest.raises(ValueError, match=f"'x0' to hold {EMPTY}"):
        gradient_descent(lambda v: v, torch.zeros(0, 3, dtype=F64), 0.1)


@pytest.mark.parametrize("name", ["ista", "fista", "admm", "amp", "bg_amp", "cg", "gd"])
@pytest.mark.parametrize(
    ("tol", "err", "msg"),
    [(-1e-3, ValueError, "'tol' >= 0"), (float("nan"), ValueError, "'tol' to be finite")],
)
def test_solvers_reject_negative_or_nan_tol(name, tol, err, msg):
    a, y = _lasso_problem()
    spd, b = _spd()
    calls = {
        "ista": lambda **kw: ista(a, y, 0.1, **kw),
        "fista": lambda **kw: fista(a, y, 0.1, **kw),
        "admm": lambda **kw: admm(a, y, 0.1, **kw),
        "amp": lambda **kw: amp(a, y, 0.1, **kw),
        "bg_amp": lambda **kw: bg_amp(a, y, 0.1, **kw),
        "cg": lambda **kw: cg(spd, b, **kw),
        "gd": lambda **kw: gradient_descent(lambda v: v, torch.ones(3, dtype=F64), 0.5, **kw),
    }
    with pytest.raises(err, match=msg):
        calls[name](tol=tol)
    with pytest.raises(ValueError, match=r"'max_iter' >= 0 \(got -1\)"):
        calls[name](max_iter=-1)
    with pytest.raises(TypeError, match="'max_iter' to be an int"):
        calls[name](max_iter=2.5)


def test_cg_rejects_bad_atol():
    spd, b = _spd()
    with pytest.raises(ValueError, match="'atol' >= 0"):
        cg(spd, b, atol=-1.0)


def test_step_rho_damping_decay_validation():
    a, y = _lasso_problem()
    with pytest.raises(ValueError, match="'step' to be finite"):
        ista(a, y, 0.1, step=float("nan"))
    with pytest.raises(ValueError, match=r"'step' > 0 \(got 0"):
        fista(a, y, 0.1, step=0.0)
    with pytest.raises(ValueError, match="'rho' to be finite"):
        admm(a, y, 0.1, rho=float("inf"))
    with pytest.raises(ValueError, match=r"0 <= damping < 1 \(got 1.0\)"):
        amp(a, y, 0.1, damping=1.0)
    with pytest.raises(ValueError, match="'damping' to be finite"):
        bg_amp(a, y, 0.1, damping=float("nan"))
    for decay in (1.0, 1.5):
        with pytest.raises(ValueError, match=r"0 <= decay < 1 \(got"):
            amp(a, y, 0.1, decay=decay)
    with pytest.raises(ValueError, match=r"'decay' >= 0 \(got -0.5\)"):
        amp(a, y, 0.1, decay=-0.5)
    with pytest.raises(ValueError, match="'step' to be finite"):
        gradient_descent(lambda v: v, torch.ones(3, dtype=F64), float("nan"))
    with pytest.raises(ValueError, match="'step' > 0 and finite"):
        gradient_descent(lambda v: v, torch.ones(2, 3, dtype=F64), torch.tensor([[0.1], [-1.0]]))
    with pytest.raises(ValueError, match="'step' to be finite"):
        kkt_residual(a, torch.zeros(1, 40, dtype=F64), y[None], 0.1, step=float("inf"))


@pytest.mark.parametrize("name", ["ista", "fista", "admm", "amp"])
def test_huge_lam_is_accepted_and_gives_zero(name):
    a, y = _lasso_problem()
    solver = {"ista": ista, "fista": fista, "admm": admm, "amp": amp}[name]
    sol = solver(a, y, 1e300)
    assert sol.converged and bool((sol.x == 0).all())
    with pytest.raises(ValueError, match="'lam' to be finite"):
        solver(a, y, float("inf"))


def test_amp_nonzero_lam_near_the_top_is_not_a_false_zero():
    """The reproducer of the issue: lam = 0.9 ||A^T y||_inf used to return x = 0 after one
    iteration, 'converged'. The lasso solution there is nonzero (0 is the solution iff
    lam >= ||A^T y||_inf)."""
    torch.manual_seed(0)
    op = MatrixOperator(torch.randn(100, 200, dtype=F64) / 10)
    x = torch.zeros(200, dtype=F64)
    x[torch.randperm(200)[:10]] = torch.randn(10, dtype=F64)
    y = op(x[None])[0]
    top = float(op.adjoint(y[None]).abs().max())
    step = 1 / op.norm() ** 2
    for frac, decay in ((0.9, 0.8), (0.8, 0.8), (0.99, 0.8), (0.5, 0.0), (0.9, 0.0)):
        lam = frac * top
        sol = amp(op, y, lam, decay=decay)
        ref = fista(op, y, lam, tol=1e-13).x
        assert bool((ref != 0).any())
        # i.i.d. Gaussian A, sparse solution: amp converges here (measured 11-15 iterations)
        assert sol.converged and sol.iterations > 1 and bool((sol.x != 0).any())
        kkt = float(lasso_kkt_residual(op, sol.x[None], y[None], lam, step))
        assert kkt < 1e-7 * float(op.adjoint(y[None]).norm())
        torch.testing.assert_close(sol.x, ref, atol=1e-7, rtol=0)
    # at and above the top, 0 is the solution and amp says so
    sol = amp(op, y, 1.01 * top)
    assert sol.converged and bool((sol.x == 0).all())


def test_amp_converged_means_lasso_kkt_on_random_problems():
    for seed in range(4):
        a, y = _lasso_problem(seed, m=60, n=120)
        op = MatrixOperator(a)
        top = float(op.adjoint(y[None]).abs().max())
        for frac in (0.3, 0.85, 0.95):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                sol = amp(op, y, frac * top, max_iter=3000)
            assert sol.converged, sol.message  # measured: all 12 converge
            kkt = lasso_kkt_residual(op, sol.x[None], y[None], frac * top, 1 / op.norm() ** 2)
            assert float(kkt) < 1e-6 * top
            assert bool((sol.x != 0).any())


def test_cg_tol_zero_runs_to_exact_convergence_and_matches_solve():
    spd, b = _spd(30)
    ref = torch.linalg.solve(spd, b)
    sol = cg(spd, b, tol=0.0, max_iter=3000)
    # tol=0 stops where the squared relative residual underflows (documented threshold)
    assert sol.converged and sol.residual < math.sqrt(torch.finfo(F64).tiny)
    torch.testing.assert_close(sol.x, ref, atol=1e-12, rtol=0)
    with pytest.warns(UserWarning, match="max_iter=5"):
        sol = cg(spd, b, tol=0.0, max_iter=5)
    assert not sol.converged


@pytest.mark.parametrize("scale", [1e-300, 1e-170, 1e-160, 1e160, 1e300])
@pytest.mark.parametrize("tol", [0.0, 1e-10])
def test_cg_is_scale_invariant(scale, tol):
    """Tiny right-hand sides used to return x = 0 (||b|| underflowed) or a wrong x, marked
    converged; the answer must be scale * (the answer for b)."""
    a = torch.diag(torch.arange(1.0, 21.0, dtype=F64))
    b = torch.ones(20, dtype=F64)
    sol = cg(a, scale * b, tol=tol, max_iter=2000)
    assert sol.converged
    torch.testing.assert_close(
        sol.x / scale, 1 / torch.arange(1.0, 21.0, dtype=F64), atol=1e-9, rtol=0
    )


# ------------------------------------------------------------------------------- losses


def test_losses_empty_batch():
    with pytest.raises(ValueError, match=f"'x' to hold {EMPTY}"):
        nmse_db(torch.zeros(0, 3), torch.zeros(0, 3))
    with pytest.raises(ValueError, match=f"'x' to hold {EMPTY}"):
        mse(torch.zeros(0, 3), torch.zeros(0, 3))
    a, _ = _lasso_problem()
    with pytest.raises(ValueError, match=f"'x' to hold {EMPTY}"):
        kkt_residual(a, torch.zeros(0, 40, dtype=F64), torch.zeros(0, 20, dtype=F64), 0.1)


def test_numpy_rejected_with_type_error_in_losses():
    with pytest.raises(TypeError, match="'x' to be a torch.Tensor"):
        nmse_db(np.zeros((1, 3)), torch.zeros(1, 3))
