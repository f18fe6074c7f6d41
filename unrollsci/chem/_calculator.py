"""QEq as an ASE calculator: energy, forces, charges and (periodic) stress."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes

from .._validation import check_device
from ._settings import COULOMB_CONSTANT, QEqSettings
from ._short_range import BornMayer
from ._solve import QEqSolution, check_structure, solve_with_settings

__all__ = ["QEqCalculator"]


def _adjoint_tol(tol: Any) -> Any:
    """The calculator's adjoint tolerance ``max(tol, 1e-6)``: for energy gradients its
    effect on forces is ``~ adjoint_tol * tol`` (see ``solve_charges``). A ``tol`` that is
    not a number is left for the solve to reject."""
    return max(tol, 1e-6) if isinstance(tol, (int, float)) else None


class _Setting:
    """A calculator attribute stored in its :class:`QEqSettings` (``field`` there)."""

    def __init__(self, field: str) -> None:
        self.field = field

    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        return self if obj is None else getattr(obj.settings, self.field)

    def __set__(self, obj: Any, value: Any) -> None:
        changes = {self.field: value}
        if self.field == "tol":
            changes["adjoint_tol"] = _adjoint_tol(value)
        obj.settings = replace(obj.settings, **changes, grad_name="forces")


class QEqCalculator(Calculator):
    """Charge equilibration + optional short-range repulsion as an ASE calculator.

    Forces (and stress for fully periodic cells) are derivatives of the returned energy
    computed by torch autograd: ``forces="implicit"`` (adjoint solve through the charges),
    ``"unrolled"`` (through the CG iterations) or ``"envelope"`` (charges held fixed, as
    LAMMPS does). ``atoms.get_charges()`` returns the equilibrated charges.

    Args:
        params: per-element parameter overrides (see :func:`solve_charges`); None uses the
            built-in Rappe-Goddard table.
        kernel: ``"shielded"``, ``"point"`` or ``"gaussian"``.
        cutoff: pair cutoff in Angstrom (taper radius), None for all pairs (molecules).
        coulomb_constant: k_e in eV Angstrom.
        ewald: Ewald summation for the long-range 1/r part (periodic cells).
        ewald_accuracy: relative accuracy of the Ewald split.
        total_charge: total charge Q of the system.
        tol: relative residual tolerance of the charge solve.
        max_iter: CG iteration limit.
        iterations: run exactly this many CG iterations at every call (ignores ``tol``).
        forces: ``"implicit"``, ``"unrolled"`` or ``"envelope"``.
        short_range: None, a :class:`BornMayer`, a dict of Born-Mayer pairs
            ``{("Na", "Cl"): (A, rho)}``, or ``"radii"`` (generic wall from the table radii).
        warm_start: start the charge solve from the previous charges (implicit/envelope).
        device: torch device (default cpu); a device that does not exist here (e.g.
            ``"cuda"`` without CUDA) raises ``ValueError``.
        dtype: torch dtype (default float64).
        check_definite: ``"auto"``, ``True`` or ``False``: the dense positive-definiteness
            test of the hardness matrix on the constraint subspace before every solve
            (see :func:`solve_charges` and docs/chem.md).

    Example:
        >>> from ase.build import molecule
        >>> atoms = molecule("H2O")
        >>> atoms.calc = QEqCalculator(cutoff=None, short_range="radii")
        >>> q = atoms.get_charges()
    """

    implemented_properties = ["energy", "free_energy", "forces", "charges", "stress"]

    # the solve options, read from (and written to) self.settings
    qeq_params = _Setting("params")
    kernel = _Setting("kernel")
    cutoff = _Setting("cutoff")
    coulomb_constant = _Setting("coulomb_constant")
    ewald = _Setting("ewald")
    ewald_accuracy = _Setting("ewald_accuracy")
    total_charge = _Setting("total_charge")
    tol = _Setting("tol")
    max_iter = _Setting("max_iter")
    iterations = _Setting("iterations")
    forces_mode = _Setting("grad")
    short_range = _Setting("short_range")
    check_definite = _Setting("check_definite")

    def __init__(
        self,
        params: Mapping[str, Mapping[str, float]] | None = None,
        kernel: str = "shielded",
        cutoff: float | None = 10.0,
        coulomb_constant: float = COULOMB_CONSTANT,
        ewald: bool = False,
        ewald_accuracy: float = 1e-8,
        total_charge: float = 0.0,
        tol: float = 1e-8,
        max_iter: int | None = None,
        iterations: int | None = None,
        forces: str = "implicit",
        short_range: Any = None,
        warm_start: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float64,
        check_definite: bool | str = "auto",
        **kwargs: Any,
    ) -> None:
        allowed = {"label", "atoms", "directory"}
        unknown = set(kwargs) - allowed
        if unknown:
            raise TypeError(f"QEqCalculator got unexpected keyword argument(s) {sorted(unknown)}.")
        device = check_device(device)
        super().__init__(**kwargs)
        if dtype not in (torch.float32, torch.float64):
            raise TypeError(f"Expected dtype torch.float32 or torch.float64 (got {dtype}).")
        if isinstance(short_range, str):
            short_range = BornMayer(default=short_range)
        elif isinstance(short_range, Mapping):
            short_range = BornMayer(short_range)
        elif short_range is not None and not hasattr(short_range, "energy"):
            raise TypeError(
                "Expected short_range to be None, 'radii', a dict of Born-Mayer pairs or a "
                f"BornMayer (got {type(short_range).__name__})."
            )
        if (
            isinstance(short_range, BornMayer)
            and short_range.cutoff is not None
            and cutoff is not None
            and short_range.cutoff > cutoff
        ):
            raise ValueError(
                f"Expected the short-range cutoff ({short_range.cutoff}) <= cutoff ({cutoff})."
            )
        #: the options of every charge solve, validated here once (see QEqSettings)
        self.settings = QEqSettings(
            params=params,
            kernel=kernel,
            cutoff=cutoff,
            coulomb_constant=coulomb_constant,
            ewald=ewald,
            ewald_accuracy=ewald_accuracy,
            total_charge=total_charge,
            tol=tol,
            max_iter=max_iter,
            iterations=iterations,
            grad=forces,
            short_range=short_range,
            adjoint_tol=_adjoint_tol(tol),
            check_definite=check_definite,
            grad_name="forces",
        )
        self.warm_start = warm_start
        self.device = device if device is not None else torch.device("cpu")
        self.dtype = dtype
        self.solution: QEqSolution | None = None
        self._q_prev: torch.Tensor | None = None

    def calculate(
        self,
        atoms: Any = None,
        properties: Any = ("energy",),
        system_changes: Any = all_changes,
    ) -> None:
        """Solve the charges and fill ``self.results`` (energy, forces, charges, stress)."""
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        periodic = bool(np.all(atoms.pbc))
        if "stress" in properties and not periodic:
            raise PropertyNotImplementedError("stress needs a fully periodic cell")
        pos_np = np.asarray(atoms.positions, dtype=np.float64)
        if not np.isfinite(pos_np).all():
            raise ValueError(
                f"Expected finite positions (got {int((~np.isfinite(pos_np)).any(1).sum())} "
                "atoms with NaN/Inf coordinates)."
            )
        dd = {"device": self.device, "dtype": self.dtype}
        pos0 = torch.tensor(pos_np, **dd)
        cell0 = torch.tensor(np.asarray(atoms.cell.array, dtype=np.float64), **dd)
        strain = torch.zeros(3, 3, **dd, requires_grad=periodic)
        deform = torch.eye(3, **dd) + 0.5 * (strain + strain.T)
        pos0.requires_grad_(True)
        positions = pos0 @ deform
        cell = cell0 @ deform
        q0 = None
        if self.warm_start and self._q_prev is not None and self._q_prev.shape[0] == len(atoms):
            q0 = self._q_prev
        symbols = check_structure(positions, atoms.numbers.tolist())
        sol = solve_with_settings(
            positions, symbols, self.settings, cell=cell, pbc=atoms.pbc.tolist(), q0=q0
        )
        wrt = [pos0, strain] if periodic else [pos0]
        grads = torch.autograd.grad(sol.energy, wrt)
        self.solution = sol
        self._q_prev = sol.x.detach()
        energy = float(sol.energy.detach())
        self.results["energy"] = energy
        self.results["free_energy"] = energy
        self.results["forces"] = -grads[0].detach().cpu().numpy().astype(np.float64)
        self.results["charges"] = sol.x.detach().cpu().numpy().astype(np.float64)
        if periodic:
            vol = abs(float(np.linalg.det(atoms.cell.array)))
            s = grads[1].detach().cpu().numpy().astype(np.float64) / vol
            s = 0.5 * (s + s.T)
            self.results["stress"] = s.flat[[0, 4, 8, 5, 2, 1]]
