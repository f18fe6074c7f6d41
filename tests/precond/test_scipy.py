"""Every preconditioner drops into scipy's and PyAMG's Krylov solvers: ``cg(A, b, M=M)``
with ``M`` as built (duck-typed), ``M.to_scipy()`` or ``aslinearoperator(M)`` takes the
same number of iterations as :func:`unrollsci.solvers.cg` at the same tolerance."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse.linalg as spla
import torch

from unrollsci.precond import (
    LearnedPreconditioner,
    amg,
    anisotropic2d,
    chebyshev,
    diffusion2d,
    ic0,
    jacobi,
    mic0,
)
from unrollsci.solvers import cg

BUILDERS = {
    "jacobi": jacobi,
    "ic0": ic0,
    "mic0": mic0,
    "ic0_ordered": lambda a: ic0(a, ordering="grid"),
    "chebyshev": chebyshev,
    "amg": amg,
    "learned_factor": lambda a: LearnedPreconditioner("factor", seed=0).build(a),
    "learned_factor_mic_ordered": lambda a: LearnedPreconditioner(
        "factor", base="mic", ordering="rcm", seed=0
    ).build(a),
    "learned_inverse": lambda a: LearnedPreconditioner("inverse", seed=0).build(a),
    "learned_block": lambda a: LearnedPreconditioner("block", block_size=8, seed=0).build(a),
    "learned_amg": lambda a: LearnedPreconditioner("amg", seed=0).build(a),
    "learned_poly": lambda a: LearnedPreconditioner("poly", seed=0).build(a),
    "learned_poly_noscale": lambda a: LearnedPreconditioner("poly", scaling=False, seed=0).build(a),
}


def _random_weights(builder_name: str, a):
    """A learned preconditioner with non-trivial (random) output weights."""
    kind = builder_name.split("_")[1]
    model = LearnedPreconditioner(kind, seed=1, **({"block_size": 8} if kind == "block" else {}))
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model.build(a)


def _scipy_iterations(a, b, m, tol):
    count = [0]

    def cb(_xk):
        count[0] += 1

    x, info = spla.cg(a, b, M=m, rtol=tol, atol=0.0, maxiter=1000, callback=cb)
    return x, info, count[0]


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_scipy_cg_same_iterations_as_unrollsci(name):
    a = anisotropic2d(12, seed=3) if "block" in name else diffusion2d(12, seed=3)
    b = np.random.default_rng(0).standard_normal(a.shape[0])
    m = BUILDERS[name](a)
    tol = 1e-8
    ref = cg(a, torch.from_numpy(b), M=m, tol=tol, max_iter=1000)
    assert bool(ref.converged)
    for form in (m, m.to_scipy(), spla.aslinearoperator(m)):
        x, info, its = _scipy_iterations(a, b, form, tol)
        assert info == 0
        assert its == int(ref.iterations), (name, type(form).__name__)
        assert np.linalg.norm(b - a @ x) <= tol * np.linalg.norm(b)
        np.testing.assert_allclose(x, ref.x.numpy(), rtol=1e-6, atol=1e-8 * np.abs(x).max())


@pytest.mark.parametrize("name", ["learned_factor", "learned_inverse", "learned_block"])
def test_scipy_cg_random_weights(name):
    a = diffusion2d(12, seed=4)
    b = np.random.default_rng(1).standard_normal(a.shape[0])
    """Random weights make M far from A^{-1} (tens of iterations on 144 unknowns), where
    rounding in the two implementations (unrollsci solves scaled to ||b|| = 1) separates the
    residual histories in the last digits; they agree to 1e-6 for the first iterations and
    the stop may come one iteration apart."""
    m = _random_weights(name, a)
    ref = cg(a, torch.from_numpy(b), M=m, tol=1e-8, max_iter=1000)
    hist: list[float] = []
    nb = np.linalg.norm(b)
    x, info = spla.cg(
        a,
        b,
        M=m,
        rtol=1e-8,
        atol=0.0,
        callback=lambda xk: hist.append(np.linalg.norm(b - a @ xk) / nb),
    )
    assert info == 0 and abs(len(hist) - int(ref.iterations)) <= 1
    assert len(hist) > 15
    np.testing.assert_allclose(hist[:10], ref.residuals[:10], rtol=1e-6)


def test_preconditioners_are_scipy_operators_in_float64():
    a = diffusion2d(6, seed=0)
    r = np.random.default_rng(2).standard_normal(36)
    for name, build in BUILDERS.items():
        m = build(a)
        assert m.dtype is None, name  # follows the vector; scipy sees float64
        lo = spla.aslinearoperator(m)
        assert lo.shape == (36, 36) and lo.dtype == np.float64, name
        with torch.no_grad():
            ref = m(torch.from_numpy(r)[None])[0].numpy()
        np.testing.assert_allclose(lo.matvec(r), ref, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(m.to_scipy().matvec(r), ref, rtol=1e-12, atol=1e-14)
        both = m.matmat(np.stack([r, 2 * r], 1))
        np.testing.assert_allclose(both[:, 1], 2 * ref, rtol=1e-12, atol=1e-14)


def test_float32_numpy_input_computes_in_float32():
    a = diffusion2d(6, seed=0)
    m = ic0(a)
    r = np.ones(36, dtype=np.float32)
    z = m.matvec(r)
    assert z.dtype == np.float32
    np.testing.assert_allclose(z, m.matvec(r.astype(np.float64)), rtol=1e-5)
    assert m.to_scipy(np.float32).matvec(r).dtype == np.float32


@pytest.mark.parametrize("name", ["ic0", "learned_factor", "learned_poly", "amg", "learned_amg"])
def test_pyamg_krylov_accepts_preconditioners(name):
    pyamg = pytest.importorskip("pyamg")
    a = diffusion2d(12, seed=5)
    b = np.random.default_rng(3).standard_normal(a.shape[0])
    m = BUILDERS[name](a)
    x_ref = spla.spsolve(a.tocsc(), b)
    for solver in (pyamg.krylov.cg, pyamg.krylov.fgmres):
        x, info = solver(a, b, M=m, tol=1e-10, maxiter=100)
        assert info == 0, (name, solver.__name__)
        np.testing.assert_allclose(x, x_ref, rtol=1e-6, atol=1e-7 * np.abs(x_ref).max())
    # and as the Krylov accelerator's preconditioner of a PyAMG hierarchy solve
    ml = pyamg.smoothed_aggregation_solver(a)
    res: list[float] = []
    x = ml.solve(b, tol=1e-10, accel="cg", residuals=res)
    assert np.linalg.norm(b - a @ x) <= 1e-8 * np.linalg.norm(b)
