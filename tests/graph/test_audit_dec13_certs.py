"""Audit of Dec 13 (graph certificates): the factorization tier of ``lambda_min_bound()`` /
``jacobi_interval()`` on ill-conditioned ``H``, float64 rounding of the Gershgorin bounds,
and subnormal ``lam`` / weights. Every bound is checked against an independent reference:
numpy's dense ``eigvalsh`` where ``H`` is well conditioned, else mpmath at 50 digits on the
float64 entries of ``H``."""

from __future__ import annotations

import warnings

import mpmath as mp
import numpy as np
import pytest
import scipy.sparse as sp
import torch

from unrollsci.graph import GraphInverseProblem

mp.mp.dps = 50

# a 10-node graph with weights from 0.5 to 1e8 (lam = 1e8: H is very ill conditioned)
_EDGES = {
    (0, 2): 0.5, (0, 5): 1e8, (0, 6): 9.9271e7, (0, 8): 6.2789e7, (1, 2): 3.7, (1, 7): 1.025e8,
    (1, 9): 1.0, (2, 3): 3.7, (2, 4): 1e8, (2, 5): 1.5501, (2, 7): 0.87016, (2, 9): 1.0,
    (3, 5): 1.2463e4, (3, 6): 1e8, (3, 8): 0.98841, (4, 5): 1e-4, (4, 6): 1e8, (4, 9): 1.3861e4,
    (5, 7): 1e4, (6, 8): 0.5, (7, 9): 1e4,
}  # fmt: skip


def _problem(w, mask, lam):
    n = w.shape[0]
    return GraphInverseProblem.from_scipy(
        sp.csr_matrix(w), torch.ones(n, dtype=torch.float64), mask=torch.as_tensor(mask), lam=lam
    )


def _mp_eigs(h: np.ndarray, scaled: bool = False) -> list:
    """Eigenvalues (ascending, 50 digits) of the float64 matrix ``h``, or of
    ``diag(h)^{-1/2} h diag(h)^{-1/2}`` formed in 50 digits."""
    a = mp.matrix(h.tolist())
    if scaled:
        d = [mp.sqrt(a[i, i]) for i in range(a.rows)]
        a = mp.matrix([[a[i, j] / (d[i] * d[j]) for j in range(a.cols)] for i in range(a.rows)])
    return sorted(mp.eigsy(a, eigvals_only=True))


def _grid(k: int) -> sp.csr_matrix:
    path = sp.diags([np.ones(k - 1), np.ones(k - 1)], [-1, 1])
    return sp.csr_matrix(sp.kron(path, sp.eye(k)) + sp.kron(sp.eye(k), path))


def test_factor_tier_lower_bounds_below_lambda_min_on_ill_conditioned_copies():
    w1 = np.zeros((10, 10))
    for (i, j), v in _EDGES.items():
        w1[i, j] = w1[j, i] = v
    m1 = np.zeros(10)
    m1[[4, 8]] = 1
    h1 = _problem(w1, m1, 1e8).hessian_scipy().toarray()
    true_lo, true_slo = _mp_eigs(h1)[0], _mp_eigs(h1, scaled=True)[0]
    # 90 disjoint copies (900 nodes, one block: the factorization tier); H is block
    # diagonal with identical float64 blocks, so its spectrum is the copy's
    w = sp.block_diag([sp.csr_matrix(w1)] * 90).tocsr()
    p = _problem(w, np.tile(m1, 90), 1e8)
    assert np.array_equal(p.hessian_scipy()[:10, :10].toarray(), h1)
    lo = p.lambda_min_bound().item()
    jlo, jhi = (t.item() for t in p.jacobi_interval())
    assert 0.0 <= lo <= true_lo  # was 0.8045 > 0.1
    assert 0.0 <= jlo <= true_slo <= jhi


def test_factor_tier_jacobi_lower_bound_below_rayleigh_quotient_on_grid():
    # 30x30 grid, 9 observed nodes, lam = 1e13: L 1 = 0, so the Rayleigh quotients at the
    # ones vector bound lambda_min from above (sums of the float64 entries, in 50 digits)
    n = 900
    mask = np.zeros(n)
    mask[np.random.default_rng(0).choice(n, 9, replace=False)] = 1
    p = _problem(_grid(30), mask, 1e13)
    h = p.hessian_scipy().tocoo()
    total = mp.fsum(mp.mpf(float(v)) for v in h.data)
    trace = mp.fsum(mp.mpf(float(v)) for v in h.diagonal())
    assert p.lambda_min_bound().item() <= total / n
    assert p.jacobi_interval()[0].item() <= total / trace  # was 2.734e-16 > 2.586e-16


def test_factor_tier_well_conditioned_bounds_stay_tight():
    # 30x30 grid, a third observed, lam = 1 (well conditioned): the factorization tier
    # still proves 0.95 times the eigenvalue (dense reference)
    n = 900
    mask = np.zeros(n)
    mask[::3] = 1
    p = _problem(_grid(30), mask, 1.0)
    h = p.hessian_scipy().toarray()
    ev = np.linalg.eigvalsh(h)
    d = np.sqrt(np.diag(h))
    sev = np.linalg.eigvalsh(h / d[:, None] / d[None, :])
    lo = p.lambda_min_bound().item()
    jlo = p.jacobi_interval()[0].item()
    assert 0.94 * ev[0] <= lo <= ev[0]
    assert 0.94 * sev[0] <= jlo <= sev[0]


def test_gershgorin_and_lipschitz_not_below_lambda_max_in_float64():
    # 2 nodes, one edge, no mask: H = [[1 + lam, -lam], [-lam, 1 + lam]] in float64; its
    # exact top eigenvalue (50 digits) is the Gershgorin row sum's exact value
    rng = np.random.default_rng(0)
    w = sp.csr_matrix(np.array([[0.0, 1.0], [1.0, 0.0]]))
    bad = []
    for lam in 10 ** rng.uniform(-14, -1, size=300):
        p = GraphInverseProblem.from_scipy(w, torch.ones(2, dtype=torch.float64), lam=float(lam))
        h = p.hessian_scipy().toarray()
        assert np.array_equal(h, np.array([[1 + lam, -lam], [-lam, 1 + lam]]))
        a, b, c = (mp.mpf(float(x)) for x in (h[0, 0], h[0, 1], h[1, 1]))
        top = (a + c) / 2 + mp.sqrt(((a - c) / 2) ** 2 + b**2)
        stop = 1 + mp.sqrt(b**2 / (a * c))  # lambda_max of D^-1/2 H D^-1/2
        vals = (p.lipschitz("gershgorin").item(), p.lipschitz().item())
        jhi = p.jacobi_interval()[1].item()
        if min(vals) < top or jhi < stop:
            bad.append(float(lam))
    assert not bad, f"{len(bad)} of 300 values of lam, e.g. {bad[:3]}"  # was 147 of 300


def test_gershgorin_covers_rounding_of_long_row_sums():
    # a star with 60 random weights: lipschitz('gershgorin') is at least the exact (50
    # digits) largest row sum of |H|, for H's float64 entries
    rng = np.random.default_rng(1)
    n = 61
    bad = 0
    for _ in range(40):
        w = np.zeros((n, n))
        w[0, 1:] = w[1:, 0] = rng.uniform(0.1, 10.0, size=n - 1)
        p = _problem(w, np.ones(n), float(rng.uniform(0.1, 10.0)))
        h = p.hessian_scipy().toarray()
        rows = max(mp.fsum(abs(mp.mpf(float(x))) for x in row) for row in h)
        bad += p.lipschitz("gershgorin").item() < rows
    assert bad == 0


@pytest.mark.parametrize("lam, weight", [(1e-320, 1.0), (1.0, 1e-320), (1e-300, 1.0)])
@pytest.mark.parametrize("n", [3, 900])
def test_subnormal_lam_or_weights_no_warnings_and_valid(n, lam, weight):
    w = sp.diags([np.full(n - 1, weight), np.full(n - 1, weight)], [-1, 1]).tocsr()
    mask = np.zeros(n)
    mask[::7] = 1
    p = _problem(w, mask, lam)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lo = p.lambda_min_bound().item()
        jlo, jhi = (t.item() for t in p.jacobi_interval())
        lip = p.lipschitz().item()
    h = p.hessian_scipy()
    dg = h.diagonal()
    assert np.all(dg > 0)
    # Rayleigh quotients at unit vectors: lambda_min(H) <= min H_ii <= max H_ii <= lambda_max
    assert 0.0 <= lo <= dg.min()
    assert lip >= dg.max()
    if n == 3:
        true = _mp_eigs(h.toarray())
        strue = _mp_eigs(h.toarray(), scaled=True)
        assert lo <= true[0] and lip >= true[-1]
        assert 0.0 <= jlo <= strue[0] and jhi >= strue[-1]
    else:
        assert 0.0 <= jlo <= 1.0 <= jhi


def test_subnormal_weights_upper_certificate_no_warnings():
    # 6000 nodes (the factorization-free tier): the Schur test of the upper certificate
    # met diagonal margins that underflow
    n = 6000
    w = sp.diags([np.full(n - 1, 1e-320), np.full(n - 1, 1e-320)], [-1, 1]).tocsr()
    mask = np.zeros(n)
    mask[::7] = 1
    p = _problem(w, mask, 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lip = p.lipschitz().item()
        lo = p.lambda_min_bound().item()
    dg = p.hessian_scipy().diagonal()
    assert lip >= dg.max() and 0.0 <= lo <= dg.min()


def test_jacobi_interval_zero_diagonal_raises():
    # lam * weight underflows to 0: an unobserved node has H_ii = 0, no Jacobi scaling
    n = 5
    w = sp.diags([np.full(n - 1, 1e-20), np.full(n - 1, 1e-20)], [-1, 1]).tocsr()
    p = _problem(w, np.array([1.0, 0, 0, 0, 0]), 1e-310)
    with pytest.raises(ValueError, match="Expected diag"):
        p.jacobi_interval()
