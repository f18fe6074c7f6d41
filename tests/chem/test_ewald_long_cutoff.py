"""Ewald with a real-space cutoff beyond half the cell width (audit, December 7): the
cutoff was capped at half the smallest cell width, and with the shielded and Gaussian
kernels it is also the taper radius of the short-range part ``(J - 1/r) Tap``, so a small
cell could not be computed with the model of its supercells (the 8-atom rock-salt cell
allowed 2.8 A: charges 40% off those of the 216-atom cell at 8.4 A). Every image within
the cutoff is summed now; a cell and its supercells agree at any cutoff."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from ase.build import bulk

from unrollsci.chem import QEqCalculator, solve_charges

P = {
    "Na": {"chi": 2.843, "eta": 12.0, "gamma": 0.7, "sigma": 1.0},
    "Cl": {"chi": 8.564, "eta": 10.0, "gamma": 0.6, "sigma": 1.2},
}


def _cell():
    atoms = bulk("NaCl", "rocksalt", a=5.64)  # primitive: 2 atoms, widths 3.26 A
    atoms.set_cell(atoms.cell.array + np.array([[0.1, 0, 0], [0, 0.2, 0], [0, 0, -0.15]]), True)
    atoms.rattle(0.05, seed=3)
    return atoms


@pytest.mark.parametrize("kernel", ["shielded", "gaussian", "point"])
@pytest.mark.parametrize("method", ["ewald", "pme"])
def test_cell_and_supercell_agree_beyond_half_the_width(kernel, method):
    small = _cell()
    big = small * (3, 3, 3)  # widths ~9.8 A: 4.5 A was allowed before
    params = {k: dict(v, eta=v["eta"] + 30) for k, v in P.items()} if kernel == "point" else P
    out = {}
    for name, atoms in (("small", small), ("big", big)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PME's mesh note on tiny cells
            atoms.calc = QEqCalculator(
                params=params, kernel=kernel, cutoff=4.5, ewald=True, ewald_accuracy=1e-9,
                ewald_method=method,
            )  # fmt: skip
            out[name] = (
                atoms.get_potential_energy() / len(atoms),
                atoms.get_charges()[:2],
                atoms.get_forces()[:2],
                atoms.get_stress(),
            )
    e, q, f, st = out["small"]
    e2, q2, f2, st2 = out["big"]
    assert e == pytest.approx(e2, abs=1e-7)
    assert np.allclose(q, q2, atol=1e-7)
    assert np.allclose(f, f2, atol=1e-6)
    assert np.allclose(st, st2, atol=1e-7)


def test_point_kernel_does_not_depend_on_the_cutoff():
    """The point kernel's Ewald energy is independent of the split: a cutoff 3 times the
    cell's width gives the energy of one below half of it."""
    atoms = _cell()
    pos = torch.tensor(atoms.positions)
    cell = torch.tensor(atoms.cell.array)
    params = {k: dict(v, eta=v["eta"] + 30) for k, v in P.items()}
    kw = dict(cell=cell, pbc=True, params=params, kernel="point", ewald=True, tol=1e-12)
    sym = atoms.get_chemical_symbols()
    e = [
        float(solve_charges(pos, sym, cutoff=rc, ewald_accuracy=1e-12, **kw).energy)
        for rc in (1.5, 9.0)
    ]
    assert e[0] == pytest.approx(e[1], abs=1e-9)


def test_forces_match_finite_differences_beyond_half_the_width():
    atoms = _cell()
    sym = atoms.get_chemical_symbols()
    cell = torch.tensor(atoms.cell.array)
    pos0 = torch.tensor(atoms.positions)

    def energy(p):
        sol = solve_charges(
            p, sym, cell=cell, pbc=True, params=P, cutoff=6.0, ewald=True, tol=1e-13,
            ewald_accuracy=1e-10,
        )  # fmt: skip
        return sol.energy

    p = pos0.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(energy(p), p)
    h = 1e-5
    for a, d in [(0, 0), (1, 2)]:
        pp, pm = pos0.clone(), pos0.clone()
        pp[a, d] += h
        pm[a, d] -= h
        fd = (float(energy(pp)) - float(energy(pm))) / (2 * h)
        assert float(g[a, d]) == pytest.approx(fd, abs=1e-6)
