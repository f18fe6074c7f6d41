"""QEq as an ASE calculator: energy, forces, charges, (periodic) stress, (molecule) dipole."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes

from . import _calc_params, _solve, _step
from ._calc_inputs import dipole_moment, kept_pairs, origin_shift, warm_start_charges
from ._calc_params import DEFAULT_PARAMETERS, NEUTRAL, _compare_atoms, copy_value, normalize
from ._calc_params import parameter_property as _parameter
from ._pcg import converged_message
from ._settings import COULOMB_CONSTANT, QEqSettings
from ._solve import Prepared, QEqSolution, _per_atom_table, check_structure, solve_with_settings
from ._step import analytic_step
from ._verlet import DefiniteCertificate, VerletPairs

__all__ = ["QEqCalculator"]


class QEqCalculator(Calculator):
    """Charge equilibration + optional short-range repulsion as an ASE calculator.

    Forces (and stress for fully periodic cells) are derivatives of the returned energy
    computed by torch autograd: ``forces="implicit"`` (adjoint solve through the charges),
    ``"unrolled"`` (through the CG iterations) or ``"envelope"`` (charges held fixed, as
    LAMMPS does). ``atoms.get_charges()`` returns the equilibrated charges and, for a
    molecule (no periodic direction), ``atoms.get_dipole_moment()`` their dipole
    ``sum_i q_i r_i`` (e Angstrom, about the origin of the coordinates; it is the
    derivative ``-dE/dF`` of the energy in a uniform field F).

    The settings follow ASE's calculator conventions: they live in ``calc.parameters``
    (plain data, defaults in ``default_parameters``), ``calc.set(**changes)`` returns the
    changed ones and clears the results, ``calc.todict()`` gives the non-default ones, and
    ``QEqCalculator(**calc.todict())`` builds an equal calculator (also from what an ASE
    trajectory or database stored). Each setting is also an attribute (``calc.tol``,
    ``calc.forces_mode``, ``calc.qeq_params``, ...) that reads a copy; assigning one calls
    ``set``; a direct edit of ``calc.parameters`` takes effect at the next call.

    Args:
        params: per-element parameter overrides (see :func:`solve_charges`); None uses the
            built-in Rappe-Goddard table.
        kernel: ``"shielded"``, ``"point"`` or ``"gaussian"``.
        cutoff: pair cutoff in Angstrom (taper radius), None for all pairs (molecules).
        coulomb_constant: k_e in eV Angstrom.
        ewald: Ewald summation for the long-range 1/r part (periodic cells).
        ewald_accuracy: relative accuracy of the Ewald split (like ``ewald_method``, only
            with ``ewald=True``: a value other than the default without it is a ValueError).
        ewald_method: reciprocal part of the Ewald sum: ``"auto"`` (default: particle-mesh
            where a cost model says it is cheaper at ``ewald_accuracy``, from
            ``PME_MIN_ATOMS`` atoms on; else the explicit k-vector sum), ``"ewald"`` or
            ``"pme"`` (particle mesh, O(N log N); its mesh follows
            ``ewald_accuracy``); see :func:`solve_charges`.
        total_charge: total charge Q of the system; None (default): the sum of the atoms'
            initial charges, ``atoms.get_initial_charges().sum()`` (0 unless set).
        tol: relative residual tolerance of the charge solve.
        max_iter: CG iteration limit.
        iterations: run exactly this many CG iterations at every call (ignores ``tol``).
        forces: ``"implicit"``, ``"unrolled"`` or ``"envelope"``.
        adjoint_tol: relative tolerance of the adjoint solve of implicit forces, in (0, 1].
            Its right-hand side is the charge residual, so it moves the forces by about
            ``adjoint_tol`` times the implicit correction ``|F_implicit - F_envelope|``
            (docs/chem.md). None (default): ``1e-8 / tol`` clipped to ``[tol, 1]`` (1e-2
            at ``tol=1e-6``, 1e-4 at ``tol=1e-4``).
        short_range: None, a :class:`BornMayer`, a dict of Born-Mayer pairs
            ``{("Na", "Cl"): (A, rho)}`` (or ``BornMayer.todict()``'s form), ``"radii"``
            (generic wall from the table radii), or any object with BornMayer's ``energy``
            method (``todict`` leaves such an object out, so trajectories and databases
            record the calculator without it).
        warm_start: start the charge solve from the previous charges (implicit/envelope):
            after three calls on the same atoms, from their quadratic extrapolation
            ``3 q_n - 3 q_{n-1} + q_{n-2}`` (close to the answer in MD); the solve still runs
            to ``tol`` from there. Not with ``iterations`` (any forces mode): a fixed
            iteration count starts from zero charges, so the result at a geometry does not
            depend on earlier calls.
        device: torch device (default cpu); a device that does not exist here (e.g.
            ``"cuda"`` without CUDA) raises ``ValueError``.
        dtype: torch dtype (default float64), a ``torch.dtype`` or ``"float32"``/``"float64"``;
            float32 wraps each atom into a fully periodic cell (else moves the positions
            near the origin) in float64 before the cast: see docs/chem.md.
        check_definite: ``"auto"``, ``True`` or ``False``: prove the hardness matrix
            positive definite on the constraint subspace before every solve (see
            :func:`solve_charges` and docs/chem.md). Between calls on the same pair list
            the dense test is replaced by a certificate of O(pairs) cost (Weyl's bound from
            the last dense test); it runs again when the certificate does not hold.
        skin: Verlet skin (Angstrom): the pair list holds the pairs within ``cutoff +
            skin`` and is reused until an atom has moved more than ``skin / 2`` since it
            was built (or the cell or the atoms change). Results do not depend on it; 0
            rebuilds the list at every call.
        solver: ``"auto"`` (default) or ``"cg"``. With a cutoff and no Ewald, forces and
            stress come from one analytic pass over the pairs (no autograd graph; equal to
            the autograd derivatives to rounding), and ``"auto"`` solves systems of up to
            ``DIRECT_MAX_ATOMS`` (1000) atoms directly when the definiteness check runs: the
            Cholesky factorization of the projected hardness matrix is both that check
            and the solve, exact to rounding (``tol`` is met, and implicit and envelope
            forces coincide). ``"cg"``: always the tolerance-driven CG.
        label, atoms, directory: as for any ASE calculator.

    Example:
        >>> from ase.build import molecule
        >>> atoms = molecule("H2O")
        >>> atoms.calc = QEqCalculator(cutoff=None, short_range="radii")
        >>> q = atoms.get_charges()
        >>> atoms.calc.set(tol=1e-10)
        {'tol': 1e-10}
        >>> atoms.calc.todict()
        {'cutoff': None, 'tol': 1e-10, 'short_range': 'radii'}
        >>> QEqCalculator(**atoms.calc.todict()).parameters == atoms.calc.parameters
        True
    """

    implemented_properties = ["energy", "free_energy", "forces", "charges", "stress", "dipole"]
    default_parameters = DEFAULT_PARAMETERS

    qeq_params = _parameter("params", "per-element overrides (``parameters['params']``)")
    kernel = _parameter("kernel", "pair kernel")
    cutoff = _parameter("cutoff", "pair cutoff (Angstrom) or None")
    coulomb_constant = _parameter("coulomb_constant", "k_e (eV Angstrom)")
    ewald = _parameter("ewald", "Ewald summation of the 1/r tail")
    ewald_accuracy = _parameter("ewald_accuracy", "relative accuracy of the Ewald split")
    ewald_method = _parameter("ewald_method", "``'auto'``, ``'ewald'`` or ``'pme'``")
    total_charge = _parameter("total_charge", "total charge, None: the initial charges' sum")
    tol = _parameter("tol", "relative residual tolerance of the charge solve")
    max_iter = _parameter("max_iter", "CG iteration limit")
    iterations = _parameter("iterations", "fixed number of CG iterations, or None")
    forces_mode = _parameter("forces", "``'implicit'``, ``'unrolled'`` or ``'envelope'``")
    adjoint_tol = _parameter("adjoint_tol", "relative tolerance of the adjoint solve, or None")
    short_range = _parameter("short_range", "short-range repulsion (plain-data form)")
    warm_start = _parameter("warm_start", "start from the previous charges")
    check_definite = _parameter("check_definite", "dense definiteness check")
    skin = _parameter("skin", "Verlet skin of the kept pair list (Angstrom)")
    solver = _parameter("solver", "``'auto'`` (direct for small systems) or ``'cg'``")

    def __init__(
        self,
        params: Mapping[str, Mapping[str, float]] | None = None,
        kernel: str = "shielded",
        cutoff: float | None = 10.0,
        coulomb_constant: float = COULOMB_CONSTANT,
        ewald: bool = False,
        ewald_accuracy: float = 1e-8,
        ewald_method: str = "auto",
        total_charge: float | None = None,
        tol: float = 1e-8,
        max_iter: int | None = None,
        iterations: int | None = None,
        forces: str = "implicit",
        adjoint_tol: float | None = None,
        short_range: Any = None,
        warm_start: bool = True,
        device: torch.device | str | None = "cpu",
        dtype: torch.dtype | str = torch.float64,
        check_definite: bool | str = "auto",
        skin: float = 1.0,
        solver: str = "auto",
        **kwargs: Any,
    ) -> None:
        allowed = {"label", "atoms", "directory"}
        unknown = set(kwargs) - allowed - set(DEFAULT_PARAMETERS)
        if unknown:
            raise TypeError(f"QEqCalculator got unexpected keyword argument(s) {sorted(unknown)}.")
        # the named arguments (the parameters), in the signature's (= DEFAULT_PARAMETERS') order
        given = {
            "params": params,
            "kernel": kernel,
            "cutoff": cutoff,
            "coulomb_constant": coulomb_constant,
            "ewald": ewald,
            "ewald_accuracy": ewald_accuracy,
            "ewald_method": ewald_method,
            "total_charge": total_charge,
            "tol": tol,
            "max_iter": max_iter,
            "iterations": iterations,
            "forces": forces,
            "adjoint_tol": adjoint_tol,
            "short_range": short_range,
            "warm_start": warm_start,
            "device": device,
            "dtype": dtype,
            "check_definite": check_definite,
            "skin": skin,
            "solver": solver,
        }
        #: the last solve (charges, energy, iterations, residuals, ...)
        self.solution: QEqSolution | None = None
        self._q_prev: torch.Tensor | None = None
        self._q_hist: list[torch.Tensor] = []  # the last charges, newest last
        # stress (a cell gradient) once it has been asked for: fixed-cell MD never asks, so
        # its PME influence function stays cached; NPT and cell filters ask every step
        self._stress_wanted = False
        self._built: _calc_params.Built | None = None
        self._snapshot: dict[str, Any] | None = None  # the parameters _built was built from
        self._clear_state()
        # ASE's constructor sets the default parameters, then calls self.set(**given)
        super().__init__(**given, **kwargs)

    # ------------------------------------------------------------------ ASE conventions

    def set(self, **kwargs: Any) -> dict[str, Any]:
        """Change parameters: ``calc.set(tol=1e-10, total_charge=1)``.

        Every value is checked (an unknown name is a ``TypeError``, a bad value a
        ``TypeError``/``ValueError``, and then nothing changes) and stored as plain data.
        Returns the changed parameters (ASE's convention); any change clears the results,
        so the next property request recomputes them (so does an edit in place of
        ``calc.parameters``, checked here too).
        """
        new = {key: normalize(key, value) for key, value in kwargs.items()}
        edited = self._stale() - set(new)
        drift = {k: normalize(k, self.parameters[k]) for k in edited if k in self.parameters}
        built = _calc_params.build({**self.parameters, **drift, **new})  # raises before a change
        changed = super().set(**new)
        self.parameters.update(drift)
        stale = self._stale()
        changed.update({k: new[k] for k in stale & set(new)})
        if stale or self._built is None:
            self._built = built
            self._snapshot = _calc_params.snapshot(self.parameters)
            self._clear_state()
        if stale - NEUTRAL:
            self.reset()
        return changed

    def _stale(self) -> set[str]:
        """The parameters changed since the settings were built (e.g. edited in place)."""
        return _calc_params.stale(self.parameters, self._snapshot)

    def todict(self, skip_default: bool = True) -> dict[str, Any]:
        """ASE's ``todict`` (the non-default parameters, as copies), less a custom
        ``short_range`` object (not plain data: trajectories and databases cannot hold it)."""
        d = super().todict(skip_default)
        if not _calc_params.plain_short_range(self.parameters.get("short_range")):
            d.pop("short_range", None)
        return {key: copy_value(value) for key, value in d.items()}

    def __deepcopy__(self, memo: dict[int, Any]) -> QEqCalculator:
        """A copy with the parameters, results, last solution and warm-start charges, less
        what is kept between calls (pair list, parameter table, certificate)."""
        memo[id(self)] = new = type(self).__new__(type(self))
        kept = {"_verlet", "_certificate", "_table_key", "_table", "_symbols", "_built"}
        new.__dict__.update(
            {k: copy.deepcopy(v, memo) for k, v in self.__dict__.items() if k not in kept}
        )
        new._built = _calc_params.build(new.parameters)
        new._snapshot = _calc_params.snapshot(new.parameters)
        new._clear_state()
        return new

    def get_property(self, name: str, atoms: Any = None, allow_calculation: bool = True) -> Any:
        """ASE's ``get_property``, after taking in any direct edit of ``calc.parameters``."""
        if self._stale():
            kept = self.atoms
            self.set()  # checks, rebuilds and clears the results
            atoms = kept if atoms is None else atoms
        return super().get_property(name, atoms, allow_calculation)

    def _clear_state(self) -> None:
        """Forget what is kept between calls (pair list, parameter table, certificate)."""
        self._verlet: VerletPairs | None = None
        self._certificate = DefiniteCertificate()
        self._table_key: Any = None
        self._table: dict[str, torch.Tensor] | None = None
        self._symbols: list[str] | None = None

    @property
    def neighbor_list_builds(self) -> int:
        """How many times the kept pair list was built (since the last parameter change)."""
        return 0 if self._verlet is None else self._verlet.builds

    def reset(self) -> None:
        """Clear the results (and the last solution); the warm-start charges are kept."""
        super().reset()
        self.solution = None

    def check_state(self, atoms: Any, tol: float = 1e-15) -> list[str]:
        """ASE's system changes, less those that cannot change the results (initial
        magnetic moments, and initial charges when ``total_charge`` is given), plus
        ``"parameters"`` after an edit in place of ``calc.parameters`` that changes the
        results (as ``get_property`` and ``calculate`` see it): ``calculation_required``
        is then True."""
        changes = _compare_atoms(self.atoms, atoms, tol)  # = ASE's Calculator.check_state
        ignored = {"initial_magmoms", *self.ignored_changes}
        if self.parameters["total_charge"] is not None:
            ignored.add("initial_charges")
        changes = [c for c in changes if c not in ignored]
        return changes + ["parameters"] if self._stale() - NEUTRAL else changes

    # ------------------------------------------------------------------ read-only views

    @property
    def settings(self) -> QEqSettings:
        """The validated options of every charge solve (built from ``parameters``)."""
        return self._built.settings

    @property
    def device(self) -> torch.device:
        """The torch device of the computation."""
        return self._built.device

    @property
    def dtype(self) -> torch.dtype:
        """The torch dtype of the computation."""
        return self._built.dtype

    # ------------------------------------------------------------------ calculation

    @torch.inference_mode(False)
    @torch.enable_grad()
    def calculate(
        self,
        atoms: Any = None,
        properties: Any = ("energy",),
        system_changes: Any = all_changes,
    ) -> None:
        """Solve the charges and fill ``self.results`` (energy, forces, charges, and
        stress for a fully periodic cell or dipole for a molecule). Runs with autograd on,
        outside ``torch.inference_mode()``, whatever the caller's grad mode (forces are
        derivatives; nothing kept for later calls is an inference tensor)."""
        if self._stale():  # calc.parameters edited in place: check and rebuild first
            atoms = self.atoms if atoms is None else atoms
            self.set()
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        periodic = bool(np.all(atoms.pbc))
        molecule = not bool(np.any(atoms.pbc))
        if "stress" in properties and not periodic:
            raise PropertyNotImplementedError("stress needs a fully periodic cell")
        if "dipole" in properties and not molecule:
            raise PropertyNotImplementedError("dipole needs a non-periodic system (pbc=False)")
        pos_np = np.asarray(atoms.positions, dtype=np.float64)
        if not np.isfinite(pos_np).all():
            raise ValueError(
                f"Expected finite positions (got {int((~np.isfinite(pos_np)).any(1).sum())} "
                "atoms with NaN/Inf coordinates)."
            )
        settings = self.settings
        if self.parameters["total_charge"] is None:
            settings = replace(
                settings,
                total_charge=float(atoms.get_initial_charges().sum()),
                grad_name="forces",
            )
        device, dtype = self.device, self.dtype
        dd = {"device": device, "dtype": dtype}
        cell_np = np.asarray(atoms.cell.array, dtype=np.float64)
        pbc, numbers = np.asarray(atoms.pbc, dtype=bool), np.asarray(atoms.numbers)
        key = (numbers.tobytes(), device, dtype)
        if key != self._table_key:  # new atoms: symbols and parameter table once
            like = torch.zeros(len(atoms), 3, **dd)  # (the positions are finite)
            self._symbols = check_structure(like, numbers.tolist())
            self._table = _per_atom_table(settings, self._symbols, {}, like)
            self._table_key = key
        nl = rebuilt = None  # a kept (Verlet) pair list; None: all pairs, found each call
        if settings.cutoff is not None:
            if self._verlet is None:
                self._verlet = VerletPairs(settings.cutoff, self.parameters["skin"])
            nl = self._verlet
            rebuilt = nl.update(pos_np, cell_np, pbc, numbers, device, dtype)
        # float32: positions moved near the origin in float64, in a fully periodic cell
        # each atom into the cell (pair list search, dipole: as given)
        shift = origin_shift(pos_np, cell_np, pbc, dtype, nl)
        pos_rel = pos_np if shift is None else pos_np - shift
        pos0 = torch.tensor(pos_rel, **dd)
        cell0 = torch.tensor(cell_np, **dd)
        self._stress_wanted = self._stress_wanted or "stress" in properties
        want_stress = periodic and self._stress_wanted
        strain = torch.zeros(3, 3, **dd, requires_grad=want_stress)
        deform = torch.eye(3, **dd) + 0.5 * (strain + strain.T)
        pos0.requires_grad_(True)
        positions = pos0 @ deform
        cell = cell0 @ deform
        q0 = None
        # a fixed iteration count starts from zero: no dependence on earlier calls
        if self.parameters["warm_start"] and self.parameters["iterations"] is None:
            q0 = warm_start_charges(self._q_prev, self._q_hist, len(atoms), device, dtype)
        if self._analytic(settings):
            # the checks solve_charges makes, which this path does not go through
            _solve._check_numbers(settings, self._symbols)
            self._step(atoms, settings, (pos_np, pos_rel, shift, nl, rebuilt), cell_np, q0)
            _calc_params.check_results(self)
            return
        prepared = Prepared(table=self._table, definite=self._certificate.check)
        if nl is not None:
            prepared.pairs, prepared.pattern = kept_pairs(nl, dtype), nl.pattern
            prepared.same_pairs = not rebuilt
            prepared.pair_cache = nl.cache
        sol = solve_with_settings(
            positions,
            self._symbols,
            settings,
            cell=cell,
            pbc=pbc.tolist(),
            q0=q0,
            prepared=prepared,
        )
        wrt = [pos0, strain] if want_stress else [pos0]
        grads = torch.autograd.grad(sol.energy, wrt)
        # detached: keeping the graph would hold its memory until the next call
        self.solution = sol = replace(sol, x=sol.x.detach(), energy=sol.energy.detach())
        self._q_prev = sol.x
        self._q_hist = [*self._q_hist[-2:], self._q_prev]
        energy = float(sol.energy.detach())
        charges = sol.x.detach().cpu().numpy().astype(np.float64)
        self.results["energy"] = energy
        self.results["free_energy"] = energy
        self.results["forces"] = -grads[0].detach().cpu().numpy().astype(np.float64)
        self.results["charges"] = charges
        if want_stress:
            vol = abs(float(np.linalg.det(atoms.cell.array)))
            s = grads[1].detach().cpu().numpy().astype(np.float64) / vol
            s = 0.5 * (s + s.T)
            self.results["stress"] = s.flat[[0, 4, 8, 5, 2, 1]]
        if molecule:
            self.results["dipole"] = dipole_moment(charges, pos_np, shift, settings.total_charge)
        _calc_params.check_results(self)

    def _analytic(self, settings: QEqSettings) -> bool:
        """Whether this call takes the analytic path (:mod:`._step`): a kept pair list, no
        Ewald, implicit or envelope forces, a tolerance (not a fixed iteration count)."""
        return (
            settings.cutoff is not None
            and not settings.ewald
            and settings.grad in ("implicit", "envelope")
            and settings.iterations is None
        )

    def _step(self, atoms, settings, positions, cell_np, q0) -> None:
        """One call through :func:`._step.analytic_step` (same results as the autograd
        path to rounding; tests/chem/test_step.py). ``positions``: as given (for the pair
        list and the dipole), as the solve takes them, the :func:`origin_shift`, the kept
        pair list updated for them and whether it was rebuilt."""
        pos_np, pos_rel, shift, nl, rebuilt = positions
        device, dtype = self.device, self.dtype
        n = len(atoms)
        periodic, molecule = bool(np.all(atoms.pbc)), not bool(np.any(atoms.pbc))
        s = settings
        check = s.check_definite is True or (
            s.check_definite == "auto" and n <= _solve.DENSE_CHECK_MAX_ATOMS
        )
        direct = check and self.parameters["solver"] == "auto" and n <= _step.DIRECT_MAX_ATOMS
        out = analytic_step(
            pos_rel,
            cell_np,
            kept_pairs(nl, dtype),
            self._table,
            self._symbols,
            s,
            total_charge=float(s.total_charge),
            device=device,
            dtype=dtype,
            pattern=nl.pattern,
            cache=nl.cache,
            q0=q0,
            # no adjoint warm start: its solution is this call's charge error, unrelated
            # to the last call's (starting from that cost iterations; docs/chem.md)
            v0=None,
            definite=self._certificate.check if check and not direct else None,
            same_pairs=not rebuilt,
            direct=direct,
            want_stress=periodic,
        )
        res = out.residuals
        message = (  # a CG ended by the round-off floor above tol says so
            converged_message(out.iterations, res, s.tol, dtype)
            if out.stats["solver"] == "cg"
            else f"QEq solved directly (residual {res[-1]:.3e}, tol {s.tol:.1e})."
        )
        energy = out.energy
        sol = QEqSolution(
            out.q,
            out.iterations,
            res,
            out.converged,
            message,
            out.stats,
            energy=torch.tensor(energy, dtype=dtype, device=device),
            mu=out.mu,
        )
        self.solution = sol
        self._q_prev = out.q
        self._q_hist = [*self._q_hist[-2:], self._q_prev]
        charges = out.q.cpu().numpy().astype(np.float64)
        self.results["energy"] = energy
        self.results["free_energy"] = energy
        self.results["forces"] = out.forces
        self.results["charges"] = charges
        if periodic:
            vol = abs(float(np.linalg.det(atoms.cell.array)))
            self.results["stress"] = (out.stress_grad / vol).flat[[0, 4, 8, 5, 2, 1]]
        if molecule:
            self.results["dipole"] = dipole_moment(charges, pos_np, shift, s.total_charge)
