"""Bayes AMP for a Bernoulli-Gaussian prior: the denoiser, the step, the solver."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from unrollsci import ConvergenceWarning
from unrollsci.operators import MatrixOperator
from unrollsci.solvers import bg_amp, bg_amp_step, bg_denoise

F64 = torch.float64


def _problem(seed=0, m=125, n=250, rho=0.1, batch=8, snr_db=math.inf, dtype=F64):
    """Unit-norm Gaussian columns, Bernoulli(rho) x N(0, 1) signals."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(m, n, generator=g, dtype=F64)
    a = a / a.norm(dim=0)
    x = torch.randn(batch, n, generator=g, dtype=F64)
    x = x * (torch.rand(batch, n, generator=g, dtype=F64) < rho)
    y = x @ a.T
    if math.isfinite(snr_db):
        sigma = y.norm(dim=1, keepdim=True) / math.sqrt(m) * 10 ** (-snr_db / 20)
        y = y + sigma * torch.randn(batch, m, generator=g, dtype=F64)
    return a.to(dtype), x.to(dtype), y.to(dtype)


def _nmse_db(est, x):
    return 10 * math.log10(
        float((est.double() - x.double()).pow(2).sum() / x.double().pow(2).sum())
    )


def _naive_posterior_mean(r, tau, rho, s2):
    """Direct Bayes rule (fine for moderate values in float64)."""

    def normal(v, var):
        return torch.exp(-0.5 * v * v / var) / math.sqrt(2 * math.pi * var)

    on = rho * normal(r, s2 + tau)
    off = (1 - rho) * normal(r, tau)
    return on / (on + off) * s2 / (s2 + tau) * r


def test_denoiser_matches_bayes_rule_and_its_derivative():
    r = torch.linspace(-3, 3, 61, dtype=F64, requires_grad=True)
    for tau, rho, s2 in [(0.01, 0.1, 1.0), (0.3, 0.05, 2.0), (1.0, 0.5, 0.25)]:
        eta, deriv = bg_denoise(r, tau, rho, s2)
        torch.testing.assert_close(eta, _naive_posterior_mean(r, tau, rho, s2))
        (grad,) = torch.autograd.grad(eta.sum(), r)
        torch.testing.assert_close(deriv, grad)
        # the derivative is the posterior variance over tau (Tweedie), so in [0, ...)
        assert bool((deriv >= 0).all())


def test_denoiser_rho_logit_equals_rho():
    r = torch.randn(100, dtype=F64)
    a = bg_denoise(r, 0.1, 0.2, 1.5)
    b = bg_denoise(r, 0.1, None, 1.5, rho_logit=math.log(0.2 / 0.8))
    torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="exactly one of 'rho' and 'rho_logit'"):
        bg_denoise(r, 0.1, 0.2, 1.5, rho_logit=0.0)
    with pytest.raises(ValueError, match="exactly one of 'rho' and 'rho_logit'"):
        bg_denoise(r, 0.1, None, 1.5)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_denoiser_is_finite_at_extremes(dtype):
    big = 1e30 if dtype == torch.float32 else 1e150
    r = torch.tensor([0.0, 1e-20, -1e-3, 1.0, -30.0, 1e3, -1e6, big], dtype=dtype)
    for tau in (0.0, 1e-45, 1e-30, 1e-12, 1e-3, 1.0, 1e6):
        for logit in (-60.0, -2.0, 0.0, 40.0):
            eta, deriv = bg_denoise(r, tau, None, 1.0, rho_logit=logit)
            assert torch.isfinite(eta).all() and torch.isfinite(deriv).all(), (tau, logit)
            assert bool((deriv >= 0).all())
    # tiny noise: the entry is either zeroed (small r) or kept almost unshrunk
    eta, deriv = bg_denoise(r, 0.0, 0.1, 1.0)
    assert float(eta[0]) == 0.0
    torch.testing.assert_close(eta[3:7], r[3:7])
    torch.testing.assert_close(deriv[3:7], torch.ones(4, dtype=dtype))


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_denoiser_gradients_finite_for_tiny_tau(dtype):
    r = torch.tensor([0.0, 1e-4, 0.5, -3.0, 20.0], dtype=dtype, requires_grad=True)
    for tau0 in (0.0, 1e-40, 1e-12, 1e-3):
        tau = torch.tensor(tau0, dtype=dtype, requires_grad=True)
        logit = torch.tensor(-2.0, dtype=dtype, requires_grad=True)
        s2 = torch.tensor(1.0, dtype=dtype, requires_grad=True)
        eta, deriv = bg_denoise(r, tau, None, s2, rho_logit=logit)
        grads = torch.autograd.grad((eta + deriv).sum(), (r, tau, logit, s2))
        for grad in grads:
            assert torch.isfinite(grad).all(), tau0


def test_step_onsager_is_mean_derivative():
    a, _, y = _problem()
    op = MatrixOperator(a)
    m, n = a.shape
    x = 0.1 * torch.randn(y.shape[0], n, dtype=F64)
    z = 0.1 * torch.randn_like(y)
    b = torch.full((y.shape[0], 1), 0.3, dtype=F64)
    x_next, z_next, b_next = bg_amp_step(op, x, z, y, b, 0.1, 1.0)
    torch.testing.assert_close(z_next, y - x @ a.T + 0.3 * z)
    tau = z_next.pow(2).sum(-1, keepdim=True) / m
    r = (x + z_next @ a).requires_grad_(True)
    eta, _ = bg_denoise(r, tau, 0.1, 1.0)
    torch.testing.assert_close(x_next, eta.detach())
    (grad,) = torch.autograd.grad(eta.sum(), r)
    torch.testing.assert_close(b_next, grad.sum(-1, keepdim=True) / m)
    # tau_scale multiplies the noise variance
    x2, _, _ = bg_amp_step(op, x, z, y, b, 0.1, 1.0, tau_scale=2.0)
    torch.testing.assert_close(x2, bg_denoise(r.detach(), 2 * tau, 0.1, 1.0)[0])


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_noiseless_recovery(device, dtype):
    a, x, y = _problem(dtype=dtype)
    sol = bg_amp(MatrixOperator(a).to(device), y.to(device), 0.1, max_iter=40, tol=1e-5)
    assert sol.converged, sol.message
    assert _nmse_db(sol.x.cpu(), x) < -60
    assert sol.stats["tau"].shape == (y.shape[0],)


def test_near_the_support_oracle_at_40db():
    """At 40 dB Bayes AMP is within 1 dB of least squares on the true support."""
    a, x, y = _problem(m=250, n=500, batch=50, snr_db=40.0, seed=3)
    sol = bg_amp(MatrixOperator(a), y, 0.1, max_iter=200, tol=1e-8)
    assert sol.converged, sol.message
    err = ref = 0.0
    for i in range(x.shape[0]):
        s = x[i] != 0
        est = torch.zeros_like(x[i])
        est[s] = torch.linalg.lstsq(a[:, s], y[i][:, None]).solution[:, 0]
        err += float((est - x[i]).pow(2).sum())
        ref += float(x[i].pow(2).sum())
    oracle = 10 * math.log10(err / ref)
    assert _nmse_db(sol.x, x) < oracle + 1.0


def test_unbatched_damping_and_zero_data():
    a, x, y = _problem()
    op = MatrixOperator(a)
    single = bg_amp(op, y[0], 0.1, max_iter=40, tol=1e-8)
    assert single.x.shape == (a.shape[1],)
    torch.testing.assert_close(single.x, bg_amp(op, y, 0.1, max_iter=40, tol=1e-8).x[0])
    damped = bg_amp(op, y, 0.1, damping=0.3, max_iter=200, tol=1e-8)
    assert damped.converged
    assert _nmse_db(damped.x, x) < -60
    zero = bg_amp(op, torch.zeros_like(y), 0.1, max_iter=5)
    assert zero.converged and bool((zero.x == 0).all())


def test_max_iter_warns():
    a, _, y = _problem()
    with pytest.warns(ConvergenceWarning, match="bg_amp reached max_iter=2"):
        bg_amp(MatrixOperator(a), y, 0.1, max_iter=2, tol=0)


def test_bad_input():
    a, _, y = _problem()
    op = MatrixOperator(a)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for rho in (0.0, 1.0, -0.1, float("nan")):
            with pytest.raises(ValueError, match="Expected 0 < rho < 1"):
                bg_amp(op, y, rho)
        for sigma in (0.0, -1.0, float("inf")):
            with pytest.raises(ValueError, match="Expected 'sigma_x' > 0 and finite"):
                bg_amp(op, y, 0.1, sigma_x=sigma)
        with pytest.raises(TypeError, match="to be numbers"):
            bg_amp(op, y, "a lot")
        with pytest.raises(ValueError, match="Expected 0 <= damping < 1"):
            bg_amp(op, y, 0.1, damping=1.0)
        with pytest.raises(ValueError, match=r"Expected 'y' of length 125"):
            bg_amp(op, y[:, :-1], 0.1)
        bad = y.clone()
        bad[0, 0] = float("nan")
        with pytest.raises(ValueError, match="Expected 'y' to be finite"):
            bg_amp(op, bad, 0.1)
