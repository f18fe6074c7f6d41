"""The calculator differentiates in the cell only once stress has been asked for (audit,
December 7): it always did, so the PME influence function (cached for a cell without
gradient) was recomputed at every fixed-cell MD step, about a quarter of a step's time."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from ase.build import bulk

import unrollsci.chem._pme_mesh as mesh
from unrollsci.chem import QEqCalculator

P = {
    "Na": {"chi": 2.843, "eta": 12.0, "gamma": 0.7},
    "Cl": {"chi": 8.564, "eta": 10.0, "gamma": 0.6},
}


def _atoms():
    atoms = bulk("NaCl", "rocksalt", a=5.64, cubic=True) * (2, 1, 1)
    atoms.rattle(0.02, seed=1)
    atoms.calc = QEqCalculator(
        params=P, cutoff=5.0, ewald=True, ewald_method="pme", ewald_accuracy=1e-6, tol=1e-12
    )
    return atoms


def test_fixed_cell_steps_reuse_the_influence_function(monkeypatch):
    calls = {"n": 0}
    real = mesh.influence

    def counting(*args, **kwargs):
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(mesh, "influence", counting)
    atoms = _atoms()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        atoms.get_forces()
        first = calls["n"]
        for _ in range(3):  # fixed cell, atoms move
            atoms.positions[0, 0] += 0.01
            atoms.get_forces()
    assert calls["n"] == first  # was one more per step


def test_stress_when_asked_and_then_every_step():
    from ase.calculators.calculator import Calculator

    atoms = _atoms()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        atoms.get_forces()
        assert "stress" not in atoms.calc.results
        stress = atoms.get_stress()
        numerical = atoms.calc.calculate_numerical_stress(atoms, d=1e-5)
        assert np.allclose(stress, numerical, atol=1e-6)
        atoms.positions[1, 1] += 0.01  # the next step computes it with the forces
        atoms.get_forces()
        assert "stress" in atoms.calc.results
    assert isinstance(atoms.calc, Calculator)


def test_molecule_stress_still_refused():
    from ase.build import molecule
    from ase.calculators.calculator import PropertyNotImplementedError as NotImpl

    atoms = molecule("H2O")
    atoms.calc = QEqCalculator(cutoff=None)
    with pytest.raises(NotImpl):
        atoms.get_stress()
