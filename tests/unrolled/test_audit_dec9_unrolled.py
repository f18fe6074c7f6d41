"""Unrolled models, losses and layer-wise training, an adversarial audit (December 9):
each test fails on the code before it."""

from __future__ import annotations

import warnings

import pytest
import torch

from unrollsci.losses import mse, nmse_db
from unrollsci.operators import MatrixOperator
from unrollsci.train import fit_layerwise
from unrollsci.unrolled import LAMP, ADMMNet

F64 = torch.float64


def _problem(m=12, n=24, dtype=F64, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(m, n, generator=g, dtype=F64) / m**0.5
    x = torch.randn(5, n, generator=g, dtype=F64) * (torch.rand(5, n, generator=g) < 0.2)
    return a.to(dtype), (x @ a.T).to(dtype), x.to(dtype)


def test_nmse_refuses_a_non_finite_target_and_never_scores_nan_as_perfect():
    """A NaN in x_true was read as a zero target: -inf dB, a 'perfect' score."""
    _, _, x = _problem()
    est = x + 0.1
    for bad in (float("nan"), float("inf")):
        truth = x.clone()
        truth[0, 0] = bad
        with pytest.raises(ValueError, match="x_true"):
            nmse_db(est, truth)
        with pytest.raises(ValueError, match="x_true"):
            mse(est, truth)
    # a NaN estimate of a zero target row is NaN, not -inf
    zero = torch.zeros(2, 3, dtype=F64)
    est = zero.clone()
    est[1, 0] = float("nan")
    out = nmse_db(est, zero, reduction="none")
    assert out[0] == float("-inf") and torch.isnan(out[1])


def test_lamp_residual_threshold_does_not_overflow_in_float32():
    """||z|| of |y| ~ 1e20 overflowed float32: theta = inf, an all-zero output, NaN
    gradients; the layer is positively homogeneous, so the output scales with y."""
    a, y, _ = _problem()
    ref = LAMP(MatrixOperator(a), 4, lam=0.05, threshold="residual")(y)
    for scale in (1e20, 1e-20):
        m32 = LAMP(MatrixOperator(a.float()), 4, lam=0.05, threshold="residual")
        out = m32(y.float() * scale)
        torch.testing.assert_close(out.double() / scale, ref, rtol=2e-5, atol=1e-6)
        out.sum().backward()
        assert all(torch.isfinite(p.grad).all() for p in m32.parameters() if p.grad is not None)


def test_admm_exact_recomputes_its_eigendecomposition_after_double():
    """model.double() only cast the float32 eigendecomposition of A^T A: the float64 model
    was 1.25e-7 off a float64 model with the same parameters."""
    a, y, _ = _problem()
    m32 = ADMMNet(MatrixOperator(a.float()), 4, lam=0.05).double()
    m64 = ADMMNet(MatrixOperator(a.float().double()), 4, lam=0.05)
    m64.load_state_dict(
        {k: v for k, v in m32.state_dict().items() if "gram" not in k}, strict=False
    )
    torch.testing.assert_close(m32(y), m64(y), rtol=0, atol=1e-13)


def test_layerwise_never_breaks_a_prefix_secured_earlier():
    """A stage where no state kept the curve non-increasing kept the one best at layer k,
    which could break layers 1..k-1: the 2-layer model ended worse than its 1-layer
    prefix though layer 2's stage had ended monotone."""
    g0 = torch.Generator().manual_seed(0)
    a = torch.randn(10, 20, generator=g0, dtype=F64) / 10**0.5

    def draw(g, b=16):
        x = torch.randn(b, 20, generator=g, dtype=F64)
        x = x * (torch.rand(b, 20, generator=g, dtype=F64) < 0.15)
        return x @ a.T, x

    val = draw(torch.Generator().manual_seed(5), 32)
    model = LAMP(MatrixOperator(a), 4, lam=0.05, scale_init=0.95)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hist = fit_layerwise(model, draw, val, lr=0.05, max_steps=40, val_every=10, patience=20)
    secured = max((s["layer"] for s in hist.stages if s["monotone"]), default=1)
    curve = hist.curve_db
    assert all(curve[j] <= curve[j - 1] for j in range(1, secured))


def test_clear_errors_for_non_numeric_constructor_arguments_and_unbatched_y():
    import numpy as np

    from unrollsci.unrolled import LISTA, LISTACP, error_decomposition

    a, y, x = _problem()
    op = MatrixOperator(a)
    with pytest.raises(TypeError, match="'ss_rate' to be a number"):
        LISTACP(op, 2, lam=0.1, ss_rate="0.01")
    with pytest.raises(TypeError, match="'decay' to be a number"):
        LAMP(op, 2, lam=0.1, decay=None)
    LISTACP(op, 2, lam=0.1, ss_rate=np.float32(0.01))  # numpy numbers are numbers
    with pytest.raises(ValueError, match="'y'"):
        error_decomposition(LISTA(op, 2, lam=0.1), y[0], x[:1])
