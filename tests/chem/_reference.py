"""Independent dense references for the QEq tests (numpy, written from the formulas)."""

from __future__ import annotations

import itertools
import math

import numpy as np
from scipy.special import erf

KE = 14.399645

NACL = {
    "Na": {"chi": 2.843, "eta": 12.0, "gamma": 0.7, "sigma": 1.2},
    "Cl": {"chi": 8.564, "eta": 10.0, "gamma": 0.6, "sigma": 1.5},
}
ORGANIC = {
    # hardness about twice Rappe-Goddard's J, so that even the bare 1/r kernel is PD
    "H": {"chi": 4.528, "eta": 24.0, "gamma": 0.48, "sigma": 0.6},
    "C": {"chi": 5.343, "eta": 20.0, "gamma": 0.35, "sigma": 0.9},
    "O": {"chi": 8.741, "eta": 24.0, "gamma": 0.46, "sigma": 0.8},
}


def _kernel(kind, r, a, b):
    if kind == "point":
        return 1.0 / r
    if kind == "shielded":
        return 1.0 / np.cbrt(r**3 + (a * b) ** -1.5)
    return erf(r / np.sqrt(a * a + b * b)) / r


def _tap(r, rc):
    # LAMMPS fix qeq: Tap[7]=20/rc^7, Tap[6]=-70/rc^6, Tap[5]=84/rc^5, Tap[4]=-35/rc^4, Tap[0]=1
    return 20 * r**7 / rc**7 - 70 * r**6 / rc**6 + 84 * r**5 / rc**5 - 35 * r**4 / rc**4 + 1


def dense_hardness(atoms, params, kind="shielded", cutoff=10.0, ke=KE):
    """A_ij = eta_i delta_ij + ke * sum over images within the cutoff of J(r) Tap(r)."""
    sym = atoms.get_chemical_symbols()
    pos = atoms.positions
    shape_key = "sigma" if kind == "gaussian" else "gamma"
    s = np.array([params[x][shape_key] for x in sym])
    a = np.diag([params[x]["eta"] for x in sym]).astype(float)
    if kind == "gaussian":
        a += np.diag(ke * math.sqrt(2 / math.pi) / s)
    if atoms.pbc.any():
        cell = atoms.cell.array
        vol = abs(np.linalg.det(cell))
        heights = [
            vol / np.linalg.norm(np.cross(cell[(k + 1) % 3], cell[(k + 2) % 3])) for k in range(3)
        ]
        ranges = [
            range(-math.ceil(cutoff / h) - 1, math.ceil(cutoff / h) + 2) if p else [0]
            for h, p in zip(heights, atoms.pbc, strict=True)
        ]
        shifts = [np.array(t) @ cell for t in itertools.product(*ranges)]
    else:
        shifts = [np.zeros(3)]
    for sh in shifts:
        d = pos[None, :, :] + sh - pos[:, None, :]
        r = np.linalg.norm(d, axis=-1)
        with np.errstate(divide="ignore", invalid="ignore"):
            j = _kernel(kind, r, s[:, None], s[None, :])
            if cutoff is not None:
                j = np.where(r < cutoff, j * _tap(r, cutoff), 0.0)
        j[r < 1e-9] = 0.0
        a += ke * j
    return a


def bordered_solve(a, chi, total):
    """Solve [[A, 1], [1^T, 0]] [q, -mu] = [-chi, Q] densely."""
    n = len(chi)
    k = np.zeros((n + 1, n + 1))
    k[:n, :n] = a
    k[:n, n] = 1.0
    k[n, :n] = 1.0
    rhs = np.concatenate([-np.asarray(chi, float), [total]])
    sol = np.linalg.solve(k, rhs)
    return sol[:n], -sol[n]


def reference_charges(atoms, params, kind="shielded", cutoff=10.0, total=0.0, ke=KE):
    a = dense_hardness(atoms, params, kind, cutoff, ke)
    chi = [params[x]["chi"] for x in atoms.get_chemical_symbols()]
    return bordered_solve(a, chi, total)[0]
