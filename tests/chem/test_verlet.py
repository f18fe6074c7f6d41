"""The pair list kept between calls (Verlet skin) changes no result: MD across list rebuilds
gives the energies and forces of a list rebuilt at every call, conserves energy, and the
forces stay the derivatives of the energy; the definiteness certificate still catches a
polarization catastrophe."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import units
from ase.build import bulk
from ase.calculators.fd import calculate_numerical_forces
from ase.md.verlet import VelocityVerlet

from unrollsci.chem import BornMayer, PolarizationCatastropheError, QEqCalculator
from unrollsci.chem._hardness import _Hardness
from unrollsci.chem._verlet import DefiniteCertificate

NACL = {
    "Na": {"chi": 2.843, "eta": 12.0, "gamma": 0.7},
    "Cl": {"chi": 8.564, "eta": 10.0, "gamma": 0.6},
}
REP = BornMayer({("Na", "Cl"): (1200.0, 0.32), ("Cl", "Cl"): (300.0, 0.32)})


@pytest.fixture(params=["scatter", "csr"])
def matvec(request, monkeypatch):
    """Both mat-vec paths of a kept list: scatter (small lists) and the reused CSR pattern
    (forced here on a small list; one torch thread, as threaded sparse products on a
    handful of atoms only add overhead)."""
    from unrollsci.chem import _verlet

    if request.param == "csr":
        monkeypatch.setattr(_verlet, "CSR_MIN_PAIRS", 0)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        yield request.param
        torch.set_num_threads(threads)
    else:
        yield request.param


def _calc(**kw):
    return QEqCalculator(**{"params": NACL, "cutoff": 6.0, "short_range": REP, "tol": 1e-10, **kw})


def test_md_across_list_rebuilds_matches_a_fresh_list_and_conserves_energy(device, matvec):
    atoms = bulk("NaCl", "rocksalt", a=5.64, cubic=True).repeat((2, 1, 1))
    atoms.rattle(0.1, seed=5)  # 16 atoms, hot: they cross a 0.1 A skin within a few steps
    atoms.calc = calc = _calc(skin=0.1, device=device)
    fresh = _calc(skin=0.0, device=device)  # the list rebuilt at every call
    e0 = atoms.get_total_energy()
    builds_before = calc.neighbor_list_builds
    energies, max_de, max_df = [], 0.0, 0.0

    def compare() -> None:
        nonlocal max_de, max_df
        other = atoms.copy()
        other.calc = fresh
        max_de = max(max_de, abs(other.get_potential_energy() - atoms.get_potential_energy()))
        max_df = max(max_df, np.abs(other.get_forces() - atoms.get_forces()).max())
        energies.append(atoms.get_total_energy())

    dyn = VelocityVerlet(atoms, timestep=0.5 * units.fs)
    dyn.attach(compare, interval=1)
    dyn.run(30)
    rebuilds = calc.neighbor_list_builds - builds_before
    assert 2 <= rebuilds < 30  # the list was kept for some steps and rebuilt for others
    assert fresh.neighbor_list_builds >= 30
    assert max_de < 1e-9 and max_df < 1e-8
    assert np.abs(np.array(energies) - e0).max() < 2e-3  # NVE: energy conserved


def test_forces_are_derivatives_on_a_kept_list(device, matvec):
    atoms = bulk("NaCl", "rocksalt", a=5.64, cubic=True).repeat((2, 1, 1))
    atoms.rattle(0.05, seed=2)
    atoms.calc = calc = _calc(skin=0.5, device=device)
    atoms.get_forces()
    atoms.positions += np.random.default_rng(0).normal(scale=0.05, size=atoms.positions.shape)
    builds = calc.neighbor_list_builds
    f = atoms.get_forces()
    fd = calculate_numerical_forces(atoms, eps=1e-4, iatoms=[0, 3, 9])
    assert calc.neighbor_list_builds == builds  # every evaluation reused the list
    assert (calc._verlet.pattern is not None) == (matvec == "csr")
    np.testing.assert_allclose(f[[0, 3, 9]], fd, atol=2e-6)


def test_certificate_reruns_the_dense_test_and_catches_a_catastrophe():
    n = 6
    i, j = torch.triu_indices(n, n, 1)
    w = torch.full((i.numel(),), 1.0, dtype=torch.float64)
    diag = torch.full((n,), 12.0, dtype=torch.float64)
    cert = DefiniteCertificate()
    cert.check(_Hardness(i, j, w, diag), same_pairs=False)
    assert cert.dense_checks == 1
    cert.check(_Hardness(i, j, w * 1.001, diag), same_pairs=True)  # within the margin
    assert cert.dense_checks == 1
    # A = (12 - w) I + w 11^T: on sum(q) = 0 every eigenvalue is 12 - w, so w = 20 is a
    # catastrophe that the certificate cannot vouch for; the dense test runs and raises
    with pytest.raises(PolarizationCatastropheError):
        cert.check(_Hardness(i, j, w * 20.0, diag), same_pairs=True)
    assert cert.dense_checks == 2


def test_skin_is_a_validated_neutral_parameter():
    calc = _calc()
    assert calc.parameters["skin"] == 1.0
    with pytest.raises(ValueError, match="skin"):
        calc.set(skin=-1.0)
    atoms = bulk("NaCl", "rocksalt", a=5.64, cubic=True)
    atoms.calc = calc
    atoms.get_potential_energy()
    assert calc.set(skin=0.3) == {"skin": 0.3}
    assert "energy" in calc.results  # a skin cannot change the results: they are kept
