"""Orderings for incomplete factorizations: candidates, the dropped-fill selection rule,
the permuted preconditioner, and the learned factor on a reordered matrix."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from unrollsci.precond import (
    LearnedPreconditioner,
    PermutedPreconditioner,
    anisotropic2d,
    candidate_orderings,
    diffusion2d,
    dropped_fill,
    fit_preconditioner,
    graph_laplacian,
    grid_orderings,
    ic0,
    make_batches,
    mic0,
    pcg_loss,
    reorder,
    select_ordering,
)
from unrollsci.solvers import cg


def _path(n):
    return sp.diags([-1.0, 2.5, -1.0], [-1, 0, 1], shape=(n, n), format="csr")


def _iters(a, m, seed=0):
    b = torch.from_numpy(np.random.default_rng(seed).standard_normal(a.shape[0]))
    return int(cg(a, b, M=m, tol=1e-8, max_iter=5000).iterations)


def test_grid_orderings_are_the_four_lexicographic_orders():
    o = grid_orderings(3, 2)  # nx = 3, ny = 2: index = y * 3 + x
    assert o["natural"].tolist() == [0, 1, 2, 3, 4, 5]
    assert o["transposed"].tolist() == [0, 3, 1, 4, 2, 5]
    assert o["flipped"].tolist() == [2, 1, 0, 5, 4, 3]
    assert o["flipped-transposed"].tolist() == [2, 5, 1, 4, 0, 3]
    for p in o.values():
        assert sorted(p.tolist()) == list(range(6))
    # transposing the grid is a reflection: the anisotropic operator at theta in natural
    # order is the one at pi/2 - theta in transposed order
    a1 = anisotropic2d(6, epsilon=0.05, theta=0.3, seed=None)
    a2 = anisotropic2d(6, epsilon=0.05, theta=np.pi / 2 - 0.3, seed=None)
    p = grid_orderings(6)["transposed"]
    assert abs(a1[p][:, p] - a2).max() < 1e-12


@pytest.mark.parametrize(
    "a",
    [anisotropic2d(9, seed=3), diffusion2d(8, seed=1), graph_laplacian(8, seed=2)],
    ids=["anisotropic", "diffusion", "graph"],
)
def test_dropped_fill_matches_dense_reference(a, dense_dropped_fill):
    rng = np.random.default_rng(0)
    perms = [np.arange(a.shape[0]), rng.permutation(a.shape[0])]
    for p in perms:
        got = dropped_fill(a, p, sample=None)
        ref = dense_dropped_fill(a, p)
        assert np.allclose(got, ref, rtol=1e-12, atol=1e-15)
    # any sparse format, unsorted or duplicated entries: the same numbers
    coo = a.tocoo()
    dup = sp.coo_matrix(
        (np.r_[coo.data / 2, coo.data / 2], (np.r_[coo.row, coo.row], np.r_[coo.col, coo.col])),
        shape=a.shape,
    )
    assert np.allclose(dropped_fill(dup, perms[1], sample=None), dense_dropped_fill(a, perms[1]))
    # a row sample estimates the same per-row mean
    a_big = anisotropic2d(40, seed=3)
    full = dropped_fill(a_big, None, sample=None)
    est = dropped_fill(a_big, None, sample=400)
    assert abs(est[1] - full[1]) < 0.1 * full[1]


def test_selection_removes_the_angle_dependence_of_mic0():
    """Rotated anisotropy at several angles: in the natural order MIC(0)'s iterations
    vary many-fold with the angle; in the selected order they stay low, within two of the
    best of the four candidates (an oracle that runs PCG in each)."""
    n = 32
    cands = grid_orderings(n)
    worst_natural, worst_selected = 0, 0
    for theta in np.radians([20, 70, 110, 160]):
        a = anisotropic2d(n, epsilon=0.01, theta=theta, seed=None)
        name, scores = select_ordering(a, cands)
        assert set(scores) == set(cands)
        by = {}
        for k, p in cands.items():
            ap = a[p][:, p].tocsr()
            by[k] = _iters(ap, mic0(ap))
        assert by[name] <= min(by.values()) + 2
        m = mic0(a, ordering="grid")
        assert m.ordering == name
        it = _iters(a, m)
        assert it == by[name]  # the same preconditioner, applied in A's own order
        worst_natural = max(worst_natural, by["natural"])
        worst_selected = max(worst_selected, it)
    assert worst_selected < worst_natural / 2


def test_permuted_preconditioner_is_pt_m_p_and_spd(device):
    a = anisotropic2d(10, epsilon=0.02, theta=2.5, seed=None)
    m = ic0(a, ordering="grid", device=device)
    assert isinstance(m, PermutedPreconditioner) and m.ordering != "natural"
    assert m.nnz == ic0(a).nnz  # same nonzeros in every ordering
    p = m.perm.cpu().numpy()
    inner = ic0(a[p][:, p].tocsr()).to_dense().numpy()
    dense = m.to_dense().cpu().numpy()
    pm = np.eye(a.shape[0])[p]  # (P x)_k = x_{p[k]}
    assert np.allclose(dense, pm.T @ inner @ pm, atol=1e-12)
    assert np.allclose(dense, dense.T, atol=1e-12)
    assert np.linalg.eigvalsh(dense).min() > 0
    assert m.perm.device.type == torch.device(device).type


def test_natural_choice_returns_the_plain_factor():
    a = anisotropic2d(12, epsilon=0.01, theta=np.radians(80), seed=None)
    name, _ = select_ordering(a, grid_orderings(12))
    assert name == "natural"
    m = mic0(a, ordering="grid")
    assert not isinstance(m, PermutedPreconditioner) and m.ordering == "natural"
    assert np.allclose(m.values.numpy(), mic0(a).values.numpy())
    assert mic0(a).ordering is None


def test_candidate_orderings_forms_and_errors():
    a = diffusion2d(5, seed=0)
    assert list(candidate_orderings(a, "grid")) == list(grid_orderings(5))
    rcm = candidate_orderings(a, "rcm")
    assert list(rcm) == ["natural", "rcm"] and sorted(rcm["rcm"].tolist()) == list(range(25))
    assert list(candidate_orderings(a, [np.arange(25), np.arange(25)[::-1]])) == ["0", "1"]
    assert list(candidate_orderings(a, lambda m: {"mine": np.arange(m.shape[0])})) == ["mine"]
    with pytest.raises(ValueError, match="square grid"):
        candidate_orderings(_path(30), "grid")
    with pytest.raises(ValueError, match="not a permutation"):
        candidate_orderings(a, {"bad": np.zeros(25, dtype=int)})
    with pytest.raises(ValueError, match="length 25"):
        candidate_orderings(a, {"short": np.arange(24)})
    with pytest.raises(ValueError, match="integer array"):
        candidate_orderings(a, {"float": np.arange(25.0)})
    with pytest.raises(ValueError, match="Expected orderings"):
        candidate_orderings(a, "spiral")
    with pytest.raises(ValueError, match="at least one"):
        candidate_orderings(a, {})
    with pytest.raises(TypeError, match="Expected orderings"):
        candidate_orderings(a, 3)
    with pytest.raises(ValueError, match="'nx' >= 1"):
        grid_orderings(0)
    # a rectangular grid through a callable
    rect = sp.kron(sp.eye(3), diffusion2d(4, seed=0)[:4, :4]).tocsr()  # 12 unknowns
    got = candidate_orderings(rect, lambda m: grid_orderings(4, 3))
    assert len(got["transposed"]) == 12


def test_reorder_and_rcm_on_graphs():
    a = graph_laplacian(20, seed=1)
    ap, perm, name = reorder(a, "rcm")
    assert name in ("natural", "rcm")
    if perm is not None:
        assert abs(ap - a[perm][:, perm]).max() == 0
    # whichever is chosen, the wrapped factor is SPD and converges
    m = mic0(a, ordering="rcm")
    assert _iters(a, m) < _iters(a, None)


def test_learned_factor_with_ordering_trains_and_matches_its_wrapper(device):
    train = [anisotropic2d(12, seed=s) for s in range(3)]
    model = LearnedPreconditioner("factor", base="mic", layers=0, seed=0, ordering="grid")
    model = model.to(device)
    assert model.get_config()["ordering"] == "grid"
    a = anisotropic2d(16, epsilon=0.01, theta=np.radians(150), seed=None)
    m0 = model.build(a)
    assert isinstance(m0, PermutedPreconditioner) and m0.ordering != "natural"
    # untrained, the model is its base: MIC(0) of the same reordered matrix
    ref = mic0(a, ordering="grid", device=device)
    r = torch.randn(2, a.shape[0], dtype=torch.float64, device=device)
    assert torch.allclose(m0(r).to(r.dtype), ref(r), rtol=1e-5, atol=1e-8)
    hist = fit_preconditioner(model, train, steps=3, epochs=2, lr=1e-2)
    assert np.isfinite(hist.train_loss).all()
    m = model.build(a)
    dense = m.to_dense().cpu().numpy()
    assert np.allclose(dense, dense.T, atol=1e-10) and np.linalg.eigvalsh(dense).min() > 0
    b = torch.from_numpy(np.random.default_rng(0).standard_normal(a.shape[0])).to(device)
    assert bool(cg(a, b, M=m, tol=1e-8).converged)


def test_checkpoint_keeps_the_ordering(tmp_path):
    from unrollsci.train import load_checkpoint, save_checkpoint

    model = LearnedPreconditioner("factor", base="mic", layers=0, seed=0, ordering="grid")
    a = anisotropic2d(10, epsilon=0.02, theta=2.6, seed=None)
    back = load_checkpoint(save_checkpoint(model, tmp_path / "m.pt"))
    assert back.ordering == "grid"
    r = torch.randn(2, a.shape[0], dtype=torch.float64)
    m0, m1 = model.build(a), back.build(a)
    assert m1.ordering == m0.ordering
    assert torch.equal(m0(r), m1(r))


def test_gradients_flow_through_the_permutation():
    model = LearnedPreconditioner("factor", base="mic", layers=0, seed=0, ordering="grid")
    model = model.double()
    a = anisotropic2d(6, epsilon=0.02, theta=2.6, seed=None)
    (batch,) = make_batches(model, [a], n_rhs=2)
    assert batch.graph.perm is not None
    loss = pcg_loss(steps=2)(model, batch)
    loss.backward()
    grads = [q.grad for q in model.parameters() if q.grad is not None]
    assert grads and any(float(g.abs().sum()) > 0 for g in grads)
    # the wrapper itself passes gradients exactly: d/dr of sum(w * M r) = M^T w
    m = model.build(a)
    r = torch.randn(1, a.shape[0], dtype=torch.float64, requires_grad=True)
    w = torch.randn(1, a.shape[0], dtype=torch.float64)
    (m(r) * w).sum().backward()
    assert torch.allclose(r.grad, m(w), atol=1e-12)


def test_ordering_bad_combinations():
    with pytest.raises(ValueError, match="kind='poly'"):
        LearnedPreconditioner("poly", ordering="grid")
    model = LearnedPreconditioner("factor", layers=0, seed=0, ordering="grid")
    (batch,) = make_batches(model, [anisotropic2d(8, epsilon=0.02, theta=2.6, seed=None)])
    with pytest.raises(ValueError, match="frobenius"):
        pcg_loss(loss="frobenius")(model, batch)
    with pytest.raises(ValueError, match="square grid"):
        LearnedPreconditioner("factor", ordering="grid").build(_path(30))
    with pytest.raises(ValueError, match="length 9"):
        PermutedPreconditioner(ic0(diffusion2d(3, seed=0)), np.arange(4))
    with pytest.raises(ValueError, match="not a permutation"):
        PermutedPreconditioner(ic0(diffusion2d(3, seed=0)), np.zeros(9, dtype=int))


@pytest.mark.slow
def test_anisotropic_example_runs(capsys):
    import pathlib
    import runpy

    path = pathlib.Path(__file__).parents[2] / "examples" / "precond_anisotropic.py"
    runpy.run_path(str(path), run_name="__main__")
    out = capsys.readouterr().out
    assert out.count("learned ordered") == 3 and "flipped-transposed" in out
