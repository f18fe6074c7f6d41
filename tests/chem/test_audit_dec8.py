"""Audit of the QEq ASE calculator and the polarization-catastrophe check (December 8):
``calculation_required`` sees an in-place edit of the parameters; ``__init__`` builds its
parameters explicitly; the definiteness check (dense test, certificate, direct solve) is
neither fooled nor tripped by one very hard element (learned eta many orders of magnitude
above the others), and float32 overflow is a clear error instead of a false catastrophe or
NaN results. Each test fails on the code before the fix, except those marked as guards."""

from __future__ import annotations

import inspect
from fractions import Fraction

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule

from unrollsci.chem import PolarizationCatastropheError, QEqCalculator, solve_charges
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
        calc = QEqCalculator(**{key: value})
        expect = {**DEFAULT_PARAMETERS, key: normalize(key, value)}
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
