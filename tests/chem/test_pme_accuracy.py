"""PME's accuracy follows ``ewald_accuracy``: the mesh is chosen from an error estimate
(``_pme.mesh_shape``), checked here against the converged explicit Ewald sum on a cubic and
a triclinic cell, and the estimate itself against the measured mesh error."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from ase.build import bulk

from unrollsci.chem import _pme, _pme_mesh, _settings, solve_charges
from unrollsci.chem._geometry import ewald_alpha

NACL = {
    "Na": {"chi": 2.843, "eta": 12.0, "gamma": 0.7},
    "Cl": {"chi": 8.564, "eta": 10.0, "gamma": 0.6},
}
#: real-space cutoffs (below half the smallest cell width; longer ones are allowed too)
CUTOFF = {"cubic": 5.5, "triclinic": 4.5}
#: the stated multiples of ``ewald_accuracy`` (docs/chem.md): charges and energy relative
#: to their scale, the largest force error relative to the RMS force
Q_TOL, E_TOL, F_TOL = 10.0, 10.0, 500.0


def _system(kind):
    if kind == "cubic":  # 64 atoms, rattled rock salt
        atoms = bulk("NaCl", "rocksalt", a=5.64, cubic=True).repeat((2, 2, 2))
        atoms.rattle(0.1, seed=0)
    else:  # 54 atoms, the primitive fcc cell: 60 degree angles, rattled
        atoms = bulk("NaCl", "rocksalt", a=5.64).repeat((3, 3, 3))
        atoms.rattle(0.1, seed=1)
    atoms.info["cutoff"] = CUTOFF[kind]
    return atoms


def _solve(atoms, method, accuracy, device):
    pos = torch.tensor(atoms.positions, device=device, requires_grad=True)
    sol = solve_charges(
        pos,
        atoms.numbers,
        cell=torch.tensor(atoms.cell.array, device=device),
        pbc=True,
        ewald=True,
        ewald_method=method,
        ewald_accuracy=accuracy,
        params=NACL,
        cutoff=atoms.info["cutoff"],
        tol=1e-13,
        check_definite=False,
    )
    forces = -torch.autograd.grad(sol.energy, pos)[0]
    return (
        sol.charges.detach().cpu().numpy(),
        float(sol.energy.detach()),
        forces.cpu().numpy(),
        sol.stats,
    )


def _errors(got, ref):
    q, e, f, _ = got
    q0, e0, f0, _ = ref
    f_rms = math.sqrt(float((f0**2).sum(1).mean()))
    return (
        float(np.abs(q - q0).max() / np.abs(q0).max()),
        abs(e - e0) / abs(e0),
        float(np.abs(f - f0).max() / f_rms),
    )


_REFS: dict = {}


def _reference(kind, device):
    key = (kind, str(device))
    if key not in _REFS:
        _REFS[key] = _solve(_system(kind), "ewald", 1e-13, device)
    return _REFS[key]


@pytest.mark.parametrize(
    "kind, accuracy",
    [
        ("cubic", 1e-4),
        ("cubic", 1e-6),
        ("cubic", 1e-8),
        ("triclinic", 1e-4),
        ("triclinic", 1e-6),
        ("triclinic", 1e-8),
    ],
)
def test_pme_error_follows_ewald_accuracy(device, kind, accuracy):
    atoms = _system(kind)
    ref = _reference(kind, device)
    pme = _solve(atoms, "pme", accuracy, device)
    assert pme[3]["ewald_method"] == "pme"
    dq, de, df = _errors(pme, ref)
    msg = f"{kind} acc {accuracy:g} mesh {pme[3]['pme_mesh']}: dq {dq:.2e} dE {de:.2e} dF {df:.2e}"
    assert dq <= Q_TOL * accuracy, msg
    assert de <= E_TOL * accuracy, msg
    assert df <= F_TOL * accuracy, msg
    # the comparison resolves the accuracy: the explicit sum 100x looser misses the bound
    loose = _errors(_solve(atoms, "ewald", accuracy * 100, device), ref)
    assert loose[0] > Q_TOL * accuracy or loose[2] > F_TOL * accuracy, (msg, loose)


def test_a_coarser_mesh_misses_the_accuracy(device, monkeypatch):
    """The bound above resolves the mesh: at 1e-8, the chosen mesh with half the points per
    axis misses it (the mesh before the calibration, order 5 at spacing 0.3 / alpha with
    torch-pme's influence function and the mesh self force, was 1.4e-5 off on 216 atoms
    and 1.8e-2 on a triclinic cell: 1000x and more)."""
    atoms = _system("cubic")
    ref = _reference("cubic", device)
    alpha = ewald_alpha(CUTOFF["cubic"], 1e-8)[0]
    chosen = _pme_mesh.mesh_shape(torch.tensor(atoms.cell.array), alpha, 1e-8, len(atoms))[0]
    coarse = [max(x // 2, 2 * _pme_mesh.NODES) for x in chosen]
    monkeypatch.setattr(_pme, "_cached_mesh_shape", lambda *a: coarse)
    dq, de, df = _errors(_solve(atoms, "pme", 1e-8, device), ref)
    assert dq > Q_TOL * 1e-8 or df > F_TOL * 1e-8, f"mesh {coarse}: dq {dq:.2e} dF {df:.2e}"


@pytest.mark.parametrize("kind", ["cubic", "triclinic"])
def test_mesh_error_estimate_matches_measured_error(kind):
    """``influence``'s ``Q``: the RMS mesh error of the reciprocal potential of random
    neutral charges at random positions is ``sqrt(sum q^2 Q)`` within a factor 3."""
    atoms = _system(kind)
    gen = torch.Generator().manual_seed(5)
    n = len(atoms)
    cell = torch.tensor(atoms.cell.array)
    frac = torch.rand(n, 3, generator=gen, dtype=torch.float64)
    pos = frac @ cell
    q = torch.randn(n, generator=gen, dtype=torch.float64)
    q = q - q.mean()
    alpha, _ = ewald_alpha(CUTOFF[kind], 1e-6)
    _, kmax = ewald_alpha(CUTOFF[kind], 1e-15)
    for shape in ([12, 12, 12], [20, 20, 24], [32, 32, 32]):
        pme = _pme.PMEReciprocal(pos, cell, alpha, kmax, 1.0, shape=shape)
        measured = float((pme.apply(q) - pme.dense() @ q).pow(2).mean().sqrt())
        estimate = math.sqrt(float((q * q).sum()) * float(pme.error_q))
        assert estimate / 3 <= measured <= 3 * estimate, (shape, measured, estimate)


def test_mesh_shape_meets_its_target_and_refines_with_accuracy():
    atoms = _system("triclinic")
    cell = torch.tensor(atoms.cell.array)
    previous = 0
    for accuracy in (1e-3, 1e-5, 1e-7):
        alpha, _ = ewald_alpha(CUTOFF["triclinic"], accuracy)
        shape, q = _pme.mesh_shape(cell, alpha, accuracy, len(atoms))
        assert q <= _pme.mesh_target(accuracy, alpha, len(atoms))
        assert all(s >= 2 * _pme.NODES for s in shape)
        assert math.prod(shape) > previous
        previous = math.prod(shape)
        # the estimate is the influence function's own
        assert float(_pme.influence(cell, shape, alpha)[1]) == pytest.approx(q)


def test_mesh_too_fine_raises(monkeypatch):
    atoms = _system("cubic")
    monkeypatch.setattr(_pme_mesh, "MAX_MESH_POINTS", 1000)
    monkeypatch.setattr(_pme_mesh, "_SHAPES", {})
    with pytest.raises(ValueError, match="ewald_method='ewald'"):
        _solve(atoms, "pme", 1e-6, "cpu")


def test_auto_follows_the_cost_model():
    """``"auto"``: PME where ``N K > PME_COST_RATIO * (M + p^3 N)`` at the accuracy, so
    the same cell can get PME at a loose accuracy and the explicit sum at a tight one."""
    atoms = bulk("NaCl", "rocksalt", a=5.64, cubic=True).repeat((6, 6, 6))  # 1728 atoms
    cell = atoms.cell.array
    n = len(atoms)
    picks = {}
    for accuracy in (1e-5, 1e-10):
        ewald = ewald_alpha(10.0, accuracy)
        cheaper, n_k, m = _pme.pme_cheaper(cell, ewald, accuracy, n)
        cost = _settings.PME_COST_RATIO * (m + _pme_mesh.NODES**3 * n)
        assert cheaper == (m > 0 and n * n_k > cost)
        picks[accuracy] = _pme.resolve_method("auto", n, cell=cell, ewald=ewald, accuracy=accuracy)
        assert picks[accuracy] == ("pme" if cheaper else "ewald")
    assert picks == {1e-5: "pme", 1e-10: "ewald"}
    # below PME_MIN_ATOMS never PME; "ewald" and "pme" as asked
    ewald = ewald_alpha(5.5, 1e-5)
    small = bulk("NaCl", "rocksalt", a=5.64, cubic=True).repeat((2, 2, 2)).cell.array
    assert _pme.resolve_method("auto", 64, cell=small, ewald=ewald, accuracy=1e-5) == "ewald"
    assert _pme.resolve_method("pme", 64, cell=small, ewald=ewald, accuracy=1e-5) == "pme"
    assert _pme.resolve_method("ewald", 10**6) == "ewald"


def test_assignment_weights_equal_torchpme_order5_and_partition_unity():
    """Order 5: the same mesh charge density as torch-pme's P3M weights (an independent
    implementation); every order: weights sum to 1 and reproduce the atom's position."""
    atoms = _system("triclinic")
    atoms.rattle(0.3, seed=2)
    pos = torch.tensor(atoms.positions)
    cell = torch.tensor(atoms.cell.array)
    shape = [20, 20, 24]
    m = math.prod(shape)
    q = torch.randn(len(atoms), dtype=torch.float64)
    for order in (3, 5, 7):
        w, idx, _ = _pme_mesh.assignment(pos, cell, shape, order)
        assert torch.allclose(w.sum(1), torch.ones(len(atoms), dtype=torch.float64))
        assert float(w.min()) >= 0.0
    tp = pytest.importorskip("torchpme")
    w, idx, _ = _pme_mesh.assignment(pos, cell, shape, 5)
    ip = tp.lib.MeshInterpolator(cell, torch.tensor(shape), 5, method="P3M")
    ip.compute_weights(pos)
    wi = ip.interpolation_weights
    w_tp = (wi[ip.x_shifts, :, 0] * wi[ip.y_shifts, :, 1] * wi[ip.z_shifts, :, 2]).T
    idx_tp = ((ip.x_indices * shape[1] + ip.y_indices) * shape[2] + ip.z_indices).T
    ours = torch.zeros(m, dtype=torch.float64).index_add(
        0, idx.reshape(-1), (w * q[:, None]).reshape(-1)
    )
    theirs = torch.zeros(m, dtype=torch.float64).index_add(
        0, idx_tp.reshape(-1), (w_tp * q[:, None]).reshape(-1)
    )
    assert torch.allclose(ours, theirs, atol=1e-13)
