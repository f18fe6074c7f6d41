"""Classical preconditioners of unrollsci.precond against independent references:
IC(0), MIC(0), triangular solves, Jacobi / AMG, the matrix families and Chebyshev.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

from unrollsci.operators import to_torch_sparse
from unrollsci.precond import (
    amg,
    anisotropic2d,
    diffusion2d,
    graph_laplacian,
    ic0,
    jacobi,
    lower_pattern,
    mic0,
    tri_solve,
)
from unrollsci.solvers import cg


def dense_ic0(a: np.ndarray) -> np.ndarray:
    """Textbook right-looking IC(0) on the pattern of a (dense loops, independent code)."""
    return dense_mic(a, 0.0)


def random_spd(n: int, seed: int) -> sp.csr_matrix:
    r = sp.random(n, n, density=0.2, random_state=seed)
    r = r + r.T
    return sp.csr_matrix(r + sp.diags(np.asarray(abs(r).sum(1)).ravel() + 0.5))


# ----------------------------------------------------------------------------- IC(0)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ic0_matches_dense_reference(seed):
    a = random_spd(25, seed)
    got = ic0(a).factor().toarray()
    np.testing.assert_allclose(got, dense_ic0(a.toarray()), atol=1e-12)


def test_ic0_on_grid_and_tridiagonal_is_cholesky():
    a = diffusion2d(6, seed=3)
    np.testing.assert_allclose(ic0(a).factor().toarray(), dense_ic0(a.toarray()), atol=1e-12)
    t = sp.diags([-1.0, 2.5, -1.0], [-1, 0, 1], shape=(9, 9), format="csr")
    np.testing.assert_allclose(
        ic0(t).factor().toarray(), np.linalg.cholesky(t.toarray()), atol=1e-12
    )


def test_ic0_shifts_on_breakdown():
    # SPD but IC(0) of it breaks down without a shift (Kershaw-type example).
    a = sp.csr_matrix(
        np.array(
            [
                [3.0, -2.0, 0.0, 2.0],
                [-2.0, 3.0, -2.0, 0.0],
                [0.0, -2.0, 3.0, -2.0],
                [2.0, 0.0, -2.0, 3.0],
            ]
        )
    )
    assert np.linalg.eigvalsh(a.toarray()).min() > 0
    m = ic0(a)
    assert m.shift > 0
    sol = cg(a, torch.ones(4, dtype=torch.float64), M=m, tol=1e-10)
    assert sol.converged


def dense_mic(a: np.ndarray, omega: float) -> np.ndarray:
    """Textbook right-looking modified IC on the pattern of a: dropped fill times omega
    is subtracted from both pivots (dense loops, independent code)."""
    n = a.shape[0]
    pat = a != 0
    low = np.tril(a).astype(float)
    for k in range(n):
        low[k, k] = np.sqrt(low[k, k])
        for i in range(k + 1, n):
            if pat[i, k]:
                low[i, k] /= low[k, k]
        for j in range(k + 1, n):
            for i in range(j, n):
                if not (pat[i, k] and pat[j, k]):
                    continue
                f = low[i, k] * low[j, k]
                if pat[i, j]:
                    low[i, j] -= f
                else:
                    low[i, i] -= omega * f
                    low[j, j] -= omega * f
    return np.tril(low)


@pytest.mark.parametrize("omega", [0.0, 0.5, 0.95])
@pytest.mark.parametrize("gen", [diffusion2d, graph_laplacian], ids=["diffusion", "graph"])
def test_mic0_matches_dense_reference(gen, omega):
    a = gen(6, seed=4)
    m = mic0(a, omega=omega)
    assert m.variant == ("mic" if omega else "ic0")
    np.testing.assert_allclose(m.factor().toarray(), dense_mic(a.toarray(), omega), atol=1e-12)
    if omega == 0:
        np.testing.assert_allclose(m.factor().toarray(), ic0(a).factor().toarray(), atol=1e-12)


def test_mic_with_omega_one_preserves_row_sums():
    # Gustafsson's MIC: L L^T e = A e on an M-matrix (checked on the product, not the code).
    a = diffusion2d(12, seed=1)
    low = mic0(a, omega=1.0).factor()
    e = np.ones(a.shape[0])
    np.testing.assert_allclose(low @ (low.T @ e), a @ e, rtol=1e-10, atol=1e-12)
    assert abs(low @ low.T - a).max() > 1e-3  # it is not the exact Cholesky factor


def test_mic0_falls_back_without_breaking_down():
    # Nearly grid-aligned strong anisotropy (not an M-matrix): plain MIC meets a
    # non-positive pivot, the stabilized compensation does not, and PCG converges faster
    # than with IC(0).
    a = anisotropic2d(64, epsilon=3e-3, theta=3.06, seed=0)
    m = mic0(a)
    assert m.variant == "robust"
    b = torch.from_numpy(np.random.default_rng(0).standard_normal(a.shape[0]))
    its = cg(a, b, M=m, tol=1e-8).iterations
    assert its < cg(a, b, M=ic0(a), tol=1e-8).iterations
    for seed in range(3):  # random SPD, not M-matrices: always an SPD factor
        r = random_spd(30, seed)
        low = mic0(r).factor().toarray()
        assert np.all(np.diag(low) > 0)
    with pytest.raises(ValueError, match="omega"):
        mic0(a, omega=1.5)


# ------------------------------------------------------------------ triangular solves
@pytest.mark.parametrize("transpose", [False, True])
def test_tri_solve_matches_scipy_and_gradcheck(device, transpose):
    a = random_spd(12, 4)
    pat, vals = lower_pattern(a)
    low = sp.tril(a).tocsr()
    b = np.random.default_rng(0).standard_normal((3, 12))
    v = torch.tensor(vals, dtype=torch.float64, device=device, requires_grad=True)
    bt = torch.tensor(b, device=device, requires_grad=True)
    y = tri_solve(pat.to(device), v, bt, transpose=transpose).detach().cpu().numpy()
    m = low.T.tocsr() if transpose else low
    ref = spla.spsolve_triangular(m, b.T, lower=not transpose).T
    np.testing.assert_allclose(y, ref, rtol=1e-10, atol=1e-12)
    # cuSPARSE's triangular solve is not bitwise reproducible between calls (measured on an
    # H200: backward differs at round-off), so allow round-off-level nondeterminism there.
    nondet = 1e-10 if device.type == "cuda" else 0.0
    assert torch.autograd.gradcheck(
        lambda vv, bb: tri_solve(pat.to(device), vv, bb, transpose=transpose),
        (v, bt),
        nondet_tol=nondet,
    )


# --------------------------------------------------------------------- baselines
def test_jacobi_and_amg_reduce_iterations():
    pytest.importorskip("pyamg")
    a = diffusion2d(24, seed=1)
    b = torch.from_numpy(np.random.default_rng(0).standard_normal(a.shape[0]))
    it = {
        name: cg(a, b, M=m, tol=1e-8, max_iter=5000).iterations
        for name, m in [("none", None), ("jacobi", jacobi(a)), ("ic0", ic0(a)), ("amg", amg(a))]
    }
    assert it["amg"] < it["ic0"] < it["jacobi"] < it["none"]


# ---------------------------------------------------------------------- families
def test_diffusion2d_sigma0_is_poisson():
    n, shift = 7, 1e-2
    t = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(n, n)).toarray()
    t[0, 0] = t[-1, -1] = 3.0  # Dirichlet wall half a cell away
    ref = np.kron(np.eye(n), t) + np.kron(t, np.eye(n))
    ref += shift * np.diag(ref).mean() * np.eye(n * n)
    np.testing.assert_allclose(diffusion2d(n, 0.0, shift=shift).toarray(), ref, atol=1e-12)


def test_anisotropic_isotropic_limit_and_spd():
    n = 6
    t = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(n, n)).toarray()
    ref = np.kron(np.eye(n), t) + np.kron(t, np.eye(n))
    got = anisotropic2d(n, epsilon=1.0, theta=0.3, shift=0.0).toarray()
    np.testing.assert_allclose(got, ref, atol=1e-12)
    for s in range(3):
        a = anisotropic2d(n, seed=s).toarray()
        assert np.allclose(a, a.T) and np.linalg.eigvalsh(a).min() > 0


def test_graph_laplacian_family():
    a = graph_laplacian(8, seed=3)
    d = a.toarray()
    assert np.allclose(d, d.T) and np.linalg.eigvalsh(d).min() > 0
    assert (graph_laplacian(8, seed=3) != a).nnz == 0
    assert (graph_laplacian(8, seed=4) != a).nnz > 0


# ------------------------------------------------------------------ polynomial
@pytest.mark.parametrize("degree,ratio", [(0, 0.5), (3, 0.05), (8, 0.01)])
def test_chebyshev_matches_its_polynomial_and_is_spd(degree, ratio):
    from unrollsci.precond import chebyshev

    a = anisotropic2d(6, seed=3)  # not an M-matrix
    m = chebyshev(a, degree, ratio)
    n = a.shape[0]
    dense = m(torch.eye(n, dtype=torch.float64)).numpy().T
    # independent reference: D V p(Lambda) V^T D with the closed form of p
    d = 1 / np.sqrt(a.diagonal())
    s = d[:, None] * a.toarray() * d[None, :]
    lam, v = np.linalg.eigh(s)
    hi = np.abs(s).sum(1).max()
    lo = ratio * hi
    theta, delta = (hi + lo) / 2, (hi - lo) / 2
    t = np.polynomial.chebyshev.Chebyshev.basis(degree + 1)
    p = (1 - t((theta - lam) / delta) / t(theta / delta)) / lam
    ref = d[:, None] * (v * p) @ v.T * d[None, :]
    np.testing.assert_allclose(dense, ref, rtol=1e-9, atol=1e-12 * np.abs(ref).max())
    assert lam.max() <= hi and p.min() > 0
    assert np.linalg.eigvalsh(0.5 * (dense + dense.T)).min() > 0
    assert m.nnz == n


def test_chebyshev_in_cg_and_bad_input(device):
    from unrollsci.precond import chebyshev

    a = graph_laplacian(12, seed=1)
    b = torch.from_numpy(np.random.default_rng(0).standard_normal(a.shape[0])).to(device)
    at = to_torch_sparse(a).to(device)
    it_j = cg(at, b, M=jacobi(a, device=device), tol=1e-8).iterations
    sol = cg(at, b, M=chebyshev(a, 8, device=device), tol=1e-8)
    assert sol.converged and sol.iterations < it_j / 3
    with pytest.raises(ValueError, match="degree"):
        chebyshev(a, -1)
    with pytest.raises(ValueError, match="ratio"):
        chebyshev(a, 4, ratio=1.0)
    with pytest.raises(ValueError, match="symmetric"):
        chebyshev(sp.csr_matrix(np.array([[2.0, 1.0], [0.0, 2.0]])), 4)


def test_amg_setup_is_reproducible_and_leaves_numpy_rng_alone():
    pytest.importorskip("pyamg")
    from unrollsci.precond import amg
    from unrollsci.solvers import cg

    a = diffusion2d(24, seed=0)
    b = torch.ones(a.shape[0], dtype=torch.float64)
    np.random.seed(123)
    before = np.random.random()
    np.random.seed(123)
    r1 = cg(a, b, M=amg(a), tol=1e-10).residuals
    assert np.random.random() == before  # the global generator is where it was
    r2 = cg(a, b, M=amg(a), tol=1e-10).residuals
    assert r1 == r2
    r3 = cg(a, b, M=amg(a, seed=1), tol=1e-10).residuals
    assert len(r3) == len(r1) and r3 != r1  # another seed, another (equally good) hierarchy
    with pytest.raises(TypeError, match="seed"):
        amg(a, seed="x")


def test_cg_runs_torch_serial_around_a_serial_host_preconditioner():
    """A PyAMG cycle is a single-threaded numpy kernel: while CG applies it, torch runs
    single-threaded (its spinning idle workers would compete with the cycle), the thread
    count is restored afterwards (also after an error), the answer is the same, and other
    preconditioners see the caller's thread count."""
    import numpy as np
    import pytest
    import torch

    from unrollsci.precond import amg, diffusion2d
    from unrollsci.precond._base import Preconditioner
    from unrollsci.solvers import cg

    a = diffusion2d(24, seed=3)
    b = torch.from_numpy(np.random.default_rng(0).standard_normal(a.shape[0]))
    m = amg(a)
    assert m.serial_host
    seen = []

    class Probe(Preconditioner):
        def __init__(self, serial):
            super().__init__()
            self.serial_host = serial
            self.in_shape = self.out_shape = (a.shape[0],)

        def _mv(self, r):
            seen.append(torch.get_num_threads())
            return m(r)

        _rmv = _mv

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        ref = cg(a, b, M=m, tol=1e-10)
        assert torch.get_num_threads() == 2
        out = cg(a, b, M=Probe(True), tol=1e-10)
        assert set(seen) == {1} and torch.get_num_threads() == 2
        assert torch.equal(out.x, ref.x) and out.iterations == ref.iterations
        seen.clear()
        cg(a, b, M=Probe(False), tol=1e-10)
        assert set(seen) == {2}

        class Fails(Probe):
            def _mv(self, r):
                raise RuntimeError("boom")

        with pytest.raises(RuntimeError, match="boom"):
            cg(a, b, M=Fails(True))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
