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
    """MD-like calls with warm starts (charges and adjoint): with a tight adjoint they
    match cold calls to second order in the charge error; the default adjoint tolerance
    stays within its stated bound of the tight one (same warm charges)."""
    atoms = _crystal()
    kw = {"params": NACL, "cutoff": 5.0, "tol": 1e-6, "solver": "cg", "device": device}
    atoms.calc = warm = QEqCalculator(**kw)
    eps = warm.settings.adjoint_tol
    assert eps == pytest.approx(1e-2)  # the default at tol 1e-6: 1e-8 / tol
    # the same charge history (charges do not depend on the adjoint), other forces
    tight, env = QEqCalculator(adjoint_tol=1e-13, **kw), QEqCalculator(forces="envelope", **kw)
    cold = QEqCalculator(warm_start=False, adjoint_tol=1e-13, **kw)
    step = np.random.default_rng(1).normal(scale=0.003, size=atoms.positions.shape)
    for _ in range(6):
        atoms.positions += step
        f_warm = atoms.get_forces()
        f_tight, f_env, f_cold = (c.get_forces(atoms.copy()) for c in (tight, env, cold))
        np.testing.assert_array_equal(tight.results["charges"], atoms.get_charges())
        assert np.abs(f_tight - f_cold).max() < 1e-9  # O(tol^2)
        bound = 2.0 * eps * np.abs(f_tight - f_env).max()
        assert np.abs(f_warm - f_tight).max() <= bound
    assert warm.solution.stats["adjoint_iterations"] >= 0


@pytest.mark.parametrize("tol", [1e-3, 1e-6])
@pytest.mark.parametrize("kernel", ["shielded", "gaussian"])
def test_loose_adjoint_moves_forces_by_eps_times_the_implicit_correction(device, kernel, tol):
    """An adjoint relative tolerance eps moves the implicit forces by at most 2 eps
    |F_implicit - F_envelope| (measured <= 1.4 here; docs/chem.md), with fewer adjoint
    iterations; a far looser adjoint breaks the bound of a tight one."""
    atoms = _crystal()
    kw = {"params": NACL, "cutoff": 5.0, "short_range": REP, "kernel": kernel, "tol": tol}
    kw.update(solver="cg", warm_start=False, device=device)

    def forces(**extra):
        a = atoms.copy()
        a.calc = QEqCalculator(**kw, **extra)
        return a.get_forces(), a.calc.solution.stats.get("adjoint_iterations")

    f_env, _ = forces(forces="envelope")
    f_exact, k_exact = forces(adjoint_tol=1e-13)
    correction = np.abs(f_exact - f_env).max()
    assert correction > 1e-9  # the implicit term is really there
    errors = {}
    for eps in (0.3, 1e-1, 1e-2, 1e-3):
        f, k = forces(adjoint_tol=eps)
        errors[eps] = np.abs(f - f_exact).max()
        assert errors[eps] <= 2.0 * eps * correction, (eps, errors[eps] / correction)
        assert k < k_exact
    assert errors[0.3] > 2.0 * 1e-3 * correction  # the bound at 1e-3 is not vacuous


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


def test_adjoint_tol_parameter():
    # default: 1e-8 / tol, clipped to [tol, 1]
    for tol, eps in ((1e-10, 1.0), (1e-8, 1.0), (1e-6, 1e-2), (1e-4, 1e-4), (1e-2, 1e-2)):
        assert QEqCalculator(tol=tol).settings.adjoint_tol == pytest.approx(eps, rel=1e-12)
    calc = QEqCalculator()
    calc.set(adjoint_tol=1e-5)
    assert calc.adjoint_tol == 1e-5 and calc.settings.adjoint_tol == 1e-5
    assert calc.todict() == {"adjoint_tol": 1e-5}
    assert QEqCalculator(**calc.todict()).settings.adjoint_tol == 1e-5
    for bad in (0.0, -1e-3, 2.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="adjoint_tol"):
            QEqCalculator(adjoint_tol=bad)
    with pytest.raises(TypeError, match="adjoint_tol"):
        QEqCalculator(adjoint_tol="1e-3")
