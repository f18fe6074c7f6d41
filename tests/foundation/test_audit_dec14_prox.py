"""Audit round dec14 ("dec14" names the round, not a date): proximal operators, losses and
the positive parameters of the unrolled models. ``nmse_db``'s NaN gradient at ``x == x*``
and its NaN for an Inf estimate, a NaN threshold zeroing the group prox, negative or NaN
number thresholds accepted by the elementwise prox, the KKT residual reading 0 for small
data, ``lasso_kkt_residual`` refusing ``prox=`` specs, softplus underflowing to 0 (ADMM-Net
NaN), and smaller dtype / label / complex inconsistencies. References: dense float64
numpy and central finite differences."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from unrollsci.losses import kkt_residual, nmse_db
from unrollsci.operators import MatrixOperator
from unrollsci.prox import (
    Prox,
    group_soft_threshold,
    make_prox,
    nonnegative_soft_threshold,
    soft_threshold,
)
from unrollsci.solvers import ista, lasso_kkt_residual
from unrollsci.unrolled import ADMMNet, UnrolledLasso

F64 = torch.float64


def _np_soft(v: np.ndarray, t: float) -> np.ndarray:
    return np.sign(v) * np.maximum(np.abs(v) - t, 0.0)


def _np_group(v: np.ndarray, t: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Block soft threshold of each row, a loop over rows and groups; ``t[i, g]``."""
    out = np.zeros_like(v)
    for i in range(v.shape[0]):
        for g in np.unique(labels):
            idx = labels == g
            nrm = np.linalg.norm(v[i, idx])
            if nrm > t[i, g]:
                out[i, idx] = v[i, idx] * (1 - t[i, g] / nrm)
    return out


def _lasso_data(seed: int = 0, m: int = 6, n: int = 9, batch: int = 2):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((m, n)) / math.sqrt(m)
    return a, rng.standard_normal((batch, n)), rng.standard_normal((batch, m))


def _np_kkt(a, x, y, lam, t, prox=_np_soft) -> np.ndarray:
    """``||x - prox(x - t A^T (A x - y), t lam)|| / t`` per row, float64 numpy."""
    v = x - t * (x @ a.T - y) @ a
    return np.linalg.norm(x - prox(v, t * lam), axis=-1) / t


# ------------------------------------------------- 1: nmse_db's gradient at x == x* == 0
def test_nmse_gradient_at_an_exact_zero_row_is_zero_not_nan():
    """A linear last layer with a zero measurement outputs exactly the zero target: -inf
    for that row, and a gradient of 0 through it (it read NaN, also with the row left out
    of the loss, and NaN spread to every weight). The other rows' gradient matches central
    finite differences; a batch of exact rows ("mean") has gradient 0."""
    rng = np.random.default_rng(1)
    w0 = rng.standard_normal((4, 3))
    y = np.vstack([np.zeros(4), rng.standard_normal((2, 4))])
    x_true = np.vstack([np.zeros(3), rng.standard_normal((2, 3))])
    w = torch.tensor(w0, requires_grad=True)
    out = nmse_db(torch.tensor(y) @ w, torch.tensor(x_true), reduction="none")
    assert out[0].item() == -math.inf
    (g,) = torch.autograd.grad(out[1:].sum(), w)

    def loss(wn: np.ndarray) -> float:
        e = y[1:] @ wn - x_true[1:]
        return float(np.sum(10 * np.log10((e**2).sum(-1) / (x_true[1:] ** 2).sum(-1))))

    fd = np.zeros_like(w0)
    h = 1e-6
    for i in np.ndindex(w0.shape):
        d = np.zeros_like(w0)
        d[i] = h
        fd[i] = (loss(w0 + d) - loss(w0 - d)) / (2 * h)
    np.testing.assert_allclose(g.numpy(), fd, rtol=1e-6, atol=1e-8)
    for reduction in ("mean", "none"):
        w = torch.tensor(w0, requires_grad=True)
        exact = nmse_db(
            torch.zeros(2, 4, dtype=F64) @ w, torch.zeros(2, 3, dtype=F64), reduction=reduction
        )
        (g,) = torch.autograd.grad(exact.sum(), w)
        assert (exact == -math.inf).all() and torch.equal(g, torch.zeros_like(g))


# --------------------------------------------- 2: a NaN tensor threshold in the group prox
def test_group_prox_nan_tensor_threshold_gives_nan_not_zeros():
    x = torch.tensor([[3.0, 4.0, 1.0, 2.0], [0.3, 0.4, 2.0, 1.0]], dtype=F64)
    t = torch.tensor([[math.nan], [0.5]], dtype=F64)
    for out in (
        group_soft_threshold(x, t, group_size=2),
        group_soft_threshold(x, t, groups=torch.tensor([0, 0, 1, 1])),
        Prox("group", group_size=2)(x, t),
    ):
        assert out[0].isnan().all()  # as soft_threshold(x, NaN): NaN, not a silent 0
        ref = _np_group(x.numpy()[1:], np.full((1, 2), 0.5), np.array([0, 0, 1, 1]))
        np.testing.assert_allclose(out[1:].numpy(), ref, rtol=1e-15, atol=0)
    assert soft_threshold(x, t)[0].isnan().all()
    # the gradient with respect to x is NaN too (it read 0: a finite, wrong gradient)
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(group_soft_threshold(xr, t, group_size=2).sum(), xr)
    assert g[0].isnan().all() and torch.isfinite(g[1]).all()


# --------------------------------------- 3: number thresholds < 0 or NaN are not a prox
@pytest.mark.parametrize(
    "prox",
    [
        soft_threshold,
        nonnegative_soft_threshold,
        Prox("soft"),
        make_prox("nonneg"),
        make_prox({"kind": "box", "lower": 0.0, "upper": 1.0}),
    ],
    ids=["soft", "nonneg", "Prox-soft", "Prox-nonneg", "Prox-box"],
)
@pytest.mark.parametrize("t", [-1.0, -1, math.nan, -math.inf])
def test_elementwise_prox_refuses_negative_or_nan_number_threshold(prox, t):
    with pytest.raises(ValueError, match=r"Expected a threshold >= 0 \(got"):
        prox(torch.tensor([-2.0, 0.5, 3.0]), t)


def test_elementwise_prox_keeps_valid_number_thresholds():
    v = np.array([-2.0, 0.5, 3.0, 0.0])
    for t in (0, 0.0, 1.0, math.inf):
        got = soft_threshold(torch.tensor(v), t).numpy()
        np.testing.assert_array_equal(got, _np_soft(v, t))
        got = nonnegative_soft_threshold(torch.tensor(v), t).numpy()
        np.testing.assert_array_equal(got, np.maximum(v - t, 0.0))


# ---------------------------------------------------- 4: the KKT residual is scale-free
@pytest.mark.parametrize(
    ("dtype", "scales", "rtol"),
    [
        (F64, (1e-150, 1e-170, 1e-200, 1e-300), 1e-12),
        (torch.float32, (1e-18, 1e-25, 1e-30, 1e-36), 1e-5),
    ],
    ids=["float64", "float32"],
)
def test_kkt_residual_of_scaled_data_is_the_scaled_residual(dtype, scales, rtol):
    """``(A, s x, s y, s lam)`` has residual exactly ``s r``: no 0 at a non-minimizer where
    the squares underflow (it read 0 at 1e-170 in float64 and 1e-25 in float32)."""
    a, x, y = _lasso_data()
    lam, t = 0.1, 1.0 / np.linalg.norm(a, 2) ** 2
    ref = _np_kkt(a, x, y, lam, t)
    at = torch.tensor(a, dtype=dtype)
    for s in scales:
        xs, ys = torch.tensor(x * s, dtype=dtype), torch.tensor(y * s, dtype=dtype)
        for got in (
            kkt_residual(MatrixOperator(at), xs, ys, lam * s, step=t),
            lasso_kkt_residual(MatrixOperator(at), xs, ys, lam * s, t),
        ):
            np.testing.assert_allclose(got.double().numpy() / s, ref, rtol=rtol)


def test_kkt_residual_gradient_matches_finite_differences_at_every_scale():
    """The residual is 1-homogeneous in ``(x, y, lam)``, so its gradient in ``x`` at scale
    ``s`` equals the one at scale 1: compared with central differences of the numpy
    residual at scale 1, and a float64 gradcheck at scale 1."""
    a, x, y = _lasso_data(seed=2, batch=1)
    lam, t = 0.05, 1.0 / np.linalg.norm(a, 2) ** 2
    op = MatrixOperator(torch.tensor(a))
    fd = np.zeros_like(x)
    h = 1e-7
    for j in range(x.shape[1]):
        d = np.zeros_like(x)
        d[0, j] = h
        fd[0, j] = (_np_kkt(a, x + d, y, lam, t)[0] - _np_kkt(a, x - d, y, lam, t)[0]) / (2 * h)
    for s in (1.0, 1e-170, 1e-300):
        xs = torch.tensor(x * s, requires_grad=True)
        (g,) = torch.autograd.grad(
            kkt_residual(op, xs, torch.tensor(y * s), lam * s, step=t).sum(), xs
        )
        np.testing.assert_allclose(g.numpy(), fd, rtol=1e-6, atol=1e-9)
    yt = torch.tensor(y)
    assert torch.autograd.gradcheck(
        lambda z: kkt_residual(op, z, yt, lam, step=t), (torch.tensor(x, requires_grad=True),)
    )


# ------------------------------------------- 5: positive parameters and ADMM-Net's rho
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_positive_parameters_stay_positive_for_any_raw_value(dtype):
    raw = torch.tensor([-1e6, -800.0, -750.0, -120.0, -105.0, -50.0, -5.0, 0.0, 3.0, 50.0])
    raw = raw.to(dtype)
    pos = UnrolledLasso._pos(raw, raw)
    assert (pos > 0).all() and pos.dtype == dtype
    # the same bits as softplus where softplus is not tiny: every ordinary raw value
    ref = np.logaddexp(0.0, raw.double().numpy())
    ordinary = raw.double().numpy() >= (-50.0 if dtype == torch.float32 else -600.0)
    np.testing.assert_array_equal(
        pos.numpy()[ordinary], torch.nn.functional.softplus(raw).numpy()[ordinary]
    )
    np.testing.assert_allclose(pos.double().numpy()[ordinary], ref[ordinary], rtol=1e-6)


@pytest.mark.parametrize("x_update", ["exact", "cg"])
@pytest.mark.parametrize(("dtype", "raw"), [(torch.float32, -120.0), (F64, -800.0)])
def test_admmnet_penalty_underflow_keeps_the_x_update_nonsingular(dtype, raw, x_update):
    """softplus(raw) is 0 here: the exact x-update (A^T A + 0 I)^-1 with m < n gave NaN
    outputs silently. The penalties are floored at eps ||A||^2 (||A|| from numpy)."""
    g = torch.Generator().manual_seed(0)
    a = (torch.randn(10, 20, generator=g, dtype=F64) / 10**0.5).to(dtype)
    y = torch.randn(3, 10, generator=g, dtype=F64).to(dtype)
    net = ADMMNet(MatrixOperator(a), 3, lam=0.1, x_update=x_update)
    with torch.no_grad():
        net.rho.fill_(raw)
        net.rho[1] = 0.0  # one ordinary layer
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = net(y)
    assert torch.isfinite(out).all()
    norm_sq = np.linalg.norm(a.double().numpy(), 2) ** 2
    floor = torch.finfo(dtype).eps * norm_sq
    rho = net.penalties().detach().double().numpy()
    np.testing.assert_allclose(rho[[0, 2]], floor, rtol=1e-5)
    assert rho[1] == pytest.approx(math.log(2.0), rel=1e-7)


def test_admmnet_ordinary_penalties_unchanged_and_match_numpy_admm():
    """Above the floor the penalties are softplus(raw) bit for bit, and the model is ADMM
    with those penalties (numpy float64 reference)."""
    a, _, y = _lasso_data(seed=3, m=8, n=12, batch=2)
    net = ADMMNet(MatrixOperator(torch.tensor(a)), 4, lam=0.1)
    with torch.no_grad():
        net.rho.copy_(torch.tensor([-3.0, 0.5, -1.0, 2.0]))
        net.theta.copy_(torch.tensor([-2.0, -1.0, -4.0, -3.0]))
    rho_t = torch.nn.functional.softplus(net.rho)
    assert torch.equal(net.penalties(), rho_t)
    rho, theta = (
        np.logaddexp(0.0, net.rho.detach().numpy()),
        np.logaddexp(0.0, net.theta.detach().numpy()),
    )
    z = np.zeros((2, 12))
    u = np.zeros_like(z)
    for k in range(4):
        x = np.linalg.solve(a.T @ a + rho[k] * np.eye(12), (y @ a + rho[k] * (z - u)).T).T
        z = _np_soft(x + u, theta[k])
        u = u + x - z
    out = net(torch.tensor(y)).detach().numpy()
    np.testing.assert_allclose(out, z, rtol=1e-10, atol=1e-12)


# ------------------------------------------ 6: lasso_kkt_residual takes the prox= specs
@pytest.mark.parametrize(
    "spec",
    [
        None,
        "soft",
        "nonneg",
        {"kind": "group", "group_size": 3},
        {"kind": "box", "lower": -0.2, "upper": 0.3},
    ],
    ids=["None", "soft", "nonneg", "group", "box"],
)
def test_lasso_kkt_residual_takes_the_solvers_prox_specs(spec):
    a, x, y = _lasso_data(seed=4)
    lam, t = 0.2, 0.5 / np.linalg.norm(a, 2) ** 2
    labels = np.arange(9) // 3

    def np_prox(v, tt):
        if spec in (None, "soft"):
            return _np_soft(v, tt)
        if spec == "nonneg":
            return np.maximum(v - tt, 0.0)
        if spec["kind"] == "group":
            return _np_group(v, np.full((v.shape[0], 3), tt), labels)
        return np.clip(_np_soft(v, tt), spec["lower"], spec["upper"])

    op = MatrixOperator(torch.tensor(a))
    got = lasso_kkt_residual(op, torch.tensor(x), torch.tensor(y), lam, t, prox=spec)
    np.testing.assert_allclose(got.numpy(), _np_kkt(a, x, y, lam, t, np_prox), rtol=1e-12)
    # and it is ~0 at the solvers' solution for the same spec
    sol = ista(op, torch.tensor(y), lam, prox=spec, tol=1e-12, max_iter=20000)
    res = lasso_kkt_residual(op, sol.x, torch.tensor(y), lam, t, prox=spec)
    assert float(res.max()) < 1e-8
    with pytest.raises(ValueError, match="group_size dividing"):
        lasso_kkt_residual(
            op, torch.tensor(x), torch.tensor(y), lam, t, prox={"kind": "group", "group_size": 4}
        )


# ------------------------------------------------ 7: an Inf estimate scores +inf dB
@pytest.mark.parametrize("bad", [math.inf, -math.inf])
def test_nmse_inf_estimate_scores_plus_inf(bad):
    x_true = np.array([[1.0, 2.0, 0.5], [0.3, -1.0, 2.0], [0.0, 0.0, 0.0]])
    x = x_true + 0.1
    x[0, 1] = bad
    x[2, 0] = bad
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        e, r = ((x - x_true) ** 2).sum(-1), (x_true**2).sum(-1)
        ref_none = 10 * np.log10(e / r)
        ref_mean = 10 * np.log10(e.sum() / r.sum())
    got = nmse_db(torch.tensor(x), torch.tensor(x_true), reduction="none").numpy()
    np.testing.assert_array_equal(got, ref_none)  # [inf, finite, inf]
    assert got[0] == math.inf and np.isfinite(got[1])
    assert nmse_db(torch.tensor(x), torch.tensor(x_true)).item() == ref_mean == math.inf
    x[0, 2] = math.nan  # NaN and Inf in one row: NaN (a NaN estimate)
    got = nmse_db(
        torch.tensor(x, dtype=torch.float32),
        torch.tensor(x_true, dtype=torch.float32),
        reduction="none",
    )
    assert math.isnan(got[0]) and got[2].item() == math.inf


# ------------------------------------------------- 8a: tensor thresholds keep x's dtype
def test_elementwise_prox_keeps_x_dtype_with_a_float64_threshold():
    rng = np.random.default_rng(5)
    v = rng.standard_normal((2, 5))
    t = np.array([[0.3], [0.7]])
    x32, t64 = torch.tensor(v, dtype=torch.float32), torch.tensor(t)
    for fn, ref in (
        (soft_threshold, _np_soft(v, t)),
        (nonnegative_soft_threshold, np.maximum(v - t, 0.0)),
        (
            make_prox({"kind": "box", "lower": -0.5, "upper": 0.5}),
            np.clip(_np_soft(v, t), -0.5, 0.5),
        ),
    ):
        out = fn(x32, t64)
        assert out.dtype == torch.float32
        np.testing.assert_allclose(out.double().numpy(), ref, rtol=1e-6, atol=1e-7)
    # the gradient reaches the float64 threshold
    tr = t64.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(soft_threshold(x32, tr).sum(), tr)
    np.testing.assert_array_equal(g.numpy(), -(np.sign(v) * (np.abs(v) > t)).sum(-1, keepdims=True))


# ------------------------------------- 8b: per-group thresholds with gapped group labels
def test_group_prox_refuses_gapped_labels_with_a_per_group_threshold():
    v = torch.ones(2, 4, dtype=F64)
    thr = torch.tensor([[0.1, 0.2, 0.3, 0.4]], dtype=F64)  # thr[label]
    for labels, t in (([0, 1, 3, 3], thr), ([0, 1, 3], thr[:, :3])):
        with pytest.raises(ValueError, match="each used at least once"):
            group_soft_threshold(v[:, : len(labels)], t, groups=torch.tensor(labels))
    with pytest.raises(ValueError, match=r"shape \(\.\.\., 3\)"):
        group_soft_threshold(v[:, :3], thr, groups=torch.tensor([0, 2, 1]))
    # labels 0..G-1: entry g is label g's threshold (numpy loop); one threshold per row
    # still accepts gaps (the same threshold for every group)
    labels = np.array([2, 0, 1, 2])
    got = group_soft_threshold(v * 2, thr[:, :3], groups=torch.tensor(labels))
    ref = _np_group(2 * v.numpy(), np.repeat(thr[:, :3].numpy(), 2, 0), labels)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-15)
    got = group_soft_threshold(
        v * 2, torch.tensor([[0.5], [1.5]], dtype=F64), groups=torch.tensor([0, 1, 5, 5])
    )
    ref = _np_group(2 * v.numpy(), np.array([[0.5] * 3, [1.5] * 3]), np.array([0, 1, 2, 2]))
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-15)


# ------------------------------------------------------------ 8c: complex soft threshold
def test_soft_threshold_of_complex_shrinks_the_modulus():
    rng = np.random.default_rng(6)
    v = rng.standard_normal((3, 4)) + 1j * rng.standard_normal((3, 4))
    v[0, 0] = 0.0
    t = 0.8
    mod = np.abs(v)
    ref = np.where(mod > t, v / np.where(mod > 0, mod, 1.0) * (mod - t), 0.0)
    got = soft_threshold(torch.tensor(v), t)
    assert got.dtype == torch.complex128
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-14, atol=1e-15)
    same = group_soft_threshold(torch.tensor(v), t, group_size=1)
    np.testing.assert_allclose(got.numpy(), same.numpy(), rtol=1e-14, atol=1e-15)
    with pytest.raises(TypeError, match="real tensor"):
        nonnegative_soft_threshold(torch.tensor(v), t)


# ------------------------------------------------- 8d: kkt_residual refuses mixed dtypes
def test_kkt_residual_refuses_x_of_another_dtype_than_y():
    a, x, y = _lasso_data(seed=7)
    with pytest.raises(TypeError, match=r"Expected 'x' with the dtype and device of 'y'"):
        kkt_residual(torch.tensor(a), torch.tensor(x, dtype=torch.float32), torch.tensor(y), 0.1)
