"""Tests of unrollsci.precond against independent references (dense algebra, scipy)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from unrollsci.operators import to_torch_sparse
from unrollsci.precond import (
    LearnedPreconditioner,
    amg,
    anisotropic2d,
    diffusion2d,
    fit_preconditioner,
    graph_laplacian,
    ic0,
    jacobi,
    lower_pattern,
    make_batches,
    matrix_family,
    mic0,
    pcg_loss,
    tri_solve,
    unrolled_pcg,
)
from unrollsci.solvers import cg
from unrollsci.train import load_checkpoint, save_checkpoint

KINDS = ["factor", "inverse", "block"]


def dense_ic0(a: np.ndarray) -> np.ndarray:
    """Textbook right-looking IC(0) on the pattern of a (dense loops, independent code)."""
    return dense_mic(a, 0.0)


def random_spd(n: int, seed: int) -> sp.csr_matrix:
    r = sp.random(n, n, density=0.2, random_state=seed)
    r = r + r.T
    return sp.csr_matrix(r + sp.diags(np.asarray(abs(r).sum(1)).ravel() + 0.5))


def dense_of(m, n: int, device) -> np.ndarray:
    eye = torch.eye(n, dtype=torch.float64, device=device)
    with torch.no_grad():
        return m(eye).cpu().numpy().T


def randomize(model: torch.nn.Module, seed: int, scale: float = 0.5) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=g))


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


# ----------------------------------------------------------- gradients through PCG
@pytest.mark.parametrize("kind", KINDS)
def test_gradcheck_unrolled_pcg(device, kind):
    a = diffusion2d(3, seed=1)  # 9 unknowns
    model = LearnedPreconditioner(kind, hidden=4, layers=1, block_size=3).double().to(device)
    g = model.prepare(a)
    with torch.no_grad():
        v0 = model.factor_values(g)
    op = to_torch_sparse(a).to(device)
    from unrollsci.operators import SparseOperator

    A = SparseOperator(op)  # noqa: N806
    b = torch.randn(2, 9, dtype=torch.float64, device=device)
    prec = model.from_graph(g)

    def f(vals):
        prec.values = vals
        x = unrolled_pcg(A, b, prec, 4)
        return (x * A(x)).sum(-1) - 2 * (x * b).sum(-1)

    v = (v0 * (1 + 0.1 * torch.rand_like(v0))).requires_grad_(True)
    assert torch.autograd.gradcheck(f, (v,))


def test_unrolled_pcg_matches_solvers_cg_and_direct(device):
    a = diffusion2d(5, seed=2)
    A = to_torch_sparse(a).to(device)  # noqa: N806
    m = ic0(a, device=device)
    b = torch.randn(3, 25, dtype=torch.float64, device=device)
    x = unrolled_pcg(lambda v: (A @ v.T).T, b, m, 25)
    ref = np.linalg.solve(a.toarray(), b.cpu().numpy().T).T
    np.testing.assert_allclose(x.cpu().numpy(), ref, rtol=1e-8, atol=1e-10)
    sol = cg(A, b, M=m, tol=1e-12)
    np.testing.assert_allclose(sol.x.cpu().numpy(), ref, rtol=1e-8, atol=1e-10)


# ------------------------------------------------------------ SPD by construction
FAMILY_CASES = [
    ("poisson", lambda s: diffusion2d(6, seed=s)),
    ("anisotropic", lambda s: anisotropic2d(6, seed=s)),
    ("graph", lambda s: graph_laplacian(6, seed=s)),
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("fam", FAMILY_CASES, ids=lambda f: f[0] if isinstance(f, tuple) else f)
def test_random_weights_give_spd_preconditioner(device, kind, fam):
    _, gen = fam
    for trial in range(4):
        a = gen(10 + trial)
        model = LearnedPreconditioner(kind, hidden=8, layers=2, block_size=5).to(device)
        randomize(model, seed=trial, scale=1.0 + trial)
        m = model.build(a)
        dense = dense_of(m, a.shape[0], device)
        assert np.allclose(dense, dense.T, atol=1e-10 * abs(dense).max())
        assert np.linalg.eigvalsh(0.5 * (dense + dense.T)).min() > 0
        b = torch.randn(a.shape[0], dtype=torch.float64, device=device)
        A = to_torch_sparse(a).to(device)  # noqa: N806
        sol = cg(A, b, M=m, tol=1e-8, max_iter=2000)
        assert sol.converged


@pytest.mark.parametrize("fam", FAMILY_CASES, ids=lambda f: f[0] if isinstance(f, tuple) else f)
def test_random_weights_on_mic_base_give_spd_preconditioner(device, fam):
    _, gen = fam
    for trial in range(3):
        a = gen(20 + trial)
        model = LearnedPreconditioner("factor", base="mic", hidden=8, layers=2).to(device)
        randomize(model, seed=trial, scale=1.0 + trial)
        dense = dense_of(model.build(a), a.shape[0], device)
        assert np.linalg.eigvalsh(0.5 * (dense + dense.T)).min() > 0
        b = torch.randn(a.shape[0], dtype=torch.float64, device=device)
        assert cg(to_torch_sparse(a).to(device), b, M=model.build(a), tol=1e-8).converged
    # untrained, the model is MIC(0) itself
    a = gen(7)
    untrained = LearnedPreconditioner("factor", base="mic").to(device).build(a)
    np.testing.assert_allclose(
        untrained.factor().toarray(), mic0(a).factor().toarray(), rtol=1e-10, atol=1e-12
    )


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    seed=st.integers(0, 10_000),
    scale=st.floats(0.05, 5.0),
    kind=st.sampled_from(KINDS),
    fam=st.sampled_from([f[1] for f in FAMILY_CASES]),
)
def test_property_spd_for_any_weights(device, seed, scale, kind, fam):
    a = fam(seed)
    model = LearnedPreconditioner(kind, hidden=4, layers=1, block_size=4).to(device)
    randomize(model, seed=seed, scale=scale)
    dense = dense_of(model.build(a), a.shape[0], device)
    sym = 0.5 * (dense + dense.T)
    assert np.abs(dense - dense.T).max() <= 1e-10 * np.abs(dense).max()
    assert np.linalg.eigvalsh(sym).min() > 0


def test_build_accepts_torch_sparse_and_is_usable_in_cg(device):
    a = diffusion2d(8, seed=0)
    At = to_torch_sparse(a).to(device)  # noqa: N806
    model = LearnedPreconditioner("factor", base="ic0").to(device)
    m = model.build(At)
    assert m.nnz == sp.tril(a).nnz
    b = torch.ones(64, dtype=torch.float64, device=device)
    s_l = cg(At, b, M=m, tol=1e-8)
    s_i = cg(At, b, M=ic0(a, device=device), tol=1e-8)
    # untrained factor model == IC(0) of the scaled matrix == IC(0) (diagonal scaling commutes)
    assert s_l.converged and s_l.iterations == s_i.iterations


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


# ------------------------------------------------------------------- bad inputs
def test_bad_inputs():
    model = LearnedPreconditioner("factor", max_n=100)
    a = diffusion2d(4, seed=0).tolil()
    ns = a.copy()
    ns[0, 1] = 5.0
    with pytest.raises(ValueError, match="symmetric"):
        model.build(ns.tocsr())
    with pytest.raises(ValueError, match="symmetric"):
        ic0(ns.tocsr())
    z = a.copy()
    z[3, 3] = 0.0
    with pytest.raises(ValueError, match="positive diagonal"):
        model.build(z.tocsr())
    nan = a.copy()
    nan[2, 2] = np.nan
    with pytest.raises(ValueError, match="finite"):
        model.build(nan.tocsr())
    with pytest.raises(ValueError, match="size 2 <= n <= 100"):
        model.build(diffusion2d(11, seed=0))
    with pytest.raises(ValueError, match="square"):
        jacobi(sp.random(3, 4, density=1.0, format="csr"))
    with pytest.raises(TypeError, match="scipy sparse matrix or a torch tensor"):
        model.build([[1.0]])
    with pytest.raises(ValueError, match="block_size <= n"):
        LearnedPreconditioner("block", block_size=64).build(diffusion2d(4, seed=0))
    with pytest.raises(ValueError, match="kind"):
        LearnedPreconditioner("dense")
    with pytest.raises(ValueError, match="matrices\\[1\\]"):
        matrix_family([diffusion2d(3, seed=0), ns.tocsr()])


def test_indefinite_matrix_detected():
    a = diffusion2d(5, seed=0)
    indef = sp.csr_matrix(a - 1.5 * sp.eye(25) * a.diagonal().mean())
    indef = sp.csr_matrix(indef + sp.diags(np.maximum(0, 1e-3 - indef.diagonal())))
    assert indef.diagonal().min() > 0 and np.linalg.eigvalsh(indef.toarray()).min() < 0
    m = LearnedPreconditioner("factor").build(indef)
    with pytest.raises(ValueError, match="not positive definite"):
        cg(indef, torch.ones(25, dtype=torch.float64), M=m)
    with pytest.raises(ValueError, match="not positive definite"):
        make_batches(LearnedPreconditioner("factor"), [indef])


# ---------------------------------------------------------------------- training
def test_training_reduces_loss_and_checkpoint_roundtrip(device, tmp_path):
    mats = [diffusion2d(12, seed=s) for s in range(4)]
    model = LearnedPreconditioner("factor", hidden=8, layers=2).to(device)
    data = make_batches(model, mats, n_rhs=2, seed=0)
    loss_fn = pcg_loss(steps=6)

    def mean_loss() -> float:
        with torch.no_grad():
            return float(np.mean([float(loss_fn(model, d)) for d in data]))

    before = mean_loss()
    fit_preconditioner(model, mats, steps=6, n_rhs=2, epochs=6, lr=1e-2)
    after = mean_loss()
    assert after < before
    path = save_checkpoint(model, tmp_path / "p.pt")
    again = load_checkpoint(path, expected=LearnedPreconditioner, map_location=device)
    a = diffusion2d(10, seed=99)
    np.testing.assert_allclose(
        again.build(a).values.cpu().numpy(), model.build(a).values.cpu().numpy()
    )


@pytest.mark.parametrize("loss", ["residual", "frobenius"])
@pytest.mark.parametrize("kind", KINDS)
def test_other_losses_run(device, kind, loss):
    model = LearnedPreconditioner(kind, hidden=4, layers=1, block_size=4).to(device)
    data = make_batches(model, [diffusion2d(6, seed=0)], n_rhs=2)
    val = pcg_loss(steps=3, loss=loss)(model, data[0])
    val.backward()
    assert torch.isfinite(val)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_training_never_worse_than_base_on_validation():
    mats = [anisotropic2d(10, seed=s) for s in range(3)]
    val = [anisotropic2d(10, seed=100 + s) for s in range(2)]
    model = LearnedPreconditioner("factor", hidden=4, layers=1, base="ic0")
    hist = fit_preconditioner(model, mats, steps=4, n_rhs=2, epochs=3, lr=5e-2, val_matrices=val)
    loss_fn = pcg_loss(steps=4)
    batches = make_batches(model, val, n_rhs=2, seed=1)  # the same systems fit validated on
    with torch.no_grad():
        final = float(np.mean([float(loss_fn(model, b)) for b in batches]))
    assert final <= hist.initial_val + 1e-9
    if hist.kept_initial:
        a = anisotropic2d(10, seed=7)
        np.testing.assert_allclose(
            model.build(a).factor().toarray(), ic0(a).factor().toarray(), rtol=1e-6, atol=1e-8
        )


def test_adaptive_unroll_length(device):
    model = LearnedPreconditioner("factor", base="ic0").to(device)
    mats = [diffusion2d(12, seed=0), anisotropic2d(12, epsilon=1e-3, theta=0.0, seed=0)]
    batches = make_batches(model, mats, n_rhs=2, adaptive_tol=1e-6)
    for bt in batches:
        m = model.build(bt.op.to_scipy())
        den = (bt.x * bt.b).sum(-1)

        def err(k, bt=bt, m=m, den=den):
            e = unrolled_pcg(bt.op, bt.b, m, k) - bt.x
            return float(((e * bt.op(e)).sum(-1) / den).max())

        assert err(bt.steps) <= 1e-6
        if bt.steps > 2:
            assert err(bt.steps - 1) > 1e-6
    # the near-1D anisotropic system is easier for IC(0): fewer steps
    assert batches[1].steps < batches[0].steps


@pytest.mark.parametrize("kind", KINDS)
def test_no_message_passing_folds_edge_layers_exactly(kind):
    """layers=0 folds edge_enc into the off-diagonal head; the pre-activations must equal
    the unfolded composition off_fwd(edge_enc(a_ij)) + off_bwd(edge_enc(a_ji)) + ..."""
    a = anisotropic2d(9, seed=4)
    model = LearnedPreconditioner(kind, layers=0, block_size=5, seed=2).double()
    randomize(model, seed=5, scale=1.0)
    g = model.prepare(a)
    seen = {}
    hook = model.off_head[0].register_forward_hook(lambda mod, inp, out: seen.update(pre=inp[0]))
    with torch.no_grad():
        model.factor_values(g)
        hook.remove()
        e = model.edge_enc(g.full_edge_attr().double())
        h = model.node_enc(g.x.double())
        fwd, bwd = g.low_fwd, g.low_fwd + e.shape[0] // 2
        ri, ci = g.pattern.row[g.strict], g.pattern.col[g.strict]
        ref = model.off_fwd(e[fwd]) + model.off_bwd(e[bwd]) + model.off_row(h)[ri]
        ref = ref + model.off_col(h)[ci]
    assert ref.shape[0] == int(g.strict.sum()) > 0
    torch.testing.assert_close(seen["pre"].T, ref, rtol=1e-12, atol=1e-12)  # (hidden, E) layout


@pytest.mark.parametrize("kind", [*KINDS, "poly"])
def test_graph_features_match_a_direct_construction(kind):
    """Only the forward edges' features are stored; every directed edge's features (and the
    node features) must equal those written out entry by entry from the scaled matrix."""
    a = graph_laplacian(6, seed=3)
    model = LearnedPreconditioner(kind, block_size=5, seed=0)
    g = model.prepare(a)
    d = a.diagonal()
    s = (sp.diags(d**-0.5) @ a @ sp.diags(d**-0.5)).toarray()
    lfac = np.zeros_like(s)
    lfac[g.pattern.row.numpy(), g.pattern.col.numpy()] = g.base.numpy()
    src, dst = g.edge_index().numpy()
    assert src.size == np.count_nonzero(s - np.diag(np.diag(s)))
    feats = g.full_edge_attr().double().numpy()
    lo, hi = np.maximum(src, dst), np.minimum(src, dst)
    expect = np.stack(
        [
            s[dst, src],
            lfac[lo, hi],
            np.sign(dst - src),
            np.tanh(0.5 * (np.log(d[src]) - np.log(d[dst]))),
        ],
        axis=1,
    )
    np.testing.assert_allclose(feats, expect, rtol=1e-6, atol=1e-7)
    deg = np.bincount(dst, minlength=a.shape[0])
    x = np.stack(
        [
            s.sum(1),
            np.abs(s).sum(1) - 1.0,
            deg / 8.0,
            np.diag(lfac),
            np.bincount(dst, expect[:, 3], a.shape[0]) / np.maximum(deg, 1),
        ],
        axis=1,
    )
    np.testing.assert_allclose(g.x.double().numpy(), x, rtol=1e-6, atol=1e-6)


def test_seeded_init_and_restarts_keep_best_validation():
    state = torch.random.get_rng_state()
    m1 = LearnedPreconditioner("factor", seed=11)
    assert torch.equal(state, torch.random.get_rng_state())  # the global generator is untouched
    m2 = LearnedPreconditioner("factor", seed=11)
    m3 = LearnedPreconditioner("factor", seed=12)
    s1, s2, s3 = m1.state_dict(), m2.state_dict(), m3.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert not all(torch.equal(s1[k], s3[k]) for k in s1)
    assert float(s1["off_head.1.weight"].abs().sum()) == 0.0  # still the base when untrained

    mats = [diffusion2d(10, seed=s) for s in range(3)]
    val = [diffusion2d(10, seed=100 + s) for s in range(2)]
    kw = dict(steps=4, n_rhs=2, epochs=3, lr=2e-2, val_matrices=val, keep_base_if_better=False)
    hist = fit_preconditioner(LearnedPreconditioner("factor", seed=0), mats, restarts=3, **kw)
    assert len(hist.restart_vals) == 3 and hist.restart == int(np.argmin(hist.restart_vals))
    assert hist.best_val == min(hist.restart_vals)
    # each restart r > 0 is the plain run from reset_parameters(seed + r)
    for r in (0, 1):
        single = fit_preconditioner(LearnedPreconditioner("factor", seed=r), mats, **kw)
        assert single.best_val == pytest.approx(hist.restart_vals[r], rel=1e-9)
    with pytest.raises(ValueError, match="val_matrices"):
        fit_preconditioner(LearnedPreconditioner("factor"), mats, restarts=2, steps=4)
    with pytest.raises(ValueError, match="restarts >= 1"):
        fit_preconditioner(LearnedPreconditioner("factor"), mats, restarts=0, val_matrices=val)


def test_reset_parameters_is_seeded_on_the_model_device(device):
    model = LearnedPreconditioner("factor", hidden=4).to(device)
    first = {k: v.clone() for k, v in model.state_dict().items()}
    model.reset_parameters(7)
    again = LearnedPreconditioner("factor", hidden=4).to(device)
    again.reset_parameters(7)
    for k, v in model.state_dict().items():
        assert v.device.type == device.type
        assert torch.equal(v, again.state_dict()[k])
    assert any(not torch.equal(v, first[k]) for k, v in model.state_dict().items())
    a = diffusion2d(6, seed=0)  # reset to the base: the untrained factor is SSOR's
    np.testing.assert_allclose(
        model.build(a).factor().toarray(),
        LearnedPreconditioner("factor", hidden=4).build(a).factor().toarray(),
        rtol=1e-12,
    )


def test_load_matrices_order_formats_and_errors(tmp_path):
    import scipy.io

    from unrollsci.precond import load_matrices

    for s in (10, 2, 1):
        sp.save_npz(tmp_path / f"step_{s}.npz", graph_laplacian(4, seed=s))
    # 17 significant digits round-trip float64 exactly (scipy < 1.12 writes 16 by default)
    scipy.io.mmwrite(tmp_path / "step_3.mtx", diffusion2d(4, seed=3), precision=17)
    (tmp_path / "notes.txt").write_text("not a matrix")
    mats, files = load_matrices(tmp_path)  # a directory: every matrix file, natural order
    assert [f.rsplit("/", 1)[-1] for f in files] == [
        "step_1.npz",
        "step_2.npz",
        "step_3.mtx",
        "step_10.npz",
    ]
    assert (mats[0] != graph_laplacian(4, seed=1)).nnz == 0
    assert (mats[2] != diffusion2d(4, seed=3)).nnz == 0
    assert len(load_matrices(str(tmp_path / "step_1*.npz"))[0]) == 2  # a glob
    with pytest.raises(ValueError, match="No matrix files match"):
        load_matrices(str(tmp_path / "nothing_*.npz"))
    with pytest.raises(ValueError, match="ending in"):
        load_matrices(str(tmp_path / "notes.txt"))
    bad = sp.csr_matrix(np.array([[2.0, 1.0], [0.0, 2.0]]))
    sp.save_npz(tmp_path / "bad.npz", bad)
    with pytest.raises(ValueError, match="bad.npz"):
        load_matrices(str(tmp_path / "bad.npz"))


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


def test_learned_poly_starts_as_chebyshev_and_is_spd_for_any_weights(device):
    from unrollsci.precond import chebyshev

    a = graph_laplacian(8, seed=1)
    n = a.shape[0]
    eye = torch.eye(n, dtype=torch.float64, device=device)
    model = LearnedPreconditioner("poly", degree=6, ratio=0.02, seed=0).to(device)
    untrained, classical = model.build(a)(eye), chebyshev(a, 6, 0.02, device=device)(eye)
    # the other iterates start at softmax weight ~5e-5
    torch.testing.assert_close(untrained, classical, rtol=0, atol=2e-4 * classical.abs().max())
    for trial, fam in enumerate([graph_laplacian, diffusion2d, anisotropic2d] * 2):
        randomize(model, seed=trial, scale=0.5 + trial)
        b = fam(7, seed=trial)
        dense = dense_of(model.build(b), b.shape[0], device)
        assert np.abs(dense - dense.T).max() <= 1e-12 * np.abs(dense).max()
        assert np.linalg.eigvalsh(0.5 * (dense + dense.T)).min() > 0
    assert model.build(a).nnz == n


def test_learned_poly_gradcheck_training_and_checkpoint(device, tmp_path):
    mats = [graph_laplacian(6, seed=s) for s in range(3)]
    model = LearnedPreconditioner("poly", degree=3, hidden=4, seed=0).double().to(device)
    randomize(model, seed=1, scale=0.3)
    (batch,) = make_batches(model, mats[:1], n_rhs=2)
    loss = pcg_loss(steps=3)
    # the polynomial's weights, its interval and the GNN's scaling head, as plain inputs
    x0 = [model.poly_logits.detach().clone(), model.poly_ratio.detach().clone()]
    x0.append(model.diag_head[-1].bias.detach().clone())
    del model.poly_logits, model.poly_ratio
    head = model.diag_head[-1]
    del head.bias

    def f(logits, ratio, bias):
        model.poly_logits, model.poly_ratio, head.bias = logits, ratio, bias
        return loss(model, batch)

    inputs = tuple(x.requires_grad_(True) for x in x0)
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)
    trained = LearnedPreconditioner("poly", degree=4, ratio=0.05, seed=0).to(device)
    hist = fit_preconditioner(trained, mats, steps=4, epochs=4)
    assert hist.train_loss[-1] < hist.train_loss[0]
    path = save_checkpoint(trained, tmp_path / "poly.pt")
    again = load_checkpoint(path, expected=LearnedPreconditioner, map_location=device)
    assert (again.kind, again.degree, again.ratio) == ("poly", 4, 0.05)
    r = torch.randn(2, mats[0].shape[0], dtype=torch.float64, device=device)
    torch.testing.assert_close(again.build(mats[0])(r), trained.build(mats[0])(r))
    fresh = LearnedPreconditioner("poly", degree=3, seed=0).to(device)
    with pytest.raises(ValueError, match="frobenius"):
        pcg_loss(steps=3, loss="frobenius")(fresh, batch)
    with pytest.raises(ValueError, match="base"):
        LearnedPreconditioner("poly", base="mic")
    with pytest.raises(ValueError, match="degree"):
        LearnedPreconditioner("poly", degree=0)


def test_learned_poly_without_scaling_needs_no_graph(device, monkeypatch):
    from unrollsci.precond import _learned as _model
    from unrollsci.precond import chebyshev

    a = diffusion2d(9, seed=4)
    model = LearnedPreconditioner("poly", degree=5, ratio=0.02, scaling=False, seed=0).to(device)

    def no_graph(*args, **kwargs):
        raise AssertionError("scaling=False must not build the matrix graph at setup")

    monkeypatch.setattr(_model, "_build_graph", no_graph)
    eye = torch.eye(a.shape[0], dtype=torch.float64, device=device)
    got, ref = model.build(a)(eye), chebyshev(a, 5, 0.02, device=device)(eye)
    torch.testing.assert_close(got, ref, rtol=0, atol=2e-4 * ref.abs().max())
    randomize(model, seed=2, scale=2.0)
    dense = dense_of(model.build(a), a.shape[0], device)
    assert np.linalg.eigvalsh(0.5 * (dense + dense.T)).min() > 0
    with pytest.raises(ValueError, match="size"):
        LearnedPreconditioner("poly", scaling=False, max_n=10).build(a)


def test_precond_timing_script_quick(tmp_path):
    """benchmarks/precond_timing.py end to end in its tiny configuration."""
    import importlib.util
    import json
    from pathlib import Path

    script = Path(__file__).parents[2] / "benchmarks" / "precond_timing.py"
    spec = importlib.util.spec_from_file_location("precond_timing", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--quick", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "precond_timing.json").read_text())["rows"]
    # the anisotropic family is a grid: the reordered MIC(0) and learned factor come too
    assert [r["method"] for r in rows] == [*mod.METHODS, "mic0-ord", "learned-factor-mic-ord"]
    ic = rows[0]
    assert ic["best_vs_ic0"] == 1.0 and ic["best_vs_ic0_per_system"] == "1.00/1.00"
    for r in rows:
        assert r["best_total_s"] <= r["median_total_s"] and r["iters"] > 0
    with pytest.raises(ValueError, match="repeats"):
        mod.main(["--repeats", "0"])
