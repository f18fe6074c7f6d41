"""Gradients that were silently wrong or cut (gradient audit, December 7), each against an
independent reference: the exact solve, Cholesky ADMM and finite differences, the classical
AMP solver."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from unrollsci.solvers import admm, cg

D = torch.float64


def test_cg_with_an_amg_preconditioner_differentiates_through_the_cycle():
    """The PyAMG V-cycle detached its input: with cg's default grad='unrolled' dL/db was
    87% off (the learned AMG's build 44%)."""
    from unrollsci.precond import amg, diffusion2d

    a = diffusion2d(8, seed=0)
    g = torch.Generator().manual_seed(0)
    b0 = torch.randn(a.shape[0], dtype=D, generator=g)
    w = torch.randn(a.shape[0], dtype=D, generator=g)
    exact = torch.linalg.solve(torch.tensor(a.toarray()), w)  # d(w.x)/db, x = A^-1 b
    for mode in ("unrolled", "implicit"):
        b = b0.clone().requires_grad_(True)
        (gb,) = torch.autograd.grad((cg(a, b, M=amg(a), tol=1e-13, grad=mode).x * w).sum(), b)
        assert float((gb - exact).norm() / exact.norm()) < 1e-10


def test_admm_cg_x_update_keeps_the_gradient():
    """The CG x-update's warm start was detached: once it met CG's tolerance the gradient
    was cut (dL/dlam 9% off at tol 1e-10, exactly 0 at 1e-13)."""
    from unrollsci.operators import MatrixOperator

    torch.manual_seed(0)
    a = MatrixOperator(torch.randn(15, 25, dtype=D) / 15**0.5)
    y0 = torch.randn(15, dtype=D)
    w = torch.randn(25, dtype=D)

    def f(y, lam, method, tol):
        return (admm(a, y, lam, method=method, tol=tol).x * w).sum()

    h = 1e-6
    for tol in (1e-11,):  # the warm start met CG's tolerance within the run
        fd = (f(y0, torch.tensor(0.1 + h, dtype=D), "cholesky", tol)
              - f(y0, torch.tensor(0.1 - h, dtype=D), "cholesky", tol)) / (2 * h)  # fmt: skip
        grads = {}
        for method in ("cholesky", "cg"):
            y = y0.clone().requires_grad_(True)
            lam = torch.tensor(0.1, dtype=D, requires_grad=True)
            grads[method] = torch.autograd.grad(f(y, lam, method, tol), (y, lam))
        assert float(grads["cg"][1]) == pytest.approx(float(fd), rel=1e-6)
        gy_c, gy_g = grads["cholesky"][0], grads["cg"][0]
        assert float((gy_g - gy_c).norm() / gy_c.norm()) < 1e-6


def test_lamp_gradient_in_the_measurements_matches_amp():
    """LAMP's calibrated threshold detached ||A^T y||_inf: dL/dy 1-33% off; the classical
    amp, with the same forward pass, was right."""
    from unrollsci.operators import MatrixOperator
    from unrollsci.solvers import amp
    from unrollsci.unrolled import LAMP

    torch.manual_seed(1)
    a = torch.randn(20, 40, dtype=D) / math.sqrt(20)
    model = LAMP(MatrixOperator(a), 4, lam=0.1, dtype=D)
    y0 = torch.randn(2, 20, dtype=D)
    w = torch.randn(2, 40, dtype=D)
    y = y0.clone().requires_grad_(True)
    (g_model,) = torch.autograd.grad((model(y) * w).sum(), y)
    y2 = y0.clone().requires_grad_(True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = amp(MatrixOperator(a), y2, 0.1, max_iter=4, tol=0).x
    assert torch.allclose(model(y0), out.detach(), atol=1e-12)  # the same forward pass
    (g_amp,) = torch.autograd.grad((out * w).sum(), y2)
    assert torch.allclose(g_model, g_amp, rtol=1e-8, atol=1e-12)


def test_a_sparse_matrix_that_requires_grad_is_refused():
    """cg accepted it and A.grad stayed None: the entries get no gradient through a
    SparseOperator."""
    from unrollsci.operators import SparseOperator

    a = (torch.eye(4, dtype=D) * 2).to_sparse().requires_grad_(True)
    with pytest.raises(ValueError, match="does not require grad"):
        SparseOperator(a)
    with pytest.raises(ValueError, match="does not require grad"):
        cg(a, torch.ones(4, dtype=D))


def test_qeq_implicit_with_a_fixed_iteration_count_warns():
    from unrollsci._validation import ConvergenceWarning
    from unrollsci.chem import solve_charges

    pos = torch.tensor([[0.0, 0, 0], [2.1, 0, 0], [-0.5, 2.2, 0], [3.0, 2.3, 0.4]], dtype=D)
    p = pos.clone().requires_grad_(True)
    with pytest.warns(ConvergenceWarning, match="grad='unrolled'"):
        solve_charges(p, ["O", "H", "H", "Na"], cutoff=None, grad="implicit", iterations=1)
