"""Charge equilibration (QEq) with forces that are derivatives of the returned energy.

``solve_charges`` is the torch-level solve; ``QEqCalculator`` wraps it as an ASE
calculator. See docs/chem.md.

The names are loaded on first use (module ``__getattr__``), so that importing
``unrollsci.chem._ase_plugin`` (what ASE's plugin collection does for every ASE user who
loads it) does not import torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__all__ = [
    "BUILTIN_PARAMS",
    "BornMayer",
    "COULOMB_CONSTANT",
    "PolarizationCatastropheError",
    "QEqCalculator",
    "QEqSolution",
    "solve_charges",
]

_HOMES = {
    "BUILTIN_PARAMS": "._params",
    "BornMayer": "._short_range",
    "COULOMB_CONSTANT": "._settings",
    "PolarizationCatastropheError": "._hardness",
    "QEqCalculator": "._calculator",
    "QEqSolution": "._solve",
    "solve_charges": "._solve",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        value = getattr(import_module(_HOMES[name], __name__), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
