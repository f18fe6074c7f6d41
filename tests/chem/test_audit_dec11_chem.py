"""QEq calculator, an audit of its inputs (round "dec11"): each test fails on the code before it.

1. ``calc.set(dtype="float32")`` after float64 calls crashed the analytic CG path ("expected
   m1 and m2 to have the same dtype"): the kept warm-start charges went into the CG in the
   old dtype.
2. ``ewald_method`` / ``ewald_accuracy`` without ``ewald=True`` were silently ignored (the
   calculator, ``solve_charges`` and ``unrollsci relax --ewald-method pme`` without
   ``--ewald`` ran cutoff electrostatics).
3. The first calculator call printed torch's "Sparse invariant checks are implicitly
   disabled" notice at the user.
4. float32 results depended on the absolute position: the positions were cast to float32
   before pair vectors were formed, so a structure far from the origin (an unwrapped MD
   trajectory) lost digits (forces off by 6e-3 eV/A at 1000 lattice vectors).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule
from ase.io import write

import unrollsci
from unrollsci._compat import quiet_csr
from unrollsci.chem import BornMayer, QEqCalculator, solve_charges

NACL = {
    "Na": {"chi": 2.843, "eta": 12.0, "gamma": 0.7},
    "Cl": {"chi": 8.564, "eta": 10.0, "gamma": 0.6},
}
REP = BornMayer({("Na", "Cl"): (1200.0, 0.32), ("Cl", "Cl"): (300.0, 0.32)})


def _calc(**kw):
    return QEqCalculator(**{"params": NACL, "cutoff": 6.0, "short_range": REP, "tol": 1e-10, **kw})


def _nacl(seed=0):
    atoms = bulk("NaCl", "rocksalt", a=5.64, cubic=True).repeat((2, 1, 1))
    atoms.rattle(0.05, seed=seed)
    return atoms


def _results(atoms):
    return atoms.get_potential_energy(), atoms.get_forces(), atoms.get_charges()


# --------------------------------------------------------------------------- 1. dtype switch

#: the analytic CG paths (no direct solve: the CG takes the warm start)
CG_PATHS = [
    {"solver": "cg"},
    {"check_definite": False},
    {"forces": "envelope", "solver": "cg"},
]


@pytest.mark.parametrize("kw", CG_PATHS, ids=["cg", "no-check", "envelope-cg"])
@pytest.mark.parametrize("calls", [1, 3], ids=["last-charges", "extrapolated"])
def test_float64_calls_then_float32_equal_a_fresh_float32_calculator(kw, calls):
    atoms = _nacl()
    atoms.calc = calc = _calc(**kw)
    for _ in range(calls):  # three calls: the warm start is the quadratic extrapolation
        atoms.positions[0, 0] += 0.01
        atoms.get_forces()
    calc.set(dtype="float32", tol=1e-5)
    atoms.positions[0, 0] += 0.01
    e, f, q = _results(atoms)
    assert calc.solution.x.dtype == torch.float32
    fresh = atoms.copy()
    fresh.calc = _calc(dtype="float32", tol=1e-5, **kw)
    e32, f32, q32 = _results(fresh)
    # both solve to tol 1e-5 in float32, from different starts
    assert e == pytest.approx(e32, rel=1e-5)
    np.testing.assert_allclose(q, q32, atol=1e-4)
    np.testing.assert_allclose(f, f32, atol=1e-3)
    # and both are the float64 answer to float32 accuracy (the energy sums pair terms of
    # either sign, a few eV each: its float32 rounding is some 1e-5 of it)
    ref = atoms.copy()
    ref.calc = _calc(**kw)
    e64, f64, q64 = _results(ref)
    assert e == pytest.approx(e64, rel=1e-4)
    np.testing.assert_allclose(q, q64, atol=1e-4)
    np.testing.assert_allclose(f, f64, atol=1e-3)
    # and back: float32 charges warm-start a float64 call
    calc.set(dtype="float64", tol=1e-10)
    e_back, f_back, _ = _results(atoms)
    assert e_back == pytest.approx(e64, abs=1e-9)
    np.testing.assert_allclose(f_back, f64, atol=1e-8)


# --------------------------------------------------------------------------- 2. Ewald options


@pytest.mark.parametrize(
    ("option", "value"),
    [("ewald_method", "pme"), ("ewald_method", "ewald"), ("ewald_accuracy", 1e-3)],
)
def test_ewald_options_without_ewald_are_refused(option, value):
    with pytest.raises(ValueError, match=f"Expected ewald=True with {option}"):
        QEqCalculator(**{option: value})
    calc = _calc()
    before = dict(calc.parameters)
    with pytest.raises(ValueError, match=option):
        calc.set(**{option: value})
    assert dict(calc.parameters) == before  # nothing changed
    atoms = _nacl()
    with pytest.raises(ValueError, match=option):
        solve_charges(
            torch.tensor(atoms.positions),
            atoms.numbers,
            cell=torch.tensor(atoms.cell.array),
            pbc=True,
            params=NACL,
            cutoff=6.0,
            **{option: value},
        )
    QEqCalculator(ewald=True, **{option: value})  # with Ewald: fine


def test_ewald_options_at_their_defaults_stay_accepted():
    atoms = _nacl()
    atoms.calc = _calc(ewald=False, ewald_method="auto", ewald_accuracy=1e-8)
    plain = _nacl()
    plain.calc = _calc()
    assert atoms.get_potential_energy() == plain.get_potential_energy()
    calc = _calc(ewald=True, ewald_method="pme", ewald_accuracy=1e-5)
    with pytest.raises(ValueError, match="ewald_method"):
        calc.set(ewald=False)  # the PME choice would be ignored
    calc.set(ewald=False, ewald_method="auto", ewald_accuracy=1e-8)
    assert not calc.ewald


def test_relax_ewald_method_without_ewald_is_a_usage_error(tmp_path, monkeypatch, capsys):
    from unrollsci.chem._cli import EXIT_USAGE, relax_main

    monkeypatch.chdir(tmp_path)
    write("h2o.xyz", molecule("H2O"))
    with pytest.raises(SystemExit) as exc:
        relax_main(["h2o.xyz", "--cutoff", "none", "--steps", "1", "--ewald-method", "pme"])
    assert exc.value.code == EXIT_USAGE
    err = capsys.readouterr().err
    assert "--ewald-method pme needs --ewald" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h2o.xyz"]  # nothing written


# --------------------------------------------------------------------------- 3. sparse notice

#: torch's notice (torch 2.13), once per process
IMPLICIT_NOTICE = (
    "Sparse invariant checks are implicitly disabled. Memory errors (e.g. SEGFAULT) will "
    "occur when operating on a sparse tensor which violates the invariants, but checks "
    "incur performance overhead."
)

#: a first calculator call in a fresh process (torch gives each notice once per process)
_FIRST_CALL = textwrap.dedent(
    """
    import warnings
    from ase.build import bulk
    from unrollsci.chem import QEqCalculator
    atoms = bulk("NaCl", "rocksalt", a=5.64, cubic=True)
    atoms.calc = QEqCalculator(cutoff=6.0, short_range="radii")
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        atoms.get_forces()
    for w in rec:
        print(f"{w.category.__name__}: {w.message}")
    """
)


@pytest.mark.slow  # a fresh process (torch's import alone takes seconds)
def test_first_calculator_call_in_a_fresh_process_shows_no_sparse_notice():
    root = str(Path(unrollsci.__file__).resolve().parents[1])  # the unrollsci under test
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")])
    out = subprocess.run(
        [sys.executable, "-c", _FIRST_CALL],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=True,
    )
    assert "parse" not in out.stdout, out.stdout  # "Sparse invariant checks ...", "sparse CSR ..."


def test_incidence_matrices_set_the_invariant_checks_explicitly(monkeypatch):
    """torch says "Sparse invariant checks are implicitly disabled" (once per process) for a
    sparse tensor built without ``check_invariants``; the fast stand-in for the test above
    gives that notice at every such construction."""
    real = torch.sparse_csr_tensor

    def sparse_csr_tensor(*args, **kwargs):
        if kwargs.get("check_invariants") is None:
            warnings.warn(IMPLICIT_NOTICE, UserWarning, stacklevel=2)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "sparse_csr_tensor", sparse_csr_tensor)
    atoms = _nacl()
    atoms.calc = _calc()  # a fresh pair list: its incidence matrices are built at this call
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        atoms.get_forces()
    assert not [str(w.message) for w in rec if "parse" in str(w.message)]


def test_quiet_csr_silences_the_implicit_invariant_check_notice():
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        with quiet_csr():
            warnings.warn(IMPLICIT_NOTICE, UserWarning, stacklevel=1)
            warnings.warn("another notice", UserWarning, stacklevel=1)
    assert [str(w.message) for w in rec] == ["another notice"]  # only that one is silenced


# --------------------------------------------------------------------------- 4. float32 origin

#: the analytic path (cutoff), the explicit Ewald sum and PME (autograd path)
FLOAT32_PATHS = [
    {},
    {"ewald": True, "ewald_method": "ewald", "ewald_accuracy": 1e-6},
    {"ewald": True, "ewald_method": "pme", "ewald_accuracy": 1e-6},
]


@pytest.mark.parametrize("kw", FLOAT32_PATHS, ids=["cutoff", "ewald", "pme"])
def test_float32_results_do_not_depend_on_a_lattice_translation(kw):
    base = _nacl(seed=3)
    out = {}
    for n in (0, 1000):  # |x| ~ 1e4 Angstrom: an unwrapped trajectory's drift
        atoms = base.copy()
        atoms.positions += n * base.cell.array.sum(0)
        atoms.calc = _calc(dtype="float32", tol=1e-6, **kw)
        out[n] = (*_results(atoms), atoms.get_stress())
    ref = base.copy()
    ref.calc = _calc(**kw)
    e64, f64, q64 = _results(ref)
    (e0, f0, q0, s0), (e1, f1, q1, s1) = out[0], out[1000]
    # the same structure: the same float32 answer (it differed by 6e-3 eV/A in the forces)
    assert e1 == pytest.approx(e0, abs=2e-5)
    np.testing.assert_allclose(q1, q0, atol=2e-5)
    np.testing.assert_allclose(f1, f0, atol=2e-4)
    np.testing.assert_allclose(s1, s0, atol=1e-6)
    # which is the float64 answer to float32 accuracy
    np.testing.assert_allclose(q1, q64, atol=1e-4)
    np.testing.assert_allclose(f1, f64, atol=5e-4)


def test_float32_molecule_far_from_the_origin_and_its_dipole():
    mol = molecule("CH3CH2OH")
    mol.rattle(0.02, seed=1)
    kw = {"cutoff": None, "short_range": "radii", "total_charge": 1.0}
    ref = mol.copy()
    ref.calc = QEqCalculator(tol=1e-10, **kw)
    e64, f64, q64 = _results(ref)
    d64 = ref.get_dipole_moment()
    t = np.array([1.0, -0.7, 0.4]) * 1e4
    far = mol.copy()
    far.positions += t
    far.calc = QEqCalculator(tol=1e-6, dtype="float32", **kw)
    e, f, q = _results(far)
    assert e == pytest.approx(e64, abs=1e-4)
    np.testing.assert_allclose(q, q64, atol=1e-5)
    np.testing.assert_allclose(f, f64, atol=1e-4)
    # the dipole about the coordinates' origin: sum_i q_i r_i = (dipole at 0) + Q t
    np.testing.assert_allclose(far.get_dipole_moment(), d64 + 1.0 * t, rtol=0, atol=1e-4)


def test_float64_results_use_the_positions_as_given():
    """float64 is not moved (no cast to round in): a lattice translation changes the
    results by float64 rounding only."""
    base = _nacl(seed=3)
    out = []
    for n in (0, 1000):
        atoms = base.copy()
        atoms.positions += n * base.cell.array.sum(0)
        atoms.calc = _calc()
        out.append(_results(atoms))
    (e0, f0, q0), (e1, f1, q1) = out
    assert e1 == pytest.approx(e0, abs=1e-9)
    np.testing.assert_allclose(q1, q0, atol=1e-9)
    np.testing.assert_allclose(f1, f0, atol=1e-8)
