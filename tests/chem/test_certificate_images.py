"""The kept-pair-list definiteness certificate with periodic images (audit): images of one
(i, j) pair add into one matrix entry, so the Frobenius bound on ``||A - A0||`` must sum
them first. It treated every image as its own entry, underestimated the change 4.5x, and
returned a saddle point where a fresh calculator raises."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms

from unrollsci.chem import PolarizationCatastropheError, QEqCalculator
from unrollsci.chem._hardness import _dense_hardness, _projected_hardness, hardness_terms
from unrollsci.chem._params import resolve_params

L, B, RC, K = 30.0, 2.0, 10.0, 14.399645
CELL = np.diag([L, B, B])
D0, D1 = 1.45, 1.0  # the second atom moves 0.45 A: less than skin / 2, the list is kept


def _structure(d: float) -> Atoms:
    return Atoms("Na2", positions=[[0, 0, 0], [d, 0.5 * B, 0.5 * B]], cell=CELL, pbc=True)


def _projected(d: float, eta: float) -> float:
    """The 1 x 1 projected hardness (the library's dense builder), PD iff > 0."""
    at = _structure(d)
    table = resolve_params(["Na", "Na"], {"Na": {"eta": eta}})
    t = hardness_terms(
        torch.tensor(at.positions), torch.tensor(CELL), CELL, np.array([True] * 3),
        ["Na", "Na"], table, kernel="shielded", cutoff=RC, coulomb_constant=K, ewald=None,
        total_charge=0.0,
    )  # fmt: skip
    return float(_projected_hardness(_dense_hardness(t.operator(detach=True)))[0, 0])


@pytest.mark.parametrize("kw", [{"forces": "unrolled"}, {"forces": "implicit", "solver": "cg"}])
def test_kept_list_with_images_does_not_certify_an_indefinite_matrix(kw):
    # the audit's eta: the matrix is PD at D0 with a margin the dense test certifies, and
    # indefinite at D1 (1.864 and -0.106 eV)
    eta = 0.3947
    assert _projected(D0, eta) > 1.5 and _projected(D1, eta) < -0.05
    params = {"Na": {"eta": eta}}
    atoms = _structure(D0)
    atoms.calc = QEqCalculator(params=params, cutoff=RC, total_charge=1.0, warm_start=False, **kw)
    atoms.get_potential_energy()
    atoms.positions = _structure(D1).positions
    with pytest.raises(PolarizationCatastropheError):
        atoms.get_potential_energy()
    assert atoms.calc.neighbor_list_builds == 1  # the kept list, as in the defect
