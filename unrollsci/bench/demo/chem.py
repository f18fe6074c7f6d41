"""Demo section: QEq forces at a loose tolerance, implicit vs unrolled vs envelope."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["FIGURES", "run_demo"]

#: files ``run_demo`` writes into ``outdir`` (``unrollsci demo`` checks them beforehand).
FIGURES: list[str] = []


def run_demo(outdir: Path) -> list[dict[str, Any]]:
    """Rattled rock-salt NaCl (32 atoms): force error of each mode at tol 1e-3.

    Returns table rows; ``outdir`` is unused (no figure).
    """
    from ase.build import bulk
    from ase.calculators.fd import calculate_numerical_forces

    from ...chem import BornMayer, QEqCalculator
    from ..qeq import NACL_PARAMS

    atoms = bulk("NaCl", "rocksalt", a=5.64, cubic=True).repeat((2, 2, 1))
    atoms.rattle(0.1, seed=0)
    kw = {  # solver="cg": the default "auto" solves 32 atoms directly (0 CG iterations)
        "solver": "cg",
        "params": NACL_PARAMS,
        "cutoff": 8.0,
        "short_range": BornMayer({("Na", "Cl"): (1200.0, 0.32)}),
    }
    atoms.calc = QEqCalculator(tol=1e-12, **kw)
    f_conv = atoms.get_forces()
    rows = []
    k = None
    for mode in ("envelope", "implicit"):
        atoms.calc = QEqCalculator(tol=1e-3, forces=mode, warm_start=False, **kw)
        f = atoms.get_forces()
        k = atoms.calc.solution.iterations
        rows.append(
            {
                "forces": mode,
                "CG iterations": k,
                "max dF vs converged (eV/A)": float(np.abs(f - f_conv).max()),
                "max dF vs FD of returned E (eV/A)": float("nan"),
            }
        )
    atoms.calc = QEqCalculator(iterations=k, forces="unrolled", **kw)
    f = atoms.get_forces()
    fd = calculate_numerical_forces(atoms, 1e-4, iatoms=[0, 1])
    rows.append(
        {
            "forces": "unrolled",
            "CG iterations": k,
            "max dF vs converged (eV/A)": float(np.abs(f - f_conv).max()),
            "max dF vs FD of returned E (eV/A)": float(np.abs(f[:2] - fd).max()),
        }
    )
    return rows
