"""Short-range terms of QEq, an adversarial audit (December 9): each test fails on the code
before it."""

from __future__ import annotations

import pytest
import torch
from ase.build import bulk

from unrollsci.chem import BornMayer, QEqCalculator, solve_charges

P = {
    "Na": {"chi": 2.843, "eta": 12.0, "gamma": 0.7, "sigma": 1.2},
    "Cl": {"chi": 8.564, "eta": 10.0, "gamma": 0.6, "sigma": 1.5},
}


class _Repulsion:
    """A custom short-range term (documented: any object with BornMayer's ``energy``),
    without a cutoff of its own."""

    def energy(self, symbols, i, j, r, cutoff):
        return (100.0 * torch.exp(-r / 0.5)).sum()


def test_custom_short_range_does_not_depend_on_the_skin_or_on_earlier_calls():
    """It was given every pair of the neighbour list (cutoff + skin): E = 5.152 at skin 0,
    6.062 at skin 1, 6.100 at skin 2, and 6.046 after an earlier call at skin 1."""
    atoms = bulk("NaCl", "rocksalt", a=5.64, cubic=True)
    atoms.rattle(0.05, seed=1)
    ref = solve_charges(
        torch.tensor(atoms.positions),
        atoms.numbers,
        cell=torch.tensor(atoms.cell.array),
        pbc=True,
        params=P,
        cutoff=4.0,
        short_range=_Repulsion(),
        tol=1e-12,
    ).energy
    for skin in (0.0, 1.0, 2.0):
        a = atoms.copy()
        a.calc = QEqCalculator(params=P, cutoff=4.0, short_range=_Repulsion(), skin=skin)
        assert a.get_potential_energy() == pytest.approx(float(ref), rel=1e-8, abs=1e-8)
    a = atoms.copy()
    a.calc = QEqCalculator(params=P, cutoff=4.0, short_range=_Repulsion(), skin=1.0)
    a.positions[0] += [0.3, 0, 0]
    a.get_potential_energy()  # the list is built here and kept (a move below skin / 2)
    a.positions[0] -= [0.3, 0, 0]
    assert a.get_potential_energy() == pytest.approx(float(ref), rel=1e-8, abs=1e-8)


@pytest.mark.parametrize("key", ["NA-Cl", ("Xx", "Cl"), "NaCl", ("X", "Na"), 5])
def test_born_mayer_refuses_a_pair_key_that_is_not_two_elements(key):
    """A typo ('NA-Cl') gave exactly no repulsion, silently; 'NaCl' failed with 'not enough
    values to unpack'."""
    with pytest.raises(ValueError, match="two element symbols"):
        BornMayer({key: (1000.0, 0.3)})
