"""The lasso is homogeneous, ``x*(s y, s lam) = s x*(y, lam)``: ista / fista / admm give the
same digits at any scale of the data. Their stopping residuals were formed from norms whose
squares underflow, so at |y| ~ 1e-160 they read 0 and reported converged on answers 15-90%
off (audit); float32 data of size 1e-21 did the same."""

from __future__ import annotations

import pytest
import torch

from unrollsci.solvers import admm, fista, ista
from unrollsci.solvers._problems import gaussian_lasso

A, _, Y = gaussian_lasso(m=30, n=60, k=4, seed=1)
LAM = 0.1 * float((Y @ A).abs().max())


@pytest.mark.parametrize("solver", [ista, fista, admm])
@pytest.mark.parametrize(
    ("scale", "dtype", "rtol"),
    [(1e-160, torch.float64, 1e-7), (1e-200, torch.float64, 1e-7), (1e200, torch.float64, 1e-7),
     (1e-21, torch.float32, 2e-3)],
)  # fmt: skip
def test_same_solution_at_any_scale(solver, scale, dtype, rtol):
    ref = fista(A, Y, LAM, tol=1e-12).x
    a, y = A.to(dtype), (Y * scale).to(dtype)
    sol = solver(a, y, LAM * scale, tol=1e-10 if dtype == torch.float64 else 1e-5)
    assert sol.converged
    x = sol.x.double() / scale
    assert float((x - ref).norm() / ref.norm()) < rtol


@pytest.mark.parametrize("solver", [ista, fista, admm])
@pytest.mark.parametrize(
    "prox",
    [None, {"kind": "group", "group_size": 5}, {"kind": "group", "groups": torch.arange(60) // 6}],
)
@pytest.mark.parametrize("scale", [1e-165, 1e160])
def test_same_iterations_at_any_scale(solver, prox, scale):
    """The whole iteration is scale-free, not only its answer: the same number of
    iterations at 1e-165 and 1e160 as at 1. Two more scale-dependent pieces were found:
    the group norms of the group prox (squares underflowed: the group lasso returned 0 and
    'converged' at 1e-165) and FISTA's restart test, a dot product of two differences (it
    underflowed to 0, so FISTA never restarted: 8792 iterations instead of 611)."""
    ref = solver(A, Y, LAM, tol=1e-12, prox=prox, max_iter=30_000)
    sol = solver(A, Y * scale, LAM * scale, tol=1e-12, prox=prox, max_iter=30_000)
    assert ref.converged and sol.converged
    assert abs(sol.iterations - ref.iterations) <= 1
    assert float((sol.x / scale - ref.x).norm() / ref.x.norm()) < 1e-9
