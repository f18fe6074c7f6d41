"""Audit round dec16 ("dec16" names the round, not a date), periodic electrostatics:

1. a partly periodic cell (slab, chain) with one atom more than 1e4 cutoffs from the others
   took the molecules' k-d tree pair search and silently lost every periodic image;
2. ``ewald_accuracy``, ``iterations`` and ``max_iter`` were stored unchecked by the
   calculator's constructor and ``set()``, and a non-number ``ewald_accuracy`` gave a bare
   ``TypeError: '<' not supported`` from the solve;
3. a nearly singular fully periodic cell (its lattice holds a vector far below the minimum
   interatomic distance) made the pair search enumerate ~ cutoff^3 / volume images per atom
   (46 s at det 0.01, hours at det 1e-6) before the overlap check raised;
4. float32: only the centroid was moved by a lattice vector, so an unwrapped MD trajectory
   (each atom with its own lattice offset) kept float32's rounding of large coordinates;
5. with Ewald, ``solve_charges``' energy took the cell's dtype (the background term used the
   uncast cell).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk

from unrollsci.chem import QEqCalculator, solve_charges

F64 = torch.float64
SLAB = {
    "Na": {"chi": 2.843, "eta": 12.0, "gamma": 0.7},
    "Cl": {"chi": 8.564, "eta": 10.0, "gamma": 0.6},
    "H": {"chi": 4.5, "eta": 14.0, "gamma": 0.5},
}
NACL = {
    "Na": {"chi": 2.843, "eta": 12.0, "gamma": 0.7, "sigma": 1.2},
    "Cl": {"chi": 8.564, "eta": 10.0, "gamma": 0.6, "sigma": 1.5},
}


# --- 1. a far atom in a partly periodic cell keeps the periodic images -----------------


def _slab_energy(far: list[float], pbc, cell, cl=(2.0, 2.0, 0.5)) -> float:
    pos = torch.tensor([[0.0, 0.0, 0.0], list(cl), far], dtype=F64)
    sol = solve_charges(
        pos, ["Na", "Cl", "H"], cell=torch.tensor(cell, dtype=F64), pbc=pbc, params=SLAB, cutoff=6.0
    )
    return float(sol.energy)


SLAB_CELL = [[4.0, 0, 0], [0, 4.0, 0], [0, 0, 0.0]]
CHAIN_CELL = [[0.0, 0, 0], [0, 0.0, 0], [0, 0, 4.0]]


@pytest.mark.parametrize("z", [61_000.0, 1e6, 1e9])
def test_slab_with_a_far_atom_keeps_its_images(z):
    # the near-atom energy is the reference: the far H interacts with nothing either way
    pbc = [True, True, False]
    near = _slab_energy([0.0, 0.0, 100.0], pbc, SLAB_CELL)
    assert _slab_energy([0.0, 0.0, z], pbc, SLAB_CELL) == pytest.approx(near, rel=1e-12, abs=0)


@pytest.mark.parametrize("x", [61_000.0, 1e7])
def test_chain_with_a_far_atom_keeps_its_images(x):
    pbc = [False, False, True]
    near = _slab_energy([100.0, 0.0, 0.0], pbc, CHAIN_CELL, cl=(0.5, 0.5, 2.0))
    far = _slab_energy([x, -x, 0.0], pbc, CHAIN_CELL, cl=(0.5, 0.5, 2.0))
    assert far == pytest.approx(near, rel=1e-12, abs=0)


def test_slab_atom_unwrapped_along_a_periodic_direction():
    # positions modulo a periodic vector give the same structure
    pbc = [True, True, False]
    far = [0.0, 0.0, 3.0]
    wrapped = _slab_energy(far, pbc, SLAB_CELL)
    unwrapped = _slab_energy(far, pbc, SLAB_CELL, cl=(2.0 + 4.0 * 20_000, 2.0, 0.5))
    assert unwrapped == pytest.approx(wrapped, rel=1e-9, abs=0)


def test_calculator_slab_with_a_far_atom():
    def energy(z):
        a = Atoms("NaClH", positions=[[0, 0, 0], [2.0, 2.0, 0.5], [0, 0, z]], cell=SLAB_CELL)
        a.pbc = [True, True, False]
        a.calc = QEqCalculator(params=SLAB, cutoff=6.0)
        return a.get_potential_energy()

    assert energy(80_000.0) == pytest.approx(energy(100.0), rel=1e-12, abs=0)


# --- 2. ewald_accuracy, iterations, max_iter checked at once ------------------------------


def _rocksalt_calc():
    atoms = bulk("NaCl", "rocksalt", a=5.64)
    atoms.calc = QEqCalculator(cutoff=5.0, ewald=True)
    atoms.get_potential_energy()
    return atoms, atoms.calc


BAD = [
    ({"ewald_accuracy": -1.0}, ValueError, "0 < ewald_accuracy < 1"),
    ({"ewald_accuracy": 2.0}, ValueError, "0 < ewald_accuracy < 1"),
    ({"ewald_accuracy": float("nan")}, ValueError, "0 < ewald_accuracy < 1"),
    ({"ewald_accuracy": "1e-6"}, TypeError, "'ewald_accuracy' to be a real number"),
    ({"ewald_accuracy": None}, TypeError, "'ewald_accuracy' to be a real number"),
    ({"ewald_accuracy": [1e-6]}, TypeError, "'ewald_accuracy' to be a real number"),
    ({"iterations": -3}, ValueError, "'iterations' >= 0"),
    ({"iterations": "3"}, TypeError, "'iterations' to be an integer or None"),
    ({"max_iter": 2.5}, TypeError, "'max_iter' to be an integer or None"),
    ({"max_iter": -1}, ValueError, "'max_iter' >= 0"),
]


@pytest.mark.parametrize(("bad", "exc", "match"), BAD)
def test_set_refuses_a_bad_value_and_changes_nothing(bad, exc, match):
    atoms, calc = _rocksalt_calc()
    before = dict(calc.parameters)
    energy = calc.results["energy"]
    with pytest.raises(exc, match=match):
        calc.set(**bad)
    assert calc.parameters == before
    assert calc.results.get("energy") == energy  # nothing cleared
    assert atoms.get_potential_energy() == energy


@pytest.mark.parametrize(("bad", "exc", "match"), BAD)
def test_constructor_refuses_a_bad_value(bad, exc, match):
    with pytest.raises(exc, match=match):
        QEqCalculator(cutoff=5.0, ewald=True, **bad)


def test_good_values_are_stored_as_plain_numbers():
    calc = QEqCalculator(
        cutoff=5.0, ewald=True, ewald_accuracy=np.float32(1e-6), iterations=np.int64(3)
    )
    assert type(calc.parameters["ewald_accuracy"]) is float
    assert type(calc.parameters["iterations"]) is int
    assert calc.parameters["ewald_accuracy"] == float(np.float32(1e-6))


@pytest.mark.parametrize("value", ["1e-6", None, [1e-6], np.array([1e-6, 1e-7]), 1j, True])
def test_solve_charges_refuses_a_non_number_ewald_accuracy(value):
    at = bulk("NaCl", "rocksalt", a=5.64)
    pos, cell = torch.tensor(at.positions), torch.tensor(at.cell.array)
    with pytest.raises(TypeError, match="Expected 'ewald_accuracy' to be a real number in"):
        solve_charges(
            pos, ["Na", "Cl"], cell=cell, pbc=True, cutoff=5.0, ewald=True, ewald_accuracy=value
        )


def test_solve_charges_accepts_a_scalar_tensor_accuracy():
    at = bulk("NaCl", "rocksalt", a=5.64)
    pos, cell = torch.tensor(at.positions), torch.tensor(at.cell.array)
    kw = {"cell": cell, "pbc": True, "cutoff": 5.0, "ewald": True}
    ref = solve_charges(pos, ["Na", "Cl"], ewald_accuracy=1e-6, **kw)
    sol = solve_charges(pos, ["Na", "Cl"], ewald_accuracy=torch.tensor(1e-6, dtype=F64), **kw)
    assert float(sol.energy) == float(ref.energy)


# --- 3. a lattice with a vector below the minimum distance is refused at once --------------


@pytest.mark.parametrize(
    ("cell", "pbc", "length"),
    [
        ([[5.0, 0, 0], [0, 5.0, 0], [5.0, 0, 4e-3]], True, 4e-3),  # holds (0, 0, 4e-3)
        (
            [[5.0, 0, 0], [0, 5.0, 0], [5.0, 0, 4.00001e-8]],
            True,
            4.00001e-8,
        ),  # det 1e-6: accepted before
        ([[5.0, 0, 0], [5.0, 0.01, 0], [0, 0, 0]], [True, True, False], 0.01),
        ([[0, 0, 0], [0, 0, 0], [0, 0, 1e-3]], [False, False, True], 1e-3),
    ],
)
def test_lattice_shorter_than_the_minimum_distance_is_refused(cell, pbc, length):
    pos = torch.zeros(1, 3, dtype=F64)
    with pytest.raises(ValueError, match="no vector shorter than 0.1 Angstrom") as err:
        solve_charges(pos, ["Na"], cell=torch.tensor(cell, dtype=F64), pbc=pbc, cutoff=6.0)
    assert f"of length {length:.3g} Angstrom" in str(err.value)
    atoms = Atoms("Na", positions=[[0, 0, 0]], cell=cell, pbc=pbc)
    atoms.calc = QEqCalculator(cutoff=6.0)
    with pytest.raises(ValueError, match="no vector shorter than 0.1 Angstrom"):
        atoms.get_potential_energy()


@pytest.mark.parametrize("shear", [15, 100])
def test_skewed_cells_of_a_good_lattice_still_pass(shear):
    # shear 100: plane spacing 0.03 A < 0.1, so the lattice reduction decides (it passes)
    at = bulk("NaCl", "rocksalt", a=5.64) * (2, 1, 1)
    at.rattle(0.1, seed=5)
    cell = np.array([[1, 0, 0], [shear, 1, 0], [0, 0, 1]]) @ at.cell.array
    kw = {"pbc": True, "params": NACL, "cutoff": 6.0, "tol": 1e-12}
    pos, symbols = torch.tensor(at.positions), at.get_chemical_symbols()
    ref = solve_charges(pos, symbols, cell=torch.tensor(at.cell.array), **kw)
    sol = solve_charges(pos, symbols, cell=torch.tensor(cell), **kw)
    assert float(sol.energy) == pytest.approx(float(ref.energy), rel=1e-11, abs=0)


# --- 4. float32: each atom wrapped into the cell before the cast ---------------------------


def _unwrapped_nacl(ncell: int) -> tuple[Atoms, Atoms]:
    at = bulk("NaCl", "rocksalt", a=5.64, cubic=True) * (2, 2, 2)
    at.rattle(0.1, seed=3)
    un = at.copy()
    rng = np.random.default_rng(0)
    un.positions += rng.integers(-ncell, ncell + 1, size=(len(at), 3)) @ at.cell.array
    return at, un


def _results(atoms: Atoms, dtype: str, **kw) -> tuple[float, np.ndarray, np.ndarray]:
    a = atoms.copy()
    a.calc = QEqCalculator(params=NACL, cutoff=6.0, tol=1e-6, dtype=dtype, **kw)
    return a.get_potential_energy(), a.get_forces(), a.get_stress()


@pytest.mark.parametrize(
    "kw",
    [{}, {"forces": "unrolled"}, {"ewald": True, "ewald_accuracy": 1e-6, "ewald_method": "pme"}],
    ids=["analytic", "autograd", "pme"],
)
def test_float32_unwrapped_trajectory_as_accurate_as_wrapped(kw):
    at, un = _unwrapped_nacl(100)
    e64, f64, s64 = _results(at, "float64", **kw)
    e32, f32, s32 = _results(at, "float32", **kw)
    e32u, f32u, s32u = _results(un, "float32", **kw)
    wrapped_err = np.abs(f32 - f64).max()
    assert np.abs(f32u - f64).max() <= 2.0 * wrapped_err + 1e-6  # was 40x the wrapped error
    assert abs(e32u - e64) <= 2.0 * abs(e32 - e64) + 1e-5
    assert np.abs(s32u - s64).max() <= 2.0 * np.abs(s32 - s64).max() + 1e-7


def test_float32_kept_pair_list_follows_unwrapped_atoms():
    # a kept list (skin) on unwrapped atoms that cross the cell faces: each call as a fresh
    # float64 calculator gives, and the list is kept while the atoms move less than skin/2
    _, un = _unwrapped_nacl(100)
    kept = un.copy()
    length = kept.cell[0, 0]
    # atom 0 0.3 A below a face x = n a of its (far) image of the cell: it crosses it below
    kept.positions[0, 0] = np.round(kept.positions[0, 0] / length) * length - 0.3
    kept.calc = QEqCalculator(params=NACL, cutoff=6.0, tol=1e-6, dtype="float32", skin=2.0)
    rng = np.random.default_rng(1)
    for step in range(4):
        if step:
            kept.positions += rng.normal(scale=0.05, size=(len(un), 3))
            kept.positions[0] += [0.25, 0.0, 0.0]
        forces = kept.get_forces()
        _, ref, _ = _results(kept, "float64")
        assert np.abs(forces - ref).max() < 3e-4
    assert kept.calc.neighbor_list_builds == 1


# --- 5. the energy's dtype is the positions' -------------------------------------------------


@pytest.mark.parametrize("charge", [0.0, 2.0])
def test_ewald_energy_follows_the_positions_dtype(charge):
    at = bulk("NaCl", "rocksalt", a=6.0, cubic=True)  # 6.0: exact in float32
    at.rattle(0.05, seed=1)
    kw = {"pbc": True, "params": NACL, "cutoff": 5.0, "total_charge": charge, "ewald": True}
    kw["ewald_method"] = "ewald"
    numbers = at.numbers.tolist()

    def solve(pd, cd, tol):
        pos = torch.tensor(at.positions, dtype=pd)
        return solve_charges(
            pos, numbers, cell=torch.tensor(at.cell.array, dtype=cd), tol=tol, **kw
        )

    ref = solve(F64, F64, 1e-12)
    mixed = solve(F64, torch.float32, 1e-12)
    assert mixed.energy.dtype == F64
    assert float(mixed.energy) == pytest.approx(float(ref.energy), rel=1e-13, abs=0)
    ref32 = solve(torch.float32, torch.float32, 1e-6)
    mixed32 = solve(torch.float32, F64, 1e-6)
    assert mixed32.energy.dtype == torch.float32
    assert float(mixed32.energy) == float(ref32.energy)
