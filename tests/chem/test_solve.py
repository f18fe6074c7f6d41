"""Charge solve vs independent dense bordered solves, Ewald vs the Madelung constant,
parameter gradients, and input errors."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule

from unrollsci import ConvergenceError
from unrollsci.chem import PolarizationCatastropheError, QEqCalculator, solve_charges

_spec = importlib.util.spec_from_file_location(
    "chem_reference", Path(__file__).with_name("_reference.py")
)
ref = importlib.util.module_from_spec(_spec)
sys.modules["chem_reference"] = ref
_spec.loader.exec_module(ref)


def _solve(atoms, device, **kw):
    cell = torch.tensor(atoms.cell.array, device=device) if atoms.pbc.any() else None
    return solve_charges(
        torch.tensor(atoms.positions, device=device),
        atoms.numbers.tolist(),
        cell=cell,
        pbc=atoms.pbc.tolist(),
        **kw,
    )


def _nacl(repeat=(2, 2, 2), cubic=True, seed=0):
    a = bulk("NaCl", "rocksalt", a=5.64, cubic=cubic).repeat(repeat)
    a.rattle(0.1, seed=seed)
    return a


@pytest.mark.parametrize("kernel", ["shielded", "point", "gaussian"])
@pytest.mark.parametrize("cutoff", [None, 4.0])
@pytest.mark.parametrize("total", [0.0, -1.0])
def test_molecule_matches_dense_bordered_solve(device, kernel, cutoff, total):
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.02, seed=1)
    sol = _solve(
        atoms,
        device,
        params=ref.ORGANIC,
        kernel=kernel,
        cutoff=cutoff,
        total_charge=total,
        tol=1e-12,
    )
    q_ref = ref.reference_charges(atoms, ref.ORGANIC, kernel, cutoff, total)
    assert sol.converged
    np.testing.assert_allclose(sol.charges.cpu().numpy(), q_ref, atol=1e-9)
    assert abs(float(sol.charges.sum()) - total) < 1e-12


@pytest.mark.parametrize("kernel", ["shielded", "point", "gaussian"])
@pytest.mark.parametrize("cubic", [True, False], ids=["cubic", "triclinic"])
def test_periodic_cutoff_matches_dense_image_sum(device, kernel, cubic):
    atoms = _nacl((2, 2, 2) if cubic else (2, 3, 2), cubic=cubic)
    # cutoff larger than the cell: interactions with many images, including self-images
    sol = _solve(
        atoms, device, params=ref.NACL, kernel=kernel, cutoff=9.0, total_charge=0.5, tol=1e-12
    )
    q_ref = ref.reference_charges(atoms, ref.NACL, kernel, 9.0, 0.5)
    np.testing.assert_allclose(sol.charges.cpu().numpy(), q_ref, atol=1e-9)


def test_slab_partial_pbc_matches_dense_image_sum(device):
    atoms = _nacl((2, 2, 1))
    atoms.pbc = [True, True, False]
    atoms.cell[2, 2] = 30.0
    sol = _solve(atoms, device, params=ref.NACL, cutoff=9.0, tol=1e-12)
    q_ref = ref.reference_charges(atoms, ref.NACL, "shielded", 9.0)
    np.testing.assert_allclose(sol.charges.cpu().numpy(), q_ref, atol=1e-9)


@pytest.mark.parametrize("cubic", [True, False], ids=["conventional", "primitive"])
def test_ewald_reproduces_madelung_constant(device, cubic):
    """Perfect rock salt, point kernel + Ewald: by symmetry q_Na = -q_Cl = q and the energy
    per ion pair is (chi_Na - chi_Cl) q + (eta_Na + eta_Cl) q^2 / 2 - M k_e q^2 / r0 with the
    published Madelung constant M = 1.747564594633 (independent of the code)."""
    a0 = 5.64
    atoms = bulk("NaCl", "rocksalt", a=a0, cubic=cubic)
    if cubic:
        atoms = atoms.repeat(2)
    r0 = a0 / 2
    h = min(
        atoms.cell.volume
        / np.linalg.norm(np.cross(atoms.cell[(k + 1) % 3], atoms.cell[(k + 2) % 3]))
        for k in range(3)
    )
    sol = _solve(
        atoms,
        device,
        params=ref.NACL,
        kernel="point",
        ewald=True,
        cutoff=0.5 * h,
        ewald_accuracy=1e-10,
        tol=1e-13,
    )
    m = 1.747564594633
    na, cl = ref.NACL["Na"], ref.NACL["Cl"]
    curv = na["eta"] + cl["eta"] - 2 * m * ref.KE / r0
    q = (cl["chi"] - na["chi"]) / curv
    e_pair = (na["chi"] - cl["chi"]) * q + 0.5 * curv * q * q
    qs = sol.charges.cpu().numpy()
    sign = np.where(np.array(atoms.get_chemical_symbols()) == "Na", 1.0, -1.0)
    np.testing.assert_allclose(qs, sign * q, atol=1e-8)
    assert float(sol.energy) / (len(atoms) / 2) == pytest.approx(e_pair, abs=1e-7)


def test_charged_cell_ewald_energy_independent_of_splitting(device):
    """With a neutralizing background the Ewald energy of a charged cell must not depend
    on the splitting parameter alpha (set through the real-space cutoff)."""
    atoms = _nacl()
    energies = []
    for rc in (4.0, 5.5):
        sol = _solve(
            atoms,
            device,
            params=ref.NACL,
            kernel="point",
            ewald=True,
            cutoff=rc,
            ewald_accuracy=1e-12,
            total_charge=1.0,
            tol=1e-12,
        )
        energies.append(float(sol.energy))
    assert energies[0] == pytest.approx(energies[1], abs=1e-7)


def test_parameter_gradients_implicit_match_unrolled_and_gradcheck(device):
    atoms = molecule("CH3CH2OH")
    pos = torch.tensor(atoms.positions, device=device)
    sym = atoms.get_chemical_symbols()
    chi0 = torch.tensor([ref.ORGANIC[s]["chi"] for s in sym], dtype=torch.float64, device=device)
    eta0 = torch.tensor([ref.ORGANIC[s]["eta"] for s in sym], dtype=torch.float64, device=device)
    weights = torch.linspace(-1, 1, len(sym), dtype=torch.float64, device=device)

    def loss(chi, eta, grad):
        sol = solve_charges(
            pos, sym, params=ref.ORGANIC, chi=chi, eta=eta, cutoff=None, tol=1e-13, grad=grad
        )
        return (weights * sol.charges).sum() + sol.energy

    grads = {}
    for mode in ("implicit", "unrolled"):
        chi = chi0.clone().requires_grad_(True)
        eta = eta0.clone().requires_grad_(True)
        grads[mode] = torch.autograd.grad(loss(chi, eta, mode), (chi, eta))
    for gi, gu in zip(grads["implicit"], grads["unrolled"], strict=True):
        torch.testing.assert_close(gi, gu, atol=1e-8, rtol=1e-7)
    chi = chi0.clone().requires_grad_(True)
    eta = eta0.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda c, e: (
            solve_charges(
                pos, sym, params=ref.ORGANIC, chi=c, eta=e, cutoff=None, tol=1e-13
            ).charges
        ),
        (chi, eta),
        eps=1e-6,
        atol=1e-6,
        # index_add uses atomics on CUDA: sums are not bitwise reproducible between calls
        # (seen on an H200), so backward agrees with itself only to round-off there.
        nondet_tol=1e-10 if device.type == "cuda" else 0.0,
    )


def test_warm_start_and_iteration_report(device):
    atoms = _nacl()
    cold = _solve(atoms, device, params=ref.NACL, cutoff=8.0, tol=1e-10)
    warm = _solve(atoms, device, params=ref.NACL, cutoff=8.0, tol=1e-10, q0=cold.charges)
    assert warm.iterations < cold.iterations
    assert cold.residual <= 1e-10 and len(cold.residuals) == cold.iterations + 1
    assert math.isfinite(cold.mu)


# ----------------------------------------------------------------------------- bad input


def test_unknown_element(device):
    atoms = molecule("H2O")
    atoms[0].symbol = "Xe"
    with pytest.raises(ValueError, match="No QEq parameters for element 'Xe'"):
        _solve(atoms, device, cutoff=None)


@pytest.mark.parametrize("total", [11.0, -11.0, float("nan")])
def test_impossible_total_charge(device, total):
    atoms = molecule("H2O")  # 10 electrons
    with pytest.raises(ValueError, match="total_charge"):
        _solve(atoms, device, cutoff=None, total_charge=total)


def test_overlapping_atoms(device):
    atoms = molecule("H2O")
    atoms.positions[2] = atoms.positions[1] + 1e-4
    with pytest.raises(ValueError, match="Overlapping atoms: atoms 1 \\(H\\) and 2 \\(H\\)"):
        _solve(atoms, device, cutoff=None)


def test_cutoff_beyond_half_the_cell_for_ewald(device):
    """Allowed since December 7 (every image within the cutoff is summed): the 11.28 A cube
    at cutoff 6 A gives its 2 x 2 x 2 supercell's charges (test_ewald_long_cutoff.py)."""
    atoms = _nacl()  # 11.28 A cube
    q = _solve(atoms, device, params=ref.NACL, ewald=True, cutoff=6.0).charges
    q2 = _solve(atoms * (2, 2, 2), device, params=ref.NACL, ewald=True, cutoff=6.0).charges
    assert torch.allclose(q.cpu(), q2[: len(atoms)].cpu(), atol=1e-8)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"pbc": True, "cutoff": None}, "periodic system needs a finite cutoff"),
        ({"ewald": True, "cutoff": 5.0}, "fully periodic"),
        ({"kernel": "yukawa"}, "Expected kernel in"),
        ({"grad": "adjoint"}, "Expected grad in"),
        ({"cutoff": -1.0}, "Expected cutoff > 0"),
    ],
)
def test_bad_options(device, kwargs, match):
    atoms = molecule("H2O")
    pos = torch.tensor(atoms.positions, device=device)
    cell = torch.eye(3, dtype=torch.float64, device=device) * 10
    kw = {"cell": cell, **kwargs}
    with pytest.raises(ValueError, match=match):
        solve_charges(pos, atoms.numbers.tolist(), **kw)


def test_nan_positions(device):
    atoms = molecule("H2O")
    pos = torch.tensor(atoms.positions, device=device)
    pos[1, 0] = float("nan")
    with pytest.raises(ValueError, match="Expected 'positions' to be finite"):
        solve_charges(pos, atoms.numbers.tolist(), cutoff=None)
    atoms.positions[1, 0] = float("nan")
    atoms.calc = QEqCalculator(cutoff=None, device=device)
    with pytest.raises(ValueError, match="Expected finite positions"):
        atoms.get_potential_energy()


def test_non_positive_definite_system_raises(device):
    """Soft atoms close together: the hardness matrix has negative curvature on the
    constraint subspace; LAMMPS would return a saddle point, we raise."""
    atoms = _nacl()
    soft = {s: {**p, "eta": 2.0} for s, p in ref.NACL.items()}
    a = ref.dense_hardness(atoms, soft, "shielded", 8.0)
    z = np.linalg.svd(np.ones((1, len(atoms))))[2][1:].T  # basis of sum(q) = 0
    assert np.linalg.eigvalsh(z.T @ a @ z).min() < 0  # independent confirmation
    with pytest.raises(PolarizationCatastropheError, match="not positive definite"):
        _solve(atoms, device, params=soft, cutoff=8.0)
    neg = {s: {**p, "eta": -1.0} for s, p in ref.NACL.items()}
    with pytest.raises(PolarizationCatastropheError, match="diagonal entry"):
        _solve(atoms, device, params=neg, cutoff=8.0)


def test_non_convergence_is_reported_not_hidden(device):
    atoms = _nacl()
    with pytest.raises(ConvergenceError, match="max_iter=2"):
        _solve(atoms, device, params=ref.NACL, cutoff=8.0, max_iter=2, tol=1e-12)


def test_neighbor_list_fallback_without_vesin(device, monkeypatch):
    """Without vesin (a broken install), ASE's neighbour list gives the same half list and
    charges, after a warning (tests/chem/test_ase_conventions.py checks it is warned once)."""
    from unrollsci import UnrollsciWarning
    from unrollsci.chem import _geometry

    atoms = _nacl((2, 2, 1), cubic=False)
    with_vesin = _solve(atoms, device, params=ref.NACL, cutoff=9.0, tol=1e-12)
    monkeypatch.setitem(sys.modules, "vesin", None)  # import vesin -> ImportError
    monkeypatch.setattr(_geometry, "_VESIN", {})
    with pytest.warns(UnrollsciWarning, match="vesin could not be imported"):
        without = _solve(atoms, device, params=ref.NACL, cutoff=9.0, tol=1e-12)
    assert with_vesin.stats["n_pairs"] == without.stats["n_pairs"]
    torch.testing.assert_close(with_vesin.charges, without.charges, atol=1e-12, rtol=0)


def test_half_list_grouped_by_i_and_csr_order(monkeypatch):
    """vesin's unsorted half list is regrouped by i (a counting sort) and holds the same
    (i, j, S) as ASE's list; the transpose order of the CSR pattern (scipy's counting sort on
    CPU) is the stable sort by j."""
    from unrollsci.chem import _geometry

    atoms = _nacl((3, 3, 2), cubic=False)
    pos, cell, pbc = atoms.positions, atoms.cell.array, np.array([True] * 3)
    i, j, s = _geometry.half_pairs(pos, cell, pbc, 7.0)
    assert i.dtype == j.dtype == np.int64 and bool(np.all(np.diff(i) >= 0))
    ours = set(zip(i.tolist(), j.tolist(), map(tuple, s.tolist()), strict=True))
    monkeypatch.setattr(_geometry, "_VESIN", {"module": None})
    ia, ja, sa = _geometry.half_pairs(pos, cell, pbc, 7.0)
    assert ours == set(zip(ia.tolist(), ja.tolist(), map(tuple, sa.tolist()), strict=True))
    it, jt = torch.from_numpy(i), torch.from_numpy(j)
    crow_u, col_u, crow_l, col_l, order = _geometry.csr_pattern(it, jt, len(atoms))
    torch.testing.assert_close(order, torch.argsort(jt, stable=True), rtol=0, atol=0)
    assert torch.equal(col_l.long(), it[order]) and torch.equal(col_u.long(), jt)
    assert torch.equal(crow_l[1:].long(), torch.cumsum(torch.bincount(jt, minlength=len(atoms)), 0))


def test_sparse_csr_matvec_matches_scatter_path(device, monkeypatch):
    """Large systems apply A through int32 CSR products; same charges and forces."""
    from unrollsci.chem import _solve

    atoms = _nacl()
    pos = torch.tensor(atoms.positions, device=device, requires_grad=True)
    kw = {
        "cell": torch.tensor(atoms.cell.array, device=device),
        "pbc": True,
        "params": ref.NACL,
        "cutoff": 8.0,
        "tol": 1e-12,
    }
    out = []
    for threshold in (10**9, 1):
        monkeypatch.setattr(_solve, "_CSR_MIN_PAIRS", threshold)
        sol = solve_charges(pos, atoms.numbers.tolist(), **kw)
        out.append((sol.charges.detach(), torch.autograd.grad(sol.energy, pos)[0]))
    torch.testing.assert_close(out[0][0], out[1][0], atol=1e-11, rtol=0)
    torch.testing.assert_close(out[0][1], out[1][1], atol=1e-10, rtol=0)
