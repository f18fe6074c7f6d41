"""Conjugate gradient against scipy's sparse direct solver, gradients, and SPD checks."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

from unrollsci import ConvergenceWarning
from unrollsci.operators import MatrixOperator, SparseOperator
from unrollsci.solvers import cg, check_symmetric

F64 = torch.float64


def _spd(n: int, seed: int) -> sp.csr_matrix:
    """Random sparse SPD matrix: a weighted graph Laplacian plus a positive diagonal."""
    rng = np.random.default_rng(seed)
    a = sp.random(n, n, density=5.0 / n, random_state=rng, format="csr")
    a = abs(a + a.T)
    lap = sp.diags(np.asarray(a.sum(axis=1)).ravel()) - a
    return (lap + sp.diags(rng.uniform(0.05, 1.0, n))).tocsr()


FORMS = ["scipy", "torch_csr", "torch_coo", "dense", "operator"]


def _as_form(a: sp.csr_matrix, form: str, device):
    if form == "scipy":
        return a
    dense = torch.tensor(a.toarray(), dtype=F64, device=device)
    return {
        "torch_csr": lambda: dense.to_sparse_csr(),
        "torch_coo": lambda: dense.to_sparse(),
        "dense": lambda: dense,
        "operator": lambda: SparseOperator(a).to(device),
    }[form]()


@pytest.mark.parametrize("form", FORMS)
def test_matches_spsolve_batched(form, device):
    if form == "scipy" and device.type != "cpu":
        pytest.skip("scipy matrices live on the CPU")
    a = _spd(300, 0)
    rng = np.random.default_rng(1)
    b = rng.standard_normal((4, 300))
    ref = np.stack([spla.spsolve(a.tocsc(), bi) for bi in b])
    sol = cg(_as_form(a, form, device), torch.tensor(b, device=device), tol=1e-13)
    assert sol.converged
    x = sol.x.cpu().numpy()
    assert np.linalg.norm(x - ref) / np.linalg.norm(ref) < 1e-8


def test_unbatched_rhs_and_warm_start(device):
    a = _spd(100, 2)
    b = torch.randn(100, dtype=F64, device=device)
    A = _as_form(a, "torch_csr", device)
    sol = cg(A, b, tol=1e-12)
    assert sol.x.shape == (100,)
    warm = cg(A, b, x0=sol.x, tol=1e-10)
    assert warm.iterations <= 1


def test_preconditioned_matches_and_helps(device):
    a = _spd(400, 3)
    # Badly scaled diagonal makes Jacobi effective.
    s = sp.diags(np.logspace(0, 3, 400))
    a = (s @ a @ s).tocsr()
    b = torch.randn(2, 400, dtype=F64, device=device)
    A = _as_form(a, "torch_csr", device)
    diag = torch.tensor(a.diagonal(), dtype=F64, device=device)
    jac = cg(A, b, M=lambda r: r / diag, tol=1e-10)
    jac_op = cg(A, b, M=MatrixOperator(torch.diag(1 / diag)), tol=1e-10)
    assert jac.converged and jac_op.converged
    # Without the preconditioner the same iteration budget is far from enough.
    with pytest.warns(ConvergenceWarning):
        plain = cg(A, b, tol=1e-10, max_iter=jac.iterations)
    assert plain.residual > 1e3 * jac.residual
    ref = np.stack([spla.spsolve(a.tocsc(), bi) for bi in b.cpu().numpy()])
    assert np.linalg.norm(jac.x.cpu().numpy() - ref) / np.linalg.norm(ref) < 1e-8
    torch.testing.assert_close(jac.x, jac_op.x)


def test_gradcheck_wrt_matrix_and_rhs(device):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(5, 5, generator=g, dtype=F64)
    base = (q @ q.T + 5 * torch.eye(5, dtype=F64)).to(device)
    b = torch.randn(2, 5, generator=g, dtype=F64).to(device).requires_grad_()
    w = torch.zeros(5, 5, dtype=F64, device=device, requires_grad=True)

    def f(bb, ww):
        sym = base + ww + ww.T  # stays symmetric for every perturbation
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            return cg(MatrixOperator(sym), bb, tol=0.0, max_iter=5).x

    assert torch.autograd.gradcheck(f, (b, w))
    # ...and the gradient of the converged solve equals the analytic one: d x / d b = A^{-1}.
    b2 = torch.randn(5, dtype=F64, device=device, requires_grad=True)
    cg(base, b2, tol=1e-14).x.sum().backward()
    expected = torch.linalg.solve(base, torch.ones(5, dtype=F64, device=device))
    torch.testing.assert_close(b2.grad, expected)


def test_rejects_non_square(device):
    with pytest.raises(ValueError, match=r"square matrix \(got shape \(3, 4\)\)"):
        cg(torch.randn(3, 4, dtype=F64, device=device), torch.randn(3, dtype=F64, device=device))
    with pytest.raises(ValueError, match="square"):
        cg(sp.random(3, 4, density=0.5, format="csr"), torch.randn(3, dtype=F64))


def test_rejects_non_symmetric(device):
    a = torch.tensor([[2.0, 1.0], [0.0, 2.0]], dtype=F64, device=device)
    with pytest.raises(ValueError, match="symmetric"):
        cg(a, torch.ones(2, dtype=F64, device=device))
    with pytest.raises(ValueError, match="symmetric"):
        check_symmetric(MatrixOperator(a))


@pytest.mark.parametrize("form", ["dense", "torch_csr", "scipy"])
def test_detects_indefinite(form, device):
    if form == "scipy" and device.type != "cpu":
        pytest.skip("scipy matrices live on the CPU")
    a = sp.csr_matrix(np.diag([3.0, 1.0, -2.0, 4.0]))
    with pytest.raises(ValueError, match="not positive definite"):
        cg(_as_form(a, form, device), torch.ones(4, dtype=F64, device=device))


def test_detects_indefinite_preconditioner(device):
    a = _spd(50, 4)
    A = _as_form(a, "torch_csr", device)
    with pytest.raises(ValueError, match="preconditioner M is not positive definite"):
        cg(A, torch.ones(50, dtype=F64, device=device), M=lambda r: -r)


def test_bad_rhs(device):
    a = _as_form(_spd(10, 0), "dense", device)
    with pytest.raises(ValueError, match=r"Expected 'b' of length 10.*\(2, 9\)"):
        cg(a, torch.ones(2, 9, dtype=F64, device=device))
    nan = torch.ones(10, dtype=F64, device=device)
    nan[0] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        cg(a, nan)
    with pytest.raises(TypeError, match="LinearOperator, a torch tensor or a scipy"):
        cg([[1.0]], torch.ones(1))


def test_nonconvergence_reported():
    a = _spd(200, 5)
    with pytest.warns(ConvergenceWarning, match="cg reached max_iter=2"):
        sol = cg(a, torch.ones(200, dtype=F64), max_iter=2)
    assert not sol.converged and len(sol.residuals) == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs two devices")
def test_device_mismatch():
    a = torch.eye(3, dtype=F64, device="cuda")
    with pytest.raises(ValueError, match="one device"):
        cg(a, torch.ones(3, dtype=F64))


@pytest.mark.parametrize("which", ["jacobi", "ic0", "chebyshev"])
def test_tol_zero_with_a_preconditioner_converges_to_working_precision(which):
    """tol=0 runs until the residual vanishes: with an SPD preconditioner r^T M r
    underflows before r^T r does, which was reported as an indefinite M (found by fuzzing)."""
    from unrollsci import precond
    from unrollsci.precond import diffusion2d

    a = diffusion2d(8, seed=0)
    b = torch.from_numpy(np.random.default_rng(1).standard_normal(64))
    sol = cg(a, b, M=getattr(precond, which)(a), tol=0.0)
    assert sol.converged
    res = np.linalg.norm(a @ sol.x.numpy() - b.numpy()) / np.linalg.norm(b.numpy())
    assert res < 1e-14


def test_zero_rhs_with_a_warm_start_returns_zero():
    """b = 0: x = 0 exactly whatever x0 (it iterated until underflow and raised before);
    batched with a nonzero column, that column is solved as usual."""
    from unrollsci.precond import diffusion2d, ic0

    a = diffusion2d(8, seed=0)
    m = ic0(a)
    b = torch.zeros(2, 64, dtype=torch.float64)
    b[1] = torch.from_numpy(np.random.default_rng(2).standard_normal(64))
    sol = cg(a, b, M=m, x0=torch.ones(2, 64, dtype=torch.float64), tol=1e-10)
    assert sol.converged
    assert torch.equal(sol.x[0], torch.zeros(64, dtype=torch.float64))
    np.testing.assert_allclose(a @ sol.x[1].numpy(), b[1].numpy(), atol=1e-8)
    one = cg(a, b[0], M=m, x0=torch.ones(64, dtype=torch.float64))
    assert one.converged and one.iterations == 0 and not one.x.any()
