"""Audit round dec16 ("dec16" names the round, not a date): solvers and prox. A zero group
whose norm read ``sqrt(tiny)`` (penalty and prox gradient wrong at small scales), ``amp``
discarding its warm start, ``cg`` breaking down on a warm start far larger than ``b``,
``lasso_objective`` / ``lasso_kkt_residual`` validating nothing, ``admm`` on half-precision
data, a 2-D ``groups`` tensor reported as a wrong length, and ``chebyshev_roots`` with a
non-float dtype. References: float64 numpy (closed forms, KKT conditions, finite
differences)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from unrollsci.operators import MatrixOperator
from unrollsci.prox import Prox, group_soft_threshold, make_prox
from unrollsci.solvers import (
    admm,
    amp,
    cg,
    chebyshev_roots,
    fista,
    ista,
    lasso_kkt_residual,
    lasso_objective,
)
from unrollsci.unrolled import BlockLISTA

F64 = torch.float64
# uneven groups, not consecutive: labels 0..3 of sizes 2, 3, 1, 2; groups 2 and 3 are zero
LABELS = torch.tensor([1, 0, 3, 1, 2, 0, 1, 3])
# labelled groups 0: (3, 4), 1: (1, 2, 0); consecutive pairs (1, 3), (0, 2), (0, 4), (0, 0)
UNIT = np.array([1.0, 3.0, 0.0, 2.0, 0.0, 4.0, 0.0, 0.0])
SCALES = [(F64, 1e-165), (torch.float32, 1e-20)]


def _penalty_ref(x: np.ndarray, labels: np.ndarray) -> float:
    """``sum_g ||x_g||`` in float64 (``x`` of size 1)."""
    return float(sum(np.linalg.norm(x[labels == g]) for g in np.unique(labels)))


# -------------------------------------------------------- 1: a zero group's norm is 0
@pytest.mark.parametrize(("dtype", "scale"), SCALES)
def test_zero_group_adds_nothing_to_the_penalty_at_small_scales(dtype, scale):
    """A zero group's norm was ``sqrt(tiny)`` (1.5e-154 in float64, 1.1e-19 in float32):
    at scale 1e-165 the penalty read 1.5e-154 instead of 5e-165."""
    x = torch.tensor(UNIT, dtype=F64).mul(scale).to(dtype)[None]
    want = scale * _penalty_ref(UNIT, LABELS.numpy())
    got = float(Prox("group", groups=LABELS).penalty(x))
    assert abs(got - want) <= 1e-6 * want
    # consecutive groups of 2 (the group_size path)
    want2 = scale * _penalty_ref(UNIT, np.arange(8) // 2)
    got2 = float(Prox("group", group_size=2).penalty(x))
    assert abs(got2 - want2) <= 1e-6 * want2
    z = torch.zeros(1, 8, dtype=dtype)
    assert float(Prox("group", groups=LABELS).penalty(z)) == 0.0


def _block_soft_jacobian(x: np.ndarray, t: float, labels: np.ndarray) -> np.ndarray:
    """The Jacobian of ``x_g max(1 - t / ||x_g||, 0)`` in closed form (0 on a group at or
    below the threshold: the output is 0 on a neighbourhood)."""
    jac = np.zeros((x.size, x.size))
    for g in np.unique(labels):
        idx = np.flatnonzero(labels == g)
        xg = x[idx]
        nrm = np.linalg.norm(xg)
        if nrm > t:
            block = (1 - t / nrm) * np.eye(idx.size) + t * np.outer(xg, xg) / nrm**3
            jac[np.ix_(idx, idx)] = block
    return jac


@pytest.mark.parametrize(("dtype", "scale"), SCALES)
@pytest.mark.parametrize("path", ["groups", "group_size"])
def test_zero_group_prox_jacobian_is_the_closed_form_at_small_scales(dtype, scale, path):
    """With a threshold below ``sqrt(tiny)`` the labelled prox counted a zero group as
    active: d out / d x read ``1 - t / sqrt(tiny)`` (0.908) there instead of 0. The Jacobian
    is scale-free: at ``(s x, s t)`` it is the closed form at ``(x, t)``."""
    kw = {"groups": LABELS} if path == "groups" else {"group_size": 2}
    labels = LABELS.numpy() if path == "groups" else np.arange(8) // 2
    t = 1.0
    x = torch.tensor(UNIT, dtype=F64).mul(scale).to(dtype)

    def fn(v: torch.Tensor) -> torch.Tensor:
        return group_soft_threshold(v[None], t * scale, **kw)[0]

    jac = torch.autograd.functional.jacobian(fn, x).double().numpy()
    ref = _block_soft_jacobian(UNIT, t, labels)
    tol = 1e-12 if dtype == F64 else 1e-5
    np.testing.assert_allclose(jac, ref, rtol=0, atol=tol)
    # central finite differences in the zero groups' entries (the output stays 0 there)
    if dtype == F64:
        zero = [j for j in range(8) if not np.any(UNIT[labels == labels[j]])]
        assert zero
        for j in zero:
            e = torch.zeros(8, dtype=F64)
            e[j] = 1e-3 * scale
            fd = ((fn(x + e) - fn(x - e)) / (2e-3 * scale)).numpy()
            np.testing.assert_allclose(jac[:, j], fd, rtol=0, atol=1e-9)


# ---------------------------------------------------------- 2: amp keeps its warm start
def _lasso_problem() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    m, n = 40, 80
    a = rng.standard_normal((m, n)) / np.sqrt(m)
    xt = np.zeros(n)
    xt[:5] = 1
    return a, a @ xt + 0.01 * rng.standard_normal(m)


def _kkt(a: np.ndarray, x: np.ndarray, y: np.ndarray, lam: float) -> float:
    """The lasso subgradient violation relative to ``||A^T y||`` (float64 numpy)."""
    g = a.T @ (y - a @ x)
    v = np.where(x != 0, np.abs(g - lam * np.sign(x)), np.maximum(np.abs(g) - lam, 0))
    return float(np.linalg.norm(v) / np.linalg.norm(a.T @ y))


def test_amp_warm_started_at_the_solution_stays_there():
    """The continuation threshold restarted at ``||A^T y||_inf`` whatever ``x0``: from the
    solution amp took 33 iterations (fista: 1), and one iteration returned x = 0."""
    a, y = _lasso_problem()
    op, yt, lam = MatrixOperator(torch.tensor(a)), torch.tensor(y), 0.1
    xs = fista(op, yt, lam, tol=1e-14).x
    assert _kkt(a, xs.numpy(), y, lam) < 1e-12  # the reference solution
    cold = amp(op, yt, lam)
    warm = amp(op, yt, lam, x0=xs)
    assert warm.converged and warm.iterations <= 2 < cold.iterations
    assert _kkt(a, warm.x.numpy(), y, lam) < 1e-10
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one iteration may not certify convergence
        one = amp(op, yt, lam, x0=xs, max_iter=1)
    assert float((one.x - xs).norm() / xs.norm()) < 1e-10


def test_amp_zero_warm_start_is_the_cold_start_and_a_poor_one_still_converges():
    """``x0 = 0`` gives the cold iteration bit for bit (the continuation from
    ``||A^T y||_inf``); a random start still ends at the lasso solution (KKT in numpy)."""
    a, y = _lasso_problem()
    op, yt, lam = MatrixOperator(torch.tensor(a)), torch.tensor(y), 0.1
    cold = amp(op, yt, lam)
    zero = amp(op, yt, lam, x0=torch.zeros(80, dtype=F64))
    # (the first residual differs: z's change from 0 to y, from y to y)
    assert torch.equal(cold.x, zero.x) and cold.residuals[1:] == zero.residuals[1:]
    rand = amp(
        op, yt, lam, x0=torch.randn(80, dtype=F64, generator=torch.Generator().manual_seed(3))
    )
    assert rand.converged and _kkt(a, rand.x.numpy(), y, lam) < 1e-9


# ------------------------------------------------- 3: cg from a warm start much larger than b
def _true_residual(a: np.ndarray, b: np.ndarray, x: np.ndarray) -> float:
    """``||b - A x|| / ||b||`` in float64, ``b`` and ``x`` rescaled together first."""
    c = np.abs(b).max()
    return float(np.linalg.norm(b / c - a @ (x / c)) / np.linalg.norm(b / c))


@pytest.mark.parametrize(
    ("dtype", "scale", "tol"),
    [(torch.float32, 1e-19, 1e-5), (torch.float32, 1e-20, 1e-5), (F64, 1e-160, 1e-10)],
)
def test_cg_converges_from_a_warm_start_far_larger_than_b(dtype, scale, tol):
    """The system was scaled by ``||b||`` only: ``r0 / ||b|| ~ 1e19`` overflowed ``p^T A p``
    and cg reported a breakdown of A ("p^T A p = inf is not finite") for a diagonal SPD A."""
    a = torch.diag(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0], dtype=dtype))
    b = torch.ones(5, dtype=dtype) * scale
    sol = cg(a, b, x0=torch.ones(5, dtype=dtype), tol=tol)
    assert sol.converged
    res = _true_residual(a.double().numpy(), b.double().numpy(), sol.x.double().numpy())
    assert res <= 2 * tol


@pytest.mark.parametrize(
    ("dtype", "scale", "tol"),
    [(torch.float32, 1e-15, 1e-5), (torch.float32, 1e-30, 1e-5), (F64, 1e-30, 1e-10)],
)
def test_cg_warm_start_on_a_dense_spd_system_meets_its_tolerance(dtype, scale, tol):
    """A random SPD system (condition 10) and a random start of size 1 for a b of size
    ``scale``: converged, with the true residual (float64) within the tolerance."""
    rng = np.random.default_rng(1)
    n = 30
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    a = (q * np.logspace(0, 1, n)) @ q.T
    a = (a + a.T) / 2
    at = torch.tensor(a).to(dtype)
    b = torch.tensor(rng.standard_normal(n) * scale).to(dtype)
    sol = cg(at, b, x0=torch.tensor(rng.standard_normal(n)).to(dtype), tol=tol)
    assert sol.converged
    res = _true_residual(at.double().numpy(), b.double().numpy(), sol.x.double().numpy())
    assert res <= 2 * tol


# ------------------------------------------ 4: lasso_objective / lasso_kkt_residual checks
def _helper_data() -> tuple[MatrixOperator, np.ndarray, torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((10, 20)) / np.sqrt(10)
    x = torch.tensor(rng.standard_normal((3, 20)))
    y = torch.tensor(rng.standard_normal((3, 10)))
    return MatrixOperator(torch.tensor(a)), a, x, y


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda op, x, y: lasso_objective(op, x, y, -1.0), r"'lam' >= 0"),
        (lambda op, x, y: lasso_objective(op, x, y, float("nan")), r"'lam' to be finite"),
        (lambda op, x, y: lasso_objective(op, x, y[0], 0.1), r"'x' of shape \(20,\)"),
        (lambda op, x, y: lasso_objective(op, x, y[:1], 0.1), r"'x' of shape \(1, 20\)"),
        (lambda op, x, y: lasso_objective(op, x, y[:, :9], 0.1), r"'y' of length 10"),
        (lambda op, x, y: lasso_objective(op, x, y, torch.ones(2)), r"shape \(batch,\)=\(3,\)"),
        (lambda op, x, y: lasso_kkt_residual(op, x, y, -1.0, 0.1), r"'lam' >= 0"),
        (lambda op, x, y: lasso_kkt_residual(op, x, y, 0.1, -0.1), r"'step' > 0"),
        (lambda op, x, y: lasso_kkt_residual(op, x, y, 0.1, 0.0), r"'step' > 0"),
        (lambda op, x, y: lasso_kkt_residual(op, x, y[0], 0.1, 0.1), r"'x' of shape \(20,\)"),
        (lambda op, x, y: lasso_kkt_residual(op, x, y * math.nan, 0.1, 0.1), r"'y' to be finite"),
    ],
)
def test_lasso_helpers_refuse_what_the_solvers_refuse(call, match):
    """A negative step or lam gave negative "norms" and objectives, step 0 NaN, a ``y`` of
    another batch size broadcast against ``x``, a wrong length a bare RuntimeError."""
    op, _, x, y = _helper_data()
    with pytest.raises(ValueError, match=match):
        call(op, x, y)


def test_lasso_helpers_match_numpy_batched_and_for_one_problem():
    op, a, x, y = _helper_data()
    lam = torch.tensor([0.1, 0.2, 0.3], dtype=F64)
    xn, yn = x.numpy(), y.numpy()
    obj = 0.5 * ((xn @ a.T - yn) ** 2).sum(-1) + lam.numpy() * np.abs(xn).sum(-1)
    np.testing.assert_allclose(lasso_objective(op, x, y, lam).numpy(), obj, rtol=1e-13)
    np.testing.assert_allclose(lasso_objective(op, x[0], y[0], 0.1).numpy(), [
        0.5 * ((a @ xn[0] - yn[0]) ** 2).sum() + 0.1 * np.abs(xn[0]).sum()
    ], rtol=1e-13)  # fmt: skip
    t = 0.3
    v = xn - t * (xn @ a.T - yn) @ a
    thr = t * lam.numpy()[:, None]
    nxt = np.sign(v) * np.maximum(np.abs(v) - thr, 0)
    ref = np.linalg.norm(xn - nxt, axis=-1) / t
    np.testing.assert_allclose(lasso_kkt_residual(op, x, y, lam, t).numpy(), ref, rtol=1e-12)
    one = lasso_kkt_residual(op, x[1], y[1], 0.2, t)
    assert one.shape == (1,)
    np.testing.assert_allclose(one.numpy(), ref[1:2], rtol=1e-12)


# ----------------------------------------------------------------- 5: admm in half precision
@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("method", ["auto", "cholesky", "cg"])
def test_admm_refuses_half_precision_data_with_the_fix(half, method):
    """float16 data hit torch's ``"cholesky_cpu" not implemented for 'Half'`` (method auto) or
    17 inner ConvergenceWarnings (method cg)."""
    op, _, _, y = _helper_data()
    with pytest.raises(TypeError, match=rf"float32 or float64.*got {half}.*y\.float\(\)"):
        admm(op, y.to(half), 0.1, method=method, tol=1e-2)


def test_ista_still_runs_in_half_precision():
    """Only admm is refused: ista (not documented to need float32/float64) returns
    float16 iterates, its claim checked by the KKT residual in float64."""
    op, _, _, y = _helper_data()
    sol = ista(op, y[0].half(), 0.5, tol=1e-2)
    assert sol.x.dtype == torch.float16 and sol.converged


# ------------------------------------------------------------ 6: a 2-D groups tensor
@pytest.mark.parametrize("shape", [(1, 12), (3, 4)])
def test_two_dimensional_groups_are_asked_for_as_a_1d_tensor(shape):
    """The message read "Expected 'groups' of shape (1,) ... (got (1, 12))": a length
    requirement that the caller's 12 labels already met."""
    lab = torch.arange(12).reshape(shape) % 4
    pattern = rf"1-D tensor of integer labels.*got a 2-D tensor of shape \({shape[0]}, {shape[1]}\)"
    with pytest.raises(ValueError, match=pattern):
        make_prox({"kind": "group", "groups": lab}, 12)
    op = MatrixOperator(torch.randn(5, 12, dtype=F64))
    with pytest.raises(ValueError, match=pattern):
        fista(op, torch.randn(5, dtype=F64), 0.1, prox={"kind": "group", "groups": lab})
    with pytest.raises(ValueError, match="1-D tensor"):
        BlockLISTA(op, 2, lam=0.1, groups=lab)
    with pytest.raises(ValueError, match="1-D tensor"):
        group_soft_threshold(torch.ones(2, 12), 0.1, groups=lab)


# ------------------------------------------------------------ 7: chebyshev_roots' dtype
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.complex64])
def test_chebyshev_roots_refuses_non_real_floating_dtypes(dtype):
    """int64 silently returned float32 (torch.arange's cast), complex64 a bare
    NotImplementedError."""
    with pytest.raises(TypeError, match=rf"real floating-point torch.dtype.*got {dtype}"):
        chebyshev_roots(3, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, F64])
def test_chebyshev_roots_in_real_floating_dtypes(dtype):
    k = np.arange(1, 8)
    ref = 0.5 * (1 + np.cos((2 * k - 1) * np.pi / 14))
    got = chebyshev_roots(7, dtype=dtype)
    assert got.dtype == dtype
    np.testing.assert_allclose(got.double().numpy(), ref, rtol=0, atol=torch.finfo(dtype).eps)
