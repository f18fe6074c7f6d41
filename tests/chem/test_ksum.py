"""The explicit Ewald sum in its separable form (no N x K basis) against the stored basis:
the same operator, the same charges, energies, forces and stress, and its own derivatives."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from ase.build import bulk

from unrollsci.chem import _hardness, solve_charges
from unrollsci.chem._geometry import ewald_alpha, ewald_kvectors
from unrollsci.chem._ksum import KSumReciprocal, _KSumApply, kspace_factors

NACL = {
    "Na": {"chi": 2.843, "eta": 12.0, "gamma": 0.7},
    "Cl": {"chi": 8.564, "eta": 10.0, "gamma": 0.6},
}


def _triclinic(seed=0):
    atoms = bulk("NaCl", "rocksalt", a=5.64).repeat((2, 2, 3))  # primitive cell: triclinic
    atoms.rattle(0.1, seed=seed)
    return atoms


def _stored(positions, cell, alpha, kmax, k_e):
    """The stored-basis reciprocal operator, written out independently: sum over the
    half-space k set of kf (cos cos^T + sin sin^T) q."""
    m = torch.from_numpy(ewald_kvectors(cell.detach().numpy(), kmax)).to(positions.dtype)
    kvec = m @ (2.0 * math.pi * torch.linalg.inv(cell).T)
    k2 = (kvec * kvec).sum(-1)
    vol = torch.linalg.det(cell).abs()
    kf = k_e * (8.0 * math.pi / vol) * torch.exp(-k2 / (4.0 * alpha**2)) / k2
    ph = positions @ kvec.T
    c, s = torch.cos(ph), torch.sin(ph)
    return lambda q: c @ (kf[:, None] * (c.T @ q)) + s @ (kf[:, None] * (s.T @ q))


def test_kspace_factors_match_the_written_out_formula():
    cell = torch.tensor(_triclinic().cell.array)
    alpha, kmax = ewald_alpha(5.0, 1e-6)
    m = torch.from_numpy(ewald_kvectors(cell.numpy(), kmax))
    kf = kspace_factors(cell, m, alpha, 14.4)
    k = m @ (2 * math.pi * torch.linalg.inv(cell).T)
    k2 = (k * k).sum(-1)
    ref = (
        14.4
        * 8
        * math.pi
        / abs(float(torch.linalg.det(cell)))
        * torch.exp(-k2 / (4 * alpha**2))
        / k2
    )
    assert torch.allclose(kf, ref, rtol=1e-14, atol=0)


@pytest.mark.parametrize("cols", [1, 3])
def test_separable_sum_equals_stored_basis_with_gradients(cols):
    """Values and first derivatives (charges, positions, cell) of u^T A_rec q agree with
    autograd through the stored basis, in float64 on a rattled triclinic cell."""
    atoms = _triclinic()
    alpha, kmax = ewald_alpha(4.0, 1e-5)
    torch.manual_seed(0)
    n = len(atoms)
    q = torch.randn(n, cols, dtype=torch.float64, requires_grad=True)
    u = torch.randn(n, cols, dtype=torch.float64)
    results = []
    for make in (KSumReciprocal, _stored):
        pos = torch.tensor(atoms.positions, requires_grad=True)
        cell = torch.tensor(atoms.cell.array, requires_grad=True)
        op = make(pos, cell, alpha, kmax, 14.4)
        out = op(q)
        val = (u * out).sum()
        grads = torch.autograd.grad(val, (q, pos, cell))
        results.append((out.detach(), *grads))
    for a, b in zip(results[0], results[1], strict=True):
        scale = float(b.abs().max())
        assert float((a - b).abs().max()) <= 1e-11 * scale, float((a - b).abs().max()) / scale
    # vectors and matrices both: (N,) charge vectors give the first column
    pos = torch.tensor(atoms.positions)
    op = KSumReciprocal(pos, torch.tensor(atoms.cell.array), alpha, kmax, 14.4)
    assert torch.allclose(op(q[:, 0].detach()), results[0][0][:, 0], rtol=1e-12, atol=1e-12)


def test_separable_sum_diagonal_and_dense():
    atoms = _triclinic(1)
    alpha, kmax = ewald_alpha(4.0, 1e-5)
    pos, cell = torch.tensor(atoms.positions), torch.tensor(atoms.cell.array)
    op = KSumReciprocal(pos, cell, alpha, kmax, 14.4)
    dense = op.dense()
    eye = torch.eye(len(atoms), dtype=torch.float64)
    cols = op(eye)
    assert torch.allclose(cols, dense, rtol=0, atol=1e-11 * float(dense.abs().max()))
    assert torch.allclose(op.diagonal(), torch.diagonal(dense), rtol=1e-12, atol=0)


def test_separable_function_gradcheck():
    """torch.autograd.gradcheck of the analytic backward (charges, fractional coordinates,
    k-space weights) against finite differences, float64, a small random cell."""
    rng = np.random.default_rng(3)
    n = 5
    cell = torch.tensor(np.diag([4.0, 4.5, 5.0]) + 0.3 * rng.standard_normal((3, 3)))
    alpha, kmax = 0.6, 3.5
    pos = torch.tensor(rng.uniform(0, 4, (n, 3)))
    op = KSumReciprocal(pos, cell, alpha, kmax, 1.0)
    assert op.n_kvectors > 10
    q = torch.randn(n, 2, dtype=torch.float64, requires_grad=True)
    frac = op._frac.detach().clone().requires_grad_(True)
    w = op._w.detach().clone().requires_grad_(True)

    def f(q, frac, w):
        return _KSumApply.apply(q, frac, w, op._planes, op._lo, op._hi)

    assert torch.autograd.gradcheck(f, (q, frac, w), eps=1e-6, atol=1e-7, rtol=1e-6)


def test_second_derivatives_gradgradcheck():
    """Second derivatives (create_graph=True, as a force loss needs) pass gradgradcheck."""
    rng = np.random.default_rng(5)
    cell = torch.tensor(np.diag([4.0, 4.5, 5.0]) + 0.3 * rng.standard_normal((3, 3)))
    op = KSumReciprocal(torch.tensor(rng.uniform(0, 4, (4, 3))), cell, 0.6, 3.0, 1.0)
    q = torch.randn(4, 1, dtype=torch.float64, requires_grad=True)
    frac = op._frac.detach().clone().requires_grad_(True)
    w = op._w.detach().clone().requires_grad_(True)

    def f(q, frac, w):
        return _KSumApply.apply(q, frac, w, op._planes, op._lo, op._hi)

    assert torch.autograd.gradgradcheck(f, (q, frac, w), eps=1e-6, atol=1e-6, rtol=1e-5)


def _both_forms(monkeypatch, atoms, cell_grad=False, **kw):
    """``solve_charges`` (explicit Ewald) with the stored basis, then the separable form
    (the threshold moved): yields ``(positions, cell, solution)`` for each."""
    for limit in (10**18, 0):
        monkeypatch.setattr(_hardness, "KSUM_MIN_ELEMENTS", limit)
        pos = torch.tensor(atoms.positions, requires_grad=True)
        cell = torch.tensor(atoms.cell.array, requires_grad=cell_grad)
        sol = solve_charges(
            pos,
            atoms.numbers,
            cell=cell,
            pbc=True,
            ewald=True,
            ewald_method="ewald",
            params=NACL,
            tol=1e-12,
            **kw,
        )
        yield pos, cell, sol


def test_force_derivative_equals_stored_basis(monkeypatch):
    """A derivative of the forces (Hessian-vector product of the energy, create_graph=True,
    through the unrolled solve): the separable form equals the stored basis."""
    atoms = bulk("NaCl", "rocksalt", a=5.64, cubic=True).repeat((2, 2, 1))
    atoms.rattle(0.1, seed=6)
    v = torch.from_numpy(np.random.default_rng(6).standard_normal((len(atoms), 3)))
    out = []
    for pos, _, sol in _both_forms(
        monkeypatch, atoms, ewald_accuracy=1e-6, cutoff=2.8, grad="unrolled"
    ):
        (f,) = torch.autograd.grad(sol.energy, pos, create_graph=True)
        (h,) = torch.autograd.grad((f * v).sum(), pos)
        out.append(h)
    scale = float(out[0].abs().max())
    assert scale > 0 and float((out[0] - out[1]).abs().max()) < 1e-9 * scale


@pytest.mark.parametrize("grad", ["implicit", "envelope"])
def test_solver_results_equal_between_the_two_forms(monkeypatch, grad):
    """solve_charges with the separable sum (threshold lowered to 0) gives the stored
    basis's charges, energy, forces and stress to rounding."""
    atoms = bulk("NaCl", "rocksalt", a=5.64, cubic=True).repeat((2, 2, 2))
    atoms.rattle(0.1, seed=4)
    out = []
    for pos, cell, sol in _both_forms(
        monkeypatch, atoms, cell_grad=True, ewald_accuracy=1e-7, cutoff=5.5, grad=grad
    ):
        f, c = torch.autograd.grad(sol.energy, (pos, cell))
        out.append((sol.charges.detach(), sol.energy.detach(), f, c, sol.stats["n_kvectors"]))
    (q0, e0, f0, c0, k0), (q1, e1, f1, c1, k1) = out
    assert k0 == k1 > 0
    assert float((q0 - q1).abs().max()) < 1e-10
    assert abs(float(e0 - e1)) < 1e-11 * abs(float(e0))
    assert float((f0 - f1).abs().max()) < 1e-9 * max(1.0, float(f0.abs().max()))
    assert float((c0 - c1).abs().max()) < 1e-9 * max(1.0, float(c0.abs().max()))


def test_gradient_in_the_weights_alone():
    """Only the k-space weights need a gradient (charges and coordinates fixed): the same
    dL/dw as autograd through the written-out sum."""
    atoms = _triclinic(2)
    alpha, kmax = ewald_alpha(4.0, 1e-4)
    op = KSumReciprocal(
        torch.tensor(atoms.positions), torch.tensor(atoms.cell.array), alpha, kmax, 14.4
    )
    q = torch.randn(len(atoms), 1, dtype=torch.float64)
    w = op._w.detach().clone().requires_grad_(True)
    (gw,) = torch.autograd.grad(
        (q * _KSumApply.apply(q, op._frac, w, op._planes, op._lo, op._hi)).sum(), w
    )
    idx = torch.from_numpy(op._planes.box_index)
    m = torch.from_numpy(op._planes.m)
    kf = w[idx[:, 0], idx[:, 1], idx[:, 2]]
    ph = 2 * math.pi * (op._frac @ m.T)
    ref = (kf * ((torch.cos(ph).T @ q) ** 2 + (torch.sin(ph).T @ q) ** 2)[:, 0]).sum()
    (gref,) = torch.autograd.grad(ref, w)
    # on the k set (the box's other entries are structurally zero weights, never used)
    a, b = gw[idx[:, 0], idx[:, 1], idx[:, 2]], gref[idx[:, 0], idx[:, 1], idx[:, 2]]
    assert torch.allclose(a, b, rtol=1e-10, atol=1e-12 * float(b.abs().max()))
