"""Regression tests from the trust issue: the polarization-catastrophe check holds for every
right-hand side (dense projected Cholesky, checked against numpy eigenvalues), devices that do
not exist raise ValueError. (The LAMMPS probe's tests, a LAMMPS install whose shared library
cannot load reported as unavailable, are in tests/bench/test_lammps_probe.py.)"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk

from unrollsci.chem import (
    BUILTIN_PARAMS,
    PolarizationCatastropheError,
    QEqCalculator,
    solve_charges,
)
from unrollsci.chem import _solve as solve_mod
from unrollsci.chem._params import resolve_params

_spec = importlib.util.spec_from_file_location(
    "chem_reference", Path(__file__).with_name("_reference.py")
)
ref = importlib.util.module_from_spec(_spec)
sys.modules["chem_reference"] = ref
_spec.loader.exec_module(ref)

H2_SOFT = {"H": {"eta": 1.0}}


def _h2(device):
    return torch.tensor([[0.0, 0.0, 0.0], [0.74, 0.0, 0.0]], dtype=torch.float64, device=device)


def _projected_min_eig(a: np.ndarray) -> float:
    """Smallest eigenvalue of A on {sum q = 0}, orthonormal basis from an SVD (numpy)."""
    z = np.linalg.svd(np.ones((1, a.shape[0])))[2][1:].T
    return float(np.linalg.eigvalsh(z.T @ a @ z)[0])


def _capture_operator(monkeypatch):
    """Record the hardness operator that the solve hands to the definiteness check."""
    seen = {}
    real = solve_mod._check_projected_definite

    def spy(op):
        seen["op"] = op
        return real(op)

    monkeypatch.setattr(solve_mod, "_check_projected_definite", spy)
    return seen


# --------------------------------------------------------------------------- catastrophe


def test_h2_reproducer_is_indefinite_by_independent_reference():
    """The issue's H2 (eta = 1, 0.74 A) has curvature < 0 along q = (1, -1)."""
    atoms = Atoms("H2", positions=[[0, 0, 0], [0.74, 0, 0]])
    params = {"H": {**BUILTIN_PARAMS["H"], "eta": 1.0}}
    a = ref.dense_hardness(atoms, params, "shielded", None)
    assert _projected_min_eig(a) < -1.0


@pytest.mark.parametrize("grad", ["implicit", "unrolled", "envelope"])
def test_h2_symmetric_chi_raises(device, grad):
    """Equal chi: the right-hand side is orthogonal to the unstable direction, so CG alone
    returned the saddle point q = [0, 0]; the check must raise regardless."""
    with pytest.raises(PolarizationCatastropheError, match="not positive definite"):
        solve_charges(_h2(device), ["H", "H"], params=H2_SOFT, cutoff=None, grad=grad)
    with pytest.raises(PolarizationCatastropheError, match="smallest eigenvalue"):
        solve_charges(_h2(device), ["H", "H"], params=H2_SOFT, cutoff=None, iterations=3)


def test_h2_nonsymmetric_chi_raises(device):
    chi = torch.tensor([4.0, 5.5], dtype=torch.float64, device=device)
    with pytest.raises(PolarizationCatastropheError, match="not positive definite"):
        solve_charges(_h2(device), ["H", "H"], params=H2_SOFT, chi=chi, cutoff=None)


def test_h2_catastrophe_error_is_a_value_error(device):
    with pytest.raises(ValueError, match="polarization catastrophe"):
        solve_charges(_h2(device), ["H", "H"], params=H2_SOFT, cutoff=None)


def test_calculator_raises_for_symmetric_catastrophe(device):
    atoms = Atoms("H2", positions=[[0, 0, 0], [0.74, 0, 0]])
    atoms.calc = QEqCalculator(params=H2_SOFT, cutoff=None, device=device)
    with pytest.raises(PolarizationCatastropheError, match="not positive definite"):
        atoms.get_potential_energy()


def test_check_definite_false_skips_the_check(device):
    """What check_definite=False gives up: the saddle point comes back silently."""
    sol = solve_charges(_h2(device), ["H", "H"], params=H2_SOFT, cutoff=None, check_definite=False)
    assert torch.equal(sol.charges.cpu(), torch.zeros(2, dtype=torch.float64))


def test_auto_checks_up_to_dense_check_max_atoms(device, monkeypatch):
    monkeypatch.setattr(solve_mod, "DENSE_CHECK_MAX_ATOMS", 2)
    with pytest.raises(PolarizationCatastropheError):
        solve_charges(_h2(device), ["H", "H"], params=H2_SOFT, cutoff=None)
    monkeypatch.setattr(solve_mod, "DENSE_CHECK_MAX_ATOMS", 1)
    solve_charges(_h2(device), ["H", "H"], params=H2_SOFT, cutoff=None)  # auto: not checked
    with pytest.raises(PolarizationCatastropheError):
        solve_charges(_h2(device), ["H", "H"], params=H2_SOFT, cutoff=None, check_definite=True)


@pytest.mark.parametrize("bad", ["yes", 1, None, "Auto"])
def test_check_definite_bad_value(bad):
    with pytest.raises(ValueError, match="check_definite to be True, False or 'auto'"):
        solve_charges(_h2("cpu"), ["H", "H"], cutoff=None, check_definite=bad)
    with pytest.raises(ValueError, match="check_definite to be True, False or 'auto'"):
        QEqCalculator(check_definite=bad)


def _nacl(repeat=(2, 2, 2)):
    a = bulk("NaCl", "rocksalt", a=5.64, cubic=True).repeat(repeat)
    a.rattle(0.1, seed=0)
    return a


def _solve_crystal(atoms, device, **kw):
    return solve_charges(
        torch.tensor(atoms.positions, device=device),
        atoms.numbers.tolist(),
        cell=torch.tensor(atoms.cell.array, device=device),
        pbc=True,
        **kw,
    )


def test_periodic_catastrophe_with_equal_chi_raises(device):
    """Soft rock salt with chi(Na) = chi(Cl): chi is a multiple of 1, so CG stops at q = 0
    before any iteration; the dense check still raises (independently confirmed)."""
    atoms = _nacl()
    soft = {s: {**p, "eta": 2.0, "chi": 5.0} for s, p in ref.NACL.items()}
    assert _projected_min_eig(ref.dense_hardness(atoms, soft, "shielded", 8.0)) < 0
    with pytest.raises(PolarizationCatastropheError, match="smallest eigenvalue"):
        _solve_crystal(atoms, device, params=soft, cutoff=8.0)
    sol = _solve_crystal(atoms, device, params=soft, cutoff=8.0, check_definite=False)
    assert sol.iterations == 0  # the old behaviour: a stationary point, no error


def _by_matvec(op, n, device):
    eye = torch.eye(n, dtype=torch.float64, device=device)
    return torch.stack([op(e) for e in eye], 1).cpu().numpy()


def test_dense_matrix_is_the_operator_of_the_solve(device, monkeypatch):
    """The checked matrix equals the solve's matvec column by column (Ewald: real +
    reciprocal + self term; cutoff larger than the cell: an atom's own images), and the
    independent numpy reference for the cutoff kernel."""
    seen = _capture_operator(monkeypatch)
    atoms = _nacl()
    _solve_crystal(atoms, device, params=ref.NACL, cutoff=5.0, ewald=True)
    dense = solve_mod._dense_hardness(seen["op"]).cpu().numpy()
    np.testing.assert_allclose(dense, _by_matvec(seen["op"], len(atoms), device), atol=1e-10)

    atoms = bulk("NaCl", "rocksalt", a=5.64)  # 2-atom primitive cell, cutoff 8 > cell
    atoms.rattle(0.1, seed=3)
    _solve_crystal(atoms, device, params=ref.NACL, cutoff=8.0)
    dense = solve_mod._dense_hardness(seen["op"]).cpu().numpy()
    assert seen["op"].i.eq(seen["op"].j).any()  # self-image pairs are present
    np.testing.assert_allclose(dense, _by_matvec(seen["op"], len(atoms), device), atol=1e-10)
    expect = ref.dense_hardness(atoms, ref.NACL, "shielded", 8.0)
    np.testing.assert_allclose(dense, expect, rtol=1e-10, atol=1e-9)


def test_ewald_catastrophe_with_equal_chi_raises(device, monkeypatch):
    """Ewald: the check uses the full matrix of the solve (real + reciprocal + self)."""
    atoms = _nacl()
    soft = {s: {**p, "eta": 0.5, "chi": 5.0} for s, p in ref.NACL.items()}
    seen = _capture_operator(monkeypatch)
    with pytest.raises(PolarizationCatastropheError, match="smallest eigenvalue"):
        _solve_crystal(atoms, device, params=soft, cutoff=5.0, ewald=True)
    a = _by_matvec(seen["op"], len(atoms), device)
    assert _projected_min_eig(0.5 * (a + a.T)) < 0


def test_normal_crystal_with_ewald_still_solves(device):
    atoms = _nacl()
    on = _solve_crystal(atoms, device, params=ref.NACL, cutoff=5.0, ewald=True, tol=1e-12)
    off = _solve_crystal(
        atoms, device, params=ref.NACL, cutoff=5.0, ewald=True, tol=1e-12, check_definite=False
    )
    assert on.converged
    torch.testing.assert_close(on.charges, off.charges, rtol=0, atol=0)
    assert float(on.charges.abs().max()) > 0.1


@pytest.mark.parametrize("kernel", ["shielded", "gaussian"])
def test_equal_chi_on_different_elements_converges_to_zero(device, kernel):
    """Equal chi on atoms of different hardness, Q = 0: the solution is q = 0 (independent
    dense bordered solve) and the projected chi is pure round-off; the relative residual
    test used to divide round-off by round-off and raise ConvergenceError (for most of
    these chi / eta combinations, depending on the rounding)."""
    symbols = ["C", "Cl", "O", "S", "N", "Li"]
    pos = np.array(
        [[0.0, 0, 0], [1.6, 0, 0], [0, 1.5, 0], [0, 0, 1.7], [1.4, 1.4, 0], [0, 1.6, 1.6]]
    )
    atoms = Atoms(symbols, positions=pos)
    etas = [[10.3, 11.7, 12.1, 13.9, 14.4, 15.2], [13.0, 11.0, 17.0, 9.0, 12.5, 10.1]]
    for chi in (5.0, 4.3, 7.1):
        for eta in etas:
            params = {
                s: {**BUILTIN_PARAMS[s], "chi": chi, "eta": e}
                for s, e in zip(symbols, eta, strict=True)
            }
            a = ref.dense_hardness(atoms, params, kernel, None)
            assert _projected_min_eig(a) > 1.0
            q_ref, _ = ref.bordered_solve(a, [chi] * 6, 0.0)
            sol = solve_charges(
                torch.tensor(pos, device=device),
                symbols,
                params=params,
                kernel=kernel,
                cutoff=None,
            )
            assert sol.converged
            np.testing.assert_allclose(sol.charges.cpu().numpy(), q_ref, atol=1e-12)


def test_raises_iff_projected_matrix_is_indefinite(device):
    """Random small molecules (random eta, gamma/sigma, kernel, cutoff; chi equal in half
    the cases): raises exactly when numpy's smallest eigenvalue of Z^T A Z is negative."""
    rng = np.random.default_rng(7)
    elements = list(BUILTIN_PARAMS)
    outcomes = {True: 0, False: 0}
    for trial in range(60):
        n = int(rng.integers(2, 9))
        while True:
            pos = rng.uniform(0.0, 2.5, size=(n, 3))
            d = np.linalg.norm(pos[:, None] - pos[None], axis=-1) + 10 * np.eye(n)
            if d.min() > 0.5:
                break
        symbols = list(rng.choice(elements, size=n, replace=False))
        kernel = ["shielded", "point", "gaussian"][trial % 3]
        cutoff = None if trial % 2 else 6.0
        same_chi = trial % 4 < 2
        params = {
            s: {
                "chi": 5.0 if same_chi else float(rng.uniform(2, 11)),
                "eta": float(rng.uniform(0.5, 20.0)),
                "gamma": float(rng.uniform(0.2, 1.0)),
                "sigma": float(rng.uniform(0.5, 1.5)),
            }
            for s in symbols
        }
        atoms = Atoms(symbols, positions=pos)
        lam = _projected_min_eig(ref.dense_hardness(atoms, params, kernel, cutoff))
        scale = np.abs(ref.dense_hardness(atoms, params, kernel, cutoff)).max()
        if abs(lam) < 1e-8 * scale:
            continue  # inside the rounding band: either outcome is allowed
        try:
            solve_charges(
                torch.tensor(pos, device=device),
                symbols,
                params=params,
                kernel=kernel,
                cutoff=cutoff,
                max_iter=10_000,
            )
            raised = False
        except PolarizationCatastropheError as exc:
            raised = True
            got = float(str(exc).split("smallest eigenvalue there is ")[1].split(" eV")[0])
            assert got == pytest.approx(lam, rel=2e-3)  # printed with 4 digits
        assert raised == (lam < 0), (trial, lam)
        outcomes[raised] += 1
    assert outcomes[True] >= 10 and outcomes[False] >= 10, outcomes


# --------------------------------------------------------------------------- devices


def _missing_cuda() -> str:
    return f"cuda:{torch.cuda.device_count()}"  # cuda:0 without CUDA, else one past the last


def test_calculator_missing_device_raises_value_error():
    with pytest.raises(ValueError, match="CUDA"):
        QEqCalculator(device=_missing_cuda())
    with pytest.raises(ValueError, match="Expected a torch device"):
        QEqCalculator(device="gpu")


def test_resolve_params_missing_device_raises_value_error():
    with pytest.raises(ValueError, match="CUDA"):
        resolve_params(["H", "O"], None, device=_missing_cuda())


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_calculator_plain_cuda_without_cuda_raises_value_error():
    with pytest.raises(ValueError, match="CUDA is not available"):
        QEqCalculator(device="cuda")


@pytest.mark.parametrize(
    "numbers",
    [np.array([11, 0]), np.array([11, 119], dtype=np.int32), [11, 200], [11.0, -1.0]],
)
def test_atomic_numbers_out_of_range_raise(numbers):
    pos = torch.tensor([[0.0, 0, 0], [2.5, 0, 0]], dtype=torch.float64)
    with pytest.raises(ValueError, match=r"atomic numbers in 1\.\.118"):
        solve_charges(pos, numbers, cutoff=None)


def test_numbers_as_array_list_and_symbols_agree():
    pos = torch.tensor([[0.0, 0, 0], [2.5, 0, 0], [0, 2.5, 0]], dtype=torch.float64)
    ref = solve_charges(pos, ["Na", "Cl", "Na"], cutoff=None, total_charge=1.0).charges
    for numbers in (np.array([11, 17, 11]), [11, 17, 11], np.array([11, 17, 11], np.uint8)):
        torch.testing.assert_close(
            solve_charges(pos, numbers, cutoff=None, total_charge=1.0).charges, ref
        )
    with pytest.raises(ValueError, match="Expected 3 atomic numbers"):
        solve_charges(pos, np.array([11, 17]), cutoff=None)
