"""The calculator's analytic path (one pass over the pairs, no autograd graph) gives the
autograd derivatives of ``solve_charges``: forces and stress, implicit and envelope, at a
loose tolerance where the implicit correction matters, for every kernel; the direct
(Cholesky) solve of small systems gives the converged CG answer and still catches a
polarization catastrophe."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk

from unrollsci.chem import BornMayer, PolarizationCatastropheError, QEqCalculator, solve_charges
from unrollsci.chem._calc_params import adjoint_tol

NACL = {
    "Na": {"chi": 2.843, "eta": 12.0, "gamma": 0.7},
    "Cl": {"chi": 8.564, "eta": 10.0, "gamma": 0.6},
}
REP = BornMayer({("Na", "Cl"): (1200.0, 0.32), ("Cl", "Cl"): (300.0, 0.32)})


def _crystal():
    atoms = bulk("NaCl", "rocksalt", a=5.64, cubic=True).repeat((2, 2, 1))
    atoms.set_cell(atoms.cell.array @ np.array([[1, 0.04, 0], [0, 1, 0.02], [0.03, 0, 1]]))
    atoms.rattle(0.1, seed=3)
    return atoms


def _autograd_reference(atoms, device, **kw):
    """Energy, forces, stress and charges by autograd through ``solve_charges``."""
    dd = {"device": device, "dtype": torch.float64}
    pos0 = torch.tensor(atoms.positions, **dd, requires_grad=True)
    strain = torch.zeros(3, 3, **dd, requires_grad=True)
    deform = torch.eye(3, **dd) + 0.5 * (strain + strain.T)
    cell = torch.tensor(atoms.cell.array, **dd) @ deform
    sol = solve_charges(
        pos0 @ deform,
        atoms.numbers.tolist(),
        cell=cell,
        pbc=True,
        adjoint_tol=adjoint_tol(kw["tol"]),
        **kw,
    )
    gpos, gstrain = torch.autograd.grad(sol.energy, [pos0, strain])
    vol = abs(np.linalg.det(atoms.cell.array))
    s = gstrain.cpu().numpy() / vol
    s = 0.5 * (s + s.T)
    return (
        float(sol.energy.detach()),
        -gpos.cpu().numpy(),
        s.flat[[0, 4, 8, 5, 2, 1]],
        sol.charges.detach().cpu().numpy(),
    )


@pytest.mark.parametrize("mode", ["implicit", "envelope"])
@pytest.mark.parametrize("kernel", ["shielded", "gaussian", "point"])
def test_analytic_forces_equal_autograd_at_a_loose_tolerance(device, mode, kernel):
    atoms = _crystal()
    kw = {"params": NACL, "cutoff": 5.0, "short_range": REP, "kernel": kernel, "tol": 1e-3}
    if kernel == "point":
        kw["params"] = {el: {**p, "eta": 20.0} for el, p in NACL.items()}
    e_ref, f_ref, s_ref, q_ref = _autograd_reference(atoms, device, grad=mode, **kw)
    atoms.calc = calc = QEqCalculator(
        forces=mode, solver="cg", warm_start=False, device=device, **kw
    )
    assert calc.solution is None
    f = atoms.get_forces()
    assert calc.solution.residual > 1e-6  # loose: the implicit correction is not negligible
    np.testing.assert_allclose(atoms.get_charges(), q_ref, rtol=0, atol=1e-12)
    assert abs(atoms.get_potential_energy() - e_ref) < 1e-10
    np.testing.assert_allclose(f, f_ref, rtol=0, atol=1e-10)
    np.testing.assert_allclose(atoms.get_stress(), s_ref, rtol=0, atol=1e-11)


def test_implicit_correction_is_what_makes_the_difference(device):
    """At tol 1e-3 the implicit and envelope forces differ by far more than the 1e-10
    agreement above, so that agreement tests the adjoint term."""
    atoms = _crystal()
    kw = {"params": NACL, "cutoff": 5.0, "tol": 1e-3, "solver": "cg", "device": device}
    out = {}
    for mode in ("implicit", "envelope"):
        atoms.calc = QEqCalculator(forces=mode, warm_start=False, **kw)
        out[mode] = atoms.get_forces()
    assert np.abs(out["implicit"] - out["envelope"]).max() > 1e-6


def test_direct_solve_equals_converged_cg(device):
    atoms = _crystal()
    kw = {"params": NACL, "cutoff": 5.0, "short_range": REP, "device": device}
    atoms.calc = direct = QEqCalculator(tol=1e-4, **kw)  # auto: direct at 16 atoms
    f_direct = atoms.get_forces()
    s_direct = atoms.get_stress()
    q_direct = atoms.get_charges()
    assert direct.solution.stats["solver"] == "direct"
    assert direct.solution.residual < 1e-12  # exact to rounding whatever tol asks
    atoms.calc = cg = QEqCalculator(tol=1e-13, solver="cg", **kw)
    np.testing.assert_allclose(q_direct, atoms.get_charges(), rtol=0, atol=1e-11)
    np.testing.assert_allclose(f_direct, atoms.get_forces(), rtol=0, atol=1e-9)
    np.testing.assert_allclose(s_direct, atoms.get_stress(), rtol=0, atol=1e-10)
    assert cg.solution.stats["solver"] == "cg"


def test_warm_started_adjoint_keeps_the_forces(device):
    """MD-like calls with warm starts (charges and adjoint) against cold calls."""
    atoms = _crystal()
    kw = {"params": NACL, "cutoff": 5.0, "tol": 1e-6, "solver": "cg", "device": device}
    atoms.calc = warm = QEqCalculator(**kw)
    cold = QEqCalculator(warm_start=False, **kw)
    step = np.random.default_rng(1).normal(scale=0.003, size=atoms.positions.shape)
    for _ in range(6):
        atoms.positions += step
        f_warm = atoms.get_forces()
        other = atoms.copy()
        other.calc = cold
        # both are within O(tol^2) of the converged forces
        assert np.abs(f_warm - other.get_forces()).max() < 1e-8
    assert warm.solution.stats["adjoint_iterations"] >= 0


@pytest.mark.parametrize("solver", ["auto", "cg"])
def test_kept_list_paths_catch_a_symmetric_catastrophe(device, solver):
    """H2 with a soft hardness and a cutoff: the analytic path (direct Cholesky, or CG
    behind the dense test) raises although equal chi hides the unstable direction."""
    params = {"H": {"chi": 4.528, "eta": 1.0, "gamma": 2.0}}
    atoms = Atoms("H2", positions=[[0, 0, 0], [0.74, 0, 0]])
    atoms.calc = QEqCalculator(params=params, cutoff=5.0, solver=solver, device=device)
    with pytest.raises(PolarizationCatastropheError, match="not positive definite"):
        atoms.get_potential_energy()


def test_solver_parameter_is_checked():
    with pytest.raises(ValueError, match="Expected solver in"):
        QEqCalculator(solver="cholesky")
    assert QEqCalculator(solver="cg").todict() == {"solver": "cg"}


def test_state_check_lists_what_ase_lists():
    """The calculator's cheaper state comparison gives ASE's compare_atoms list."""
    from ase.calculators.calculator import compare_atoms

    from unrollsci.chem._calculator import _compare_atoms

    base = _crystal()
    edits = [
        lambda a: None,
        lambda a: a.positions.__iadd__(1e-16),  # below ASE's 1e-15 tolerance
        lambda a: a.positions.__iadd__(1e-3),
        lambda a: a.set_cell(a.cell.array * 1.01),
        lambda a: a.set_pbc([True, False, True]),
        lambda a: a.set_initial_charges(np.ones(len(a))),
        lambda a: a.set_initial_magnetic_moments(np.ones(len(a))),
        lambda a: a.numbers.__setitem__(0, 11 if a.numbers[0] != 11 else 17),
    ]
    for edit in edits:
        other = base.copy()
        edit(other)
        for tol in (1e-15, 1e-2):
            assert sorted(_compare_atoms(base, other, tol)) == sorted(
                compare_atoms(base, other, tol=tol)
            )
    assert set(_compare_atoms(None, base, 1e-15)) == set(compare_atoms(None, base))
