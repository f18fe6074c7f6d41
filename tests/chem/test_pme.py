"""Particle-mesh Ewald (P3M) against the explicit Ewald sum, and its derivatives."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.calculators.fd import calculate_numerical_forces, calculate_numerical_stress

from unrollsci.chem import QEqCalculator, _pme, _settings, solve_charges

NACL = {
    "Na": {"chi": 2.843, "eta": 12.0, "gamma": 0.7},
    "Cl": {"chi": 8.564, "eta": 10.0, "gamma": 0.6},
}


def _rocksalt(rep, seed=0):
    atoms = bulk("NaCl", "rocksalt", a=5.64, cubic=True).repeat(rep)
    atoms.rattle(0.1, seed=seed)
    return atoms


def _solve(atoms, method, device, **kw):
    pos = torch.tensor(atoms.positions, device=device, requires_grad=True)
    cell = torch.tensor(atoms.cell.array, device=device)
    sol = solve_charges(
        pos,
        atoms.numbers,
        cell=cell,
        pbc=True,
        ewald=True,
        ewald_method=method,
        params=NACL,
        **kw,
    )
    forces = -torch.autograd.grad(sol.energy, pos)[0]
    return sol, forces.detach().cpu().numpy()


@pytest.mark.parametrize(
    "rep, cutoff, kernel",
    [((2, 2, 2), 5.5, "shielded"), ((3, 3, 3), 8.0, "shielded"), ((3, 2, 2), 5.5, "gaussian")],
)
def test_pme_agrees_with_explicit_ewald(device, rep, cutoff, kernel):
    atoms = _rocksalt(rep)
    kw = {"cutoff": cutoff, "kernel": kernel, "ewald_accuracy": 1e-7, "tol": 1e-11}
    ref, f_ref = _solve(atoms, "ewald", device, **kw)
    pme, f_pme = _solve(atoms, "pme", device, **kw)
    assert ref.stats["ewald_method"] == "ewald" and pme.stats["ewald_method"] == "pme"
    assert pme.stats["n_kvectors"] == 0 and len(pme.stats["pme_mesh"]) == 3
    dq = float((ref.charges - pme.charges).detach().abs().max())
    e_ref, e_pme = float(ref.energy.detach()), float(pme.energy.detach())
    df = np.abs(f_ref - f_pme).max()
    assert dq < 2e-5, f"max |dq| = {dq:.2e} e"
    assert abs(e_ref - e_pme) < 5e-7 * abs(e_ref), f"dE = {e_ref - e_pme:.2e} eV"
    assert df < 1e-4, f"max |dF| = {df:.2e} eV/A"
    # the explicit sum at a coarser accuracy is further off than PME: the comparison
    # resolves the mesh error (a wrong PME term would be off by ~0.1 e)
    coarse, _ = _solve(atoms, "ewald", device, **{**kw, "ewald_accuracy": 1e-3})
    assert float((ref.charges - coarse.charges).detach().abs().max()) > 10 * dq


def _pme_rocksalt(seed: int, device, **kw):
    """Rattled 64-atom rock salt with a tightly converged PME calculator (cutoff 5.5 A)."""
    atoms = _rocksalt((2, 2, 2), seed=seed)
    atoms.calc = QEqCalculator(
        params=NACL,
        cutoff=5.5,
        ewald=True,
        ewald_method="pme",
        ewald_accuracy=1e-5,
        tol=1e-12,
        device=device,
        **kw,
    )
    return atoms


@pytest.mark.parametrize("mode", ["implicit", "unrolled", "envelope"])
def test_pme_forces_match_finite_differences(device, mode):
    atoms = _pme_rocksalt(3, device, forces=mode)
    f = atoms.get_forces()
    assert atoms.calc.solution.stats["ewald_method"] == "pme"
    idx = [0, 5, 33]
    fd = calculate_numerical_forces(atoms, 1e-4, iatoms=idx)
    err = np.abs(fd - f[idx]).max()
    assert err <= 1e-5, f"{mode}: max |F - F_fd| = {err:.2e} eV/A"


def test_pme_stress_matches_finite_differences(device):
    atoms = _pme_rocksalt(4, device)
    s = atoms.get_stress()
    fd = calculate_numerical_stress(atoms, 1e-5)
    assert np.abs(s - fd).max() < 1e-6, f"{s} vs {fd}"


def test_auto_picks_by_size(device, monkeypatch):
    atoms = _rocksalt((2, 2, 2))
    kw = {"cutoff": 5.5, "tol": 1e-8, "ewald_accuracy": 1e-4}
    monkeypatch.setattr(_settings, "PME_COST_RATIO", 0.0)  # the size floor alone
    monkeypatch.setattr(_settings, "PME_MIN_ATOMS", 64)
    sol, _ = _solve(atoms, "auto", device, **kw)
    assert sol.stats["ewald_method"] == "pme"
    monkeypatch.setattr(_settings, "PME_MIN_ATOMS", 65)
    sol, _ = _solve(atoms, "auto", device, **kw)
    assert sol.stats["ewald_method"] == "ewald"


def test_bad_method_and_pme_without_torchpme(monkeypatch):
    atoms = _rocksalt((2, 2, 2))
    with pytest.raises(ValueError, match="ewald_method"):
        _solve(atoms, "p3m", "cpu", cutoff=5.5)
    with pytest.raises(ValueError, match="ewald_method"):
        QEqCalculator(ewald=True, ewald_method="PME")
    calc = QEqCalculator(ewald=True, ewald_method="pme")
    assert calc.ewald_method == "pme" and calc.todict()["ewald_method"] == "pme"
    # PME is the library's own: it runs with torch-pme not importable
    monkeypatch.setitem(sys.modules, "torchpme", None)
    sol, _ = _solve(atoms, "pme", "cpu", cutoff=5.5, ewald_accuracy=1e-4)
    assert sol.stats["ewald_method"] == "pme" and sol.converged


def test_definiteness_check_with_ewald(monkeypatch):
    """The check tries the matrix without its (positive semidefinite) reciprocal part first;
    the outcome is that of the whole matrix: here the short part alone is indefinite for
    both parameter sets, the whole matrix definite with NACL and not with the defaults."""
    from unrollsci.chem import PolarizationCatastropheError

    atoms = _rocksalt((2, 2, 2))
    pos = torch.tensor(atoms.positions)
    cell = torch.tensor(atoms.cell.array)
    kw = {"cell": cell, "pbc": True, "ewald": True, "cutoff": 5.5, "check_definite": True}
    kw["ewald_accuracy"] = 1e-4
    for method in ("ewald", "pme"):
        solve_charges(pos, atoms.numbers, params=NACL, ewald_method=method, **kw)
        with pytest.raises(PolarizationCatastropheError, match="smallest eigenvalue"):
            solve_charges(pos, atoms.numbers, ewald_method=method, **kw)


def test_definiteness_check_skips_reciprocal_when_short_part_suffices(monkeypatch):

    def forbidden(self):
        raise AssertionError("the reciprocal matrix was formed")

    monkeypatch.setattr(_pme.PMEReciprocal, "dense", forbidden)
    atoms = _rocksalt((4, 4, 4))  # 512 atoms, cutoff 10: the short part is definite
    pos = torch.tensor(atoms.positions)
    sol = solve_charges(
        pos,
        atoms.numbers,
        cell=torch.tensor(atoms.cell.array),
        pbc=True,
        params=NACL,
        ewald=True,
        ewald_method="pme",
        ewald_accuracy=1e-4,
        check_definite=True,
        tol=1e-6,
    )
    assert sol.converged
