"""UnrolledAnalysisFISTA and haar_shrink: untrained = FISTA, Parseval frame, exact
adjoints, gradients, size independence, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unrollsci import ConvergenceWarning, DtypeMismatchError, solvers
from unrollsci.operators import Convolution, MatrixOperator, ReshapeOperator
from unrollsci.unrolled import UnrolledAnalysisFISTA, haar_shrink
from unrollsci.unrolled._deblur import _analysis, _synthesis

F64 = torch.float64


def _blur(h: int, w: int) -> Convolution:
    g = torch.Generator().manual_seed(1)
    k = torch.rand(5, 5, generator=g, dtype=F64)
    return Convolution(k / k.sum(), (h, w))


def _haar_dense(h: int, w: int) -> np.ndarray:
    """The undecimated 2x2 Haar analysis as a dense (4 h w, h w) matrix, built entry by
    entry: band (a, b) at pixel (i, j) is sum_{p,q in 0,1} f_a[p] f_b[q] x[i+p, j+q]
    (indices mod h, w), f_0 = (1, 1)/2, f_1 = (1, -1)/2 (scaled to a Parseval frame)."""
    f = [np.array([1.0, 1.0]) / 2, np.array([1.0, -1.0]) / 2]
    rows = []
    for a in range(2):
        for b in range(2):
            for i in range(h):
                for j in range(w):
                    r = np.zeros((h, w))
                    for p in range(2):
                        for q in range(2):
                            r[(i + p) % h, (j + q) % w] += f[a][p] * f[b][q]
                    rows.append(r.ravel())
    return np.array(rows)


def test_haar_frame_is_parseval_and_shrink_matches_dense_reference():
    h, w = 5, 6
    mat = _haar_dense(h, w)
    np.testing.assert_allclose(mat.T @ mat, np.eye(h * w), atol=1e-12)
    x = np.random.default_rng(0).standard_normal((2, h, w))
    th = np.array([0.3, 0.1])
    out = haar_shrink(torch.tensor(x), torch.tensor(th)).numpy()
    for b in range(2):
        c = mat @ x[b].ravel()
        shrunk = np.sign(c) * np.maximum(np.abs(c) - th[b], 0)
        shrunk[: h * w] = c[: h * w]  # the low-pass band is kept
        np.testing.assert_allclose(out[b].ravel(), mat.T @ shrunk, atol=1e-12)
    np.testing.assert_allclose(haar_shrink(torch.tensor(x), 0.0).numpy(), x, atol=1e-12)


def test_haar_shrink_is_firmly_nonexpansive():
    # the characterisation of a prox of a convex function (with being a gradient field):
    # <P u - P v, u - v> >= ||P u - P v||^2
    g = torch.Generator().manual_seed(2)
    u, v = torch.randn(2, 16, 8, 8, generator=g, dtype=F64)
    pu, pv = haar_shrink(u, 0.4), haar_shrink(v, 0.4)
    lhs = ((pu - pv) * (u - v)).sum(dim=(1, 2))
    assert bool((lhs >= (pu - pv).pow(2).sum(dim=(1, 2)) - 1e-12).all())


@pytest.mark.parametrize("size", [2, 3, 4])
def test_synthesis_is_the_adjoint_of_analysis(size):
    g = torch.Generator().manual_seed(size)
    w = torch.randn(5, 1, size, size, generator=g, dtype=F64)
    x = torch.randn(3, 7, 6, generator=g, dtype=F64)
    c = torch.randn(3, 5, 7, 6, generator=g, dtype=F64)
    lhs = (_analysis(x, w) * c).sum()
    rhs = (x * _synthesis(c, w)).sum()
    assert abs(float(lhs - rhs)) <= 1e-12 * float(lhs.abs() + rhs.abs())


@pytest.mark.parametrize(("filter_size", "precond_size"), [(2, 1), (3, 1), (3, 3), (4, 5)])
def test_untrained_equals_fista_with_haar_shrink(filter_size, precond_size):
    h, w = 10, 9
    op = _blur(h, w)
    model = UnrolledAnalysisFISTA(
        op, 7, lam=0.05, channels=6, filter_size=filter_size, precond_size=precond_size
    )
    assert model.dtype == F64
    y = op(torch.rand(3, h, w, generator=torch.Generator().manual_seed(0), dtype=F64))
    flat = ReshapeOperator((h, w), (h * w,)) @ op @ ReshapeOperator((h * w,), (h, w))

    def prox(v, t):
        return haar_shrink(v.reshape(-1, h, w), t).reshape(v.shape)

    with pytest.warns(ConvergenceWarning):  # 7 iterations, by design
        sol = solvers.fista(
            flat, y.reshape(3, -1), 0.05, max_iter=7, tol=0, restart=False, prox=prox
        )
    torch.testing.assert_close(model(y).reshape(3, -1), sol.x, rtol=0, atol=1e-12)


def test_gradcheck_parameters_and_data():
    op = _blur(6, 6)
    model = UnrolledAnalysisFISTA(op, 2, lam=0.05, channels=5, precond_size=3)
    with torch.no_grad():  # away from the kinks and the zero synthesis filters
        model.synthesis.add_(0.1)
        model.threshold.fill_(0.02)
    y = op(torch.rand(2, 6, 6, generator=torch.Generator().manual_seed(3), dtype=F64))
    y.requires_grad_(True)
    names = ["analysis", "synthesis", "step", "momentum"]
    params = [getattr(model, n) for n in names]

    assert torch.autograd.gradcheck(lambda yy: model(yy), (y,))
    out = model(y.detach()).pow(2).sum()
    grads = torch.autograd.grad(out, params)
    # finite differences on one entry of each parameter
    for p, gr in zip(params, grads, strict=True):
        idx = tuple(0 for _ in p.shape)
        eps = 1e-6
        with torch.no_grad():
            p[idx] += eps
            up = model(y.detach()).pow(2).sum()
            p[idx] -= 2 * eps
            down = model(y.detach()).pow(2).sum()
            p[idx] += eps
        assert float(gr[idx]) == pytest.approx(float((up - down) / (2 * eps)), rel=1e-4, abs=1e-8)


def test_for_operator_keeps_the_filters_and_applies_to_larger_images():
    small = UnrolledAnalysisFISTA(_blur(8, 8), 3, lam=0.05, precond_size=3)
    with torch.no_grad():
        small.analysis.mul_(1.5)
    small.active_layers = 2
    big = small.for_operator(_blur(20, 24))
    for name, p in small.named_parameters():
        torch.testing.assert_close(getattr(big, name), p, rtol=0, atol=0)
    assert big.active_layers == 2
    out, xs = big(torch.rand(2, 20, 24, dtype=F64), return_all=True)
    assert out.shape == (2, 20, 24) and len(xs) == 2
    assert small(torch.rand(8, 8, dtype=F64)).shape == (8, 8)  # one image, unbatched


def test_bad_input():
    op = _blur(8, 8)
    with pytest.raises(ValueError, match="in_shape \\(H, W\\)"):
        UnrolledAnalysisFISTA(MatrixOperator(torch.randn(4, 6)), 2)
    with pytest.raises(ValueError, match="'channels' >= 4"):
        UnrolledAnalysisFISTA(op, 2, channels=3)
    with pytest.raises(ValueError, match="odd precond_size"):
        UnrolledAnalysisFISTA(op, 2, precond_size=4)
    with pytest.raises(TypeError, match="'num_layers' to be an int"):
        UnrolledAnalysisFISTA(op, 2.0)
    with pytest.raises(ValueError, match="'lam' > 0"):
        UnrolledAnalysisFISTA(op, 2, lam=-1.0)
    model = UnrolledAnalysisFISTA(op, 2)
    with pytest.raises(ValueError, match="of shape \\(batch, 8, 8\\)"):
        model(torch.rand(2, 8, 9, dtype=F64))
    with pytest.raises(DtypeMismatchError, match="float64"):
        model(torch.rand(2, 8, 8))
    with pytest.raises(ValueError, match="1 or 2 entries"):
        haar_shrink(torch.rand(2, 4, 4), torch.ones(3))
    with pytest.raises(ValueError, match=">= 0"):
        haar_shrink(torch.rand(2, 4, 4), -0.1)


def test_checkpoint_round_trip(tmp_path):
    from unrollsci.train import load_checkpoint, save_checkpoint

    model = UnrolledAnalysisFISTA(_blur(8, 9), 3, channels=4, dtype=F64)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    y = torch.rand(2, 8, 9, dtype=F64)
    path = tmp_path / "deblur.pt"
    save_checkpoint(model, path)
    back = load_checkpoint(path)
    assert type(back) is UnrolledAnalysisFISTA
    torch.testing.assert_close(back(y), model(y), rtol=0, atol=1e-14)


def _shifted_columns(r: np.ndarray, p: int) -> np.ndarray:
    """Columns of the correlation ``(P * r)[i, j] = sum_ab P[a, b] r[i + a - p//2, j + b - p//2]``
    with zero padding, built by explicit shifts: ``(N h w, p p)``."""
    n, h, w = r.shape
    half = p // 2
    padded = np.zeros((n, h + 2 * half, w + 2 * half))
    padded[:, half : half + h, half : half + w] = r
    return np.stack(
        [padded[:, a : a + h, b : b + w].ravel() for a in range(p) for b in range(p)], axis=1
    )


def test_warm_start_first_step_filter_is_the_least_squares_filter():
    h, w, p = 7, 6, 3
    op = _blur(h, w)
    g = torch.Generator().manual_seed(5)
    x = torch.rand(5, h, w, generator=g, dtype=F64)
    y = op(x) + 0.01 * torch.randn(5, h, w, generator=g, dtype=F64)
    model = UnrolledAnalysisFISTA(op, 2, lam=0.01, precond_size=p, dtype=F64)
    model.warm_start(y, x)
    # layer 1: g = P * A^T y; least squares of g against x over the p^2 taps
    cols = _shifted_columns(op.rmv(y).numpy(), p)
    taps = np.linalg.lstsq(cols, x.numpy().ravel(), rcond=None)[0]
    np.testing.assert_allclose(model.step[0].detach().numpy().ravel(), taps, atol=1e-8)
    assert float(model.momentum.detach().abs().max()) == 0.0


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_warm_start_training_error_never_increases_and_matches_forward(dtype):
    h, w = 12, 10
    op = Convolution(torch.ones(3, 3, dtype=dtype) / 9, (h, w))
    g = torch.Generator().manual_seed(6)
    x = (torch.rand(6, h, w, generator=g, dtype=F64) > 0.5).to(dtype)
    y = op(x) + 0.02 * torch.randn(6, h, w, generator=g, dtype=F64).to(dtype)
    model = UnrolledAnalysisFISTA(op, 4, lam=0.01, precond_size=5, dtype=dtype)
    with torch.no_grad():
        untrained = float((model(y) - x).pow(2).mean())
    mse = model.warm_start(y, x, batch_size=4)
    assert len(mse) == 4
    assert all(b <= a * (1 + 1e-5) for a, b in zip(mse, mse[1:], strict=False))
    with torch.no_grad():
        _, xs = model(y, return_all=True)
    for k in range(4):
        err = float((xs[k] - x).pow(2).mean())
        assert err == pytest.approx(mse[k], rel=1e-4 if dtype == torch.float32 else 1e-10)
    assert mse[-1] < untrained


def test_warm_start_bad_input():
    op = _blur(6, 6)
    model = UnrolledAnalysisFISTA(op, 2, dtype=F64)
    x = torch.rand(3, 6, 6, dtype=F64)
    with pytest.raises(ValueError, match="match 'y'"):
        model.warm_start(op(x), x[:2])
    with pytest.raises(ValueError, match="thresholds"):
        model.warm_start(op(x), x, thresholds=[-1.0])
    with pytest.raises(ValueError, match="batch_size"):
        model.warm_start(op(x), x, batch_size=0)
