"""Round dec15 of the audits ("dec15" names the round, not a date): preconditioner argument
checks, float32 feature casts, SA without aggregates, narrow-dtype builders, subnormal
scales. Each test fails on the code before the round."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from unrollsci.precond import (
    LearnedPreconditioner,
    anisotropic2d,
    chebyshev,
    diffusion2d,
    fit_preconditioner,
    ic0,
    make_batches,
    mic0,
)
from unrollsci.precond._amg import amg_setup
from unrollsci.precond._amg_rs import pow2_scaled, rs_setup
from unrollsci.solvers import cg

F32_MAX = float(np.finfo(np.float32).max)


# 1. adaptive_tol, max_steps, n_rhs


@pytest.mark.parametrize("tol", [-1.0, 0.0, float("nan"), float("inf")])
def test_adaptive_tol_must_be_finite_and_positive(tol):
    """A tolerance <= 0 or NaN is never reached: every system silently got max_steps
    unrolled steps (training at round-off)."""
    a = diffusion2d(6, seed=0)
    with pytest.raises(ValueError, match="'adaptive_tol'"):
        make_batches(LearnedPreconditioner("factor", seed=0), [a], adaptive_tol=tol)
    with pytest.raises(ValueError, match="'adaptive_tol'"):
        fit_preconditioner(
            LearnedPreconditioner("factor", seed=0), [a], epochs=1, steps=3, adaptive_tol=tol
        )


@pytest.mark.parametrize(
    ("kw", "err"),
    [
        ({"max_steps": 0}, ValueError),  # was silently replaced by pcg_loss's steps
        ({"max_steps": -3}, ValueError),  # failed later, naming 'steps'
        ({"max_steps": 2.5}, TypeError),
        ({"max_steps": True}, TypeError),
        ({"n_rhs": 0}, ValueError),  # numpy's bare errors
        ({"n_rhs": -2}, ValueError),
        ({"n_rhs": 2.0}, TypeError),
    ],
)
def test_make_batches_counts_are_integers_at_least_one(kw, err):
    a = diffusion2d(6, seed=0)
    name = next(iter(kw))
    with pytest.raises(err, match=f"'{name}'"):
        make_batches(LearnedPreconditioner("factor", seed=0), [a], adaptive_tol=1e-6, **kw)


def test_max_steps_caps_the_adaptive_unroll_length():
    """max_steps=1 is honoured: the untrained (SSOR) preconditioner needs more than one PCG
    step for 1e-12 (the reference: plain cg with that preconditioner)."""
    a = diffusion2d(6, seed=0)
    model = LearnedPreconditioner("factor", seed=0)
    ref = cg(a, torch.ones(a.shape[0], dtype=torch.float64), M=model.build(a), tol=1e-6)
    assert ref.iterations > 1
    batch = make_batches(model, [a], n_rhs=1, adaptive_tol=1e-12, max_steps=1)[0]
    assert batch.steps == 1


# 2. float32 feature casts


def _row_scaled_tridiagonal(n: int = 10):
    lap = sp.diags([-np.ones(n - 1), 2 * np.ones(n), -np.ones(n - 1)], [-1, 0, 1])
    d = sp.diags([1.0, 1e40] + [1.0] * (n - 2))
    return (d @ lap @ d).tocsr()


def _row_scaled_diffusion():
    a0 = diffusion2d(8, seed=0)
    d = 10.0 ** np.random.default_rng(0).uniform(-50, 50, a0.shape[0])
    return (sp.diags(d) @ a0 @ sp.diags(d)).tocsr()


def test_sa_features_are_clipped_to_float32_not_overflowed():
    """a_ik T_k / (d_i T_i) of neighbouring rows 1e40 apart overflowed in the float32 cast
    (RuntimeWarning from unrollsci); now clipped, equal to an entry-by-entry reference."""
    a = _row_scaled_tridiagonal()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = amg_setup(a)
        m = LearnedPreconditioner("amg", seed=0).build(a)
    t = s.t.toarray()
    tv = t.sum(1)  # one entry per row at most
    dense, d = a.toarray(), a.diagonal()
    ref = []
    for i, k in zip(s.e_row.tolist(), s.e_col.tolist(), strict=True):
        v = dense[i, k] * tv[k] / (d[i] * tv[i]) if tv[i] > 0 else 0.0
        ref.append(np.float32(np.clip(v, -F32_MAX, F32_MAX)))
    feat = s.edge_attr[:, 3].numpy()
    assert np.isfinite(feat).all() and np.abs(feat).max() == np.float32(F32_MAX)
    np.testing.assert_array_equal(feat, np.array(ref, dtype=np.float32))
    b = torch.from_numpy(a @ np.ones(a.shape[0]))
    assert cg(a, b, M=m, tol=1e-10).converged


@pytest.mark.parametrize("coarsening", ["rs", "rs-direct"])
def test_rs_features_are_clipped_to_float32(coarsening):
    """The same cast in the RS set-up (P0's values and row sums, rows 1e+-50 apart)."""
    a = _row_scaled_diffusion()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = rs_setup(a, direct=coarsening == "rs-direct")
    p0 = s.t
    learned = s.target.numpy()
    rowsum = np.asarray(p0 @ np.ones(p0.shape[1]))
    ref1 = np.clip(np.asarray(p0.data)[learned], -F32_MAX, F32_MAX).astype(np.float32)
    ref3 = np.clip(rowsum[s.e_row.numpy()], -F32_MAX, F32_MAX).astype(np.float32)
    np.testing.assert_array_equal(s.edge_attr[:, 1].numpy(), ref1)
    np.testing.assert_array_equal(s.edge_attr[:, 3].numpy(), ref3)


def test_mic_base_diagonal_feature_is_clipped_to_float32():
    """x[3] (the MIC base's diagonal, rescaled to S's factor) overflowed in the float32
    cast on rows scaled by 10^U(-50, 50); now clipped, equal to mic0's own factor."""
    a = _row_scaled_diffusion()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        g = LearnedPreconditioner("factor", base="mic", seed=0).prepare(a)
    ref = mic0(a).factor().diagonal() / np.sqrt(a.diagonal())
    assert np.abs(ref).max() > F32_MAX  # the case: beyond float32
    x3 = g.x[:, 3].numpy()
    assert np.isfinite(g.x.numpy()).all() and np.isfinite(g.edge_attr.numpy()).all()
    np.testing.assert_allclose(x3, np.clip(ref, -F32_MAX, F32_MAX), rtol=1e-6)


# 3. smoothed aggregation without aggregates


def test_sa_without_couplings_trains_like_rs():
    """On a diagonal SPD matrix PyAMG's T is one zero column: P^T A P was singular and
    training raised 'the prolongation weights are degenerate'. Now nc = 0 (RS's all-F
    splitting) and both cycles are the smoother alone: exact, A^{-1} r."""
    d = np.arange(1.0, 13.0)
    a = sp.diags(d).tocsr()
    model = LearnedPreconditioner("amg", seed=0)
    g = model.prepare(a)
    assert g.cache["amg"].nc == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hist = fit_preconditioner(model, [a], steps=2, epochs=1)
    assert np.isfinite(hist.train_loss).all()
    r = torch.randn(3, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ref = r / torch.from_numpy(d)
    torch.testing.assert_close(model.from_graph(model.prepare(a))(r), ref)
    torch.testing.assert_close(model.build(a)(r), ref)


# 4. narrow-dtype builders


@pytest.mark.parametrize("scale", [1e-90, 1e90])
@pytest.mark.parametrize("builder", [ic0, mic0, chebyshev])
def test_float32_builders_refuse_a_matrix_outside_float32(builder, scale):
    """These returned a preconditioner whose every output was NaN (chebyshev at 1e90: an
    overflow warning at the first application); jacobi already refused."""
    a = (diffusion2d(5, seed=0) * scale).tocsr()
    with pytest.raises(ValueError, match="float32"):
        builder(a, dtype=torch.float32)
    m = builder(a)  # float64 holds it
    assert torch.isfinite(m(torch.ones(1, a.shape[0], dtype=torch.float64))).all()


@pytest.mark.parametrize("builder", [ic0, mic0, chebyshev])
def test_float32_builders_unchanged_on_ordinary_matrices(builder):
    a = diffusion2d(5, seed=0)
    r = torch.randn(2, a.shape[0], generator=torch.Generator().manual_seed(0))
    z32 = builder(a, dtype=torch.float32)(r)
    z64 = builder(a)(r.double())
    torch.testing.assert_close(z32.double(), z64, rtol=1e-5, atol=1e-6)


# 5. pow2_scaled on a subnormal matrix


def test_pow2_scaled_stays_finite_for_a_subnormal_matrix():
    """np.ldexp(1, 1034) overflowed (RuntimeWarning), s = inf and the learned AMG build
    failed; now s = 2^1023 and the hierarchy is that of the exactly rescaled matrix."""
    a = (anisotropic2d(5, seed=1) * 1e-310).tocsr()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a_s, s = pow2_scaled(a)
    assert s == 2.0**1023
    np.testing.assert_array_equal(a_s.data, a.data * s)
    assert 2.0**-51 <= np.abs(a_s.data).max() < 0.5
    normal = a_s.copy()  # the same values times 2^1023, exactly
    n = a.shape[0]
    r = torch.randn(3, n, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    r = r * 2.0**-1000
    for kw in ({}, {"coarsening": "rs"}):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            m_sub = LearnedPreconditioner("amg", seed=0, **kw).build(a)
        m_norm = LearnedPreconditioner("amg", seed=0, **kw).build(normal)
        # build(c A) = build(A) / c: here A = normal * 2^-1023
        torch.testing.assert_close(m_sub(r), m_norm(r) * 2.0**1023, rtol=1e-12, atol=0)


# 6. silent coercions


@pytest.mark.parametrize("restarts", [2.7, True, "3"])
def test_restarts_must_be_an_integer(restarts):
    a, v = diffusion2d(5, seed=0), diffusion2d(5, seed=1)
    with pytest.raises(TypeError, match="'restarts' to be an integer"):
        fit_preconditioner(
            LearnedPreconditioner("factor", seed=0, layers=0),
            [a],
            val_matrices=[v],
            epochs=1,
            steps=3,
            restarts=restarts,
        )


@pytest.mark.parametrize("scaling", ["False", "True", 0, 1, None])
def test_scaling_must_be_a_bool(scaling):
    """bool("False") is True: scaling="False" gave a model with scaling on."""
    with pytest.raises(TypeError, match="'scaling' to be a bool"):
        LearnedPreconditioner("poly", scaling=scaling)
    with pytest.raises(TypeError, match="'scaling' to be a bool"):
        LearnedPreconditioner("factor", scaling=scaling)


def test_scaling_accepts_numpy_bools():
    assert LearnedPreconditioner("poly", scaling=np.bool_(False)).scaling is False
    assert LearnedPreconditioner("poly", scaling=False).scaling is False
