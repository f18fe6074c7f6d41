"""The differentiation modes of the one CG loop (unrollsci.solvers._loop): ``cg(grad=...)``
and the QEq charge solve (``solve_charges(grad=...)``) against central finite differences
(float64) and against each other."""

from __future__ import annotations

import warnings

import pytest
import torch
from ase.build import molecule

from unrollsci import ConvergenceWarning
from unrollsci.chem import solve_charges
from unrollsci.operators import MatrixOperator
from unrollsci.solvers import cg

F64 = torch.float64


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float) -> None:
    err = float((a - b).abs().max() / b.abs().max())
    assert err <= rtol, f"relative difference {err:.2e} > {rtol:.0e}"


def _fd(f, x: torch.Tensor, h: float) -> torch.Tensor:
    """Central differences of the scalar ``f`` with respect to every entry of ``x``."""
    out = torch.zeros_like(x)
    flat, grad = x.detach().clone().reshape(-1), out.reshape(-1)
    for i in range(flat.numel()):
        old = float(flat[i])
        flat[i] = old + h
        up = float(f(flat.reshape(x.shape)))
        flat[i] = old - h
        down = float(f(flat.reshape(x.shape)))
        flat[i] = old
        grad[i] = (up - down) / (2 * h)
    return out


# --------------------------------------------------------------------------- cg


def _system(device):
    g = torch.Generator().manual_seed(3)
    q = torch.randn(6, 6, generator=g, dtype=F64)
    base = (q @ q.T + 6 * torch.eye(6, dtype=F64)).to(device)
    b = torch.randn(2, 6, generator=g, dtype=F64).to(device)
    c = torch.randn(2, 6, generator=g, dtype=F64).to(device)  # loss weights
    return base, b, c


def _cg_loss(base, w, b, c, **kw):
    """L = <c, x(b, A)> with A = base + w + w^T (symmetric for every w), A a parameterised
    LinearOperator so that the implicit mode reaches w through the operator's mat-vec."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        x = cg(MatrixOperator(base + w + w.T), b, **kw).x
    return (c * x).sum(), x


def _cg_grads(device, **kw):
    base, b, c = _system(device)
    bb = b.clone().requires_grad_()
    w = torch.zeros(6, 6, dtype=F64, device=device, requires_grad=True)
    loss, x = _cg_loss(base, w, bb, c, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # (a truncated adjoint solve)
        loss.backward()
    return bb.grad, w.grad, x.detach()


def test_cg_unrolled_and_implicit_agree_with_each_other_and_the_analytic_gradient(device):
    base, b, c = _system(device)
    gb_u, gw_u, x = _cg_grads(device, tol=1e-13, grad="unrolled")
    gb_i, gw_i, x_i = _cg_grads(device, tol=1e-13, grad="implicit")
    torch.testing.assert_close(x_i, x, rtol=0, atol=0)  # the same forward iteration
    _close(gb_i, gb_u, 1e-8)
    _close(gw_i, gw_u, 1e-8)
    # dL/db = A^{-1} c, dL/dA = -v x^T (w enters as w + w^T)
    v = torch.linalg.solve(base, c.T).T
    _close(gb_i, v, 1e-10)
    da = -(v.T @ x)
    _close(gw_i, da + da.T, 1e-10)


def test_cg_gradients_match_finite_differences(device):
    base, b, c = _system(device)
    w0 = torch.zeros(6, 6, dtype=F64, device=device)
    for mode in ("unrolled", "implicit"):
        gb, gw, _ = _cg_grads(device, tol=1e-13, grad=mode)
        fd_b = _fd(lambda bb: _cg_loss(base, w0, bb, c, tol=1e-13)[0], b, 1e-6)
        fd_w = _fd(lambda ww: _cg_loss(base, ww, b, c, tol=1e-13)[0], w0, 1e-6)
        _close(gb, fd_b, 1e-7)
        _close(gw, fd_w, 1e-7)


def test_cg_unrolled_is_the_derivative_of_the_truncated_iterate(device):
    """After 3 of 6 iterations the iterate is not the solution: unrolled differentiates
    what was returned, implicit the exact solution it approximates."""
    base, b, c = _system(device)
    w0 = torch.zeros(6, 6, dtype=F64, device=device)
    kw = {"tol": 0.0, "max_iter": 3}
    gb_u, gw_u, _ = _cg_grads(device, grad="unrolled", **kw)
    gb_i, _, _ = _cg_grads(device, grad="implicit", **kw)
    _close(gb_u, _fd(lambda bb: _cg_loss(base, w0, bb, c, **kw)[0], b, 1e-6), 1e-7)
    _close(gw_u, _fd(lambda ww: _cg_loss(base, ww, b, c, **kw)[0], w0, 1e-6), 1e-7)
    assert float((gb_i - gb_u).abs().max()) > 1e-3 * float(gb_u.abs().max())
    # the adjoint solve has the same max_iter, and says that it stopped short
    bb = b.clone().requires_grad_()
    loss, _ = _cg_loss(base, w0, bb, c, grad="implicit", **kw)
    with pytest.warns(ConvergenceWarning, match="adjoint solve"):
        loss.backward()


def test_cg_detached_and_the_preconditioner(device):
    base, b, c = _system(device)
    bb = b.clone().requires_grad_()
    x = cg(base, bb, tol=1e-13, grad="detached").x
    assert not x.requires_grad  # no gradient flows through x
    torch.testing.assert_close(x, cg(base, b, tol=1e-13).x, rtol=0, atol=0)
    # the preconditioner shapes the iterates, not the solution: unrolled differentiates
    # it, implicit does not reach it
    s = torch.ones(6, dtype=F64, device=device, requires_grad=True)
    for mode, reached in (("unrolled", True), ("implicit", False)):
        s.grad = None
        x = cg(base, bb, M=lambda r: r * s / base.diagonal(), tol=1e-13, grad=mode).x
        (c * x).sum().backward()
        assert (s.grad is not None) is reached
    with pytest.raises(ValueError, match="Expected grad in"):
        cg(base, b, grad="adjoint")


# --------------------------------------------------------------------------- QEq


def _water(device):
    atoms = molecule("H2O")
    atoms.rattle(0.05, seed=1)
    pos = torch.tensor(atoms.positions, dtype=F64, device=device)
    chi = torch.tensor([8.7, 4.5, 4.3], dtype=F64, device=device)
    return pos, list(atoms.symbols), chi


def _qeq(pos, symbols, chi, grad, **kw):
    return solve_charges(pos, symbols, chi=chi, cutoff=None, grad=grad, **kw)


def _qeq_grads(device, grad, **kw):
    pos, symbols, chi = _water(device)
    pos, chi = pos.clone().requires_grad_(), chi.clone().requires_grad_()
    sol = _qeq(pos, symbols, chi, grad, **kw)
    sol.energy.backward()
    return pos.grad, chi.grad, sol


def test_qeq_implicit_and_unrolled_agree_and_match_finite_differences(device):
    pos, symbols, chi = _water(device)
    gp_i, gc_i, sol = _qeq_grads(device, "implicit", tol=1e-12)
    gp_u, gc_u, _ = _qeq_grads(device, "unrolled", tol=1e-12)
    # dE/dq = chi + A q = mu 1 at convergence: the adjoint right-hand side projects to ~0
    assert sol.stats["adjoint_iterations"] == 0
    _close(gp_i, gp_u, 1e-8)
    _close(gc_i, gc_u, 1e-8)

    def energy_pos(p):
        return _qeq(p, symbols, chi, "envelope", tol=1e-12).energy

    def energy_chi(ch):
        return _qeq(pos, symbols, ch, "envelope", tol=1e-12).energy

    _close(gp_i, _fd(energy_pos, pos, 1e-5), 1e-7)
    _close(gc_i, _fd(energy_chi, chi, 1e-5), 1e-7)


def test_qeq_envelope_force_is_the_implicit_force_at_convergence(device):
    """E is stationary in q on the constraint, so the fixed-charge (detached) derivative
    equals the full one at the converged charges."""
    gp_i, gc_i, _ = _qeq_grads(device, "implicit", tol=1e-12)
    gp_e, gc_e, sol = _qeq_grads(device, "envelope", tol=1e-12)
    assert not sol.charges.requires_grad
    _close(gp_e, gp_i, 1e-8)
    _close(gc_e, gc_i, 1e-8)


def test_qeq_unrolled_is_the_derivative_of_the_truncated_solve(device):
    pos, symbols, chi = _water(device)
    gp, _, sol = _qeq_grads(device, "unrolled", iterations=1)
    assert sol.iterations == 1

    def energy(p):
        return _qeq(p, symbols, chi, "unrolled", iterations=1).energy

    _close(gp, _fd(energy, pos, 1e-5), 1e-7)
    # ...and not the converged derivative
    gp_i, _, _ = _qeq_grads(device, "implicit", tol=1e-12)
    assert float((gp - gp_i).abs().max()) > 1e-6 * float(gp_i.abs().max())


def test_qeq_charge_gradient_implicit_vs_unrolled(device):
    """A loss that is not stationary in q (fitting charges): implicit and unrolled agree,
    and envelope gives no gradient through the charges."""
    pos, symbols, chi0 = _water(device)
    target = torch.tensor([-0.5, 0.3, 0.2], dtype=F64, device=device)
    out = {}
    for mode in ("implicit", "unrolled"):
        chi = chi0.clone().requires_grad_()
        sol = _qeq(pos, symbols, chi, mode, tol=1e-12)
        ((sol.charges - target) ** 2).sum().backward()
        out[mode] = chi.grad
        if mode == "implicit":
            assert sol.stats["adjoint_iterations"] >= 1  # the backward's adjoint solve

    def loss(ch):
        return ((_qeq(pos, symbols, ch, "envelope", tol=1e-12).charges - target) ** 2).sum()

    _close(out["implicit"], out["unrolled"], 1e-8)
    _close(out["implicit"], _fd(loss, chi0, 1e-6), 1e-7)
    chi = chi0.clone().requires_grad_()
    assert not _qeq(pos, symbols, chi, "envelope", tol=1e-12).charges.requires_grad
