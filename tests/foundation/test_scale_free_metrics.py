"""Metrics and stopping rules give the same digits at any scale of the data (audit,
December 7): ``nmse_db`` summed raw squares (-103.9 dB at 1e-160, -inf at 1e-200, NaN at
1e160 for a true +3.3 dB), and ``tv_reconstruction`` stopped after one iteration at 1e-35
("converged", 95% off) and lost 25% in float32 at 1e-20 (its dual norms underflowed)."""

from __future__ import annotations

import warnings

import pytest
import torch

from unrollsci._validation import ConvergenceWarning
from unrollsci.losses import nmse_db

G = torch.Generator().manual_seed(0)
X = torch.randn(5, 12, generator=G, dtype=torch.float64)
XT = torch.randn(5, 12, generator=G, dtype=torch.float64)


@pytest.mark.parametrize(
    ("scale", "dtype", "tol"),
    [(1e-160, torch.float64, 1e-12), (1e-200, torch.float64, 1e-12), (1e160, torch.float64, 1e-12),
     (1e-25, torch.float32, 1e-5), (1e20, torch.float32, 1e-5)],
)  # fmt: skip
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_nmse_db_is_scale_free(scale, dtype, tol, reduction):
    want = nmse_db(X, XT, reduction=reduction)
    got = nmse_db((scale * X).to(dtype), (scale * XT).to(dtype), reduction=reduction)
    assert torch.allclose(got.double(), want, rtol=0, atol=tol * 10)


def test_nmse_db_gradient_unchanged_by_the_scaling():
    x = X.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(nmse_db(x, XT), x)
    err = (X - XT).pow(2).sum()
    ref = XT.pow(2).sum()
    want = 10 / torch.log(torch.tensor(10.0, dtype=torch.float64)) * 2 * (X - XT) / err
    assert torch.allclose(g, want, rtol=1e-12)
    assert float(nmse_db(X, XT)) == pytest.approx(float(10 * torch.log10(err / ref)), abs=1e-12)


def test_tv_reconstruction_is_scale_free():
    from unrollsci.imaging import Radon, shepp_logan, tv_reconstruction

    op = Radon(16, 12)
    noise = 0.01 * torch.randn(1, 12, 16, generator=G, dtype=torch.float64)
    y = op(shepp_logan(16, dtype=torch.float64)[None]) + noise
    base = tv_reconstruction(y, op, 0.05, tol=1e-4, max_iter=3000)
    assert base.converged
    for s in (1e-35, 1e40):
        sol = tv_reconstruction(s * y, op, s * 0.05, tol=1e-4, max_iter=3000)
        assert sol.converged and sol.iterations == base.iterations
        assert float((sol.x / s - base.x).norm() / base.x.norm()) < 1e-12
    with warnings.catch_warnings():  # 300 iterations, not converged, on purpose
        warnings.simplefilter("ignore", ConvergenceWarning)
        b32 = tv_reconstruction(y.float(), op, 0.05, max_iter=300, tol=0)
        s32 = tv_reconstruction(1e-20 * y.float(), op, 1e-20 * 0.05, max_iter=300, tol=0)
    assert float((s32.x / 1e-20 - b32.x).norm() / b32.x.norm()) < 1e-5
