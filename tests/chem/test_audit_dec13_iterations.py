"""Audit (Dec 13, the calculator as ASE users use it): a fixed ``iterations`` count larger
than the CG needs raised a false ``PolarizationCatastropheError`` (Ewald and PME): once
the charges had converged to round-off, the curvature of the round-off direction came out
negative (-4.4e-34) on a positive definite system."""

from __future__ import annotations

import pytest
import torch
from ase.build import bulk

from unrollsci.chem import QEqCalculator, solve_charges

KW = dict(cutoff=6.0, kernel="gaussian", ewald=True)


def _crystal(seed: int):
    atoms = bulk("NaCl", "rocksalt", a=5.64, cubic=True)
    atoms.rattle(0.05, seed=seed)
    return atoms


@pytest.mark.parametrize("method", ["ewald", "pme"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_more_iterations_than_needed_give_the_converged_answer(method, seed):
    atoms = _crystal(seed)
    # the reference: the dense definiteness proof and a converged solve to tol
    atoms.calc = QEqCalculator(check_definite=True, ewald_method=method, tol=1e-12, **KW)
    e_ref = atoms.get_potential_energy()
    f_ref = atoms.get_forces()
    for it in (20, 40):
        atoms.calc = QEqCalculator(iterations=it, forces="unrolled", ewald_method=method, **KW)
        assert atoms.get_potential_energy() == pytest.approx(e_ref, rel=1e-10, abs=1e-10)
        assert abs(atoms.get_forces() - f_ref).max() < 1e-7


def test_solve_charges_with_many_iterations():
    atoms = _crystal(0)
    pos = torch.tensor(atoms.positions)
    cell = torch.tensor(atoms.cell.array)
    ref = solve_charges(pos, atoms.numbers.tolist(), cell=cell, pbc=True, tol=1e-12, **KW)
    out = solve_charges(pos, atoms.numbers.tolist(), cell=cell, pbc=True, iterations=20, **KW)
    torch.testing.assert_close(out.charges, ref.charges, rtol=0, atol=1e-9)
