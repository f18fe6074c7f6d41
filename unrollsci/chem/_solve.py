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
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from ase.data import atomic_numbers, chemical_symbols

from .._validation import ConvergenceError, ConvergenceWarning, check_finite, check_tensor
from ..solvers import Solution
from ._geometry import KERNELS, ewald_alpha, ewald_kvectors, half_pairs, pair_kernel
from ._params import resolve_params

__all__ = [
    "PolarizationCatastropheError",
    "QEqSolution",
    "solve_charges",
    "GRAD_MODES",
    "COULOMB_CONSTANT",
    "MIN_DISTANCE",
    "DENSE_CHECK_MAX_ATOMS",
]

#: e^2 / (4 pi eps0) in eV Angstrom (CODATA 2018); LAMMPS fix qeq uses 14.4.
COULOMB_CONSTANT = 14.399645
#: pairs closer than this (Angstrom) are rejected as overlapping atoms.
MIN_DISTANCE = 0.1
GRAD_MODES = ("implicit", "unrolled", "envelope")
#: above this many pairs the no-grad matvec uses CSR sparse matrices (faster than scatter).
_CSR_MIN_PAIRS = 20000
#: ``check_definite="auto"`` runs the dense definiteness test up to this many atoms.
DENSE_CHECK_MAX_ATOMS = 3000


class PolarizationCatastropheError(ValueError):
    """The hardness matrix is not positive definite on the charge-constraint subspace."""


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


# --------------------------------------------------------------------------- operator


class _Hardness:
    """q -> A q with A = diag(diag0) + pair part (half list i, j, w) + Ewald reciprocal part."""

    def __init__(self, i, j, w, diag0, kc=None, ks=None, kf=None, fast=False):
        self.i, self.j, self.w, self.diag0 = i, j, w, diag0
        self.kc, self.ks, self.kf = kc, ks, kf
        self.csr = None
        if fast and w.numel() >= _CSR_MIN_PAIRS:
            # A = diag + U + U^T with U the half list as CSR; int32 indices halve the index
            # traffic of this memory-bound product (1.6x faster SpMV at 2M pairs)
            n = diag0.shape[0]
            idx = torch.int32 if n < 2**31 - 1 and w.numel() < 2**31 - 1 else torch.int64
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                crow = torch.zeros(n + 1, dtype=torch.int64, device=w.device)
                crow[1:] = torch.cumsum(torch.bincount(i, minlength=n), 0)
                upper = torch.sparse_csr_tensor(crow.to(idx), j.to(idx), w, (n, n))
                order = torch.argsort(j, stable=True)
                crow_t = torch.zeros(n + 1, dtype=torch.int64, device=w.device)
                crow_t[1:] = torch.cumsum(torch.bincount(j, minlength=n), 0)
                lower = torch.sparse_csr_tensor(crow_t.to(idx), i[order].to(idx), w[order], (n, n))
            self.csr = (upper, lower)

    def __call__(self, q: torch.Tensor) -> torch.Tensor:
        if self.csr is not None:
            up, lo = self.csr
            out = self.diag0 * q + (up @ q[:, None])[:, 0] + (lo @ q[:, None])[:, 0]
        else:
            out = self.diag0 * q
            out = out.index_add(0, self.i, self.w * q[self.j])
            out = out.index_add(0, self.j, self.w * q[self.i])
        if self.kf is not None:
            out = out + self.kc @ (self.kf * (q @ self.kc)) + self.ks @ (self.kf * (q @ self.ks))
        return out

    def diagonal(self) -> torch.Tensor:
        d = self.diag0
        self_img = self.i == self.j
        if bool(self_img.any()):
            d = d.index_add(0, self.i[self_img], 2.0 * self.w[self_img])
        if self.kf is not None:
            d = d + (self.kc**2 + self.ks**2) @ self.kf
        return d


# --------------------------------------------------------------------------- definiteness


def _dense_hardness(op: _Hardness) -> torch.Tensor:
    """The matrix that ``op`` applies, as a dense float64 (N, N) tensor (no autograd)."""
    f64 = torch.float64
    with torch.no_grad():
        a = torch.diag(op.diag0.detach().to(f64))
        w = op.w.detach().to(f64)
        # a self-image pair (i == j) lands twice on the diagonal, as in the matvec
        a.index_put_((op.i, op.j), w, accumulate=True)
        a.index_put_((op.j, op.i), w, accumulate=True)
        if op.kf is not None:
            kf = op.kf.detach().to(f64)
            for basis in (op.kc, op.ks):
                b = basis.detach().to(f64)
                a.addmm_(b * kf, b.T)
            a = 0.5 * (a + a.T)
    return a


def _projected_hardness(a: torch.Tensor) -> torch.Tensor:
    """``Z^T A Z`` (N-1, N-1) for an orthonormal basis Z of ``{q : sum(q) = 0}``.

    Z is columns 2..N of the Householder reflector ``H = I - beta v v^T``,
    ``v = 1 + sqrt(N) e_1``, whose first column is ``-1 / sqrt(N)``; the eigenvalues of the
    result are those of A restricted to the constraint subspace. With
    ``w = beta A v - (beta^2 / 2) (v^T A v) v``, ``H A H = A - v w^T - w v^T`` and
    ``v_k = 1`` for k >= 2, so the trailing block costs O(N^2).
    """
    n = a.shape[0]
    s = math.sqrt(n)
    v = torch.ones(n, dtype=a.dtype, device=a.device)
    v[0] += s
    beta = 1.0 / (s * (s + 1.0))  # 2 / ||v||^2
    p = beta * (a @ v)
    w = (p - (0.5 * beta * (v @ p)) * v)[1:]
    return a[1:, 1:] - w[None, :] - w[:, None]


def _check_projected_definite(op: _Hardness) -> None:
    """Raise PolarizationCatastropheError unless A is positive definite on sum(q) = 0.

    Dense float64 Cholesky of the projected matrix: it succeeds exactly when the matrix
    is (numerically) positive definite, independently of chi and of the total charge.
    """
    n = op.diag0.shape[0]
    if n < 2:
        return
    m = _projected_hardness(_dense_hardness(op))
    _, info = torch.linalg.cholesky_ex(m)
    pivot = int(info)
    if pivot == 0:
        return
    lam = float(torch.linalg.eigvalsh(m)[0])
    raise PolarizationCatastropheError(
        "QEq hardness matrix is not positive definite on the charge-constraint subspace "
        f"sum(q) = const: its smallest eigenvalue there is {lam:.3e} eV <= 0 (the Cholesky "
        f"factorization of the projected {n - 1}x{n - 1} matrix fails at pivot {pivot}). "
        "This is a polarization catastrophe: the energy is unbounded below along a "
        "charge-transfer direction, whatever chi is. Increase the hardness eta, use the "
        "shielded kernel (or a larger gamma), or check for too-close atoms."
    )


# --------------------------------------------------------------------------- projected PCG


def _pcg(
    op: _Hardness,
    d: torch.Tensor,
    b: torch.Tensor,
    total: float,
    q0: torch.Tensor | None,
    tol: float,
    max_iter: int,
    iterations: int | None,
    atol: float = 0.0,
) -> tuple[torch.Tensor, int, list[float], bool]:
    """Minimise 1/2 q^T A q + b^T q subject to sum(q) = total by projected Jacobi-PCG.

    ``d`` is diag(A) (positive). The preconditioned projected residual
    ``z = D^-1 (r - mu 1)``, ``mu = (1^T D^-1 r) / (1^T D^-1 1)`` keeps every iterate on the
    constraint, and ``D z = r - mu 1`` is the KKT residual whose norm is reported relative to
    the size of the driving terms, ``||b - mu_b 1|| + |total| ||d|| / N``; it stops when
    ``||D z|| <= max(tol * scale, atol, 10 eps ||b||)``; the last term is the round-off of
    forming ``r = A q + b`` and matters only when ``b`` is (nearly) a multiple of 1 with
    ``total = 0`` (equal chi on atoms with different hardness: the solution is q = 0 and
    ``scale`` is itself round-off, so a purely relative test could never be met).
    With ``iterations`` given exactly that many steps run (differentiable in unrolled mode).
    """
    n = b.shape[0]
    dinv = 1.0 / d
    sinv = dinv.sum()

    def project(r: torch.Tensor) -> torch.Tensor:
        return dinv * (r - (dinv * r).sum() / sinv)

    if q0 is None:
        q = project(-b) + dinv * (total / sinv)
    else:
        q = q0 + dinv * ((total - q0.sum()) / sinv)
    dd = d.detach()
    atol = max(atol, 10.0 * torch.finfo(b.dtype).eps * float(b.detach().norm()))
    scale = float((dd * project(b.detach()).detach()).norm() + abs(total) * dd.norm() / n)
    scale_f = max(scale, atol / tol, torch.finfo(b.dtype).tiny)
    r = op(q) + b
    z = project(r)
    rz = (d * z * z).sum()  # = r^T P r without the mu 1^T z cancellation
    res = float((d * z).detach().norm()) / scale_f
    residuals = [res]
    p = -z
    k = 0
    limit = iterations if iterations is not None else max_iter
    converged = iterations is None and res <= tol
    while k < limit and not converged and n > 1:
        if float(rz.detach()) <= 0.0:  # exact solution reached (only with fixed iterations)
            break
        k += 1
        ap = op(p)
        pap = (p * ap).sum()
        if float(pap.detach()) <= 0.0:
            raise PolarizationCatastropheError(
                "QEq hardness matrix is not positive definite on the charge-constraint "
                f"subspace: found a charge-transfer direction with curvature p^T A p = "
                f"{float(pap.detach()):.3e} <= 0 at CG iteration {k} (polarization "
                "catastrophe: the parameters are too soft for this geometry). Increase the "
                "hardness eta, use the shielded kernel, or check for too-close atoms."
            )
        alpha = rz / pap
        q = q + alpha * p
        r = r + alpha * ap
        z = project(r)
        rz_new = (d * z * z).sum()
        res = float((d * z).detach().norm()) / scale_f
        residuals.append(res)
        if iterations is None and res <= tol:
            converged = True
            break
        p = -z + (rz_new / rz) * p
        rz = rz_new
    if iterations is not None or n <= 1:
        converged = residuals[-1] <= tol or n <= 1
    return q, k, residuals, converged


class _ImplicitCharges(torch.autograd.Function):
    """q*(theta) from the projected CG; backward by one adjoint solve (implicit function
    theorem): v = A_c^{-1} P g, grad_theta = -v^T d(A q + chi)/d theta."""

    @staticmethod
    def forward(ctx, cfg, chi, diag0, w, kc, ks, kf):  # noqa: D102
        with torch.no_grad():
            op = _Hardness(cfg["i"], cfg["j"], w, diag0, kc, ks, kf, fast=True)
            d = _precond_diag(op, cfg["base"], cfg["ewald"])
            if cfg["check"]:
                _check_projected_definite(op)
            q, k, res, conv = _pcg(
                op, d, chi, cfg["total"], cfg["q0"], cfg["tol"], cfg["max_iter"], cfg["iterations"]
            )
        cfg["out"] = (k, res, conv, op, d)
        ctx.cfg = cfg
        ctx.save_for_backward(q, chi, diag0, w, kc, ks, kf)
        return q

    @staticmethod
    def backward(ctx, gq):  # noqa: D102
        q, chi, diag0, w, kc, ks, kf = ctx.saved_tensors
        cfg = ctx.cfg
        with torch.no_grad():
            _, _, _, op, d = cfg["out"]
            # relative to the projected right-hand side, floored at round-off
            tol_adj = cfg["adjoint_tol"]
            atol = 100.0 * torch.finfo(gq.dtype).eps * float(gq.norm())
            v, _, res, conv = _pcg(op, d, -gq, 0.0, None, tol_adj, cfg["max_iter"], None, atol=atol)
            cfg["stats"]["adjoint_iterations"] = len(res) - 1
        if not conv:
            warnings.warn(
                f"QEq adjoint solve reached max_iter={cfg['max_iter']} with residual "
                f"{res[-1]:.3e} > tol {tol_adj:.1e}; gradients are approximate.",
                ConvergenceWarning,
                stacklevel=2,
            )
        ins = [chi, diag0, w, kc, ks, kf]
        need = ctx.needs_input_grad[1:]
        with torch.enable_grad():
            leaves = [
                t.detach().requires_grad_(bool(nd)) if t is not None else None
                for t, nd in zip(ins, need, strict=True)
            ]
            c, dg, ww, c1, s1, f1 = leaves
            g = _Hardness(cfg["i"], cfg["j"], ww, dg, c1, s1, f1)(q) + c
            wanted = [t for t in leaves if t is not None and t.requires_grad]
            grads = torch.autograd.grad(g, wanted, grad_outputs=-v, allow_unused=True)
        it = iter(grads)
        out = [next(it) if (t is not None and t.requires_grad) else None for t in leaves]
        return (None, *out)


def _precond_diag(op: _Hardness, base: torch.Tensor, ewald: bool) -> torch.Tensor:
    """Positive Jacobi diagonal for the projected CG.

    Without Ewald it is diag(A). With Ewald, diag(A) contains the potential of an atom's
    own periodic images (nearly the same for every atom, and possibly negative in small
    cells); a uniform shift of the diagonal does not change the problem on the constraint
    subspace, so it is shifted to make ``d_i >= base_i`` (the hardness, > 0).
    """
    _check_diag(base)
    d = op.diagonal()
    if ewald:
        d = d - (d - base).min().clamp(max=0.0)
    else:
        _check_diag(d)
    return d


def _check_diag(d: torch.Tensor) -> None:
    d = d.detach()
    bad = d <= 0
    if bool(bad.any()):
        idx = int(torch.nonzero(bad)[0, 0])
        raise PolarizationCatastropheError(
            f"QEq hardness matrix is not positive definite: diagonal entry {idx} is "
            f"{float(d[idx]):.3e} <= 0 (eta plus self-interaction terms). Increase eta."
        )


# --------------------------------------------------------------------------- public solve


def _symbols(numbers: Any, n: int) -> list[str]:
    out = []
    for z in numbers:
        if isinstance(z, str):
            if z not in atomic_numbers:
                raise ValueError(f"Expected chemical symbols in 'numbers' (got {z!r}).")
            out.append(z)
        else:
            zi = int(z)
            if not 0 < zi < len(chemical_symbols):
                raise ValueError(f"Expected atomic numbers in 1..118 (got {zi}).")
            out.append(chemical_symbols[zi])
    if len(out) != n:
        raise ValueError(f"Expected {n} atomic numbers to match 'positions' (got {len(out)}).")
    return out


def _heights(cell: np.ndarray) -> np.ndarray:
    """Perpendicular widths of the cell (distance between opposite faces)."""
    vol = abs(np.linalg.det(cell))
    crosses = [np.cross(cell[1], cell[2]), np.cross(cell[2], cell[0]), np.cross(cell[0], cell[1])]
    return np.array([vol / np.linalg.norm(c) for c in crosses])


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
        ewald_accuracy: target relative accuracy of the Ewald split.
        total_charge: Q, the sum of the charges (elementary charges).
        tol: relative KKT residual at which CG stops.
        max_iter: CG iteration limit (default 10 N + 100).
        iterations: run exactly this many CG iterations (ignore ``tol``).
        grad: ``"implicit"``, ``"unrolled"`` or ``"envelope"`` (see above).
        q0: warm start (N,) (implicit / envelope only); shifted onto the constraint.
        short_range: optional :class:`BornMayer` (or any object with the same ``energy``
            method) added to the energy.
        adjoint_tol: relative tolerance of the adjoint solve of ``grad="implicit"``
            (default ``tol``). For energy gradients the adjoint solution is the charge
            error itself (size ~tol), so an adjoint relative error ``a`` changes forces by
            ~``a * tol``: ``max(tol, 1e-6)`` (what QEqCalculator uses) keeps that below
            ``tol^2``, the implicit method's own error.
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
    check_tensor("positions", positions, ndim=(2,))
    if positions.shape[-1] != 3:
        raise ValueError(f"Expected 'positions' of shape (N, 3) (got {tuple(positions.shape)}).")
    n = positions.shape[0]
    if n == 0:
        raise ValueError("Expected at least one atom (got 0).")
    check_finite("positions", positions)
    dtype, device = positions.dtype, positions.device
    symbols = _symbols(numbers, n)
    if kernel not in KERNELS:
        raise ValueError(f"Expected kernel in {KERNELS} (got {kernel!r}).")
    if grad not in GRAD_MODES:
        raise ValueError(f"Expected grad in {GRAD_MODES} (got {grad!r}).")
    if not (isinstance(tol, (int, float)) and tol > 0):
        raise ValueError(f"Expected tol > 0 (got {tol!r}).")
    if iterations is not None and (int(iterations) != iterations or iterations < 0):
        raise ValueError(f"Expected 'iterations' to be a non-negative int (got {iterations!r}).")
    auto = isinstance(check_definite, str) and check_definite == "auto"
    if not (auto or check_definite is True or check_definite is False):
        raise ValueError(
            f"Expected check_definite to be True, False or 'auto' (got {check_definite!r})."
        )
    check = check_definite is True or (auto and n <= DENSE_CHECK_MAX_ATOMS)
    if max_iter is None:
        max_iter = 10 * n + 100
    pbc_arr = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,)).copy()
    q_total = float(total_charge)
    if not math.isfinite(q_total):
        raise ValueError(f"Expected a finite total_charge (got {total_charge!r}).")
    zsum = sum(atomic_numbers[s] for s in symbols)
    if abs(q_total) > zsum:
        raise ValueError(
            f"Impossible total_charge={q_total}: these {n} atoms have {zsum} electrons in "
            f"total, so |Q| must be <= {zsum} (Q > {zsum} would need a negative number of "
            "electrons)."
        )
    if cutoff is not None and not (cutoff > 0 and math.isfinite(cutoff)):
        raise ValueError(f"Expected cutoff > 0 or None (got {cutoff!r}).")
    if not coulomb_constant > 0:
        raise ValueError(f"Expected coulomb_constant > 0 (got {coulomb_constant!r}).")

    # ---- cell checks
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
    if pbc_arr.any() and abs(np.linalg.det(cell_np)) < 1e-6:
        raise ValueError(
            f"Expected a cell with non-zero volume (got det = {np.linalg.det(cell_np):.3e})."
        )
    alpha = kmax = None
    if ewald:
        if not pbc_arr.all():
            raise ValueError(
                f"ewald=True needs a fully periodic cell (got pbc={pbc_arr.tolist()})."
            )
        if not 0 < ewald_accuracy < 1:
            raise ValueError(f"Expected 0 < ewald_accuracy < 1 (got {ewald_accuracy!r}).")
        h = _heights(cell_np).min()
        if cutoff > 0.5 * h:
            raise ValueError(
                f"cutoff={cutoff} is larger than allowed for this cell with Ewald summation: "
                f"the real-space cutoff must be <= half the smallest cell width ({0.5 * h:.4g} "
                "Angstrom). Lower the cutoff or use a supercell."
            )
        alpha, kmax = ewald_alpha(cutoff, ewald_accuracy)

    # ---- parameters per atom
    table = resolve_params(symbols, params, device=device, dtype=dtype)
    given = {"chi": chi, "eta": eta, "gamma": gamma, "sigma": sigma}
    for name, t in given.items():
        if t is not None:
            check_tensor(name, t, ndim=(1,))
            if t.shape[0] != n:
                raise ValueError(f"Expected '{name}' of length {n} (got shape {tuple(t.shape)}).")
            check_finite(name, t)
            table[name] = t.to(device=device, dtype=dtype)
    k_e = float(coulomb_constant)

    # ---- pairs
    pos_np = positions.detach().cpu().numpy().astype(np.float64)
    pi, pj, ps = half_pairs(pos_np, cell_np, pbc_arr, cutoff)
    i = torch.from_numpy(pi).to(device)
    j = torch.from_numpy(pj).to(device)
    cell_t = cell if cell is not None else torch.zeros(3, 3, dtype=dtype, device=device)
    vec = positions[j] - positions[i]
    if ps.any():
        vec = vec + torch.from_numpy(ps).to(device=device, dtype=dtype) @ cell_t.to(dtype)
    r = vec.norm(dim=-1)
    if r.numel():
        rmin, at = torch.min(r.detach(), 0)
        if float(rmin) < MIN_DISTANCE:
            a, b = int(pi[int(at)]), int(pj[int(at)])
            raise ValueError(
                f"Overlapping atoms: atoms {a} ({symbols[a]}) and {b} ({symbols[b]}) are "
                f"{float(rmin):.3g} Angstrom apart (< {MIN_DISTANCE}). Check the positions."
            )
    shape = table["sigma"] if kernel == "gaussian" else table["gamma"]
    w = k_e * pair_kernel(kernel, r, shape[i], shape[j], cutoff, alpha)
    diag0 = table["eta"]
    if kernel == "gaussian":  # Gaussian self-energy k_e * lim_{r->0} J_ii(r)
        diag0 = diag0 + k_e * math.sqrt(2.0 / math.pi) / table["sigma"]
    base = diag0.detach()
    kc = ks = kf = None
    e_const = positions.new_zeros(())
    if ewald:
        diag0 = diag0 - k_e * 2.0 * alpha / math.sqrt(math.pi)
        vol = torch.linalg.det(cell_t).abs()
        m = torch.from_numpy(ewald_kvectors(cell_np, kmax)).to(device=device, dtype=dtype)
        kvec = m @ (2.0 * math.pi * torch.linalg.inv(cell_t).T)
        k2 = (kvec * kvec).sum(-1)
        kf = k_e * (8.0 * math.pi / vol) * torch.exp(-k2 / (4.0 * alpha**2)) / k2
        phase = positions @ kvec.T
        kc, ks = torch.cos(phase), torch.sin(phase)
        e_const = -k_e * math.pi * q_total**2 / (2.0 * vol * alpha**2)  # neutralizing background
    b = table["chi"]

    # ---- solve
    stats: dict[str, Any] = {
        "n_pairs": int(i.numel()),
        "ewald_alpha": alpha,
        "n_kvectors": 0 if kf is None else int(kf.numel()),
    }
    if q0 is not None:
        check_tensor("q0", q0, ndim=(1,))
        if q0.shape[0] != n:
            raise ValueError(f"Expected 'q0' of length {n} (got shape {tuple(q0.shape)}).")
        q0 = q0.detach().to(device=device, dtype=dtype)
        if not bool(torch.isfinite(q0).all()):
            q0 = None
    if grad == "unrolled":
        op = _Hardness(i, j, w, diag0, kc, ks, kf)
        d = _precond_diag(op, base, ewald)
        if check:
            _check_projected_definite(op)
        q, k, res, conv = _pcg(op, d, b, q_total, None, tol, max_iter, iterations)
    else:
        cfg = {
            "i": i,
            "j": j,
            "total": q_total,
            "base": base,
            "ewald": ewald,
            "adjoint_tol": tol if adjoint_tol is None else float(adjoint_tol),
            "stats": stats,
            "q0": q0,
            "tol": tol,
            "max_iter": max_iter,
            "iterations": iterations,
            "check": check,
        }
        if grad == "implicit":
            q = _ImplicitCharges.apply(cfg, b, diag0, w, kc, ks, kf)
        else:
            q = _ImplicitCharges.apply(
                cfg, *(t.detach() if t is not None else None for t in (b, diag0, w, kc, ks, kf))
            )
        k, res, conv, op_fast, d = cfg["out"]
    if not conv:
        msg = (
            f"QEq charge solve reached max_iter={max_iter} with residual {res[-1]:.3e} > "
            f"tol {tol:.1e}. Try increasing max_iter or loosening tol."
        )
        if iterations is None:
            if throw:
                raise ConvergenceError(msg)
            warnings.warn(msg, ConvergenceWarning, stacklevel=2)
    message = (
        f"QEq converged in {k} CG iterations (residual {res[-1]:.3e} <= tol {tol:.1e})."
        if conv
        else f"QEq stopped after {k} CG iterations (residual {res[-1]:.3e})."
    )

    # ---- energy E = chi.q + 1/2 q.A q (+ background, short range)
    a_full = _Hardness(i, j, w, diag0, kc, ks, kf)
    aq = a_full(q)
    energy = (b * q).sum() + 0.5 * (q * aq).sum() + e_const
    if short_range is not None:
        energy = energy + short_range.energy(symbols, i, j, r, cutoff)
    with torch.no_grad():
        dinv = 1.0 / d
        mu = float(((aq + b).detach() * dinv).sum() / dinv.sum())
    return QEqSolution(q, k, res, conv, message, stats, energy=energy, mu=mu)
