"""Audit of the QEq ASE calculator and ``unrollsci relax`` (December 7): a failed output
write is a clean error, ``copy.deepcopy`` works after a calculation, in-place edits of the
parameters are never silently ignored, fixed-iteration results do not depend on earlier
calls, and a custom short-range object does not stop trajectory/database writes."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
from ase.build import bulk, molecule

from unrollsci import ConvergenceWarning
from unrollsci.chem import BornMayer, QEqCalculator

NACL = {
    "Na": {"chi": 2.843, "eta": 12.0, "gamma": 0.7},
    "Cl": {"chi": 8.564, "eta": 10.0, "gamma": 0.6},
}


def _crystal():
    atoms = bulk("NaCl", "rocksalt", a=5.64, cubic=True)
    atoms.rattle(0.05, seed=0)
    return atoms


def _files(folder):
    return sorted(p.name for p in folder.iterdir())


# --------------------------------------------------------------------------- relax CLI


@pytest.fixture
def water(tmp_path, monkeypatch):
    from ase.io import write

    monkeypatch.chdir(tmp_path)
    m = molecule("H2O")
    m.rattle(0.05, seed=0)
    write("h2o.xyz", m)
    return tmp_path


def test_relax_refuses_an_output_format_that_cannot_hold_the_structure(water, capsys):
    from unrollsci.chem._cli import EXIT_USAGE, relax_main

    # a molecule has no cell: ASE's VASP writer refuses it (it used to, after the whole
    # relaxation, with a traceback and exit status 1, "not converged, files written")
    code = relax_main(["h2o.xyz", "--out", "POSCAR", "--cutoff", "none"])
    captured = capsys.readouterr()
    assert code == EXIT_USAGE
    err = captured.err.strip()
    assert err.startswith("unrollsci relax: error: cannot write") and "\n" not in err
    assert "Traceback" not in err and "step" not in captured.out  # refused before any step
    assert _files(water) == ["h2o.xyz"]  # the trial file is gone, nothing else written


def test_relax_final_write_failure_is_a_clean_error_that_keeps_files(water, monkeypatch, capsys):
    import ase.io

    from unrollsci.chem._cli import EXIT_CONVERGED, EXIT_NOT_CONVERGED, EXIT_OUTPUT, relax_main

    (water / "h2o_relaxed.xyz").write_text("mine\n")
    (water / "h2o_relaxed.traj").write_bytes(b"my trajectory")
    real_write, calls = ase.io.write, []

    def write(*args, **kwargs):  # the trial write passes, the final one fails
        calls.append(args[0])
        if len(calls) > 1:
            raise RuntimeError("disk says no\nsecond line")
        return real_write(*args, **kwargs)

    monkeypatch.setattr(ase.io, "write", write)
    code = relax_main(["h2o.xyz", "--cutoff", "none", "--steps", "3", "--force"])
    err = capsys.readouterr().err.strip()
    assert code == EXIT_OUTPUT and code not in (EXIT_CONVERGED, EXIT_NOT_CONVERGED)
    assert err.startswith("unrollsci relax: error: could not write the relaxed structure")
    assert "disk says no second line" in err and "\n" not in err and "Traceback" not in err
    assert len(calls) == 2
    # the user's files are untouched and no temporary file is left
    assert (water / "h2o_relaxed.xyz").read_text() == "mine\n"
    assert (water / "h2o_relaxed.traj").read_bytes() == b"my trajectory"
    assert _files(water) == ["h2o.xyz", "h2o_relaxed.traj", "h2o_relaxed.xyz"]


# --------------------------------------------------------------------------- deepcopy

MODES = [
    pytest.param({}, id="default"),
    pytest.param({"cutoff": None}, id="all-pairs"),
    pytest.param({"ewald": True, "cutoff": 6.0}, id="ewald"),
    pytest.param({"forces": "unrolled", "cutoff": None}, id="unrolled"),
    pytest.param({"cutoff": 6.0, "skin": 0.5, "crystal": True}, id="csr-pattern"),
]


def _system(kw):
    kw = dict(kw)
    if kw.pop("crystal", False) or kw.get("ewald"):
        atoms = _crystal()
        if not kw.get("ewald"):
            atoms = atoms.repeat((3, 3, 3))  # enough pairs for the sparse CSR pattern
        return atoms, {"params": NACL, "short_range": "radii", **kw}
    return molecule("CH3CH2OH"), kw


@pytest.mark.parametrize("kw", MODES)
def test_deepcopy_of_atoms_after_a_calculation(kw):
    atoms, kw = _system(kw)
    atoms.calc = QEqCalculator(**kw)
    e, f = atoms.get_potential_energy(), atoms.get_forces()
    twin = copy.deepcopy(atoms)  # used to raise inside torch (sparse CSR, autograd graph)
    assert twin.calc is not atoms.calc and twin.calc.results.keys() == atoms.calc.results.keys()
    assert twin.get_potential_energy() == e  # results kept: no recomputation needed
    assert twin.calc.solution.iterations == atoms.calc.solution.iterations
    twin.positions[0, 0] += 0.01
    ref = twin.copy()
    ref.calc = QEqCalculator(**atoms.calc.todict())
    assert twin.get_potential_energy() == pytest.approx(ref.get_potential_energy(), abs=1e-9)
    np.testing.assert_allclose(twin.get_forces(), ref.get_forces(), atol=1e-7)
    # the original is unaffected, and still follows its own atoms
    assert atoms.get_potential_energy() == e
    np.testing.assert_array_equal(atoms.get_forces(), f)
    atoms.positions[1, 1] += 0.02
    ref = atoms.copy()
    ref.calc = QEqCalculator(**atoms.calc.todict())
    assert atoms.get_potential_energy() == pytest.approx(ref.get_potential_energy(), abs=1e-9)


def test_deepcopy_of_the_calculator_keeps_parameters_and_results_not_caches():
    atoms, kw = _system({"cutoff": 6.0, "crystal": True})
    calc = QEqCalculator(**kw)
    atoms.calc = calc
    atoms.get_potential_energy()
    assert calc._verlet.pattern is not None  # the case that broke deepcopy
    twin = copy.deepcopy(calc)
    assert twin.parameters == calc.parameters and twin.parameters is not calc.parameters
    assert twin.results["energy"] == calc.results["energy"]
    assert twin.neighbor_list_builds == 0  # caches dropped, rebuilt on the next call
    assert twin._q_prev is not None and twin._q_prev is not calc._q_prev  # warm start kept
    twin.parameters["params"]["Na"]["chi"] = 3.0  # shares nothing with the original
    assert calc.parameters["params"]["Na"]["chi"] == 2.843


def test_solution_is_detached_after_calculate():
    atoms = molecule("H2O")
    atoms.calc = QEqCalculator(cutoff=None, forces="unrolled")
    atoms.get_forces()
    sol = atoms.calc.solution
    assert not sol.energy.requires_grad and sol.energy.grad_fn is None
    assert not sol.x.requires_grad and sol.x.grad_fn is None


# --------------------------------------------------------------------------- in-place edits


def test_in_place_edit_of_qeq_params_is_not_silently_ignored():
    atoms = _crystal()
    calc = QEqCalculator(params={"Na": {"chi": 2.843}}, cutoff=6.0, short_range="radii")
    atoms.calc = calc
    e = atoms.get_potential_energy()
    # the attribute is a copy: editing it changes neither the parameters nor the results
    calc.qeq_params["Na"]["chi"] = 4.0
    assert calc.parameters["params"] == {"Na": {"chi": 2.843}}
    assert calc.set(params=calc.qeq_params) == {}
    assert calc.results  # set() with unchanged values keeps the results (ASE)
    ref = atoms.copy()
    ref.calc = QEqCalculator(**calc.todict())
    assert atoms.get_potential_energy() == e == pytest.approx(ref.get_potential_energy())
    # edit a copy, assign it: the change takes effect
    p = calc.qeq_params
    p["Na"]["chi"] = 4.0
    calc.qeq_params = p
    ref = atoms.copy()
    ref.calc = QEqCalculator(**calc.todict())
    assert calc.todict()["params"] == {"Na": {"chi": 4.0}}
    assert atoms.get_potential_energy() == pytest.approx(ref.get_potential_energy(), abs=1e-8)
    assert abs(atoms.get_potential_energy() - e) > 1e-3


def test_set_copies_the_dict_it_is_given():
    table = {"Na": {"chi": 2.843}}
    calc = QEqCalculator(params=table, cutoff=6.0)
    table["Na"]["chi"] = 4.0
    assert calc.parameters["params"] == {"Na": {"chi": 2.843}}
    assert calc.todict()["params"] is not calc.parameters["params"]


def test_direct_edit_of_calc_parameters_takes_effect():
    atoms = _crystal()
    calc = QEqCalculator(params=NACL, cutoff=6.0, short_range="radii")
    atoms.calc = calc
    atoms.get_potential_energy()
    calc.parameters.cutoff = 4  # ASE's Parameters: attribute access, not through set()
    e4 = atoms.get_potential_energy()
    assert calc.settings.cutoff == 4.0 and calc.parameters["cutoff"] == 4.0  # normalised
    ref = atoms.copy()
    ref.calc = QEqCalculator(**calc.todict())
    assert e4 == pytest.approx(ref.get_potential_energy(), abs=1e-9)
    # a nested in-place edit, then set() with the edited (unchanged-looking) value
    calc.parameters["params"]["Na"]["chi"] = 4.0
    assert calc.set(params=calc.parameters["params"]) == {"params": calc.parameters["params"]}
    assert calc.results == {}
    ref = atoms.copy()
    ref.calc = QEqCalculator(**calc.todict())
    assert atoms.get_potential_energy() == pytest.approx(ref.get_potential_energy(), abs=1e-9)
    # also through calc.get_potential_energy() without atoms
    calc.parameters["params"]["Na"]["chi"] = 2.843
    ref = atoms.copy()
    ref.calc = QEqCalculator(**calc.todict())
    assert calc.get_potential_energy() == pytest.approx(ref.get_potential_energy(), abs=1e-9)
    # a bad value edited in is checked like one given to set()
    calc.parameters["tol"] = -1.0
    with pytest.raises(ValueError, match="tol"):
        atoms.get_potential_energy()


def test_set_with_unchanged_values_keeps_the_results():
    atoms = _crystal()
    calc = QEqCalculator(params=NACL, cutoff=6.0, short_range="radii")
    atoms.calc = calc
    atoms.get_potential_energy()
    assert calc.set(**calc.todict()) == {}
    assert calc.set(params=NACL, cutoff=6.0, short_range="radii") == {}
    assert "energy" in calc.results and calc.solution is not None


# --------------------------------------------------------------------------- iterations


@pytest.mark.parametrize("forces", ["envelope", "implicit", "unrolled"])
def test_fixed_iterations_energy_does_not_depend_on_history(forces):
    atoms = _crystal()
    calc = QEqCalculator(params=NACL, cutoff=6.0, short_range="radii", forces=forces, iterations=2)
    atoms.calc = calc
    es = []
    with warnings.catch_warnings():
        # implicit forces of unconverged charges warn (differentiating converged ones)
        warnings.simplefilter("ignore", ConvergenceWarning)
        for _ in range(4):
            es.append(atoms.get_potential_energy())
            calc.reset()  # results cleared, the previous charges kept
        fresh = atoms.copy()
        fresh.calc = QEqCalculator(**calc.todict())
        e_fresh = fresh.get_potential_energy()
    assert np.ptp(es) == 0.0 and es[0] == e_fresh  # used to spread by 1e-3 eV


# --------------------------------------------------------------------------- custom short range


class _Wall:
    """A custom short-range term (not plain data)."""

    cutoff = None

    def __init__(self):
        self.bm = BornMayer(default="radii")

    def energy(self, *args, **kwargs):
        return self.bm.energy(*args, **kwargs)


def test_custom_short_range_calculator_can_be_written_to_a_trajectory_and_db(tmp_path):
    from ase.db import connect
    from ase.io import Trajectory, read

    atoms = _crystal()
    wall = _Wall()
    atoms.calc = QEqCalculator(params=NACL, cutoff=6.0, short_range=wall)
    e = atoms.get_potential_energy()
    assert atoms.calc.short_range is wall and atoms.calc.parameters["short_range"] is wall
    assert "short_range" not in atoms.calc.todict()
    assert "short_range" not in atoms.calc.todict(skip_default=False)
    with Trajectory(tmp_path / "t.traj", "w") as t:  # used to raise TypeError
        t.write(atoms)
    assert read(tmp_path / "t.traj").get_potential_energy() == pytest.approx(e)
    with connect(tmp_path / "t.db") as db:
        db.write(atoms)
    # plain-data forms are still written
    atoms.calc = QEqCalculator(params=NACL, cutoff=6.0, short_range="radii")
    assert atoms.calc.todict()["short_range"] == "radii"
    bm = BornMayer({("Na", "Cl"): (1200.0, 0.32)})
    atoms.calc = QEqCalculator(params=NACL, cutoff=6.0, short_range=bm)
    assert atoms.calc.todict()["short_range"] == bm.todict()
