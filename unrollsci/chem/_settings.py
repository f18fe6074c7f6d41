"""The options of a QEq solve, validated once: shared by ``solve_charges`` and
``QEqCalculator`` (which builds them at construction and passes them to every solve)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import InitVar, dataclass, fields
from typing import Any

import numpy as np

from ._geometry import KERNELS

__all__ = [
    "COULOMB_CONSTANT",
    "EWALD_METHODS",
    "GRAD_MODES",
    "PME_COST_RATIO",
    "PME_MIN_ATOMS",
    "QEqSettings",
    "check_pbc",
]

#: e^2 / (4 pi eps0) in eV Angstrom (CODATA 2018); LAMMPS fix qeq uses 14.4.
COULOMB_CONSTANT = 14.399645
GRAD_MODES = ("implicit", "unrolled", "envelope")
#: how the reciprocal-space part of the Ewald sum is computed: ``"auto"`` (by size),
#: ``"ewald"`` (explicit k-vector sum) or ``"pme"`` (particle-particle particle-mesh, P3M)
EWALD_METHODS = ("auto", "ewald", "pme")
#: ``ewald_method="auto"`` never uses PME below this many atoms (where the explicit sum
#: was faster at every accuracy measured by benchmarks/qeq_pme.py; docs/chem.md)
PME_MIN_ATOMS = 200
#: ``"auto"`` uses PME where ``N K > PME_COST_RATIO * (M + p^3 N)`` (``K`` k-vectors of the
#: explicit sum, ``M`` PME mesh points at the requested ``ewald_accuracy``, ``p^3`` weights
#: per atom): the ratio fitted to the crossover of benchmarks/qeq_pme.py (docs/chem.md)
PME_COST_RATIO = 5.5


@dataclass(frozen=True)
class QEqSettings:
    """Everything :func:`solve_charges` takes besides the structure (see its arguments).

    Construction checks the option strings (``kernel``, ``grad``, ``check_definite``);
    the numeric values are checked by the solve, against the structure. ``grad_name`` is
    the argument name used in the error message (``"forces"`` for the calculator).
    """

    params: Mapping[str, Mapping[str, float]] | None = None
    kernel: str = "shielded"
    cutoff: float | None = 10.0
    coulomb_constant: float = COULOMB_CONSTANT
    ewald: bool = False
    ewald_accuracy: float = 1e-8
    ewald_method: str = "auto"
    total_charge: float = 0.0
    tol: float = 1e-8
    max_iter: int | None = None
    iterations: int | None = None
    grad: str = "implicit"
    short_range: Any = None
    adjoint_tol: float | None = None
    check_definite: bool | str = "auto"
    grad_name: InitVar[str] = "grad"

    def __post_init__(self, grad_name: str) -> None:
        if self.kernel not in KERNELS:
            raise ValueError(f"Expected kernel in {KERNELS} (got {self.kernel!r}).")
        if self.ewald_method not in EWALD_METHODS:
            raise ValueError(
                f"Expected ewald_method in {EWALD_METHODS} (got {self.ewald_method!r})."
            )
        if self.grad not in GRAD_MODES:
            raise ValueError(f"Expected {grad_name} in {GRAD_MODES} (got {self.grad!r}).")
        cd = self.check_definite
        auto = isinstance(cd, str) and cd == "auto"
        if not (auto or cd is True or cd is False):
            raise ValueError(f"Expected check_definite to be True, False or 'auto' (got {cd!r}).")
        if not isinstance(self.ewald, (bool, np.bool_)):  # a string such as "no" is truthy
            raise TypeError(f"Expected ewald=True or False (got {self.ewald!r}).")
        if not self.ewald:  # the Ewald options do nothing without it: refuse, not ignore
            for name in ("ewald_method", "ewald_accuracy"):
                value, default = getattr(self, name), _DEFAULTS[name]
                if not _same_value(value, default):
                    raise ValueError(
                        f"Expected ewald=True with {name}={value!r} (got ewald=False: "
                        f"{name} applies to the Ewald sum only; leave it at {default!r})."
                    )
        sr = self.short_range
        if sr is not None and not callable(getattr(sr, "energy", None)):
            raise TypeError(
                "Expected short_range=None or an object with an energy(...) method such as "
                f"BornMayer(default='radii') (got {sr!r}; the calculator also takes the string)."
            )
        sr_cut = getattr(sr, "cutoff", None)  # (no solve cutoff: every pair is in the list)
        if sr_cut is not None and self.cutoff is not None and sr_cut > self.cutoff:
            raise ValueError(
                f"Expected the short-range cutoff ({sr_cut}) <= cutoff ({self.cutoff}): its "
                "pairs come from the solve's pair list, so a longer one would be cut off there."
            )


_DEFAULTS = {f.name: f.default for f in fields(QEqSettings)}


def _same_value(value: Any, default: Any) -> bool:
    """Whether an option holds its default (a value without one truth value does not)."""
    try:
        return bool(value == default)
    except Exception:  # noqa: BLE001 - e.g. an array: not the default
        return False


def check_pbc(pbc: Any) -> np.ndarray:
    """``pbc`` as 3 booleans: a bool or 3 of them (numpy booleans too); strings such as
    ``"False"`` are refused (read as booleans they are True)."""
    items = pbc if isinstance(pbc, (list, tuple, np.ndarray)) else [pbc]
    if len(items) not in (1, 3) or not all(isinstance(v, (bool, np.bool_)) for v in items):
        raise TypeError(f"Expected pbc to be a bool or 3 bools (got {pbc!r}).")
    return np.broadcast_to(np.asarray(items, dtype=bool), (3,)).copy()
