"""The periodic-electrostatics audit (December 7): the electronegativity of a charged cell
with Ewald, and inputs that were misread or exhausted memory."""

from __future__ import annotations

import pytest
import torch
from ase.build import bulk

from unrollsci.chem import BornMayer, solve_charges

P = {"Na": {"chi": 2.843, "eta": 40.0}, "Cl": {"chi": 8.564, "eta": 40.0}}
PAIR = torch.tensor([[0.0, 0, 0], [2.5, 0.1, 0.2]], dtype=torch.float64)


@pytest.mark.parametrize("method", ["ewald", "pme"])
def test_mu_is_the_charge_derivative_of_the_energy_in_a_charged_cell(method):
    """mu left out the background's charge derivative -k_e pi Q / (V alpha^2), so it moved
    with the cutoff (8.913 / 8.929 / 8.964 for dE/dQ = 8.8925)."""
    atoms = bulk("NaCl", "rocksalt", a=5.64, cubic=True)
    kw = dict(
        cell=torch.tensor(atoms.cell.array), pbc=True, ewald=True, tol=1e-12, kernel="point",
        params=P, ewald_method=method, ewald_accuracy=1e-12 if method == "ewald" else 1e-8,
    )  # fmt: skip
    pos, sym = torch.tensor(atoms.positions), atoms.get_chemical_symbols()

    def energy(q, rc):
        return float(solve_charges(pos, sym, total_charge=q, cutoff=rc, **kw).energy)

    for rc in (1.5, 2.8):
        mu = solve_charges(pos, sym, total_charge=1.0, cutoff=rc, **kw).mu
        fd = (energy(1.0 + 1e-4, rc) - energy(1.0 - 1e-4, rc)) / 2e-4
        assert mu == pytest.approx(fd, abs=1e-6 if method == "ewald" else 1e-4)


def test_solve_charges_refuses_what_it_misread():
    cell = torch.eye(3, dtype=torch.float64) * 4
    with pytest.raises(TypeError, match="pbc"):  # "False" was read as True
        solve_charges(PAIR, ["Na", "Cl"], cell=cell, pbc="False", params=P, cutoff=6.0)
    with pytest.raises(TypeError, match="pbc"):
        solve_charges(PAIR, ["Na", "Cl"], cell=cell, pbc="FFF", params=P, cutoff=6.0)
    with pytest.raises(TypeError, match="ewald"):  # "no" switched Ewald on
        solve_charges(PAIR, ["Na", "Cl"], cell=cell, pbc=True, ewald="no", params=P, cutoff=1.9)
    with pytest.raises(TypeError, match="BornMayer"):  # failed after the solve
        solve_charges(PAIR, ["Na", "Cl"], cutoff=6.0, short_range="radii", params=P)
    bm = BornMayer({("Na", "Cl"): (1000.0, 1.0)}, cutoff=12.0)  # cut off at 6 A silently
    with pytest.raises(ValueError, match="short-range cutoff"):
        solve_charges(PAIR, ["Na", "Cl"], params=P, cutoff=6.0, short_range=bm)
    # without a solve cutoff every pair is in the list: the repulsion's own taper applies
    e = solve_charges(PAIR, ["Na", "Cl"], params=P, cutoff=None, short_range=bm).energy
    assert torch.isfinite(e)
    # numpy booleans (ASE's Atoms.pbc) and a pbc per axis still work
    import numpy as np

    sol = solve_charges(PAIR, ["Na", "Cl"], cell=cell, pbc=np.array([True, True, False]),
                        params=P, cutoff=3.0)  # fmt: skip
    assert abs(float(sol.charges.sum())) < 1e-9


def test_kspace_grid_size_is_guarded():
    """ewald_accuracy=1e-300 built a 5.6 GiB k-index grid (the process was killed for
    memory); now a clear error before allocating."""
    cell = torch.eye(3, dtype=torch.float64) * 6
    with pytest.raises(ValueError, match="k-space grid"):
        solve_charges(PAIR, ["Na", "Cl"], cell=cell, pbc=True, params=P, cutoff=2.9,
                      ewald=True, ewald_accuracy=1e-300, ewald_method="ewald")  # fmt: skip


def test_radii_rule_uses_the_params_radius():
    """The 'radii' repulsion took its radii from the built-in table only: a 'radius' given
    in params (documented as overriding it) changed nothing, and an element outside the
    table got 1.0 A silently."""
    from unrollsci.chem import QEqCalculator

    pos = torch.tensor([[0.0, 0, 0], [2.6, 0, 0]], dtype=torch.float64)
    bm = BornMayer(default="radii")

    def energy(params):
        return float(
            solve_charges(pos, ["Na", "Cl"], params=params, cutoff=6.0, short_range=bm).energy
        )

    base, big, small = (
        energy(None),
        energy({"Na": {"radius": 3.0}}),
        energy({"Na": {"radius": 0.5}}),
    )
    assert small < base < big  # a larger radius, a stronger wall at the same distance
    # the same through the calculator's string
    from ase import Atoms

    atoms = Atoms("NaCl", positions=pos.numpy())
    atoms.calc = QEqCalculator(params={"Na": {"radius": 3.0}}, cutoff=6.0, short_range="radii")
    assert atoms.get_potential_energy() == pytest.approx(big, rel=1e-9)
    # no radius anywhere for the element: a clear error, not 1.0 A
    zn = {"Zn": {"chi": 4.0, "eta": 10.0, "gamma": 0.5}}
    with pytest.raises(ValueError, match="No radius for Zn"):
        solve_charges(pos, ["Zn", "Zn"], params=zn, cutoff=6.0, short_range=bm)
    both = {"Zn": {"chi": 4.0, "eta": 10.0, "gamma": 0.5, "radius": 1.4}}
    assert torch.isfinite(solve_charges(pos, ["Zn", "Zn"], params=both, cutoff=6.0,
                                        short_range=bm).energy)  # fmt: skip
