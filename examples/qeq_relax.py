"""Relax a molecule and a crystal with QEq + short-range repulsion, then run NVE MD.

The figure shows the largest atomic force per BFGS step of both relaxations, the NVE
energies (total, potential, kinetic) along the MD run, and the relaxed ethanol charges.

Run: python examples/qeq_relax.py [FIGURE.png]   (the figure is saved only when a path is
given; the docs gallery keeps the figure left open at exit)
"""

import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from ase import units
from ase.build import bulk, molecule
from ase.md import velocitydistribution as vd
from ase.md.verlet import VelocityVerlet
from ase.optimize import BFGS

from unrollsci.chem import BornMayer, QEqCalculator

# 1) a molecule: built-in Rappe-Goddard table, all pairs (cutoff=None), generic repulsion
atoms = molecule("CH3CH2OH")
atoms.rattle(0.05, seed=0)
atoms.calc = QEqCalculator(cutoff=None, short_range="radii", forces="implicit")
fmax = {"ethanol": [], "NaCl 2x2x2": []}  # largest force per BFGS step (already computed)


def relax(atoms, history):
    opt = BFGS(atoms, logfile="-")
    opt.attach(lambda: history.append(np.linalg.norm(atoms.get_forces(), axis=1).max()))
    opt.run(fmax=0.01)


relax(atoms, fmax["ethanol"])
print("ethanol charges:", atoms.get_charges().round(3))

# 2) a periodic crystal: user parameters, LAMMPS-style shielded kernel with 8 A taper
params = {
    "Na": {"chi": 2.843, "eta": 12.0, "gamma": 0.7},
    "Cl": {"chi": 8.564, "eta": 10.0, "gamma": 0.6},
}
crystal = bulk("NaCl", "rocksalt", a=5.64, cubic=True).repeat(2)
crystal.rattle(0.05, seed=1)
crystal.calc = QEqCalculator(
    params=params,
    cutoff=8.0,
    tol=1e-4,
    short_range=BornMayer({("Na", "Cl"): (1200.0, 0.32), ("Cl", "Cl"): (300.0, 0.32)}),
)
relax(crystal, fmax["NaCl 2x2x2"])
print("stress (eV/A^3):", crystal.get_stress().round(5))

# 3) NVE MD with implicit forces at a loose tolerance
thermalize = getattr(vd, "thermalize_momenta", None) or vd.MaxwellBoltzmannDistribution
thermalize(crystal, temperature_K=300, rng=np.random.default_rng(0))  # reproducible momenta
dyn = VelocityVerlet(crystal, timestep=1.0 * units.fs)
e0 = crystal.get_total_energy()
md = []  # (time fs, potential, kinetic) per step, per atom; energies and forces are cached
dyn.attach(
    lambda: md.append(
        (dyn.get_time() / units.fs, crystal.get_potential_energy(), crystal.get_kinetic_energy())
    )
)
dyn.run(100)
print(f"energy change after 100 fs: {(crystal.get_total_energy() - e0) / len(crystal):.2e} eV/atom")

fig, (ax_f, ax_md, ax_q) = plt.subplots(1, 3, figsize=(14, 3.8), layout="constrained")
for name, hist in fmax.items():
    ax_f.semilogy(hist, "o-", ms=3, label=name)
ax_f.axhline(0.01, color="k", ls=":", lw=1, label="fmax = 0.01")
ax_f.set(xlabel="BFGS step", ylabel="max |force| (eV/A)", title="Relaxation")
ax_f.legend()
t, epot, ekin = np.array(md).T
for e, name in ((epot + ekin, "total"), (epot, "potential"), (ekin, "kinetic")):
    ax_md.plot(t, 1e3 * (e - e[0]) / len(crystal), label=name)
ax_md.set(xlabel="time (fs)", ylabel="E - E(0) (meV/atom)", title="NVE MD, NaCl, 300 K start")
ax_md.legend()
q = atoms.get_charges()
ax_q.bar(range(len(atoms)), q, color=["C0" if v > 0 else "C3" for v in q])
ax_q.axhline(0, color="k", lw=0.8)
ax_q.set_xticks(range(len(atoms)), atoms.get_chemical_symbols())
ax_q.set(ylabel="charge (e)", title="Relaxed ethanol QEq charges")
# Only a figure path: under runpy (e.g. from pytest) sys.argv holds the runner's arguments.
if len(sys.argv) == 2 and Path(sys.argv[1]).suffix in {".png", ".svg", ".pdf"}:
    fig.savefig(sys.argv[1], dpi=100)
