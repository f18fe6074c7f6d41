"""Audit of the QEq ASE calculator and ``unrollsci relax`` (December 7): a failed output
write is a clean error, ``copy.deepcopy`` works after a calculation, in-place edits of the
parameters are never silently ignored, fixed-iteration results do not depend on earlier
calls, and a custom short-range object does not stop trajectory/database writes.

December 8 (second part of this file): ``calculation_required`` sees an in-place edit of the
parameters; ``__init__`` builds its parameters explicitly; the definiteness check (dense
test, certificate, direct solve) is neither fooled nor tripped by one very hard element
(learned eta many orders of magnitude above the others), and float32 overflow is a clear
error instead of a false catastrophe or NaN results. Each test fails on the code before the
fix, except those marked as guards."""

from __future__ import annotations

import copy
import inspect
import warnings
from fractions import Fraction

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule

from unrollsci import ConvergenceWarning
from unrollsci.chem import BornMayer, PolarizationCatastropheError, QEqCalculator, solve_charges
from unrollsci.chem import _solve as solve_mod
from unrollsci.chem._calc_params import DEFAULT_PARAMETERS, normalize

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


# ============================================================ December 8

# --------------------------------------------------------------------------- check_state


def test_calculation_required_after_an_in_place_edit_of_the_parameters():
    atoms = _crystal()
    calc = QEqCalculator(params=NACL, cutoff=6.0, short_range="radii")
    atoms.calc = calc
    e = atoms.get_potential_energy()
    assert not calc.calculation_required(atoms, ["energy"])
    # the attribute is a copy: editing it changes nothing
    calc.qeq_params["Na"]["chi"] = 4.0
    assert not calc.calculation_required(atoms, ["energy", "forces"])
    # a nested edit in place of calc.parameters: the results are stale (as get_property
    # sees it); calculation_required used to say False
    calc.parameters["params"]["Na"]["chi"] = 4.0
    assert calc.check_state(atoms) == ["parameters"]
    assert calc.calculation_required(atoms, ["energy"])
    assert "energy" in calc.results  # asking does not recompute or clear anything
    ref = atoms.copy()
    ref.calc = QEqCalculator(**calc.todict())
    e4 = atoms.get_potential_energy()
    assert e4 == pytest.approx(ref.get_potential_energy(), abs=1e-9) and abs(e4 - e) > 1e-3
    assert not calc.calculation_required(atoms, ["energy"])
    # edited and edited back: nothing changed
    calc.parameters["params"]["Na"]["chi"] = 2.0
    calc.parameters["params"]["Na"]["chi"] = 4.0
    assert not calc.calculation_required(atoms, ["energy"])
    # ASE's attribute access, and an atoms change on top of it
    calc.parameters.cutoff = 5.5
    assert calc.calculation_required(atoms, ["energy"])
    moved = atoms.copy()
    moved.positions[0, 0] += 0.01
    assert calc.check_state(moved) == ["positions", "parameters"]
    atoms.get_potential_energy()
    assert not calc.calculation_required(atoms, ["energy", "forces"])
    # a bad value edited in: required (and the calculation then raises), not an error here
    calc.parameters["tol"] = -1.0
    assert calc.calculation_required(atoms, ["energy"])
    with pytest.raises(ValueError, match="tol"):
        atoms.get_potential_energy()


def test_a_neutral_parameter_edit_keeps_the_results():
    atoms = _crystal()
    calc = QEqCalculator(params=NACL, cutoff=6.0, short_range="radii")
    atoms.calc = calc
    e = atoms.get_potential_energy()
    calc.parameters["skin"] = 0.25  # only how fast the results are reached
    assert not calc.calculation_required(atoms, ["energy"])  # guard: as get_property does
    assert atoms.get_potential_energy() == e and calc.settings is not None


# --------------------------------------------------------------------------- __init__


def test_init_builds_its_parameters_without_locals():
    assert "locals" not in QEqCalculator.__init__.__code__.co_names


def test_every_named_argument_reaches_the_parameters():
    # guard of the explicit construction: the signature is DEFAULT_PARAMETERS, in order
    sig = inspect.signature(QEqCalculator.__init__).parameters
    named = [k for k, v in sig.items() if k != "self" and v.kind is v.POSITIONAL_OR_KEYWORD]
    assert named == list(DEFAULT_PARAMETERS)
    for key in named:
        assert normalize(key, sig[key].default) == DEFAULT_PARAMETERS[key]
    values = {
        "params": {"Na": {"chi": 3.0}},
        "kernel": "gaussian",
        "cutoff": 7.0,
        "coulomb_constant": 14.0,
        "ewald": True,
        "ewald_accuracy": 1e-6,
        "ewald_method": "ewald",
        "total_charge": 1.0,
        "tol": 1e-7,
        "max_iter": 50,
        "iterations": 5,
        "forces": "envelope",
        "adjoint_tol": 0.5,
        "short_range": "radii",
        "warm_start": False,
        "device": "cpu",
        "dtype": torch.float32,
        "check_definite": False,
        "skin": 0.5,
        "solver": "cg",
    }
    assert list(values) == named
    for key, value in values.items():
        # the Ewald options act (and are accepted) with ewald=True only
        extra = {"ewald": True} if key in ("ewald_accuracy", "ewald_method") else {}
        calc = QEqCalculator(**{key: value}, **extra)
        expect = {**DEFAULT_PARAMETERS, **extra, key: normalize(key, value)}
        assert dict(calc.parameters) == expect, key
    calc = QEqCalculator(**values)
    assert dict(calc.parameters) == {k: normalize(k, v) for k, v in values.items()}


# --------------------------------------------------------------------------- definiteness

#: two soft Cl atoms 2 A apart (eta 2: a polarization catastrophe along q1 = -q2) and a Na
#: atom whose (learned) eta is 1e19 or 1e20: the Householder basis of sum(q) = 0 rounded the
#: projected matrix at the scale of 1e19 and the Cholesky test passed
TRIO = Atoms("Cl2Na", positions=[[2.0, 0.0, 0.0], [2.0, 2.0, 0.0], [0.0, 0.0, 0.0]])


def _trio_params(big: float, eta_cl: float) -> dict:
    return {
        "Na": {"chi": 2.8, "eta": big, "gamma": 0.7},
        "Cl": {"chi": 8.5, "eta": eta_cl, "gamma": 0.6},
    }


def _exactly_definite(a: np.ndarray) -> bool:
    """Exact (rational) test of A > 0 on sum(q) = 0 for 3 atoms, in the basis e_1 - e_0,
    e_2 - e_0 (any basis of the subspace has the same inertia)."""
    f = [[Fraction(float(x)) for x in row] for row in a]
    b = [[f[i][k] - f[i][0] - f[0][k] + f[0][0] for k in (1, 2)] for i in (1, 2)]
    return b[0][0] > 0 and b[0][0] * b[1][1] - b[0][1] * b[1][0] > 0


def _trio_matrix(monkeypatch, params) -> np.ndarray:
    seen = {}
    real = solve_mod._check_projected_definite

    def capture(op):
        seen["a"] = solve_mod._dense_hardness(op).numpy()
        return real(op)

    monkeypatch.setattr(solve_mod, "_check_projected_definite", capture)
    try:
        solve_charges(torch.tensor(TRIO.positions), TRIO.numbers, params=params, cutoff=None)
    except PolarizationCatastropheError:
        pass
    monkeypatch.undo()
    return seen["a"]


@pytest.mark.parametrize("big", [1e19, 1e20])
def test_one_very_hard_element_does_not_hide_a_catastrophe(big, monkeypatch):
    params = _trio_params(big, 2.0)
    assert not _exactly_definite(_trio_matrix(monkeypatch, params))  # a real catastrophe
    pos = torch.tensor(TRIO.positions)
    # the dense test of solve_charges (it used to pass and return a saddle point)
    with pytest.raises(PolarizationCatastropheError):
        solve_charges(pos, TRIO.numbers, params=params, cutoff=None)
    # the calculator: all pairs (dense test), a cutoff (direct solve: its Cholesky is the
    # test), and CG with the certificate
    for kw in ({"cutoff": None}, {"cutoff": 6.0}, {"cutoff": 6.0, "solver": "cg"}):
        atoms = TRIO.copy()
        atoms.calc = QEqCalculator(params=params, **kw)
        with pytest.raises(PolarizationCatastropheError):
            atoms.get_potential_energy()


@pytest.mark.parametrize("big", [1e19, 1e36])
def test_one_very_hard_element_is_not_a_false_catastrophe(big, monkeypatch):
    params = _trio_params(big, 9.0)
    assert _exactly_definite(_trio_matrix(monkeypatch, params))
    atoms = _crystal()
    hard = {"Na": {**NACL["Na"], "eta": big}, "Cl": NACL["Cl"]}
    ref = atoms.copy()
    ref.calc = QEqCalculator(params=hard, cutoff=6.0, check_definite=False, tol=1e-10)
    e, q = ref.get_potential_energy(), ref.get_charges()
    # used to raise PolarizationCatastropheError (eigenvalue -2e19) on every path
    for kw in ({}, {"solver": "cg"}, {"ewald": True, "cutoff": 5.0}):
        a = atoms.copy()
        a.calc = QEqCalculator(params=hard, **{"cutoff": 6.0, "tol": 1e-10, **kw})
        energy = a.get_potential_energy()
        if "ewald" not in kw:
            assert energy == pytest.approx(e, abs=1e-8)
            np.testing.assert_allclose(a.get_charges(), q, atol=1e-8)
    sol = solve_charges(torch.tensor(TRIO.positions), TRIO.numbers, params=params, cutoff=None)
    assert sol.converged


@pytest.mark.parametrize("spread", [1.0, 1e12])
def test_constraint_basis_is_orthonormal_and_projects(spread):
    # guard: both bases (Householder for a narrow diagonal, ordered Helmert for a wide one)
    # are orthonormal, span sum(q) = 0, and project to Z^T A Z
    from unrollsci.chem._hardness import ConstraintBasis, _projected_hardness

    gen = torch.Generator().manual_seed(0)
    for n in (2, 3, 9, 40):
        a = torch.randn(n, n, dtype=torch.float64, generator=gen)
        diag = 10.0 + torch.logspace(0, np.log10(spread), n, dtype=torch.float64)
        a = a + a.T + torch.diag(diag[torch.randperm(n, generator=gen)])
        basis = ConstraintBasis(a)
        assert (basis.order is None) == (spread == 1.0)
        z = torch.stack([basis(e) for e in torch.eye(n - 1, dtype=torch.float64)], 1)
        torch.testing.assert_close(z.T @ z, torch.eye(n - 1, dtype=torch.float64))
        assert float(z.sum(0).abs().max()) < 1e-12
        torch.testing.assert_close(basis.t(a), z.T @ a)
        m = _projected_hardness(a)
        tol = 1e-13 * float(a.abs().max())
        torch.testing.assert_close(m, z.T @ a @ z, rtol=1e-12, atol=tol)
        x = torch.randn(n, dtype=torch.float64, generator=gen)
        x = x - x.mean()
        torch.testing.assert_close(basis(basis.t(x)), x)


# --------------------------------------------------------------------------- float32 range


def test_float32_overflow_of_eta_is_a_clear_error_not_a_catastrophe():
    atoms = molecule("H2O")
    for kw in ({"cutoff": None}, {"cutoff": 6.0}):
        atoms.calc = QEqCalculator(params={"O": {"eta": 1e40}}, dtype="float32", **kw)
        with pytest.raises(ValueError, match="range of torch.float32") as info:
            atoms.get_potential_energy()
        assert not isinstance(info.value, PolarizationCatastropheError)
    atoms = _crystal()
    atoms.calc = QEqCalculator(
        params={"Na": {**NACL["Na"], "eta": 1e40}, "Cl": NACL["Cl"]}, cutoff=6.0, dtype="float32"
    )
    with pytest.raises(ValueError, match="range of torch.float32"):
        atoms.get_potential_energy()  # used to be a LinAlgError from eigvalsh


@pytest.mark.parametrize("cutoff", [None, 6.0])
def test_float32_results_out_of_range_raise_and_are_not_kept(cutoff):
    atoms = molecule("H2O") if cutoff is None else _crystal()
    params = {"O": {"chi": 1e20}} if cutoff is None else {**NACL, "Na": {**NACL["Na"], "chi": 1e20}}
    calc = QEqCalculator(params=params, cutoff=cutoff, dtype="float32")
    atoms.calc = calc
    for _ in range(2):  # used to return a NaN energy (and NaN forces), then keep them
        with pytest.raises(ValueError, match="not finite"):
            atoms.get_potential_energy()
        assert calc.results == {} and calc.solution is None
    calc.set(dtype="float64")
    assert np.isfinite(atoms.get_potential_energy())


@pytest.mark.parametrize("chi", [1e25, 1e30])
def test_float32_nan_residual_is_not_reported_as_a_budget(chi):
    """A float32 solve whose residual overflowed to NaN said "Try increasing max_iter":
    the error now says the values exceed the dtype's range."""
    from unrollsci._validation import ConvergenceError

    atoms = _crystal()
    calc = QEqCalculator(
        params={**NACL, "Na": {**NACL["Na"], "chi": chi}}, cutoff=6.0, dtype="float32"
    )
    atoms.calc = calc
    with pytest.raises((ConvergenceError, ValueError)) as info:
        atoms.get_potential_energy()
    msg = str(info.value)
    assert "increasing max_iter" not in msg
    assert "range" in msg


def test_solve_charges_float32_out_of_range_raises():
    """``solve_charges`` in float32 with chi 1e20 returned a NaN energy silently (the
    calculator already refused it): a ``ValueError`` naming the dtype's range now."""
    h2o = molecule("H2O")
    pos = torch.tensor(h2o.positions, dtype=torch.float32)
    with pytest.raises(ValueError, match="range of torch.float32"):
        solve_charges(pos, h2o.numbers, params={"O": {"chi": 1e20}}, cutoff=None)
    sol = solve_charges(pos.double(), h2o.numbers, params={"O": {"chi": 1e20}}, cutoff=None)
    assert torch.isfinite(sol.energy)
