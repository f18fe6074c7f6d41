"""Audit of 16 Dec, UnrolledAnalysisFISTA / haar_shrink: operator norms out of the dtype's
range (D1), the dtype of operators holding bool or index buffers (D2), what FISTA with
haar_shrink solves (D3, docs), singular warm-start normal equations (D4), warm_start on
non-finite images (D5), late errors of ``bench deblur`` (D6) and smaller input checks (D7)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from unrollsci import solvers
from unrollsci.operators import Convolution, Mask, ReshapeOperator
from unrollsci.unrolled import UnrolledAnalysisFISTA, UnrolledFISTA, haar_shrink

F64 = torch.float64


def _blur(h: int, w: int, dtype: torch.dtype = F64, scale: float = 1.0) -> Convolution:
    k = torch.tensor([[0.0, 0.1, 0.0], [0.1, 0.6, 0.1], [0.0, 0.1, 0.0]], dtype=F64) * scale
    return Convolution(k.to(dtype), (h, w))


def _images(n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, h, w, generator=torch.Generator().manual_seed(seed), dtype=F64)


# -- D1: ||A||^2 outside the dtype's range --------------------------------------------------


@pytest.mark.parametrize(
    ("dtype", "scale"), [(torch.float32, 1e-20), (torch.float32, 1e20), (F64, 1e-170), (F64, 1e160)]
)
def test_operator_norm_squared_out_of_range_is_a_clear_error(dtype, scale):
    """float32: the step 1/||A||^2 was Inf (or subnormal) and the output all NaN, silently;
    float64: a nonzero operator was called zero, or a bare OverflowError."""
    op = _blur(8, 8, dtype, scale)
    assert op.norm() > 0  # not a zero operator
    with pytest.raises(ValueError, match=r"\|\|A\|\|\^2 within the (normal|float) range"):
        UnrolledAnalysisFISTA(op, 3, lam=0.01, dtype=dtype)
    if dtype == F64:  # the flattened operator in a lasso model: the same rule
        flat = ReshapeOperator((8, 8), (64,)) @ op @ ReshapeOperator((64,), (8, 8))
        with pytest.raises(ValueError, match=r"\|\|A\|\|\^2 within the float range.*Rescale"):
            UnrolledFISTA(flat, 3, lam=0.01)


@pytest.mark.parametrize(("dtype", "scale"), [(torch.float32, 1e-15), (F64, 1e-100)])
def test_small_operator_within_range_gives_the_rescaled_models_output(dtype, scale):
    """(c A, c y, c^2 lam) has the step 1/(c^2 L) and threshold lam / L: the same output."""
    x = _images(2, 8, 8).to(dtype)
    ref_op, op = _blur(8, 8, dtype), _blur(8, 8, dtype, scale)
    ref = UnrolledAnalysisFISTA(ref_op, 3, lam=0.05, dtype=dtype)(ref_op(x))
    out = UnrolledAnalysisFISTA(op, 3, lam=0.05 * scale**2, dtype=dtype)(op(x))
    torch.testing.assert_close(out, ref, rtol=1e-4 if dtype == torch.float32 else 1e-10, atol=0)


def test_zero_operator_is_still_called_zero():
    zero = Convolution(torch.zeros(3, 3, dtype=F64), (6, 6))
    with pytest.raises(ValueError, match="operator is zero"):
        UnrolledAnalysisFISTA(zero, 2)
    flat = ReshapeOperator((6, 6), (36,)) @ zero @ ReshapeOperator((36,), (6, 6))
    with pytest.raises(ValueError, match="operator is zero"):
        UnrolledFISTA(flat, 2)


# -- D2: LinearOperator.dtype skips bool and integer buffers ---------------------------------


@pytest.mark.parametrize("kernel_dtype", [torch.float32, F64])
def test_operator_dtype_is_that_of_its_floating_tensors(kernel_dtype):
    blur = _blur(8, 8, kernel_dtype)
    pattern = torch.rand(8, 8, generator=torch.Generator().manual_seed(0)) > 0.3
    mask, sub = Mask(pattern), Mask(pattern, subsample=True)
    assert mask.dtype is None and sub.dtype is None  # nothing floating: follows the input
    for op in (mask @ blur, blur @ mask, mask + blur, sub @ blur):
        assert op.dtype == kernel_dtype  # was torch.bool for the mask first
    model = UnrolledAnalysisFISTA(mask @ blur, 3)
    assert model.dtype == kernel_dtype
    x = _images(2, 8, 8).to(kernel_dtype)
    ref = UnrolledAnalysisFISTA(mask @ blur, 3, dtype=kernel_dtype)
    torch.testing.assert_close(model((mask @ blur)(x)), ref((mask @ blur)(x)), rtol=0, atol=0)
    flat = ReshapeOperator((8, 8), (64,)) @ mask @ blur @ ReshapeOperator((64,), (8, 8))
    assert UnrolledFISTA(flat, 2).dtype == kernel_dtype


# -- D3: what FISTA with haar_shrink solves (documentation) ---------------------------------


def _haar_matrix(h: int, w: int) -> torch.Tensor:
    """The undecimated 2x2 Haar analysis ``W`` ((4 h w) x (h w)), circular, built entry by
    entry: band ``j`` at pixel ``(r, q)`` is ``sum_ab f_j[a, b] x[(r + a) % h, (q + b) % w]``."""
    lo = torch.tensor([1.0, 1.0], dtype=F64) / 2**0.5
    hi = torch.tensor([1.0, -1.0], dtype=F64) / 2**0.5
    filters = [torch.outer(a, b) / 2 for a in (lo, hi) for b in (lo, hi)]
    m = torch.zeros(4, h, w, h, w, dtype=F64)
    for j, f in enumerate(filters):
        for r in range(h):
            for q in range(w):
                for a in range(2):
                    for b in range(2):
                        m[j, r, q, (r + a) % h, (q + b) % w] += f[a, b]
    return m.reshape(4 * h * w, h * w)


def test_haar_fista_fixed_point_is_the_documented_lifted_problem():
    """docs/unrolled.md: FISTA at a fixed step s with haar_shrink(., lam s) converges to
    x = W^T c, c minimizing 0.5 ||A W^T c - y||^2 + lam ||D c||_1 + ||(I - W W^T) c||^2 / (2s);
    the point depends on s. Reference: accelerated proximal gradient on that problem in c."""
    h = w = 6
    n = h * w
    wm = _haar_matrix(h, w)
    torch.testing.assert_close(wm.T @ wm, torch.eye(n, dtype=F64), rtol=0, atol=1e-14)
    detail = torch.arange(4 * n) >= n  # bands 1..3

    def soft_d(c: torch.Tensor, t: float) -> torch.Tensor:
        return torch.where(detail, torch.sign(c) * (c.abs() - t).clamp_min(0), c)

    v = torch.randn(3, h, w, generator=torch.Generator().manual_seed(1), dtype=F64)
    want = (soft_d(v.reshape(3, n) @ wm.T, 0.3) @ wm).reshape(3, h, w)
    torch.testing.assert_close(haar_shrink(v, 0.3), want, rtol=0, atol=1e-13)

    op = _blur(h, w)
    a = torch.stack([op(e.reshape(1, h, w)).reshape(-1) for e in torch.eye(n, dtype=F64)], 1)
    g = torch.Generator().manual_seed(2)
    x0 = (torch.rand(2, h, w, generator=g, dtype=F64) > 0.5).to(F64)
    y = (op(x0) + 0.05 * torch.randn(2, h, w, generator=g, dtype=F64)).reshape(2, n)
    lam, lip = 0.05, float(torch.linalg.matrix_norm(a, ord=2)) ** 2
    b, proj = a @ wm.T, wm @ wm.T
    points = []
    for s in (1.0 / lip, 0.5 / lip):
        # image-space FISTA with the prox haar_shrink(., lam s)
        xk = xp = torch.zeros(2, n, dtype=F64)
        t = 1.0
        for _ in range(3000):
            t_new = (1 + (1 + 4 * t * t) ** 0.5) / 2
            z = xk + (t - 1) / t_new * (xk - xp)
            u = z - s * ((z @ a.T - y) @ a)
            xp, xk = xk, haar_shrink(u.reshape(2, h, w), lam * s).reshape(2, n)
            t = t_new
        # the lifted problem in c
        hess = b.T @ b + (torch.eye(4 * n, dtype=F64) - proj) / s
        big = float(torch.linalg.eigvalsh(hess).max())
        c = cp = torch.zeros(2, 4 * n, dtype=F64)
        t = 1.0
        for _ in range(6000):
            t_new = (1 + (1 + 4 * t * t) ** 0.5) / 2
            z = c + (t - 1) / t_new * (c - cp)
            grad = (z @ b.T - y) @ b + (z - z @ proj) / s
            cp, c = c, soft_d(z - grad / big, lam / big)
            t = t_new
        torch.testing.assert_close(xk, c @ wm, rtol=0, atol=1e-10)
        points.append(xk)
    # the library's fista at the default step 1/||A||^2 reaches the first point
    flat = ReshapeOperator((h, w), (n,)) @ op @ ReshapeOperator((n,), (h, w))
    sol = solvers.fista(
        flat, y, lam, max_iter=5000, tol=1e-12,
        prox=lambda u, th: haar_shrink(u.reshape(-1, h, w), th).reshape(u.shape),
    )  # fmt: skip
    torch.testing.assert_close(sol.x, points[0], rtol=0, atol=1e-9)
    assert float((points[0] - points[1]).norm() / points[0].norm()) > 1e-3  # step-dependent


# -- D4: warm_start on singular normal equations ---------------------------------------------


@pytest.mark.parametrize(("count", "p"), [(1, 9), (5, 13)])
def test_warm_start_singular_normal_equations_reach_the_least_squares_minimum(count, p):
    """36 pixels for 81 taps, or taps that never reach a 6x6 image: the first step filter
    is numpy's (SVD) minimum-norm least-squares filter, and reaches its error (before: 0.30
    against 4e-30, and 0.33 (the zero filter) against 0.010)."""
    g = torch.Generator().manual_seed(0)
    op = Convolution(torch.ones(3, 3, dtype=F64) / 9, (6, 6))
    x = torch.rand(count, 6, 6, generator=g, dtype=F64)
    y = op(x) + 0.01 * torch.randn(count, 6, 6, generator=g, dtype=F64)
    model = UnrolledAnalysisFISTA(op, 1, precond_size=p)
    mse = model.warm_start(y, x, thresholds=[0.0])[0]
    r = op.rmv(-y)
    cols = F.unfold(r[:, None], p, padding=p // 2).transpose(1, 2).reshape(-1, p * p).numpy()
    target = (-x).reshape(-1).numpy()
    taps = np.linalg.lstsq(cols, target, rcond=None)[0]
    best = float(np.mean((cols @ taps - target) ** 2))
    assert mse <= best + 1e-12 * float(np.mean(target**2))
    got = model.step[0].detach().reshape(-1).numpy()
    np.testing.assert_allclose(got, taps, rtol=0, atol=1e-8 * np.abs(taps).max())


# -- D5: warm_start on non-finite images changes nothing -------------------------------------


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_warm_start_nonfinite_images_are_refused_before_any_change(bad):
    op = _blur(6, 6)
    x = _images(4, 6, 6)
    y = op(x)
    model = UnrolledAnalysisFISTA(op, 3, precond_size=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x[1, 2, 3] = bad
    with pytest.raises(ValueError, match="Expected 'x' to be finite"):
        model.warm_start(y, x)
    for bad_grid in ([0.1, float("nan")], ["a"], 0.1):
        with pytest.raises((TypeError, ValueError), match="thresholds"):
            model.warm_start(y, _images(4, 6, 6), thresholds=bad_grid)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # momentum was zeroed, the step set, before


# -- D6: bench deblur option values ----------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value"), [("--precond-size", "4"), ("--train-size", "2")]
)  # fmt: skip
def test_bench_deblur_bad_size_is_a_usage_error_before_any_work(
    option, value, tmp_path, cli_status, monkeypatch, capsys
):
    import unrollsci.bench.deblur as deblur

    def work(*args, **kwargs):
        raise AssertionError("the benchmark started its work")

    monkeypatch.setattr(deblur, "run", work)
    assert cli_status(["bench", "deblur", "--quick", "--out", str(tmp_path), option, value]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert "error:" in last and f"argument {option}" in last, last


# -- D7: smaller input checks ----------------------------------------------------------------


def test_haar_shrink_refuses_complex_images():
    x = _images(1, 4, 4)
    with pytest.raises(TypeError, match="'x' to be real"):
        haar_shrink(x.to(torch.complex128), 0.1)


def test_warm_start_thresholds_must_be_a_sequence_of_numbers():
    op = _blur(6, 6)
    x = _images(4, 6, 6)
    model = UnrolledAnalysisFISTA(op, 2)
    with pytest.raises(TypeError, match="'thresholds' to be a non-empty sequence.*float 0.1"):
        model.warm_start(op(x), x, thresholds=0.1)
    with pytest.raises(TypeError, match=r"'thresholds\[0\]' to be a real number \(got str\)"):
        model.warm_start(op(x), x, thresholds=["a"])
    with pytest.raises(ValueError, match="'thresholds' to hold at least one value"):
        model.warm_start(op(x), x, thresholds=[])
    ref = UnrolledAnalysisFISTA(op, 2).warm_start(op(x), x, thresholds=[0.01, 0.1])
    for grid in ((0.1, 0.01), np.array([0.01, 0.1]), torch.tensor([0.1, 0.01])):
        assert UnrolledAnalysisFISTA(op, 2).warm_start(op(x), x, thresholds=grid) == ref


@pytest.mark.parametrize("cls", [UnrolledAnalysisFISTA, UnrolledFISTA])
def test_lam_of_a_wrong_type_is_a_clear_type_error(cls):
    op = _blur(6, 6)
    if cls is UnrolledFISTA:
        op = ReshapeOperator((6, 6), (36,)) @ op @ ReshapeOperator((36,), (6, 6))
    with pytest.raises(TypeError, match=r"Expected 'lam' to be a real number \(got str\)"):
        cls(op, 2, lam="a")
    assert cls(op, 2, lam=np.float32(0.25)).lam == 0.25


@pytest.mark.parametrize("convert", ["half", "bfloat16"])
def test_model_converted_to_half_after_construction_is_refused(convert):
    op = _blur(6, 6)
    x = _images(2, 6, 6)
    model = getattr(UnrolledAnalysisFISTA(op, 2), convert)()
    y = op(x).to(model.dtype)
    with pytest.raises(TypeError, match="converted after construction"):
        model(y)
    with pytest.raises(TypeError, match="converted after construction"):
        model.warm_start(y, x.to(model.dtype))
    model.double()  # converted back, it runs: a float64 model with the rounded parameters
    ref = UnrolledAnalysisFISTA(op, 2)
    ref.load_state_dict(model.state_dict())
    torch.testing.assert_close(model(op(x)), ref(op(x)), rtol=0, atol=0)
