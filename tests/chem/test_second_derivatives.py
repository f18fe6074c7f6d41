"""Second derivatives of the QEq energy (Hessians, elastic constants, force losses in
positions) against central finite differences of forces (audit, December 7). The default
shielded kernel without Ewald used a custom autograd function whose derivative was a
constant of the forward pass, so every second derivative dropped ``d^2w/dr^2``: a Na-Cl
pair gave -0.336 for -0.500, and a periodic cell's ``dF/dR`` was off by factors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unrollsci.chem import solve_charges

P = {
    "Na": {"chi": 2.843, "eta": 12.0, "gamma": 0.7},
    "Cl": {"chi": 8.564, "eta": 10.0, "gamma": 0.6},
}


def test_pair_hessian_default_kernel():
    def energy(x):
        zero = torch.zeros((), dtype=torch.float64)
        pos = torch.stack([torch.zeros(3, dtype=torch.float64), torch.stack([x, zero, zero])])
        return solve_charges(pos, ["Na", "Cl"], params=P, tol=1e-13).energy

    x = torch.tensor(2.5, dtype=torch.float64)
    h = 1e-4
    fd = (energy(x + h) - 2 * energy(x) + energy(x - h)) / h**2
    assert float(torch.autograd.functional.hessian(energy, x)) == pytest.approx(float(fd), rel=1e-6)


@pytest.mark.parametrize("kernel", ["shielded", "gaussian"])
def test_periodic_force_derivatives(kernel):
    from ase.build import bulk

    atoms = bulk("NaCl", "rocksalt", a=5.64) * (2, 1, 1)
    atoms.rattle(0.1, seed=2)
    pos0 = torch.tensor(atoms.positions)
    cell = torch.tensor(atoms.cell.array)
    sym = atoms.get_chemical_symbols()

    def force(p, create_graph=False):
        sol = solve_charges(
            p, sym, cell=cell, pbc=True, params=P, tol=1e-13, kernel=kernel, cutoff=6.0
        )
        return -torch.autograd.grad(sol.energy, p, create_graph=create_graph)[0]

    p = pos0.clone().requires_grad_(True)
    row = torch.autograd.grad(force(p, True)[0, 0], p)[0]  # d F_0x / dR
    h = 1e-5
    for a, d in [(0, 0), (1, 0), (3, 2)]:
        pp, pm = pos0.clone(), pos0.clone()
        pp[a, d] += h
        pm[a, d] -= h
        fd = (
            float(force(pp.requires_grad_(True))[0, 0])
            - float(force(pm.requires_grad_(True))[0, 0])
        ) / (2 * h)
        assert float(row[a, d]) == pytest.approx(fd, rel=1e-5, abs=1e-7)
    assert np.isfinite(row.numpy()).all()
