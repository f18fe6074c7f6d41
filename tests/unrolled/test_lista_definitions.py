"""The LISTA family against the papers' definitions, with learned (not initial) constants.

LISTA-CP / -CPSS: Chen et al. 2018, eq. 9 and sec. 3 (x <- eta(x + W_k^T (y - A x), theta_k),
support share p_k = min(p k, p_max), p = 1.2 %, p_max = 13 %). LAMP: Borgerding et al.
2017, eqs. 21-23 (v = y - A x + b v_prev, b = ||x||_0 / m, threshold alpha ||v|| / sqrt(m)).
Each model is compared with an independent numpy loop in float64.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from unrollsci.operators import MatrixOperator
from unrollsci.train import load_checkpoint, save_checkpoint
from unrollsci.unrolled import LAMP, LISTACP

M, N, K = 40, 100, 5


def _perturb(model, seed=1, scale=0.02):
    """Move every learned constant off its initial value (a 'trained' model)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))


def _soft(v, t):
    return np.sign(v) * np.maximum(np.abs(v) - t, 0.0)


def _softplus(v):
    return np.log1p(np.exp(v))


@pytest.mark.parametrize("ss", [False, True])
def test_lista_cp_is_chen_et_al_eq9(ss, sparse_problem):
    a, _, y = sparse_problem(M, N, batch=6)
    model = LISTACP(MatrixOperator(a), K, lam=0.4, support_selection=ss, dtype=torch.float64)
    _perturb(model)
    an, yn = a.numpy(), y.numpy()
    theta = _softplus(model.theta.detach().numpy())
    x = np.zeros((yn.shape[0], N))
    for k in range(K):
        w = model.W[k].detach().numpy()  # (m, n), as A
        v = x + (yn - x @ an.T) @ w  # x + W^T (y - A x), one row per sample
        out = _soft(v, theta[k])
        if ss:
            share = min(0.012 * (k + 1), 0.13)  # p = 1.2 % per layer, capped at 13 %
            count = int(math.floor(share * N))
            for i in range(v.shape[0]):
                mag = np.abs(v[i])
                if count > 0:
                    kth = np.sort(mag)[-count]
                    keep = (mag >= kth) & (mag > theta[k])
                    out[i, keep] = v[i, keep]
        x = out
    np.testing.assert_allclose(model(y).detach().numpy(), x, atol=1e-12)


def test_support_share_schedule_is_chen_et_al(sparse_problem):
    a, _, _ = sparse_problem(M, N, batch=6)
    model = LISTACP(MatrixOperator(a), 16, support_selection=True)
    shares = [model._fraction(k) for k in range(16)]
    expected = [min(0.012 * (k + 1), 0.13) for k in range(16)]
    np.testing.assert_allclose(shares, expected)
    assert shares[10] == pytest.approx(0.13) and shares[-1] == pytest.approx(0.13)


def test_lamp_residual_threshold_is_borgerding_et_al(sparse_problem):
    a, _, y = sparse_problem(M, N, batch=6)
    model = LAMP(MatrixOperator(a), K, threshold="residual", scale_init=1.1, dtype=torch.float64)
    _perturb(model, scale=0.01)
    an, yn = a.numpy(), y.numpy()
    alpha = _softplus(model.scale.detach().numpy())
    x = np.zeros((yn.shape[0], N))
    v = np.zeros_like(yn)
    b = np.zeros((yn.shape[0], 1))
    for k in range(K):
        bmat = model.W[k].detach().numpy()  # B_k = W_k^T
        v = yn - x @ an.T + b * v
        r = x + v @ bmat
        lam = alpha[k] * np.linalg.norm(v, axis=1, keepdims=True) / math.sqrt(M)
        x = _soft(r, lam)
        b = (np.abs(r) > lam).sum(axis=1, keepdims=True) / M
    np.testing.assert_allclose(model(y).detach().numpy(), x, atol=1e-12)


def test_lamp_residual_untrained_beats_the_calibrated_threshold():
    """Untrained (B = A^T, alpha = 1.1) it is AMP with the residual threshold, which
    tracks the error down; the calibrated lasso threshold stalls at the lasso bias."""
    g = torch.Generator().manual_seed(3)
    m, n = 150, 300
    a = torch.randn(m, n, generator=g, dtype=torch.float64)
    a = a / a.norm(dim=0)
    x = torch.randn(200, n, generator=g, dtype=torch.float64)
    x = x * (torch.rand(200, n, generator=g, dtype=torch.float64) < 0.1)
    y = x @ a.T
    res = LAMP(MatrixOperator(a), 16, threshold="residual", scale_init=1.1)
    cal = LAMP(MatrixOperator(a), 16, lam=0.1)
    with torch.no_grad():
        e_res = float((res(y) - x).pow(2).sum() / x.pow(2).sum())
        e_cal = float((cal(y) - x).pow(2).sum() / x.pow(2).sum())
    assert e_res < 0.1 * e_cal  # more than 10 dB better (about 13 dB here)


def test_lamp_threshold_option_checked_and_saved(tmp_path, sparse_problem):
    a, _, y = sparse_problem(M, N, batch=6)
    op = MatrixOperator(a)
    with pytest.raises(ValueError, match="Expected threshold 'calibrated' or 'residual'"):
        LAMP(op, 2, threshold="fixed")
    with pytest.raises(ValueError, match="denoiser='soft' only"):
        LAMP(op, 2, threshold="residual", denoiser="bg")
    model = LAMP(op, 3, threshold="residual", scale_init=1.1, dtype=torch.float64)
    _perturb(model)
    save_checkpoint(model, tmp_path / "lamp.pt")
    back = load_checkpoint(tmp_path / "lamp.pt")
    assert back.threshold == "residual"
    torch.testing.assert_close(back(y), model(y))
    # the calibrated default writes no new key (older readers keep working)
    assert "threshold" not in LAMP(op, 2).get_config()
    # classical(): the residual model keeps its scale_init (the calibrated one resets it)
    assert LAMP(op, 2, threshold="residual", scale_init=1.3).classical().scale_init == 1.3
