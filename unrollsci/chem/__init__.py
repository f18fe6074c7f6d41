"""Charge equilibration (QEq) with forces that are derivatives of the returned energy.

``solve_charges`` is the torch-level solve; ``QEqCalculator`` wraps it as an ASE
calculator. See docs/chem.md.
"""

from ._calculator import QEqCalculator
from ._params import BUILTIN_PARAMS
from ._short_range import BornMayer
from ._solve import (
    COULOMB_CONSTANT,
    PolarizationCatastropheError,
    QEqSolution,
    solve_charges,
)

__all__ = [
    "BUILTIN_PARAMS",
    "BornMayer",
    "COULOMB_CONSTANT",
    "PolarizationCatastropheError",
    "QEqCalculator",
    "QEqSolution",
    "solve_charges",
]
