"""TV (Chambolle-Pock) and Tikhonov baselines against independent SciPy/NumPy solutions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unrollsci.imaging import (
    Radon,
    divergence2d,
    gradient2d,
    random_ellipses,
    tikhonov_reconstruction,
    tv_reconstruction,
)


def test_gradient_divergence_adjoint(device):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 7, 9, generator=gen, dtype=torch.float64).to(device)
    p = torch.randn(3, 2, 7, 9, generator=gen, dtype=torch.float64).to(device)
    lhs = (gradient2d(x) * p).sum()
    rhs = -(x * divergence2d(p)).sum()
    assert float(abs(lhs - rhs)) < 1e-12 * float(lhs.abs() + 1)


def _tv(x: np.ndarray) -> float:
    gx = np.zeros((2, *x.shape))
    gx[0, :-1] = x[1:] - x[:-1]
    gx[1, :, :-1] = x[:, 1:] - x[:, :-1]
    return float(np.sqrt((gx**2).sum(0)).sum())


def test_tv_reaches_scipy_objective(device):
    """The primal-dual solution is at least as good as L-BFGS-B on a smoothed TV."""
    from scipy.optimize import minimize

    from unrollsci.operators._radon import _system_matrix

    n, lam = 12, 0.5
    op = Radon(n, 8).to(device)
    x_true = random_ellipses(1, n, seed=2, dtype=torch.float64, device=device)
    y = op(x_true) + 0.05 * torch.randn(
        1, 8, n, dtype=torch.float64, generator=torch.Generator().manual_seed(1)
    ).to(device)
    sol = tv_reconstruction(y, op, lam, max_iter=5000, tol=1e-9)
    assert sol.converged
    a = _system_matrix(n, tuple(op.angles.tolist()), True).toarray()
    yn = y[0].cpu().numpy().ravel()

    def objective(v: np.ndarray) -> float:
        return 0.5 * float(((a @ v - yn) ** 2).sum()) + lam * _tv(v.reshape(n, n))

    eps = 1e-6

    def smooth(v: np.ndarray) -> tuple[float, np.ndarray]:
        img = v.reshape(n, n)
        g = np.zeros((2, n, n))
        g[0, :-1] = img[1:] - img[:-1]
        g[1, :, :-1] = img[:, 1:] - img[:, :-1]
        mag = np.sqrt((g**2).sum(0) + eps)
        r = a @ v - yn
        d = g / mag
        div = np.zeros((n, n))
        div[:-1] += d[0, :-1]
        div[1:] -= d[0, :-1]
        div[:, :-1] += d[1, :, :-1]
        div[:, 1:] -= d[1, :, :-1]
        return 0.5 * float(r @ r) + lam * float(mag.sum()), a.T @ r - lam * div.ravel()

    ref = minimize(
        smooth,
        np.zeros(n * n),
        jac=True,
        method="L-BFGS-B",
        bounds=[(0, None)] * (n * n),
        options={"maxiter": 20000, "gtol": 1e-12},
    )
    mine = sol.x[0].cpu().numpy().ravel()
    assert mine.min() >= 0
    assert objective(mine) <= objective(ref.x) * (1 + 1e-4)


def test_tv_support_and_report(device):
    op = Radon(16, 10).to(device)
    x = random_ellipses(2, 16, seed=1, device=device)
    mask = torch.zeros(16, 16, dtype=torch.bool, device=device)
    mask[4:12, 4:12] = True
    with pytest.warns(UserWarning, match="max_iter=5"):
        sol = tv_reconstruction(op(x), op, 0.1, mask=mask, max_iter=5)
    assert not sol.converged and sol.iterations == 5
    assert bool((sol.x[:, ~mask] == 0).all())


def test_tikhonov_matches_dense_solve(device):
    from unrollsci.operators._radon import _system_matrix

    n, lam = 10, 0.3
    op = Radon(n, 6).to(device)
    y = torch.rand(2, 6, n, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    sol = tikhonov_reconstruction(y.to(device), op, lam, tol=1e-12)
    a = _system_matrix(n, tuple(op.angles.tolist()), True).toarray()
    ref = np.linalg.solve(a.T @ a + lam * np.eye(n * n), a.T @ y.reshape(2, -1).numpy().T).T
    np.testing.assert_allclose(sol.x.reshape(2, -1).cpu().numpy(), ref, atol=1e-8)


def test_baselines_bad_input():
    op = Radon(16, 10)
    with pytest.raises(ValueError, match=r"sinograms 'y' of shape \(batch, 10, 16\)"):
        tv_reconstruction(torch.zeros(1, 10, 15), op, 1.0)
    with pytest.raises(ValueError, match=r"'mask' of shape \(16, 16\)"):
        tv_reconstruction(torch.zeros(1, 10, 16), op, 1.0, mask=torch.ones(15, 15))
    bad = torch.zeros(1, 10, 16)
    bad[..., 0] = float("nan")
    with pytest.raises(ValueError, match="'y' to be finite"):
        tikhonov_reconstruction(bad, op, 1.0)
    with pytest.raises(ValueError, match="lam >= 0"):
        tv_reconstruction(torch.zeros(1, 10, 16), op, -1.0)
