"""QEqCalculator follows ASE's calculator conventions (parameters, set, todict, check_state),
takes its total charge from the initial charges, has a dipole, works with ASE's constraints,
filters, MD, trajectories and databases, and is listed in ASE's plugin collection."""

from __future__ import annotations

import importlib.metadata
import sys

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule
from ase.constraints import FixAtoms
from ase.optimize import BFGS

from unrollsci import UnrollsciWarning
from unrollsci.chem import BornMayer, QEqCalculator, solve_charges
from unrollsci.chem import _geometry as geometry
from unrollsci.chem._params import resolve_params

NACL = {
    "Na": {"chi": 2.843, "eta": 12.0, "gamma": 0.7},
    "Cl": {"chi": 8.564, "eta": 10.0, "gamma": 0.6},
}
REP = BornMayer({("Na", "Cl"): (1200.0, 0.32), ("Cl", "Cl"): (300.0, 0.32)})


def _crystal(rattle=0.05, seed=0):
    atoms = bulk("NaCl", "rocksalt", a=5.64, cubic=True)
    atoms.rattle(rattle, seed=seed)
    return atoms


def _crystal_calc(**kw):
    return QEqCalculator(**{"params": NACL, "cutoff": 6.0, "short_range": REP, "tol": 1e-10, **kw})


# --------------------------------------------------------------------------- parameters


def test_defaults_match_the_signature():
    import inspect

    sig = inspect.signature(QEqCalculator.__init__).parameters
    calc = QEqCalculator()
    for key, default in QEqCalculator.default_parameters.items():
        # the signature's defaults, normalized, are the documented defaults
        assert calc.parameters[key] == default, key
        assert key in sig, key
    assert calc.todict() == {}


def test_set_returns_changes_and_changes_the_results():
    atoms = _crystal()
    atoms.calc = calc = _crystal_calc()
    e0 = atoms.get_potential_energy()
    assert calc.set(tol=1e-10) == {}  # unchanged: results kept
    assert "energy" in calc.results
    changed = calc.set(total_charge=1.0, kernel="gaussian")
    assert changed == {"total_charge": 1.0, "kernel": "gaussian"}
    assert calc.results == {}  # cleared: the next request recomputes
    e1 = atoms.get_potential_energy()
    assert abs(atoms.get_charges().sum() - 1.0) < 1e-9
    assert abs(e1 - e0) > 1e-3
    # assigning an attribute is a set(): clears the results too
    calc.forces_mode = "envelope"
    assert calc.parameters["forces"] == "envelope" and calc.results == {}
    calc.total_charge = 0.0
    calc.kernel = "shielded"
    assert atoms.get_potential_energy() == pytest.approx(e0, abs=1e-9)


def test_bad_set_changes_nothing():
    calc = _crystal_calc()
    before = dict(calc.parameters)
    with pytest.raises(TypeError, match="unexpected keyword"):
        calc.set(tolerance=1e-3)
    with pytest.raises(ValueError, match="Expected forces in"):
        calc.set(tol=1e-4, forces="exact")
    with pytest.raises(ValueError, match="short-range cutoff"):
        calc.set(short_range=BornMayer(default="radii", cutoff=7.0))
    with pytest.raises(TypeError, match="dtype"):
        calc.set(dtype=torch.int64)
    assert dict(calc.parameters) == before


def test_todict_round_trip_gives_the_same_energy():
    atoms = _crystal()
    atoms.calc = calc = _crystal_calc(total_charge=0.5, dtype="float64", ewald=False)
    e = atoms.get_potential_energy()
    d = calc.todict()
    assert set(d) == {"params", "cutoff", "short_range", "tol", "total_charge"}
    assert d["short_range"]["pairs"]["Cl-Na"] == [1200.0, 0.32]  # plain data
    rebuilt = QEqCalculator(**d)
    assert rebuilt.parameters == calc.parameters
    a2 = atoms.copy()
    a2.calc = rebuilt
    assert a2.get_potential_energy() == pytest.approx(e, abs=1e-10)


# --------------------------------------------------------------------------- total charge


def test_total_charge_defaults_to_the_initial_charges():
    atoms = molecule("H2O")
    atoms.calc = calc = QEqCalculator(cutoff=None, tol=1e-10)
    assert abs(atoms.get_charges().sum()) < 1e-12
    atoms.set_initial_charges([-1.0, 0.0, 0.0])
    assert "initial_charges" in calc.check_state(atoms)
    q = atoms.get_charges()  # recomputed: the initial charges changed
    assert q.sum() == pytest.approx(-1.0, abs=1e-10)
    explicit = QEqCalculator(cutoff=None, tol=1e-10, total_charge=-1.0)
    a2 = atoms.copy()
    a2.set_initial_charges(None)
    a2.calc = explicit
    np.testing.assert_allclose(a2.get_charges(), q, atol=1e-9)
    # with an explicit total charge, the initial charges do not matter
    a2.get_potential_energy()
    a2.set_initial_charges([0.3, 0.0, 0.0])
    assert explicit.check_state(a2) == []
    assert a2.get_charges().sum() == pytest.approx(-1.0, abs=1e-10)


# --------------------------------------------------------------------------- dipole


def test_dipole_is_the_charge_sum_and_the_field_derivative():
    atoms = molecule("CH3CH2OH")
    atoms.set_initial_charges([1.0] + [0.0] * (len(atoms) - 1))  # a cation: Q = 1
    atoms.calc = QEqCalculator(cutoff=None, tol=1e-12, check_definite=False)
    mu = atoms.get_dipole_moment()
    q = atoms.get_charges()
    np.testing.assert_allclose(mu, (q[:, None] * atoms.positions).sum(0), atol=1e-12)
    # finite field: chi_i -> chi_i - F . r_i; dE/dF = -mu (the charges minimise E)
    pos = torch.tensor(atoms.positions, dtype=torch.float64)
    chi0 = solve_charges(pos, atoms.numbers, cutoff=None, tol=1e-12, total_charge=1.0)
    symbols = atoms.get_chemical_symbols()
    base_chi = resolve_params(symbols, None, device="cpu", dtype=torch.float64)["chi"]

    def energy(field):
        chi = base_chi - pos @ torch.tensor(field, dtype=torch.float64)
        sol = solve_charges(
            pos, atoms.numbers, cutoff=None, tol=1e-13, total_charge=1.0, chi=chi, grad="envelope"
        )
        return float(sol.energy)

    assert float(chi0.energy) == pytest.approx(atoms.get_potential_energy(), abs=1e-10)
    h = 1e-4
    fd = []
    for k in range(3):
        e = np.zeros(3)
        e[k] = h
        fd.append(-(energy(e) - energy(-e)) / (2 * h))
    np.testing.assert_allclose(fd, mu, atol=1e-6)
    assert np.abs(mu).max() > 0.1  # not trivially zero


def test_no_dipole_for_a_periodic_cell():
    from ase.calculators.calculator import PropertyNotImplementedError

    atoms = _crystal()
    atoms.calc = _crystal_calc()
    with pytest.raises(PropertyNotImplementedError, match="dipole"):
        atoms.get_dipole_moment()


# --------------------------------------------------------------------------- ASE workflows


def test_fixatoms_relaxation_converges():
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.05, seed=4)
    fixed = [0, 1]
    atoms.set_constraint(FixAtoms(indices=fixed))
    start = atoms.positions[fixed].copy()
    atoms.calc = QEqCalculator(cutoff=None, short_range="radii")
    assert BFGS(atoms, logfile=None).run(fmax=0.01, steps=300)
    np.testing.assert_array_equal(atoms.positions[fixed], start)
    free = np.delete(atoms.get_forces(), fixed, axis=0)  # constrained forces: 0 on fixed
    assert np.linalg.norm(free, axis=1).max() < 0.0101


def test_frechet_cell_filter_relaxes_the_cell_with_the_stress():
    try:
        from ase.filters import FrechetCellFilter
    except ImportError:  # ASE < 3.23 kept it in ase.constraints
        from ase.constraints import FrechetCellFilter

    atoms = bulk("NaCl", "rocksalt", a=5.8, cubic=True)  # stretched: the cell must shrink
    atoms.rattle(0.02, seed=1)
    atoms.calc = _crystal_calc(tol=1e-10)
    v0 = atoms.get_volume()
    s0 = np.abs(atoms.get_stress()).max()
    # the filter's 3x3 scipy expm/logm calls: one BLAS thread (many threads only spin here)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        assert BFGS(FrechetCellFilter(atoms), logfile=None).run(fmax=0.005, steps=300)
    # the filter's cell force is -V stress / N (cell_factor = N atoms), below fmax
    stress = np.abs(atoms.get_stress()).max()
    assert stress * atoms.get_volume() / len(atoms) < 0.0051
    assert stress < 0.1 * s0
    assert np.linalg.norm(atoms.get_forces(), axis=1).max() < 0.0051
    assert abs(atoms.get_volume() - v0) > 1.0  # the cell did relax


def test_langevin_md_runs_and_results_follow_the_atoms():
    from ase import units
    from ase.md.langevin import Langevin

    atoms = _crystal(rattle=0.02)
    atoms.calc = _crystal_calc(tol=1e-8)
    dyn = Langevin(
        atoms,
        1.0 * units.fs,
        temperature_K=300,
        friction=0.02,
        fixcm=False,
        rng=np.random.default_rng(0),
    )
    dyn.run(5)
    q, f = atoms.get_charges(), atoms.get_forces()
    fresh = atoms.copy()
    fresh.calc = _crystal_calc(tol=1e-12, warm_start=False)
    np.testing.assert_allclose(q, fresh.get_charges(), atol=1e-6)
    np.testing.assert_allclose(f, fresh.get_forces(), atol=1e-6)
    assert abs(q.sum()) < 1e-9


def test_charges_through_trajectory_and_database(tmp_path):
    from ase.db import connect
    from ase.io import Trajectory

    atoms = _crystal()
    atoms.calc = calc = _crystal_calc(total_charge=0.25)
    e, q = atoms.get_potential_energy(), atoms.get_charges()
    path = tmp_path / "run.traj"
    with Trajectory(str(path), "w") as traj:
        traj.write(atoms)
    with Trajectory(str(path)) as traj:
        back = traj[0]
    np.testing.assert_allclose(back.get_charges(), q, atol=0)
    assert back.get_potential_energy() == e
    again = back.copy()
    again.calc = QEqCalculator(**back.calc.parameters)  # the settings were written too
    assert again.calc.parameters == calc.parameters
    assert again.get_potential_energy() == pytest.approx(e, abs=1e-10)

    db = connect(str(tmp_path / "runs.db"))
    db.write(atoms)
    row = db.get(id=1)
    np.testing.assert_allclose(row.charges, q, atol=0)
    rebuilt = QEqCalculator(**row.calculator_parameters)
    assert rebuilt.parameters == calc.parameters
    a3 = row.toatoms()
    a3.calc = rebuilt
    assert a3.get_potential_energy() == pytest.approx(e, abs=1e-10)


# --------------------------------------------------------------------------- plugin


def _has_ase_plugins() -> bool:
    try:
        import ase._4.plugins.plugin  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _has_ase_plugins(), reason="ASE < 3.29 has no plugin collection")
def test_ase_plugin_collection_lists_the_calculator():
    from ase._4.plugins import PluginCollection

    eps = importlib.metadata.entry_points(group="ase.plugins")
    assert "unrollsci.chem._ase_plugin" in {ep.value for ep in eps}
    calcs = PluginCollection.from_entry_points().calculators
    ours = [p for p in calcs if p.name == "unrollsci_qeq"]
    assert len(ours) == 1 and ours[0].implementation is QEqCalculator
    # ASE's own global collection, loaded from the entry points when ase._4.plugins loads
    from ase._4.plugins import plugins

    assert "unrollsci_qeq" in {p.name for p in plugins.calculators}


def test_ase_plugin_is_empty_on_old_ase(monkeypatch):
    from unrollsci.chem import _ase_plugin

    monkeypatch.setitem(sys.modules, "ase._4.plugins.plugin", None)  # as on ASE < 3.29
    _ase_plugin._plugins.cache_clear()
    try:
        assert _ase_plugin.__ase_plugins__ == set()
    finally:
        _ase_plugin._plugins.cache_clear()


# --------------------------------------------------------------------------- vesin


def test_vesin_is_a_core_dependency():
    reqs = importlib.metadata.requires("unrollsci") or []
    core = [r for r in reqs if "extra ==" not in r]
    assert any(r.replace(" ", "").startswith("vesin") for r in core), reqs
    assert geometry._vesin() is not None  # the fast list is the one in use


def test_missing_vesin_warns_once_and_falls_back(monkeypatch):
    atoms = _crystal()
    pos = torch.tensor(atoms.positions)
    cell = torch.tensor(atoms.cell.array)
    kw = {"cell": cell, "pbc": True, "params": NACL, "cutoff": 6.0, "tol": 1e-12}
    fast = solve_charges(pos, atoms.numbers, **kw)
    monkeypatch.setitem(sys.modules, "vesin", None)  # import vesin -> ImportError
    monkeypatch.setattr(geometry, "_VESIN", {})
    with pytest.warns(UnrollsciWarning, match="pip install vesin"):
        slow = solve_charges(pos, atoms.numbers, **kw)
    assert fast.stats["n_pairs"] == slow.stats["n_pairs"]
    torch.testing.assert_close(fast.charges, slow.charges, atol=1e-12, rtol=0)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        solve_charges(pos, atoms.numbers, **kw)  # once per process: no second warning
