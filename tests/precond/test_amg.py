"""Learned AMG (``LearnedPreconditioner("amg")``): the untrained prolongation is PyAMG's
smoothed aggregation, the torch two-level cycle (training) is PyAMG's cycle with the same
levels (inference), the cycle is SPD for any weights, and gradients through the hierarchy
and the unrolled PCG match finite differences."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from unrollsci.precond import (
    LearnedPreconditioner,
    amg,
    anisotropic2d,
    diffusion2d,
    fit_preconditioner,
    graph_laplacian,
    make_batches,
    pcg_loss,
    unrolled_pcg,
)
from unrollsci.precond._amg import TwoLevelCycle, _seeded, amg_setup, prolongation_values
from unrollsci.precond._sparse import check_spd_input
from unrollsci.solvers import cg

pyamg = pytest.importorskip("pyamg")

FAMILIES = {
    "diffusion": lambda n, s: diffusion2d(n, seed=s),
    "anisotropic": lambda n, s: anisotropic2d(n, seed=s),
    "graph": lambda n, s: graph_laplacian(n, seed=s),
}


def dense(m, n: int) -> np.ndarray:
    with torch.no_grad():
        return m(torch.eye(n, dtype=torch.float64)).numpy().T


def randomize(model: torch.nn.Module, seed: int, scale: float) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("fam", sorted(FAMILIES))
def test_untrained_prolongation_is_pyamg_smoothed_aggregation(fam):
    from pyamg.aggregation import fit_candidates, standard_aggregation
    from pyamg.aggregation.smooth import jacobi_prolongation_smoother
    from pyamg.strength import symmetric_strength_of_connection

    a = check_spd_input(FAMILIES[fam](10, 1))
    c = symmetric_strength_of_connection(a, 0.0)
    t, b = fit_candidates(standard_aggregation(c)[0], np.ones((a.shape[0], 1)))
    ref = _seeded(0, jacobi_prolongation_smoother, a, t, c, b)
    # with PyAMG's spectral-radius estimate: PyAMG's SA prolongation
    setup = amg_setup(a, rho="pyamg")
    w = torch.full((a.nnz,), setup.omega0, dtype=torch.float64)
    p = TwoLevelCycle(setup, prolongation_values(setup, w)).prolongation()
    assert p.shape == ref.shape
    assert abs(p - ref).max() <= 1e-13 * abs(ref).max()
    # the untrained model (Lanczos estimate, the default): T - omega0 D^-1 A T, written out
    model = LearnedPreconditioner("amg", seed=0)
    g = model.prepare(a)
    with torch.no_grad():
        pm = TwoLevelCycle(g.cache["amg"], model.prolongation_values(g)).prolongation()
    omega0 = g.cache["amg"].omega0
    direct = t - omega0 * sp.diags(1.0 / a.diagonal()) @ a @ t
    assert abs(pm - direct).max() <= 1e-13 * abs(direct).max()
    assert omega0 == pytest.approx(setup.omega0, rel=0.02)  # the two estimates of rho agree


def test_amg_setup_rejects_unknown_rho():
    with pytest.raises(ValueError, match="rho 'lanczos' or 'pyamg'"):
        amg_setup(check_spd_input(diffusion2d(4)), rho="power")


@pytest.mark.parametrize("sweeps", [1, 2])
@pytest.mark.parametrize("fam", sorted(FAMILIES))
def test_torch_two_level_cycle_is_pyamg_cycle(fam, sweeps):
    """Training's differentiable cycle and the PyAMG cycle of build() are one operator."""
    from unrollsci.precond._amg import pyamg_preconditioner

    a = check_spd_input(FAMILIES[fam](9, 2))
    model = LearnedPreconditioner("amg", seed=0, sweeps=sweeps).double()
    randomize(model, seed=3, scale=0.5)
    g = model.prepare(a)
    with torch.no_grad():
        pv = model.prolongation_values(g)
    n = a.shape[0]
    d_torch = dense(model.from_graph(g), n)
    d_pyamg = dense(pyamg_preconditioner(g.cache["amg"], pv, max_coarse=10**6, sweeps=sweeps), n)
    np.testing.assert_allclose(d_torch, d_pyamg, atol=1e-12 * np.abs(d_pyamg).max())
    if sweeps > 1:  # more sweeps: another operator
        assert np.abs(dense(TwoLevelCycle(g.cache["amg"], pv), n) - d_torch).max() > 1e-6
    # and differs from the untrained cycle (the weights matter)
    g0 = LearnedPreconditioner("amg", seed=0).prepare(a)
    with torch.no_grad():
        d0 = dense(
            TwoLevelCycle(
                g0.cache["amg"], LearnedPreconditioner("amg", seed=0).prolongation_values(g0)
            ),
            n,
        )
    assert np.abs(d0 - d_torch).max() > 1e-3 * np.abs(d0).max()


def _assert_cycles_spd(model, a) -> None:
    """The training two-level cycle and the built PyAMG hierarchy are both symmetric
    positive definite (dense check)."""
    g = model.prepare(a)
    with torch.no_grad():
        cyc = TwoLevelCycle(g.cache["amg"], model.prolongation_values(g).double(), model.sweeps)
    for m in (cyc, model.build(a)):
        d = dense(m, a.shape[0])
        assert np.abs(d - d.T).max() <= 1e-10 * np.abs(d).max()
        assert np.linalg.eigvalsh(0.5 * (d + d.T)).min() > 0


@settings(max_examples=12, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    scale=st.floats(0.05, 5.0),
    fam=st.sampled_from(sorted(FAMILIES)),
    sweeps=st.integers(1, 3),
)
def test_property_learned_vcycle_spd_for_any_weights(seed, scale, fam, sweeps):
    a = check_spd_input(FAMILIES[fam](7, seed % 50))
    model = LearnedPreconditioner("amg", hidden=4, seed=0, sweeps=sweeps)
    randomize(model, seed=seed, scale=scale)
    _assert_cycles_spd(model, a)


@pytest.mark.parametrize("seed", [0, 1])
def test_multilevel_pyamg_hierarchy_is_spd_and_deeper(seed):
    a = diffusion2d(20, seed=seed)
    model = LearnedPreconditioner("amg", hidden=4, seed=0)
    randomize(model, seed=seed, scale=1.0)
    m = model.build(a)
    assert len(m.ml.levels) >= 3  # PyAMG built the levels below the learned one
    d = dense(m, a.shape[0])
    assert np.abs(d - d.T).max() <= 1e-10 * np.abs(d).max()
    assert np.linalg.eigvalsh(0.5 * (d + d.T)).min() > 0


def test_gradcheck_through_hierarchy_and_unrolled_pcg():
    """d x_3 / d w for the weights ``w = w_ref exp(U theta)`` (a random 4-dimensional family of
    per-entry weights), through P, the Galerkin product, its Cholesky factor, the
    Gauss-Seidel sweeps and three unrolled PCG steps."""
    a = check_spd_input(anisotropic2d(5, seed=0))
    setup = amg_setup(a)
    n = a.shape[0]
    gen = torch.Generator().manual_seed(0)
    b = torch.randn(2, n, dtype=torch.float64, generator=gen)
    mat = torch.from_numpy(a.toarray())
    u = 0.3 * torch.randn(a.nnz, 4, dtype=torch.float64, generator=gen)

    def fn(theta: torch.Tensor) -> torch.Tensor:
        w = setup.omega0 * torch.exp(u @ theta)
        m = TwoLevelCycle(setup, prolongation_values(setup, w))
        return unrolled_pcg(lambda x: x @ mat, b, m, 3)

    theta = torch.randn(4, dtype=torch.float64, generator=gen).requires_grad_()
    # fast mode: checks v^T J u against finite differences for random u, v
    assert torch.autograd.gradcheck(fn, (theta,), eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)


@contextlib.contextmanager
def swapped(module: torch.nn.Module, name: str, value: torch.Tensor):
    """Replace parameter ``name`` of ``module`` by the tensor ``value`` (for gradcheck)."""
    orig = module._parameters.pop(name)
    setattr(module, name, value)
    try:
        yield
    finally:
        delattr(module, name)
        module._parameters[name] = orig


def _gradcheck_weight(model, a, which: str, steps: int = 3) -> None:
    """float64 gradcheck of ``steps`` unrolled PCG steps' iterate with respect to one layer's
    weight (``"head"``: the prolongation head's output layer, ``"edge"``: its edge map,
    ``"node"``: the node encoder), after checking that the iterate depends on it."""
    batch = make_batches(model, [a], n_rhs=2)[0]
    lin = {
        "head": model.amg_head.out[-1],
        "edge": model.amg_head.edge,
        "node": model.node_enc[0],
    }[which]

    def fn(wt: torch.Tensor) -> torch.Tensor:
        with swapped(lin, "weight", wt):
            m = model.from_graph(batch.graph)
            return unrolled_pcg(batch.op, batch.b, m, steps)

    w0 = lin.weight.detach().clone().requires_grad_()
    with torch.no_grad():  # the iterate depends on these weights (the check is not vacuous)
        assert float((fn(w0 + 0.1) - fn(w0)).abs().max()) > 1e-8
    assert torch.autograd.gradcheck(fn, (w0,), eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)


@pytest.mark.parametrize("which", ["head", "edge", "gnn", "head-2-sweeps"])
def test_gradcheck_model_weights_float64(which):
    """Gradients of PCG's iterate with respect to the network's weights, through the GNN,
    the prolongation, the Galerkin product and its Cholesky factor, and the cycles."""
    a = diffusion2d(5, seed=1)
    sweeps = 2 if which.endswith("sweeps") else 1
    which = which.split("-")[0]
    model = LearnedPreconditioner("amg", hidden=3, seed=0, sweeps=sweeps).double()
    randomize(model, seed=2, scale=0.3)
    # two sweeps reach round-off within three steps here: one step then
    steps = 3 if sweeps == 1 else 1
    _gradcheck_weight(model, a, {"head": "head", "edge": "edge", "gnn": "node"}[which], steps)


def test_build_usable_in_cg_and_scipy_and_untrained_matches_sa_iterations():
    a = diffusion2d(24, seed=5)
    b = np.random.default_rng(0).standard_normal(a.shape[0])
    model = LearnedPreconditioner("amg", seed=0)
    m = model.build(a)
    s = cg(a, torch.from_numpy(b), M=m, tol=1e-8)
    assert s.converged
    count = [0]
    x, info = spla.cg(
        a, b, M=m, rtol=1e-8, atol=0.0, callback=lambda _x: count.__setitem__(0, count[0] + 1)
    )
    assert info == 0 and count[0] == int(s.iterations)
    # the untrained learned level is SA's level (without PyAMG's candidate improvement):
    # iterations within one of PyAMG's default SA
    sa = cg(a, torch.from_numpy(b), M=amg(a), tol=1e-8)
    assert abs(int(s.iterations) - int(sa.iterations)) <= 1


def test_one_training_step_lowers_the_loss():
    mats = [diffusion2d(12, seed=0), graph_laplacian(12, seed=1)]
    model = LearnedPreconditioner("amg", hidden=4, seed=0)
    batches = make_batches(model, mats, n_rhs=2)
    fn = pcg_loss(steps=4)
    with torch.no_grad():
        before = sum(float(fn(model, bt)) for bt in batches)
    loss = sum(fn(model, bt) for bt in batches)
    loss.backward()
    grads = [p.grad for p in model.amg_head.parameters() if p.grad is not None]
    assert grads and any(float(gr.abs().max()) > 0 for gr in grads)
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p -= 1e-3 * p.grad / max(float(p.grad.abs().max()), 1e-30)
    with torch.no_grad():
        after = sum(float(fn(model, bt)) for bt in batches)
    assert after < before


def test_fit_preconditioner_trains_amg_and_checkpoint_roundtrip(tmp_path):
    from unrollsci.train import load_checkpoint, save_checkpoint

    mats = [diffusion2d(10, seed=0), diffusion2d(12, seed=1)]
    model = LearnedPreconditioner("amg", hidden=4, seed=0)
    fit_preconditioner(model, mats, steps=4, epochs=2, lr=1e-2)
    assert float(model.amg_head.out[-1].weight.detach().abs().max()) > 0  # trained away from SA
    save_checkpoint(model, tmp_path / "amg.pt")
    again = load_checkpoint(tmp_path / "amg.pt", expected=LearnedPreconditioner)
    a = diffusion2d(9, seed=3)
    np.testing.assert_array_equal(dense(again.build(a), 81), dense(model.build(a), 81))


def test_amg_bad_arguments():
    with pytest.raises(ValueError, match="no base factor and no ordering"):
        LearnedPreconditioner("amg", base="ic0")
    with pytest.raises(ValueError, match="no base factor and no ordering"):
        LearnedPreconditioner("amg", ordering="rcm")
    model = LearnedPreconditioner("amg", seed=0)
    batch = make_batches(model, [diffusion2d(6, seed=0)], n_rhs=1)[0]
    with pytest.raises(ValueError, match="kind='amg' has none"):
        pcg_loss(loss="frobenius")(model, batch)
    with pytest.raises(TypeError, match="scipy sparse matrix or a torch tensor"):
        model.build([[1.0]])


# --- Ruge-Stuben coarsening (coarsening="rs") and the set-up paths ---------------------------


def _pyamg_rs_p(a):
    from pyamg.classical.interpolate import classical_interpolation, direct_interpolation
    from pyamg.classical.split import RS
    from pyamg.strength import classical_strength_of_connection

    c = classical_strength_of_connection(a, theta=0.25)
    split = RS(c, second_pass=False)
    return (
        sp.csr_matrix(classical_interpolation(a, c, split)),
        sp.csr_matrix(direct_interpolation(a, c, split)),
        split,
    )


@pytest.mark.parametrize("fam", sorted(FAMILIES))
def test_untrained_rs_prolongation_is_pyamg_ruge_stuben_on_direct_pattern(fam):
    a = check_spd_input(FAMILIES[fam](11, 4))
    ref = pyamg.ruge_stuben_solver(a, max_coarse=1, max_levels=2).levels[0].P
    classical, direct, split = _pyamg_rs_p(a)
    model = LearnedPreconditioner("amg", coarsening="rs", layers=0, seed=0)
    g = model.prepare(a)
    with torch.no_grad():
        pm = TwoLevelCycle(g.cache["amg"], model.prolongation_values(g)).prolongation()
    assert pm.shape == ref.shape
    assert abs(pm - sp.csr_matrix(ref)).max() <= 1e-14 * abs(ref).max()
    # the pattern is direct interpolation's: C rows unit vectors, F rows strong C points
    pat = (abs(pm) + abs(direct)).tocsr()
    assert pat.nnz == direct.nnz == pm.nnz
    cpts = np.flatnonzero(split)
    np.testing.assert_array_equal(pm[cpts].toarray(), np.eye(len(cpts)))
    # "rs-direct": the same pattern, PyAMG's direct interpolation as the untrained values
    model = LearnedPreconditioner("amg", coarsening="rs-direct", layers=0, seed=0)
    g = model.prepare(a)
    with torch.no_grad():
        pd = TwoLevelCycle(g.cache["amg"], model.prolongation_values(g)).prolongation()
    assert abs(pd - direct).max() <= 1e-14 * abs(direct).max()
    if fam == "anisotropic":  # strong F-F connections: direct differs from classical
        assert abs(pd - pm).max() > 1e-3 * abs(pm).max()


@pytest.mark.parametrize("coarsening", ["sa", "rs"])
def test_scipy_prolongation_matches_the_differentiable_one(coarsening):
    from unrollsci.precond._amg import prolongation_matrix

    a = check_spd_input(anisotropic2d(9, seed=3))
    model = LearnedPreconditioner("amg", coarsening=coarsening, hidden=4, seed=0)
    randomize(model, seed=5, scale=0.7)
    g = model.prepare(a)
    setup = g.cache["amg"]
    with torch.no_grad():
        h, _ = model._node_states(g)
        w = model.amg_head(h, setup)
        pv = TwoLevelCycle(setup, prolongation_values(setup, w)).prolongation()
    pm = prolongation_matrix(setup, w)
    assert float(w.std()) > 1e-3  # random weights, not the base's
    assert abs(pm - pv).max() <= 1e-13 * abs(pv).max()


@pytest.mark.parametrize("fam", sorted(FAMILIES))
def test_rs_torch_cycle_is_pyamg_cycle_and_untrained_is_pyamg_rs(fam):
    from unrollsci.precond._amg import pyamg_preconditioner

    a = check_spd_input(FAMILIES[fam](9, 2))
    n = a.shape[0]
    model = LearnedPreconditioner("amg", coarsening="rs", layers=0, seed=0).double()
    g = model.prepare(a)
    with torch.no_grad():
        pv0 = model.prolongation_values(g)
    # untrained, multilevel: PyAMG's own Ruge-Stuben hierarchy (same max_coarse)
    ref = pyamg.ruge_stuben_solver(a, max_coarse=10)
    d_ref = dense(lambda x: torch.from_numpy(_vcycle(ref, x.numpy())), n)
    d_un = dense(pyamg_preconditioner(g.cache["amg"], pv0, max_coarse=10), n)
    np.testing.assert_allclose(d_un, d_ref, atol=1e-10 * np.abs(d_ref).max())
    # random weights, two levels: the torch training cycle is the PyAMG cycle
    randomize(model, seed=3, scale=0.5)
    with torch.no_grad():
        pv = model.prolongation_values(g)
    d_torch = dense(TwoLevelCycle(g.cache["amg"], pv), n)
    d_pyamg = dense(pyamg_preconditioner(g.cache["amg"], pv, max_coarse=10**6), n)
    np.testing.assert_allclose(d_torch, d_pyamg, atol=1e-12 * np.abs(d_pyamg).max())
    assert np.abs(d_torch - d_un).max() > 1e-3 * np.abs(d_un).max()


def _vcycle(ml, x: np.ndarray) -> np.ndarray:
    """PyAMG's V-cycle (symmetric Gauss-Seidel, its RS default) applied to columns of x."""
    m = ml.aspreconditioner(cycle="V")
    return np.stack([m @ col for col in x.T], 1).T


@settings(max_examples=12, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    scale=st.floats(0.05, 5.0),
    fam=st.sampled_from(sorted(FAMILIES)),
    layers=st.sampled_from([0, 1]),
    coarsening=st.sampled_from(["rs", "rs-direct"]),
)
def test_property_learned_rs_vcycle_spd_for_any_weights(seed, scale, fam, layers, coarsening):
    a = check_spd_input(FAMILIES[fam](7, seed % 50))
    model = LearnedPreconditioner("amg", coarsening=coarsening, hidden=4, layers=layers, seed=0)
    randomize(model, seed=seed, scale=scale)
    _assert_cycles_spd(model, a)


def test_rs_multilevel_hierarchy_spd_and_deeper():
    a = anisotropic2d(24, seed=1)
    model = LearnedPreconditioner("amg", coarsening="rs", hidden=4, layers=0, seed=0)
    randomize(model, seed=1, scale=1.0)
    m = model.build(a)
    assert len(m.ml.levels) >= 3
    d = dense(m, a.shape[0])
    assert np.abs(d - d.T).max() <= 1e-10 * np.abs(d).max()
    assert np.linalg.eigvalsh(0.5 * (d + d.T)).min() > 0


@pytest.mark.parametrize("which", ["head", "edge", "node"])
def test_gradcheck_rs_weights_through_hierarchy_and_unrolled_pcg(which):
    """float64 gradients of the PCG iterate with respect to the network's weights, through
    the RS prolongation, the Galerkin product, its Cholesky factor and the cycles."""
    a = anisotropic2d(6, seed=2)
    model = LearnedPreconditioner("amg", coarsening="rs", hidden=3, layers=0, seed=0).double()
    randomize(model, seed=2, scale=0.3)
    _gradcheck_weight(model, a, which)


def test_rs_training_lowers_the_loss_and_checkpoint_keeps_coarsening(tmp_path):
    from unrollsci.train import load_checkpoint, save_checkpoint

    mats = [anisotropic2d(12, seed=0), diffusion2d(12, seed=1)]
    model = LearnedPreconditioner("amg", coarsening="rs", hidden=4, layers=0, seed=0)
    batches = make_batches(model, mats, n_rhs=2)
    fn = pcg_loss(steps=3)
    with torch.no_grad():
        before = sum(float(fn(model, bt)) for bt in batches)
    fit_preconditioner(model, mats, steps=3, epochs=3, lr=1e-2, n_rhs=2)
    with torch.no_grad():
        after = sum(float(fn(model, bt)) for bt in batches)
    assert after < before
    save_checkpoint(model, tmp_path / "rs.pt")
    again = load_checkpoint(tmp_path / "rs.pt", expected=LearnedPreconditioner)
    assert again.coarsening == "rs"
    a = anisotropic2d(9, seed=3)
    np.testing.assert_array_equal(dense(again.build(a), 81), dense(model.build(a), 81))


def test_node_features_without_message_passing_match_the_matrix_graph():
    from unrollsci.precond._graph import _build_graph

    for a in (diffusion2d(9, seed=1), anisotropic2d(8, seed=2), graph_laplacian(8, seed=3)):
        a = check_spd_input(a)
        ref = _build_graph(a, "factor", "identity", None).x
        for coarsening in ("sa", "rs"):
            g = LearnedPreconditioner("amg", coarsening=coarsening, layers=0).prepare(a)
            np.testing.assert_allclose(g.x.numpy(), ref.numpy(), rtol=1e-6, atol=1e-6)


def test_sweeps_bad_arguments_and_checkpoint(tmp_path):
    for bad in (0, -1):
        with pytest.raises(ValueError, match="'sweeps' >= 1"):
            LearnedPreconditioner("amg", sweeps=bad)
    with pytest.raises(TypeError, match="'sweeps' to be an integer"):
        LearnedPreconditioner("amg", sweeps=1.5)
    with pytest.raises(ValueError, match="only with kind='amg'"):
        LearnedPreconditioner("factor", sweeps=2)
    from unrollsci.train import load_checkpoint, save_checkpoint

    model = LearnedPreconditioner("amg", hidden=2, layers=0, sweeps=2, seed=0)
    save_checkpoint(model, tmp_path / "s.pt")
    assert load_checkpoint(tmp_path / "s.pt", expected=LearnedPreconditioner).sweeps == 2


def test_coarsening_bad_arguments():
    with pytest.raises(ValueError, match="coarsening 'sa', 'rs' or 'rs-direct'"):
        LearnedPreconditioner("amg", coarsening="pmis")
    with pytest.raises(ValueError, match="only with kind='amg'"):
        LearnedPreconditioner("factor", coarsening="rs")


@pytest.mark.parametrize("fam", sorted(FAMILIES))
def test_rs_learned_entries_read_a_like_a_search(fam):
    """The RS set-up reads a_ij of the learned entries by a sparse product; a search among
    A's keys (the fallback) gives the same values, also with an explicit zero stored."""
    from pyamg.classical.split import RS
    from pyamg.strength import classical_strength_of_connection

    from unrollsci.precond._amg_rs import _entries

    a = check_spd_input(FAMILIES[fam](12, 4))
    n = a.shape[0]
    splitting = RS(classical_strength_of_connection(a, theta=0.25), second_pass=False)
    cpts = np.flatnonzero(splitting)
    fine = np.flatnonzero(splitting == 0)
    rows = np.repeat(np.arange(n), np.diff(a.indptr))
    cols = a.indices.astype(np.int64)
    # the learned pattern: every C neighbour of every F point (row-major, sorted)
    keep = (splitting[rows] == 0) & (splitting[cols] == 1)
    e_row, e_col = rows[keep], cols[keep]
    counts = np.zeros(n, dtype=np.int64)
    np.add.at(counts, e_row, 1)
    got = _entries(a, splitting, counts, e_row, e_col)
    np.testing.assert_array_equal(got, np.asarray(a[e_row, e_col]).ravel())
    assert cpts.size and fine.size
    z = a.copy()
    z.data[np.flatnonzero(keep)[0]] = 0.0  # the product drops it: the search is used
    got = _entries(z, splitting, counts, e_row, e_col)
    np.testing.assert_array_equal(got, np.asarray(z[e_row, e_col]).ravel())
