"""The constrained charge solve, its three differentiation modes, and the QEq energy.

Model (eV, Angstrom, elementary charges):

    E(R, q) = sum_i chi_i q_i + 1/2 sum_i eta_i q_i^2 + 1/2 sum_{i != j, images} q_i q_j k_e J_ij
    subject to sum_i q_i = Q,

i.e. E = chi^T q + 1/2 q^T A(R) q. The minimiser solves A q + chi = mu 1, 1^T q = Q; it is
found by projected, Jacobi-preconditioned CG in the subspace 1^T q = Q (one solve, not the
two of the classic s/t trick). Before the solve, positive definiteness of A on the subspace
``sum(q) = 0`` is decided for every right-hand side by a dense Cholesky factorization of the
projected matrix (``check_definite``, see docs/chem.md); a failure is a polarization
catastrophe and raises, as does negative curvature ``p^T A p <= 0`` met by CG.

The pieces: ``_hardness`` (the matrix A and the catastrophe check), ``_pcg`` (the projected
CG, on the library's one CG recurrence), ``_autograd`` (the adjoint solve of the
implicit-function backward), ``_settings`` (the validated options). The three ``grad`` modes
are those of the shared CG (``unrollsci.solvers._loop``): ``"implicit"``, ``"unrolled"``, and
``"envelope"`` = its ``"detached"``.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from ase.data import atomic_numbers

from .. import _validation
from .._validation import ConvergenceError, ConvergenceWarning, check_finite, check_tensor
from ..solvers import Solution
from ..solvers._loop import differentiate
from ._autograd import charge_adjoint
from ._geometry import (  # noqa: F401 - KERNELS, half_pairs, ...: importable from here
    KERNELS,
    check_cell_vectors,
    check_ewald_accuracy,
    ewald_alpha,
    ewald_kvectors,
    half_pairs,
    pair_kernel,
)
from ._hardness import (  # noqa: F401 - _Hardness, _dense_hardness, ...: importable from here
    MIN_DISTANCE,
    PolarizationCatastropheError,
    _check_diag,
    _check_projected_definite,
    _dense_hardness,
    _Hardness,
    _precond_diag,
    _projected_hardness,
    hardness_terms,
)
from ._params import _symbols, resolve_params
from ._pcg import _pcg, converged_message, not_converged, out_of_range
from ._pme import resolve_method
from ._settings import COULOMB_CONSTANT, GRAD_MODES, QEqSettings, check_pbc
from ._short_range import short_range_energy

__all__ = [
    "PolarizationCatastropheError",
    "QEqSolution",
    "solve_charges",
    "GRAD_MODES",
    "COULOMB_CONSTANT",
    "MIN_DISTANCE",
    "DENSE_CHECK_MAX_ATOMS",
]

#: above this many pairs the no-grad matvec uses CSR sparse matrices (faster than scatter).
_CSR_MIN_PAIRS = 20000
#: ``check_definite="auto"`` runs the dense definiteness test up to this many atoms.
DENSE_CHECK_MAX_ATOMS = 3000

#: chem's public ``grad`` names -> the modes of the shared CG (unrollsci.solvers._loop)
_CORE_MODES = {"implicit": "implicit", "unrolled": "unrolled", "envelope": "detached"}

# The tests patch _CSR_MIN_PAIRS, DENSE_CHECK_MAX_ATOMS and _check_projected_definite on this
# module: the solve below reads them from here.


@dataclass
class Prepared:
    """What a caller solving again and again for the same atoms keeps (``QEqCalculator``):
    the per-atom parameter ``table``; a kept pair list ``pairs = (i, j, shifts)`` (may hold
    pairs beyond the cutoff, see ``hardness_terms``) and its CSR ``pattern``; ``definite``,
    a callable ``(op, same_pairs) -> None`` that replaces the dense definiteness test."""

    table: dict[str, torch.Tensor] | None = None
    pairs: tuple[Any, ...] | None = None
    pattern: tuple[torch.Tensor, ...] | None = None
    definite: Any = None
    same_pairs: bool = False
    pair_cache: dict[str, Any] | None = None


@dataclass(repr=False)
class QEqSolution(Solution):
    """A :class:`~unrollsci.solvers.Solution` whose ``x`` is the charges (N,), plus:

    Attributes:
        energy: QEq (+ short-range) energy in eV, a scalar tensor; differentiable with
            respect to positions, cell and per-atom parameters according to ``grad``.
        mu: electronegativity (Lagrange multiplier of the charge constraint), eV.
    """

    energy: torch.Tensor | None = None
    mu: float = float("nan")

    @property
    def charges(self) -> torch.Tensor:
        """The equilibrated charges (N,) (alias of ``x``)."""
        return self.x


# --------------------------------------------------------------------------- inputs


def check_structure(positions: torch.Tensor, numbers: Any) -> list[str]:
    """Validate ``positions`` (N, 3) and return the N chemical symbols of ``numbers``."""
    check_tensor("positions", positions, ndim=(2,))
    if positions.dtype not in (torch.float32, torch.float64):
        # float16 / bfloat16 round the charges far above any tolerance (a float16 solve
        # reported converged with the total charge 7e-4 off); complex has no meaning here
        raise TypeError(f"Expected float32 or float64 'positions' (got {positions.dtype}).")
    if positions.shape[-1] != 3:
        raise ValueError(f"Expected 'positions' of shape (N, 3) (got {tuple(positions.shape)}).")
    n = positions.shape[0]
    if n == 0:
        raise ValueError("Expected at least one atom (got 0).")
    check_finite("positions", positions)
    return _symbols(numbers, n)


def _check_numbers(s: QEqSettings, symbols: list[str]) -> float:
    """Check the numeric options against the structure; return the total charge."""
    if not (isinstance(s.tol, (int, float)) and s.tol > 0):
        raise ValueError(f"Expected tol > 0 (got {s.tol!r}).")
    for name, it in (("iterations", s.iterations), ("max_iter", s.max_iter)):
        _validation.check_count(name, it, 0, optional=True)
    if isinstance(s.total_charge, (str, bytes, bool)):
        raise TypeError(f"Expected a number for total_charge (got {s.total_charge!r}).")
    q_total = float(s.total_charge)
    if not math.isfinite(q_total):
        raise ValueError(f"Expected a finite total_charge (got {s.total_charge!r}).")
    zsum = sum(atomic_numbers[x] * c for x, c in Counter(symbols).items())
    if abs(q_total) > zsum:
        raise ValueError(
            f"Impossible total_charge={q_total}: these {len(symbols)} atoms have {zsum} "
            f"electrons in total, so |Q| must be <= {zsum} (Q > {zsum} would need a negative "
            "number of electrons)."
        )
    if s.cutoff is not None and not (s.cutoff > 0 and math.isfinite(s.cutoff)):
        raise ValueError(f"Expected cutoff > 0 or None (got {s.cutoff!r}).")
    if not s.coulomb_constant > 0:
        raise ValueError(f"Expected coulomb_constant > 0 (got {s.coulomb_constant!r}).")
    return q_total


def _check_cell(
    s: QEqSettings, cell: torch.Tensor | None, pbc_arr: np.ndarray
) -> tuple[np.ndarray, tuple[float, float] | None]:
    """Validate the cell; return it as float64 numpy and the Ewald ``(alpha, kmax)``."""
    cutoff = s.cutoff
    if pbc_arr.any():
        if cell is None:
            raise ValueError("Expected a (3, 3) 'cell' for a periodic system (got None).")
        if cutoff is None:
            raise ValueError("A periodic system needs a finite cutoff (got cutoff=None).")
    if cell is not None:
        check_tensor("cell", cell, ndim=(2,))
        if tuple(cell.shape) != (3, 3):
            raise ValueError(f"Expected 'cell' of shape (3, 3) (got {tuple(cell.shape)}).")
        check_finite("cell", cell)
        cell_np = cell.detach().cpu().numpy().astype(np.float64)
    else:
        cell_np = np.zeros((3, 3))
    check_cell_vectors(cell_np, pbc_arr)  # the pair search's check, before any other use
    if not s.ewald:
        return cell_np, None
    if not pbc_arr.all():
        raise ValueError(f"ewald=True needs a fully periodic cell (got pbc={pbc_arr.tolist()}).")
    # any real-space cutoff: the pair search includes every periodic image within it (also
    # beyond half the cell), so a cell and its supercells give the same answer at one cutoff
    return cell_np, ewald_alpha(cutoff, check_ewald_accuracy(s.ewald_accuracy))


def _per_atom_table(
    s: QEqSettings, symbols: list[str], per_atom: Mapping[str, torch.Tensor | None], like
) -> dict[str, torch.Tensor]:
    """chi, eta, gamma, sigma per atom: the table (with ``params``), then the given tensors."""
    n = len(symbols)
    table = resolve_params(symbols, s.params, device=like.device, dtype=like.dtype)
    for name, t in per_atom.items():
        if t is not None:
            check_tensor(name, t, ndim=(1,))
            if t.shape[0] != n:
                raise ValueError(f"Expected '{name}' of length {n} (got shape {tuple(t.shape)}).")
            check_finite(name, t)
            if name in ("gamma", "sigma") and not bool((t > 0).all()):
                raise ValueError(f"Expected every entry of '{name}' > 0 (as in params).")
            table[name] = t.to(device=like.device, dtype=like.dtype)
    return table


def _warm_start(q0: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    if q0 is None:
        return None
    n = like.shape[0]
    check_tensor("q0", q0, ndim=(1,))
    if q0.shape[0] != n:
        raise ValueError(f"Expected 'q0' of length {n} (got shape {tuple(q0.shape)}).")
    q0 = q0.detach().to(device=like.device, dtype=like.dtype)
    return q0 if bool(torch.isfinite(q0).all()) else None


# --------------------------------------------------------------------------- public solve


def solve_charges(
    positions: torch.Tensor,
    numbers: Sequence[int] | Sequence[str],
    *,
    cell: torch.Tensor | None = None,
    pbc: bool | Sequence[bool] = False,
    params: Mapping[str, Mapping[str, float]] | None = None,
    chi: torch.Tensor | None = None,
    eta: torch.Tensor | None = None,
    gamma: torch.Tensor | None = None,
    sigma: torch.Tensor | None = None,
    kernel: str = "shielded",
    cutoff: float | None = 10.0,
    coulomb_constant: float = COULOMB_CONSTANT,
    ewald: bool = False,
    ewald_accuracy: float = 1e-8,
    ewald_method: str = "auto",
    total_charge: float = 0.0,
    tol: float = 1e-8,
    max_iter: int | None = None,
    iterations: int | None = None,
    grad: str = "implicit",
    q0: torch.Tensor | None = None,
    short_range: Any = None,
    adjoint_tol: float | None = None,
    throw: bool = True,
    check_definite: bool | str = "auto",
) -> QEqSolution:
    """Equilibrate charges (QEq) for one structure and return charges and energy.

    Minimises ``E = chi^T q + 1/2 q^T A(R) q`` subject to ``sum(q) = total_charge`` with
    ``A_ii = eta_i (+ self terms)`` and ``A_ij = k_e sum_images J_ij(r)``. The returned
    ``energy`` (plus the optional short-range term) is differentiable:

    * ``grad="implicit"``: charges carry an adjoint (implicit-function) backward; the
      gradient equals that of the exactly solved problem up to second order in the
      charge error, and also flows to ``chi``/``eta``/``gamma``/``sigma`` for fitting;
    * ``grad="unrolled"``: autograd through the CG iterations from a geometry-independent
      start (``q0`` ignored): the exact derivative of the returned energy;
    * ``grad="envelope"``: charges detached (fixed-charge partial derivatives, as LAMMPS).

    Args:
        positions: (N, 3) Angstrom; may require grad (forces = -grad).
        numbers: N atomic numbers or chemical symbols.
        cell: (3, 3) lattice vectors as rows (Angstrom); needed when any ``pbc``.
        pbc: periodicity, one bool or three.
        params: per-element overrides of the built-in table, ``{"Na": {"chi": ..., "eta":
            ..., "gamma": ..., "sigma": ...}}``.
        chi, eta, gamma, sigma: optional per-atom tensors (N,) overriding ``params`` (e.g.
            learnable, gathered from per-element parameters).
        kernel: ``"shielded"`` (LAMMPS fix qeq/shielded), ``"point"`` (1/r) or
            ``"gaussian"`` (erf(r / sqrt(sigma_i^2 + sigma_j^2)) / r).
        cutoff: pair cutoff (Angstrom); kernels are multiplied by the 7th-order taper
            that vanishes there. ``None`` (non-periodic only): all pairs, no taper. With
            ``ewald=True`` it is the real-space cutoff.
        coulomb_constant: k_e in eV Angstrom (LAMMPS uses 14.4).
        ewald: Ewald summation of the 1/r tail (fully periodic cells).
        ewald_accuracy: target relative accuracy of the Ewald split (this and
            ``ewald_method`` only with ``ewald=True``: other values without it raise).
        ewald_method: reciprocal part by ``"ewald"`` (explicit k-vector sum, O(N^2) at a
            fixed cutoff), ``"pme"`` (particle mesh, O(N log N)) or
            ``"auto"``: PME where a cost model says it is cheaper (docs/chem.md). PME's mesh
            follows ``ewald_accuracy`` (an error estimate): its charges and energy differ
            from the converged sum by the order of ``ewald_accuracy``, as the explicit sum's.
        total_charge: Q, the sum of the charges (elementary charges).
        tol: relative KKT residual at which CG stops.
        max_iter: CG iteration limit (default 10 N + 100).
        iterations: run exactly this many CG iterations (ignore ``tol``).
        grad: ``"implicit"``, ``"unrolled"`` or ``"envelope"`` (see above).
        q0: warm start (N,) (implicit / envelope only); shifted onto the constraint.
        short_range: optional :class:`BornMayer` (or any object with the same ``energy``
            method, given the pairs within ``cutoff``) added to the energy.
        adjoint_tol: relative tolerance of the adjoint solve of ``grad="implicit"`` (default
            ``tol``); for energy gradients it moves them by about ``adjoint_tol`` times the
            implicit correction, implicit minus envelope (docs/chem.md).
        throw: raise ``ConvergenceError`` on non-convergence (else warn).
        check_definite: decide, before the solve and for every ``chi``, whether the
            hardness matrix is positive definite on the constraint subspace (dense
            float64 Cholesky of the projected (N-1)x(N-1) matrix: O(N^2) memory, O(N^3)
            time). ``True``: always; ``"auto"`` (default): when N <=
            ``DENSE_CHECK_MAX_ATOMS``; ``False``: never. Without it only the negative
            curvature that CG happens to meet raises, which misses catastrophes whose
            unstable direction is orthogonal to the Krylov space of ``chi`` (e.g.
            symmetric molecules). See docs/chem.md.

    Returns:
        QEqSolution with ``charges`` (N,), ``energy`` (scalar), ``mu``, iterations, residuals.

    Raises:
        ValueError: bad shapes, NaN/Inf, unknown element, impossible total charge,
            overlapping atoms, cutoff too large for the cell with Ewald.
        PolarizationCatastropheError: hardness matrix not positive definite on the
            constraint subspace (a ValueError); see ``check_definite``.

    Example:
        >>> import torch
        >>> pos = torch.tensor([[0.0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]], dtype=torch.float64)
        >>> sol = solve_charges(pos, ["O", "H", "H"], cutoff=None)
        >>> round(float(sol.charges.sum()), 12)
        0.0
    """
    symbols = check_structure(positions, numbers)
    settings = QEqSettings(
        params=params,
        kernel=kernel,
        cutoff=cutoff,
        coulomb_constant=coulomb_constant,
        ewald=ewald,
        ewald_accuracy=ewald_accuracy,
        ewald_method=ewald_method,
        total_charge=total_charge,
        tol=tol,
        max_iter=max_iter,
        iterations=iterations,
        grad=grad,
        short_range=short_range,
        adjoint_tol=adjoint_tol,
        check_definite=check_definite,
    )
    per_atom = {"chi": chi, "eta": eta, "gamma": gamma, "sigma": sigma}
    return solve_with_settings(
        positions,
        symbols,
        settings,
        cell=cell,
        pbc=pbc,
        per_atom=per_atom,
        q0=q0,
        throw=throw,
        stacklevel=2,
    )


def solve_with_settings(
    positions: torch.Tensor,
    symbols: list[str],
    settings: QEqSettings,
    *,
    cell: torch.Tensor | None = None,
    pbc: bool | Sequence[bool] = False,
    per_atom: Mapping[str, torch.Tensor | None] | None = None,
    q0: torch.Tensor | None = None,
    throw: bool = True,
    stacklevel: int = 1,
    prepared: Prepared | None = None,
) -> QEqSolution:
    """:func:`solve_charges` for validated ``positions`` (:func:`check_structure` gives
    ``symbols``) and options; ``per_atom``: optional chi/eta/gamma/sigma tensors.
    ``stacklevel``: of the non-convergence warning, as if the caller warned (1: the
    caller's line). ``prepared``: state kept between calls (see :class:`Prepared`)."""
    prep = prepared or Prepared()
    s = settings
    n = positions.shape[0]
    q_total = _check_numbers(s, symbols)
    check = s.check_definite is True or (s.check_definite == "auto" and n <= DENSE_CHECK_MAX_ATOMS)
    max_iter = 10 * n + 100 if s.max_iter is None else s.max_iter
    tol, iterations = s.tol, s.iterations
    pbc_arr = check_pbc(pbc)
    cell_np, ewald = _check_cell(s, cell, pbc_arr)
    kw = {"cell": cell_np, "ewald": ewald, "accuracy": s.ewald_accuracy}
    method = None if ewald is None else resolve_method(s.ewald_method, n, stacklevel + 2, **kw)
    if prep.table is not None:
        table = prep.table
    else:
        table = _per_atom_table(s, symbols, per_atom or {}, positions)
    terms = hardness_terms(
        positions,
        cell,
        cell_np,
        pbc_arr,
        symbols,
        table,
        kernel=s.kernel,
        cutoff=s.cutoff,
        coulomb_constant=s.coulomb_constant,
        ewald=ewald,
        total_charge=q_total,
        pairs=prep.pairs,
        pair_cache=prep.pair_cache,
        ewald_method=method,
        accuracy=s.ewald_accuracy,
    )
    b = table["chi"]

    # ---- solve
    n_pairs = terms.i.numel()
    if prep.pairs is not None and s.cutoff is not None:
        n_pairs = int((terms.r.detach() < s.cutoff).sum())  # a Verlet list holds more
    stats: dict[str, Any] = {
        "n_pairs": int(n_pairs),
        "ewald_alpha": None if ewald is None else ewald[0],
        "n_kvectors": int(terms.kf.numel())
        if terms.kf is not None
        else int(getattr(terms.pme, "n_kvectors", 0)),
        "ewald_method": method,
        "pme_mesh": None if terms.pme is None else terms.pme.shape,
    }
    q0 = _warm_start(q0, positions)
    # the public names map onto the shared CG's modes (unrollsci.solvers._loop)
    unrolled = s.grad == "unrolled"

    def forward() -> tuple[torch.Tensor, tuple]:
        # unrolled: the differentiable operator and a geometry-independent start; otherwise
        # (no autograd) detached copies and, for large systems, CSR products
        if unrolled:
            op = terms.operator()
        else:
            op = terms.operator(detach=True, csr_min_pairs=_CSR_MIN_PAIRS, pattern=prep.pattern)
        d = _precond_diag(op, terms.base, terms.ewald)
        if check and prep.definite is not None:
            prep.definite(op, prep.same_pairs)
        elif check:
            _check_projected_definite(op)
        q, k, res, conv = _pcg(
            op, d, b, q_total, None if unrolled else q0, tol, max_iter, iterations
        )
        return q, (op, d, k, res, conv)

    adjoint_tol = tol if s.adjoint_tol is None else float(s.adjoint_tol)
    differentiable = (b, terms.diag0, terms.w, terms.kc, terms.ks, terms.kf)
    if terms.pme is not None:  # its products depend on positions and cell directly
        differentiable += (positions, cell)
    needs_grad = any(t is not None and t.requires_grad for t in differentiable)
    q, (op, d, k, res, conv) = differentiate(
        _CORE_MODES[s.grad],
        forward,
        b=-b,  # A q = -chi on the constraint
        matvec=terms.operator(),
        adjoint=lambda g, info: charge_adjoint(info[0], info[1], adjoint_tol, max_iter, stats)(g),
        needs_grad=needs_grad,
    )
    if not conv:
        msg = not_converged(max_iter, res, tol, q.dtype)
        if iterations is None:
            if throw:
                raise ConvergenceError(msg)
            warnings.warn(msg, ConvergenceWarning, stacklevel=stacklevel + 1)
        elif s.grad == "implicit" and needs_grad:
            # a fixed iteration count is an unrolled idea: the implicit gradient is that of
            # the converged charges, not of the returned ones
            warnings.warn(
                f"iterations={iterations} stopped the charges unconverged (residual "
                f"{res[-1]:.3e}), but grad='implicit' differentiates the converged charges; "
                "use grad='unrolled' for the derivative of the returned ones.",
                ConvergenceWarning,
                stacklevel=stacklevel + 1,
            )
    message = (
        converged_message(k, res, tol, q.dtype)
        if conv
        else f"QEq stopped after {k} CG iterations (residual {res[-1]:.3e})."
    )

    # ---- energy E = chi.q + 1/2 q.A q (+ background, short range)
    # without a graph the solve's operator (CSR products for large lists) serves
    aq = terms.operator()(q) if needs_grad else op(q)
    energy = (b * q).sum() + 0.5 * (q * aq).sum() + terms.e_const
    if s.short_range is not None:
        energy = energy + short_range_energy(
            s.short_range, s.params, symbols, terms.i, terms.j, terms.r, s.cutoff
        )
    with torch.no_grad():
        dinv = 1.0 / d
        mu = float(((aq + b).detach() * dinv).sum() / dinv.sum())
        if q_total != 0:
            # dE/dQ includes the background's -k_e pi Q / (V alpha^2) = 2 e_const / Q (a
            # charged cell with Ewald; e_const is 0 otherwise): mu is then independent of
            # alpha, as the energy is
            mu += 2.0 * float(terms.e_const) / q_total
    if not (math.isfinite(mu) and bool(torch.isfinite(energy.detach()).all())):
        raise ValueError(out_of_range("QEq energy or chemical potential is not finite", q.dtype))
    return QEqSolution(q, k, res, conv, message, stats, energy=energy, mu=mu)
