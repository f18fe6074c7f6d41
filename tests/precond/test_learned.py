"""LearnedPreconditioner against independent references: unrolled PCG and its
gradients, SPD by construction, bad input, graph features, the learned polynomial.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from unrollsci.operators import to_torch_sparse
from unrollsci.precond import (
    LearnedPreconditioner,
    anisotropic2d,
    diffusion2d,
    graph_laplacian,
    ic0,
    jacobi,
    make_batches,
    matrix_family,
    mic0,
    unrolled_pcg,
)
from unrollsci.solvers import cg

KINDS = ["factor", "inverse", "block"]


def dense_of(m, n: int, device) -> np.ndarray:
    eye = torch.eye(n, dtype=torch.float64, device=device)
    with torch.no_grad():
        return m(eye).cpu().numpy().T


def randomize(model: torch.nn.Module, seed: int, scale: float = 0.5) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=g))


# ----------------------------------------------------------- gradients through PCG
@pytest.mark.parametrize("kind", KINDS)
def test_gradcheck_unrolled_pcg(device, kind):
    a = diffusion2d(3, seed=1)  # 9 unknowns
    model = (
        LearnedPreconditioner(
            kind, hidden=4, layers=1, **({"block_size": 3} if kind == "block" else {})
        )
        .double()
        .to(device)
    )
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
        model = LearnedPreconditioner(
            kind, hidden=8, layers=2, **({"block_size": 5} if kind == "block" else {})
        ).to(device)
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
    model = LearnedPreconditioner(
        kind, hidden=4, layers=1, **({"block_size": 4} if kind == "block" else {})
    ).to(device)
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


@pytest.mark.parametrize("kind", KINDS)
def test_no_message_passing_folds_edge_layers_exactly(kind):
    """layers=0 folds edge_enc into the off-diagonal head; the pre-activations must equal
    the unfolded composition off_fwd(edge_enc(a_ij)) + off_bwd(edge_enc(a_ji)) + ..."""
    a = anisotropic2d(9, seed=4)
    model = LearnedPreconditioner(
        kind, layers=0, seed=2, **({"block_size": 5} if kind == "block" else {})
    ).double()
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
    model = LearnedPreconditioner(kind, seed=0, **({"block_size": 5} if kind == "block" else {}))
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
