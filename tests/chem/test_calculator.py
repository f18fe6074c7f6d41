"""QEqCalculator in ASE workflows: optimizers, MD, composition, CLI, options."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule
from ase.calculators.emt import EMT
from ase.calculators.mixing import SumCalculator
from ase.io import read, write
from ase.md.verlet import VelocityVerlet
from ase.optimize import BFGS, FIRE

from unrollsci.chem import BornMayer, QEqCalculator

NACL = {
    "Na": {"chi": 2.843, "eta": 12.0, "gamma": 0.7},
    "Cl": {"chi": 8.564, "eta": 10.0, "gamma": 0.6},
}
REP = BornMayer({("Na", "Cl"): (1200.0, 0.32), ("Cl", "Cl"): (300.0, 0.32)})


def test_bfgs_molecule_converges(device):
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.05, seed=2)
    atoms.calc = QEqCalculator(cutoff=None, short_range="radii", device=device)
    opt = BFGS(atoms, logfile=None)
    assert opt.run(fmax=0.01, steps=300)
    assert np.abs(atoms.get_forces()).max() < 0.0101
    q = atoms.get_charges()
    assert abs(q.sum()) < 1e-10 and np.ptp(q) > 0.05


def test_bfgs_periodic_crystal_converges(device):
    atoms = bulk("NaCl", "rocksalt", a=5.64, cubic=True)
    atoms.rattle(0.1, seed=0)
    atoms.calc = QEqCalculator(params=NACL, cutoff=8.0, short_range=REP, device=device)
    opt = BFGS(atoms, logfile=None)
    assert opt.run(fmax=0.01, steps=300)
    assert np.linalg.norm(atoms.get_forces(), axis=1).max() < 0.01
    assert atoms.get_stress().shape == (6,)


def test_fire_and_md_run(device):
    atoms = bulk("NaCl", "rocksalt", a=5.64, cubic=True)
    atoms.calc = QEqCalculator(params=NACL, cutoff=6.0, short_range=REP, device=device)
    atoms.rattle(0.05, seed=1)
    FIRE(atoms, logfile=None).run(fmax=0.1, steps=20)
    atoms.set_momenta(np.zeros((len(atoms), 3)))
    atoms.rattle(0.05, seed=3)
    e0 = atoms.get_total_energy()
    VelocityVerlet(atoms, timestep=0.5 * 0.0982269).run(20)  # 0.5 fs in ASE units
    assert abs(atoms.get_total_energy() - e0) < 1e-3


def test_sum_calculator_composes(device):
    # (was pure Cu with eta = 8: indefinite on sum(q) = 0, smallest eigenvalue -0.28 eV by
    # the dense reference, so the equal-chi charges q = 0 were a saddle point that the
    # projected-Cholesky check now refuses; eta = 12 is positive definite, min eig 3.7 eV)
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.rattle(0.05, seed=0)
    atoms.symbols[::2] = "Au"
    params = {
        "Cu": {"chi": 4.2, "eta": 12.0, "gamma": 0.5},
        "Au": {"chi": 5.1, "eta": 12.0, "gamma": 0.5},
    }
    qeq = QEqCalculator(params=params, cutoff=6.0, device=device)
    atoms.calc = SumCalculator([EMT(), qeq])
    e = atoms.get_potential_energy()
    f = atoms.get_forces()
    a2 = atoms.copy()
    a2.calc = EMT()
    e_emt, f_emt = a2.get_potential_energy(), a2.get_forces()
    a2.calc = QEqCalculator(params=params, cutoff=6.0, device=device)
    e_qeq = a2.get_potential_energy()
    assert abs(a2.get_charges()).max() > 0.1  # the QEq term is not trivially zero
    assert e == pytest.approx(e_emt + e_qeq, abs=1e-10)
    np.testing.assert_allclose(f, f_emt + a2.get_forces(), atol=1e-10)


def test_float32_and_total_charge(device):
    atoms = molecule("H2O")
    atoms.calc = QEqCalculator(
        cutoff=None, dtype=torch.float32, total_charge=-1.0, tol=1e-5, device=device
    )
    q = atoms.get_charges()
    assert abs(q.sum() + 1.0) < 1e-5
    assert atoms.get_forces().shape == (3, 3)


def test_calculator_rejects_bad_options():
    with pytest.raises(ValueError, match="Expected forces in"):
        QEqCalculator(forces="exact")
    with pytest.raises(TypeError, match="unexpected keyword"):
        QEqCalculator(tolerance=1e-3)
    with pytest.raises(ValueError, match="short-range cutoff"):
        QEqCalculator(cutoff=5.0, short_range=BornMayer(default="radii", cutoff=6.0))


def test_relax_cli(tmp_path, device, capsys):
    from unrollsci.cli import main

    atoms = molecule("H2O")
    atoms.rattle(0.05, seed=0)
    path = tmp_path / "water.xyz"
    write(path, atoms)
    out = tmp_path / "relaxed.xyz"
    rc = main(
        [
            "relax",
            str(path),
            "--fmax",
            "0.01",
            "--cutoff",
            "none",
            "--out",
            str(out),
            "--device",
            str(device),
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out.splitlines()
    steps = [line for line in printed if line.startswith("step ")]
    assert steps and all("E = " in line and "fmax = " in line for line in steps)
    assert all("QEq CG iterations = " in line for line in steps)  # --cutoff none: CG
    relaxed = read(out)
    traj = read(tmp_path / "relaxed.traj", index=":")
    assert len(traj) >= 2
    relaxed.calc = QEqCalculator(cutoff=None, short_range="radii")
    assert np.linalg.norm(relaxed.get_forces(), axis=1).max() < 0.0101


def test_relax_cli_says_when_the_charges_were_solved_directly(tmp_path, capsys):
    """A small periodic system with the definiteness check is solved directly: its
    progress lines said "QEq CG iterations = 0"."""
    from ase.build import bulk

    from unrollsci.cli import main

    atoms = bulk("NaCl", "rocksalt", a=5.64, cubic=True)
    atoms.rattle(0.05, seed=0)
    path = tmp_path / "nacl.xyz"
    write(path, atoms)
    rc = main(
        ["relax", str(path), "--fmax", "0.5", "--steps", "3", "--out", str(tmp_path / "o.xyz")]
    )
    assert rc == 1  # not converged in 3 steps (exit status 1)
    steps = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]
    assert steps and all("E = " in line and "QEq solved directly" in line for line in steps)
