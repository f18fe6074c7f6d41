"""Regression tests of the precond audit (Dec 7): the block factor's inverse cache and grad
mode, a non-symmetric PyAMG cycle refused, learned AMG without message passing scale
invariant, orderings of any scipy format, documented attributes on a reordered factor, and
integer size arguments of the learned preconditioner."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from unrollsci.precond import (
    LearnedPreconditioner,
    amg,
    anisotropic2d,
    candidate_orderings,
    diffusion2d,
    ic0,
    mic0,
    reorder,
    select_ordering,
)
from unrollsci.precond._classical import _HIERARCHY_OPTIONS, _check_symmetric_cycle


def _perturbed(model: LearnedPreconditioner, seed: int = 0, size: float = 0.3):
    """The model with every weight moved (output layers nonzero: a 'trained' model)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(size * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model


# --- 1. block factor: an inverse formed under no_grad is not served with grad ------------


def test_block_gradient_not_cut_by_an_earlier_no_grad_use():
    a = diffusion2d(5, seed=0)
    n = a.shape[0]
    model = _perturbed(LearnedPreconditioner("block", block_size=5, seed=0).double())
    m = model.from_graph(model.prepare(a))
    b = torch.ones(1, n, dtype=torch.float64, requires_grad=True)
    with torch.no_grad():
        m(torch.ones(1, n, dtype=torch.float64))  # e.g. an evaluation first
    (m(b) ** 2).sum().backward()
    got = model.diag_head[-1].weight.grad
    assert got is not None and got.abs().sum() > 0
    # the same gradient as an operator that never saw no_grad
    ref_model = _perturbed(LearnedPreconditioner("block", block_size=5, seed=0).double())
    (ref_model.from_graph(ref_model.prepare(a))(b.detach()) ** 2).sum().backward()
    torch.testing.assert_close(got, ref_model.diag_head[-1].weight.grad)
    # both cached inverses give the same operator
    with torch.no_grad():
        z_plain = m(b.detach())
    z_graph = m(b.detach())
    assert z_graph.requires_grad and not z_plain.requires_grad
    torch.testing.assert_close(z_graph.detach(), z_plain, rtol=0, atol=0)


# --- 2. amg(): a non-symmetric cycle is refused ----------------------------------------


@pytest.mark.parametrize(
    "kw",
    [
        dict(
            presmoother=("gauss_seidel", {"sweep": "forward"}),
            postsmoother=("gauss_seidel", {"sweep": "forward"}),
        ),
        dict(symmetry="nonsymmetric"),
    ],
)
def test_amg_refuses_a_nonsymmetric_cycle(kw):
    a = diffusion2d(12, sigma=2.0, seed=0)
    state = np.random.get_state()
    with pytest.raises(ValueError, match="symmetric"):
        amg(a, **kw)
    np.testing.assert_array_equal(np.random.get_state()[1], state[1])


@pytest.mark.parametrize(
    "kw",
    [
        {},
        dict(
            presmoother=("gauss_seidel", {"sweep": "forward"}),
            postsmoother=("gauss_seidel", {"sweep": "backward"}),
        ),
        dict(presmoother="jacobi", postsmoother="jacobi"),
        # the options the AMG benchmark tunes
        {"strength": ("symmetric", {"theta": 0.08})},
        {"smooth": ("energy", {"degree": 2})},
        {"improve_candidates": None},
    ],
)
def test_amg_accepts_symmetric_cycles_and_its_gradient_is_the_adjoint(kw):
    a = diffusion2d(12, sigma=2.0, seed=0)
    n = a.shape[0]
    m = amg(a, **kw)
    _check_symmetric_cycle(m._apply_np, n)  # also for the options that skip the probe
    e = m(torch.eye(n, dtype=torch.float64))  # rows: (M e_i)^T, so e = M^T
    r = torch.randn(1, n, dtype=torch.float64, requires_grad=True)
    w = torch.randn(1, n, dtype=torch.float64)
    (m(r) * w).sum().backward()
    torch.testing.assert_close(r.grad[0], e @ w[0], rtol=1e-10, atol=1e-12)


def test_amg_hierarchy_options_are_pyamg_sa_arguments():
    import inspect

    import pyamg

    params = inspect.signature(pyamg.smoothed_aggregation_solver).parameters
    assert _HIERARCHY_OPTIONS <= set(params)


# --- 3. learned AMG without message passing: scale invariant -----------------------------


@pytest.mark.parametrize("coarsening", ["sa", "rs", "rs-direct"])
@pytest.mark.parametrize("scale", [1e38, 1e39, 1e-42, 1e-46, 1e-50, 1e-100])
def test_learned_amg_layers0_is_scale_invariant(coarsening, scale, capfd):
    a = diffusion2d(8, seed=0)
    n = a.shape[0]
    eye = torch.eye(n, dtype=torch.float64)
    for model in (
        LearnedPreconditioner("amg", coarsening=coarsening, layers=0, seed=0),
        _perturbed(LearnedPreconditioner("amg", coarsening=coarsening, layers=0, seed=0), 1, 0.5),
    ):
        ref = model.build(a)(eye)
        out = model.build(sp.csr_matrix(a * scale))(eye) * scale
        assert torch.isfinite(out).all()
        # 1e-11 of the largest entry: the untrained SA hierarchy differs by up to 2e-12
        # between c * A and A at any scale (1e-3 too, and with layers=1): PyAMG's round-off
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-11 * ref.abs().max().item())
        # the features themselves, not only the (untrained) output
        g0, g1 = model.prepare(a), model.prepare(sp.csr_matrix(a * scale))
        torch.testing.assert_close(g1.x, g0.x, rtol=1e-6, atol=1e-7)
    capfd.readouterr()  # PyAMG's classical interpolation prints notes on scaled matrices


# --- 4a. reorder / candidate_orderings: any scipy format, the caller's matrix untouched ---


@pytest.mark.parametrize("fmt", ["coo", "lil", "dok", "csc", "bsr"])
@pytest.mark.parametrize("ordering", ["grid", "rcm"])
def test_reorder_takes_any_scipy_format(fmt, ordering):
    a = anisotropic2d(6, seed=7)
    given = a.asformat(fmt)
    before = given.copy()
    b, perm, name = reorder(given, ordering)
    ref_b, ref_perm, ref_name = reorder(a, ordering)
    assert name == ref_name
    p = np.arange(a.shape[0]) if perm is None else perm
    assert b.format == "csr" and b.has_canonical_format
    assert abs(sp.csr_matrix(b) - a[p][:, p]).max() == 0
    assert abs(given - before).max() == 0 and given.format == fmt
    cands = candidate_orderings(given, ordering)
    assert set(cands) == set(candidate_orderings(a, ordering))


def test_reorder_non_canonical_csr_is_not_modified():
    a = anisotropic2d(6, seed=7)
    idx, dat, ptr = [], [], [0]
    for i in range(a.shape[0]):  # every entry stored twice, halves, columns reversed
        s, e = a.indptr[i], a.indptr[i + 1]
        idx += list(a.indices[s:e][::-1]) * 2
        dat += list(a.data[s:e][::-1] / 2) * 2
        ptr.append(len(idx))
    dup = sp.csr_matrix((np.array(dat), np.array(idx), np.array(ptr)), shape=a.shape)
    data, indices = dup.data.copy(), dup.indices.copy()
    b, perm, _ = reorder(dup, "grid")
    p = np.arange(a.shape[0]) if perm is None else perm
    assert b.has_canonical_format
    np.testing.assert_allclose((b - a[p][:, p]).toarray(), 0, atol=1e-14)
    np.testing.assert_array_equal(dup.data, data)
    np.testing.assert_array_equal(dup.indices, indices)


# --- 4b. select_ordering refuses a name --------------------------------------------------


def test_select_ordering_rejects_a_string_clearly():
    with pytest.raises(TypeError, match="candidate_orderings"):
        select_ordering(diffusion2d(4, seed=0), "rcm")
    with pytest.raises(TypeError, match="mapping"):
        select_ordering(diffusion2d(4, seed=0), [np.arange(16)])


# --- 4c. ic0 / mic0 with an ordering keep their documented attributes ---------------------


@pytest.mark.parametrize("f, attr", [(ic0, "shift"), (mic0, "variant"), (mic0, "omega")])
def test_ordered_factor_keeps_documented_attributes(f, attr):
    m = f(anisotropic2d(16, seed=7), ordering="grid")
    assert m.perm is not None  # a reordered factor (PermutedPreconditioner)
    assert getattr(m, attr) == getattr(m.inner, attr)


# --- 4d. integer size arguments -----------------------------------------------------------


@pytest.mark.parametrize(
    "kw",
    [
        dict(block_size=3.5),
        dict(hidden=2.5),
        dict(hidden=True),
        dict(min_n=2.9),
        dict(layers=1.7),
        dict(layers=False),
        dict(max_n=100.0),
        dict(degree=8.0),
        dict(hidden="8"),
    ],
)
def test_learned_rejects_non_integer_sizes(kw):
    with pytest.raises(TypeError, match="integer"):
        LearnedPreconditioner("block", **kw)


def test_learned_accepts_numpy_integer_sizes():
    m = LearnedPreconditioner("block", hidden=np.int64(4), block_size=np.int32(3), max_n=None)
    assert m.hidden == 4 and m.block_size == 3
    with pytest.raises(TypeError, match="'sweeps' to be an integer"):
        LearnedPreconditioner("amg", sweeps=True)


@pytest.mark.parametrize("name", ["chebyshev", "amg"])
def test_preconditioner_does_not_follow_a_later_edit_of_the_callers_matrix(name):
    """chebyshev() and amg() kept the caller's scipy arrays and read them lazily: after
    ``A.data *= 3`` the built preconditioner matched neither the old nor the new matrix."""
    import scipy.sparse as sp

    from unrollsci import precond

    build = getattr(precond, name)
    a0 = sp.csr_matrix(precond.diffusion2d(6, seed=0))
    r = torch.randn(1, a0.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    a = a0.copy()
    m = build(a)
    a.data *= 3
    torch.testing.assert_close(m(r), build(a0)(r), rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", ["factor", "block", "inverse", "poly"])
@pytest.mark.parametrize(("dtype", "scale"), [(torch.float32, 3e10), (torch.float64, 1e100)])
def test_learned_preconditioner_spd_for_huge_finite_weights(kind, dtype, scale):
    """'SPD for any weights': at huge but finite weights the network overflowed inside
    (inf - inf, silu(-inf)) and build() returned an all-NaN operator, which cg cannot
    detect (a NaN curvature test is not <= 0)."""
    a = diffusion2d(8, seed=0)
    model = LearnedPreconditioner(kind, seed=0).to(dtype)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_((torch.randn(p.shape, generator=gen, dtype=torch.float64) * scale).to(dtype))
    dense = model.build(a)(torch.eye(a.shape[0], dtype=torch.float64))
    assert torch.isfinite(dense).all()
    assert torch.linalg.eigvalsh((dense + dense.T) / 2).min() > 0
