"""Inputs an audit found unchecked on the calculator's analytic path, in the pair search
and in solve_charges (each was a silent wrong answer, a crash of the whole process, or an
error from deep inside a dependency)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule

from unrollsci.chem import QEqCalculator, solve_charges


def _water(**kw) -> Atoms:
    a = molecule("H2O")
    a.calc = QEqCalculator(cutoff=6.0, **kw)
    return a


def test_analytic_path_checks_the_total_charge():
    """total_charge=1000 for 10 electrons ran to E = 4.4e6 eV on the default path."""
    with pytest.raises(ValueError, match="Impossible total_charge"):
        _water(total_charge=1000.0).get_potential_energy()


@pytest.mark.parametrize(
    ("key", "value"),
    [("tol", 0.0), ("tol", -1.0), ("coulomb_constant", -1.0), ("cutoff", 0.0), ("cutoff", -1.0),
     ("cutoff", float("nan")), ("total_charge", float("nan"))],
)  # fmt: skip
def test_calculator_refuses_bad_numbers_when_set(key, value):
    with pytest.raises(ValueError, match=key):
        QEqCalculator(**{key: value})
    calc = QEqCalculator()
    with pytest.raises(ValueError, match=key):
        calc.set(**{key: value})


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_cell_is_an_error_not_a_crash(bad):
    """A NaN cell reached the pair search (vesin) first: the process died of SIGFPE."""
    a = Atoms("NaCl", positions=[[0, 0, 0], [2.8, 0, 0]], cell=np.eye(3) * 5.6, pbc=True)
    cell = a.cell.array.copy()
    cell[0, 0] = bad
    a.set_cell(cell)
    a.calc = QEqCalculator(cutoff=4.0)
    with pytest.raises(ValueError, match="finite 'cell'"):
        a.get_potential_energy()


def test_singular_cell_is_a_value_error():
    a = Atoms("NaCl", positions=[[0, 0, 0], [1.0, 0, 0]], cell=np.zeros((3, 3)), pbc=True)
    a.calc = QEqCalculator(cutoff=4.0)
    with pytest.raises(ValueError, match="volume"):
        a.get_potential_energy()


@pytest.mark.parametrize("x", [1e6, 1e12])
def test_a_far_atom_gives_the_answer_of_the_pairs_in_reach(x):
    """A stray atom 1e6 Angstrom away crashed the cell-list search (SIGFPE); a k-d tree
    finds the same pairs: the same charges and energy as with the atom 100 Angstrom away
    (beyond the cutoff either way, found by the cell list)."""

    def solve(d: float):
        pos = torch.tensor([[0, 0, 0], [0.92, 0, 0], [d, 0, 0]], dtype=torch.float64)
        return solve_charges(pos, [1, 9, 1], cutoff=6.0, total_charge=0.0)

    ref, got = solve(100.0), solve(x)
    torch.testing.assert_close(got.x, ref.x, rtol=0, atol=1e-12)
    assert float(got.energy) == pytest.approx(float(ref.energy), rel=1e-12)
    far = Atoms("HFH", positions=[[0, 0, 0], [0.92, 0, 0], [x, 0, 0]])
    far.calc = QEqCalculator(cutoff=6.0, total_charge=0.0)
    assert far.get_potential_energy() == pytest.approx(float(ref.energy), rel=1e-10)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.complex128])
def test_solve_charges_refuses_low_precision_and_complex(dtype):
    """float16 reported converged with the total charge 7e-4 off."""
    pos = torch.tensor(molecule("H2O").positions).to(dtype)
    with pytest.raises(TypeError, match="float32 or float64"):
        solve_charges(pos, [8, 1, 1])


@pytest.mark.parametrize("value", [0.0, -0.5])
def test_per_atom_gamma_must_be_positive(value):
    pos = torch.tensor(molecule("H2O").positions, dtype=torch.float64)
    gamma = torch.tensor([0.5, value, 0.5], dtype=torch.float64)
    with pytest.raises(ValueError, match="gamma"):
        solve_charges(pos, [8, 1, 1], gamma=gamma)


@pytest.mark.parametrize("numbers", [[8.5, 1, 1], [True, True, True]])
def test_atomic_numbers_must_be_integers(numbers):
    """8.5 was truncated to oxygen; [True, True, True] read as three hydrogens."""
    pos = torch.tensor(molecule("H2O").positions, dtype=torch.float64)
    with pytest.raises(ValueError, match="integer atomic numbers"):
        solve_charges(pos, numbers)


def test_total_charge_must_be_a_number():
    pos = torch.tensor(molecule("H2O").positions, dtype=torch.float64)
    with pytest.raises(TypeError, match="total_charge"):
        solve_charges(pos, [8, 1, 1], total_charge="1")
