"""Relax a molecule and a crystal with QEq + short-range repulsion, then run NVE MD.

Run: python examples/qeq_relax.py
"""

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
BFGS(atoms, logfile="-").run(fmax=0.01)
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
BFGS(crystal, logfile="-").run(fmax=0.01)
print("stress (eV/A^3):", crystal.get_stress().round(5))

# 3) NVE MD with implicit forces at a loose tolerance
thermalize = getattr(vd, "thermalize_momenta", None) or vd.MaxwellBoltzmannDistribution
thermalize(crystal, temperature_K=300)
dyn = VelocityVerlet(crystal, timestep=1.0 * units.fs)
e0 = crystal.get_total_energy()
dyn.run(100)
print(f"energy change after 100 fs: {(crystal.get_total_energy() - e0) / len(crystal):.2e} eV/atom")
