"""A solver's "converged" in float32 means the true residual meets the tolerance (an audit
of the float32 paths, December 7)."""

from __future__ import annotations

import pytest
import torch

from unrollsci import ConvergenceWarning
from unrollsci.solvers import cg


def _system(n: int, cond: float) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64, generator=gen))
    a = (
        q * torch.logspace(0, float(torch.log10(torch.tensor(cond))), n, dtype=torch.float64)
    ) @ q.T
    return ((a + a.T) / 2).float(), torch.randn(n, generator=gen).float()


def _true_residual(a: torch.Tensor, b: torch.Tensor, x: torch.Tensor) -> float:
    return float((b.double() - a.double() @ x.double()).norm() / b.double().norm())


def test_cg_float32_does_not_claim_an_unreachable_tolerance():
    """cond 10, tol 1e-10: CG's updated residual drifted to 5e-11 and it reported converged,
    while the true residual was 3e-7."""
    a, b = _system(200, 10.0)
    with pytest.warns(ConvergenceWarning, match="below what torch.float32 reaches"):
        sol = cg(a, b, tol=1e-10)
    assert not sol.converged
    assert sol.iterations < 1000  # stopped, did not run to max_iter
    assert sol.residual == pytest.approx(_true_residual(a, b, sol.x), rel=0.2)


@pytest.mark.parametrize("cond", [10.0, 100.0])
def test_cg_float32_converged_means_the_true_residual_meets_tol(cond):
    a, b = _system(200, cond)
    sol = cg(a, b, tol=1e-5)
    assert sol.converged
    assert _true_residual(a, b, sol.x) <= 1e-5


@pytest.mark.parametrize("name", ["ista", "fista"])
def test_lasso_float32_stagnation_is_not_convergence(name):
    """float32 iterates stop changing bit for bit: the change (the solvers' residual) read 0
    and they reported converged at tol 1e-10 while the KKT residual was 1e-7."""
    from unrollsci import solvers

    gen = torch.Generator().manual_seed(0)
    a = torch.randn(60, 100, dtype=torch.float64, generator=gen) / 60**0.5
    y = a[:, :8] @ torch.randn(8, dtype=torch.float64, generator=gen)
    solve = getattr(solvers, name)
    with pytest.warns(ConvergenceWarning, match="below what torch.float32 reaches"):
        sol = solve(a.float(), y.float(), 0.05, tol=1e-10, max_iter=5000)
    assert not sol.converged and sol.residual > 1e-10
    assert solve(a.float(), y.float(), 0.05, tol=1e-5, max_iter=5000).converged
    assert solve(a, y, 0.05, tol=1e-10, max_iter=5000).converged  # float64 unchanged
