"""Solver gradients and the default lasso step, an audit (round "dec10"): each test fails on
the code before it. References are numpy solves and float64 finite differences."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from unrollsci._validation import ConvergenceWarning
from unrollsci.losses import kkt_residual
from unrollsci.solvers import admm, cg, fista, ista

F64 = torch.float64


def _spd(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    b = torch.randn(n, n, generator=g, dtype=F64)
    return b @ b.T + n * torch.eye(n, dtype=F64)


def _solve(a: torch.Tensor, g: torch.Tensor) -> np.ndarray:
    """``A^{-1} g`` row by row, by numpy (A symmetric)."""
    return np.linalg.solve(a.numpy(), g.numpy().T).T


# --- cg(grad="unrolled"): a column solved at its start -------------------------------------


def test_cg_unrolled_zero_rhs_column_gradient_is_inverse_of_a() -> None:
    """A zero right-hand-side column ran no CG step, so its unrolled gradient was 0; the
    returned x = A^{-1} b is exact and its derivative is A^{-1} (as grad='implicit')."""
    n = 5
    a = _spd(n)
    g = torch.randn(2, n, generator=torch.Generator().manual_seed(1), dtype=F64)
    b0 = torch.randn(2, n, generator=torch.Generator().manual_seed(2), dtype=F64)
    b0[1] = 0.0
    grads = {}
    for mode in ("unrolled", "implicit"):
        b = b0.clone().requires_grad_()
        x = cg(a, b, grad=mode, tol=1e-12).x
        (x * g).sum().backward()
        grads[mode] = b.grad
    ref = _solve(a, g)
    np.testing.assert_allclose(grads["unrolled"].numpy(), ref, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(grads["unrolled"][1].numpy(), grads["implicit"][1].numpy(), 1e-9)
    # float64 central differences of the solver itself, in the zero column
    eps = 1e-6
    fd = []
    for e in torch.eye(n, dtype=F64):
        bp, bm = b0.clone(), b0.clone()
        bp[1], bm[1] = eps * e, -eps * e
        fp, fm = (cg(a, bp, tol=1e-12).x * g).sum(), (cg(a, bm, tol=1e-12).x * g).sum()
        fd.append(float(fp - fm) / (2 * eps))
    np.testing.assert_allclose(grads["unrolled"][1].numpy(), fd, rtol=1e-6, atol=1e-9)


def test_cg_unrolled_all_zero_rhs_from_zero_initialised_layer() -> None:
    """b from a zero-initialised output layer: every column is 0, the output was cut from
    the graph and backward raised 'element 0 of tensors does not require grad'."""
    n = 6
    a = _spd(n, seed=3)
    gen = torch.Generator().manual_seed(4)
    h = torch.randn(3, 4, generator=gen, dtype=F64)
    target = torch.randn(3, n, generator=gen, dtype=F64)
    grads = {}
    for mode in ("unrolled", "implicit"):
        head = nn.Linear(4, n, dtype=F64)
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
        x = cg(a, head(h), grad=mode, tol=1e-12).x
        assert torch.equal(x, torch.zeros_like(x))
        (x - target).pow(2).sum().backward()
        grads[mode] = (head.weight.grad, head.bias.grad)
    # dL/db = A^{-1} 2 (x - target) with x = 0; dL/dW = dL/db^T h, dL/dbias = sum over rows
    dldb = _solve(a, -2.0 * target)
    np.testing.assert_allclose(grads["unrolled"][0].numpy(), dldb.T @ h.numpy(), rtol=1e-9)
    np.testing.assert_allclose(grads["unrolled"][1].numpy(), dldb.sum(0), rtol=1e-9)
    np.testing.assert_allclose(grads["unrolled"][0].numpy(), grads["implicit"][0].numpy(), 1e-9)


def test_cg_unrolled_warm_start_that_solves_gets_derivative_of_exact_solution() -> None:
    """An x0 that already meets the tolerance is returned as is: b and A got no gradient.
    Now dL/db = A^{-1} g and dL/dA = -v x^T (v = A^{-1} g), and the values are unchanged."""
    n = 5
    a0 = _spd(n, seed=5)
    b0 = torch.randn(n, generator=torch.Generator().manual_seed(6), dtype=F64)
    g = torch.randn(n, generator=torch.Generator().manual_seed(7), dtype=F64)
    xs = torch.from_numpy(np.linalg.solve(a0.numpy(), b0.numpy()))
    a = a0.clone().requires_grad_()
    b = b0.clone().requires_grad_()
    sol = cg(a, b, x0=xs, tol=1e-8)
    assert sol.iterations == 0
    assert torch.equal(sol.x.detach(), cg(a0, b0, x0=xs, tol=1e-8).x)
    (sol.x @ g).backward()
    v = np.linalg.solve(a0.numpy(), g.numpy())
    np.testing.assert_allclose(b.grad.numpy(), v, rtol=1e-9)
    np.testing.assert_allclose(a.grad.numpy(), -np.outer(v, xs.numpy()), rtol=1e-8, atol=1e-14)


# --- ista / fista / kkt_residual: a tensor step keeps its gradient --------------------------


def _lasso_data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    m, n = 8, 6
    a = torch.randn(m, n, generator=g, dtype=F64) / m**0.5
    y = torch.randn(m, generator=g, dtype=F64)
    return a, y


@pytest.mark.parametrize("solver", [ista, fista])
def test_ista_fista_tensor_step_gradient_matches_finite_differences(solver) -> None:
    """check_positive took .item() of a tensor step: d x / d step was silently cut."""
    a, y = _lasso_data()

    def run(step):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # truncated on purpose
            return solver(a, y, 0.05, step=step, max_iter=3, tol=0).x

    t = torch.tensor(0.3, dtype=F64, requires_grad=True)
    x = run(t)
    assert torch.equal(x.detach(), run(0.3))  # the same iterates as a float step
    x.sum().backward()
    eps = 1e-6
    fd = float(run(0.3 + eps).sum() - run(0.3 - eps).sum()) / (2 * eps)
    assert abs(fd) > 0.1
    assert t.grad is not None
    assert abs(float(t.grad) - fd) <= 1e-7 * abs(fd)


def test_kkt_residual_tensor_step_gradient_matches_finite_differences() -> None:
    a, y = _lasso_data()
    x = torch.randn(2, a.shape[1], generator=torch.Generator().manual_seed(2), dtype=F64)
    yy = torch.stack([y, -y])
    t = torch.tensor(0.3, dtype=F64, requires_grad=True)
    r = kkt_residual(a, x, yy, 0.05, step=t)
    assert torch.equal(r.detach(), kkt_residual(a, x, yy, 0.05, step=0.3))
    r.sum().backward()
    eps = 1e-6
    fp = kkt_residual(a, x, yy, 0.05, step=0.3 + eps).sum()
    fm = kkt_residual(a, x, yy, 0.05, step=0.3 - eps).sum()
    fd = float(fp - fm) / (2 * eps)
    assert abs(fd) > 1e-3
    assert t.grad is not None
    assert abs(float(t.grad) - fd) <= 1e-6 * abs(fd)


def test_tensor_step_still_validated() -> None:
    a, y = _lasso_data()
    for bad in (-0.3, 0.0, float("nan")):
        t = torch.tensor(bad, dtype=F64, requires_grad=True)
        with pytest.raises(ValueError, match="step"):
            ista(a, y, 0.05, step=t, max_iter=3)
        with pytest.raises(ValueError, match="step"):
            kkt_residual(a, torch.zeros(a.shape[1], dtype=F64), y, 0.05, step=t)
    with pytest.raises(ValueError, match="scalar"):
        fista(a, y, 0.05, step=torch.full((2,), 0.3, dtype=F64, requires_grad=True))


# --- the default step 1 / ||A||^2 out of the float range ------------------------------------


@pytest.mark.parametrize("scale", [1e155, 1e-170])
def test_default_step_with_norm_squared_out_of_range_is_a_clear_error(scale: float) -> None:
    """||A||^2 overflowed (OverflowError from Python's float **) or underflowed to 0 (a
    nonzero operator reported as 'zero'); now a ValueError that says to rescale."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(20, 40, generator=g, dtype=F64) / 20**0.5 * scale
    y = a @ torch.ones(40, dtype=F64)
    calls = [
        lambda: ista(a, y, 0.01 * scale, max_iter=5),
        lambda: fista(a, y, 0.01 * scale, max_iter=5),
        lambda: admm(a, y, 0.01 * scale, max_iter=5),
        lambda: kkt_residual(a, torch.zeros(40, dtype=F64), y, 0.01 * scale),
    ]
    for call in calls:
        with pytest.raises(ValueError, match=r"\|\|A\|\|\^2 within the float range.*Rescale"):
            call()
