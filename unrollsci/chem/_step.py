"""One QEq call on a kept pair list with analytic forces: the calculator's MD step.

For ``E(q, R) = chi^T q + 1/2 q^T A(R) q`` (+ a short-range energy of the pair distances)
with ``A = diag(diag0) + sum_pairs w(r_p) (e_i e_j^T + e_j e_i^T)`` (no Ewald part), the
implicit-function forces of :func:`~unrollsci.chem.solve_charges` (``grad="implicit"``) are

    dE/dR = sum_p w'(r_p) (q_i q_j - v_i q_j - v_j q_i) dr_p/dR  (+ short range)

with ``v = A_c^{-1} P (A q + chi)`` the adjoint solution on ``sum(v) = 0`` (the charge error
``q - q*``); ``v = 0`` gives the envelope forces. A pair of an atom with its own image
(``i == j``) enters the diagonal twice and the formula with ``i == j`` counts it so. The
stress is ``sym(sum_p vec_p (dE/dvec_p)^T) / V``. One pass over the pairs replaces the
autograd graph; the autograd path of ``solve_charges`` stays the reference
(tests/chem/test_step.py compares them to rounding).

Up to :data:`DIRECT_MAX_ATOMS` atoms (with the definiteness check on) the charges are
solved directly: a Cholesky factorization of the projected hardness ``Z^T A Z`` is both the
polarization-catastrophe proof and the solve, exact to rounding (so ``tol`` is met; a
result above ``tol`` is refined by CG); larger systems run the projected CG from the warm
start, and the adjoint CG to ``adjoint_tol`` (from ``v0``, None: zero).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .._compat import quiet_csr
from .._validation import ConvergenceError, ConvergenceWarning
from ._geometry import pair_kernel, shielded_pair_constant, shielded_w_dw
from ._hardness import (
    MIN_DISTANCE,
    ConstraintBasis,
    _check_diag,
    _Hardness,
    raise_catastrophe,
)
from ._pcg import _pcg, check_norms, not_converged, scaled_norm
from ._short_range import short_range_energy

__all__ = ["DIRECT_MAX_ATOMS", "StepResult", "analytic_step", "kernel_and_derivative"]

#: ``solver="auto"`` solves directly (dense Cholesky) up to this many atoms, by CG above
DIRECT_MAX_ATOMS = 1000
#: above this many pairs the CG's mat-vec uses CSR products (as the autograd path)
CSR_MIN_PAIRS = 20000


@dataclass
class StepResult:
    """What one call computed (charges and adjoint as tensors, the rest as numbers)."""

    q: torch.Tensor
    v: torch.Tensor | None
    energy: float
    forces: np.ndarray
    stress_grad: np.ndarray | None  # dE/d(strain), symmetric (3, 3); / volume = stress
    mu: float
    iterations: int
    residuals: list[float]
    converged: bool
    stats: dict[str, Any]


def kernel_and_derivative(
    kernel: str,
    r: torch.Tensor,
    shape: torch.Tensor,
    i: torch.Tensor,
    j: torch.Tensor,
    cutoff: float,
    k_e: float,
    cache: dict[str, Any] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``w = k_e J(r) Tap(r)`` (0 at ``r >= cutoff``) and ``dw/dr`` per pair ``(i, j)``,
    without a graph; ``shape`` the per-atom kernel width (gamma or sigma). Shielded: closed
    form with the per-pair ``(gamma_i gamma_j)^-1.5`` kept in ``cache``
    (:func:`shielded_pair_constant`); other kernels: one elementwise autograd pass over ``r``."""
    if kernel == "shielded":
        return shielded_w_dw(r, shielded_pair_constant(shape, i, j, cache), cutoff, k_e)
    inside = r < cutoff
    shape_i, shape_j = shape[i], shape[j]
    zero = torch.zeros((), dtype=r.dtype, device=r.device)
    with torch.enable_grad():
        rl = r.detach().requires_grad_(True)
        w = torch.where(inside, k_e * pair_kernel(kernel, rl, shape_i, shape_j, cutoff), zero)
        (dw,) = torch.autograd.grad(w.sum(), rl)
    return w.detach(), dw


def _kkt_residual(aq: torch.Tensor, chi: torch.Tensor, d: torch.Tensor, total: float) -> float:
    """The relative KKT residual of ``q`` as :func:`~unrollsci.chem._pcg._pcg` reports it."""
    dinv = 1.0 / d
    sinv = dinv.sum()
    g = aq + chi
    dz = g - (dinv * g).sum() / sinv
    pb = chi - (dinv * chi).sum() / sinv
    n = d.shape[0]
    eps = torch.finfo(chi.dtype).eps
    atol = 10.0 * eps * scaled_norm(chi)  # scale-free norms, as in _pcg
    scale = scaled_norm(pb) + abs(total) * scaled_norm(d) / n
    check_norms(atol, scale, chi.dtype)
    return scaled_norm(dz) / max(scale, atol, torch.finfo(chi.dtype).tiny)


def _dense(op: _Hardness, cache: dict[str, Any] | None) -> torch.Tensor:
    """``op``'s matrix as a dense float64 (N, N) tensor (as ``_dense_hardness``, with one
    scatter into the flat matrix; its indices are kept in ``cache``)."""
    n = op.diag0.shape[0]
    lin = None if cache is None else cache.get("dense-index")
    if lin is None or lin.shape[0] != 2 * op.i.shape[0]:
        lin = torch.cat([op.i * n + op.j, op.j * n + op.i])
        if cache is not None:
            cache["dense-index"] = lin
    w = op.w.to(torch.float64)
    a = torch.diag(op.diag0.to(torch.float64))
    a.view(-1).index_add_(0, lin, torch.cat([w, w]))
    return a


def _direct(
    op: _Hardness,
    chi: torch.Tensor,
    total: float,
    implicit: bool,
    cache: dict[str, Any] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Charges (and, ``implicit``, the adjoint ``v``) from a Cholesky factorization of
    ``Z^T A Z`` (float64; raises PolarizationCatastropheError when it is not PD)."""
    n = chi.shape[0]
    f64 = torch.float64
    if n < 2:
        q = torch.full_like(chi, total)
        return q, torch.zeros_like(chi) if implicit else None, op(q)
    a = _dense(op, cache)
    z = ConstraintBasis(a)
    m = z.project(a)
    chol, info = torch.linalg.cholesky_ex(m)
    if int(info) != 0:
        raise_catastrophe(m, n)

    def solve(rhs: torch.Tensor) -> torch.Tensor:  # Z (Z^T A Z)^-1 rhs
        return z(torch.cholesky_solve(rhs[:, None], chol)[:, 0])

    qp = torch.full((n,), total / n, dtype=f64, device=a.device)
    chi64 = chi.to(f64)
    q = qp + solve(-z.t(chi64 + a @ qp))
    v = None
    if implicit:
        g = a @ q + chi64
        v = solve(z.t(g)).to(chi.dtype)
    return q.to(chi.dtype), v, (a @ q).to(chi.dtype)


def _cached(cache: dict[str, Any] | None, key: str, make: Any) -> Any:
    """``cache[key]``, made by ``make()`` the first time (no cache: made every time)."""
    if cache is None:
        return make()
    if key not in cache:
        cache[key] = make()
    return cache[key]


def _incidence(
    i: torch.Tensor,
    j: torch.Tensor,
    n: int,
    dtype: torch.dtype,
    pattern: tuple[torch.Tensor, ...] | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, P) CSR matrices ``B_j`` (1 at (j_p, p)) and ``B_i`` (1 at (i_p, p)): ``B_j g -
    B_i g`` sums a per-pair quantity onto the pair's second atom minus its first (a
    self-image pair gives 0). With the kept list's CSR ``pattern`` (pairs sorted by i, and
    the order that sorts them by j) no sort is needed."""
    p = i.shape[0]
    ones = torch.ones(p, dtype=dtype, device=i.device)
    if pattern is not None:
        crow_i, _, crow_j, _, order = pattern
        idx = crow_i.dtype
    else:
        order = torch.argsort(j, stable=True)
        counts = [torch.bincount(x, minlength=n) for x in (i, j)]
        crow_i, crow_j = (torch.cat([c.new_zeros(1), torch.cumsum(c, 0)]) for c in counts)
        i_order = torch.argsort(i, stable=True)
        idx = torch.int32 if p < 2**31 - 1 else torch.int64
        crow_i, crow_j = crow_i.to(idx), crow_j.to(idx)
    cols_i = (torch.arange(p, device=i.device) if pattern is not None else i_order).to(idx)
    # invariant checks as the user set them, passed explicitly (torch's notice that they are
    # "implicitly disabled" is for code that leaves them unset)
    check = torch.sparse.check_sparse_tensor_invariants.is_enabled()
    with quiet_csr():
        b_j = torch.sparse_csr_tensor(crow_j, order.to(idx), ones, (n, p), check_invariants=check)
        b_i = torch.sparse_csr_tensor(crow_i, cols_i, ones, (n, p), check_invariants=check)
    return b_j, b_i


def analytic_step(
    positions: np.ndarray,
    cell: np.ndarray,
    pairs: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None],
    table: dict[str, torch.Tensor],
    symbols: list[str],
    settings: Any,
    *,
    total_charge: float,
    device: torch.device,
    dtype: torch.dtype,
    pattern: tuple[torch.Tensor, ...] | None = None,
    cache: dict[str, Any] | None = None,
    q0: torch.Tensor | None = None,
    v0: torch.Tensor | None = None,
    definite: Any = None,
    same_pairs: bool = False,
    direct: bool = False,
    want_stress: bool = False,
) -> StepResult:
    """Energy, forces (and ``dE/d strain``) of one structure on the kept half list
    ``pairs`` (may hold pairs beyond the cutoff; they weigh zero), no autograd graph.

    ``settings``: the calculator's :class:`~unrollsci.chem._settings.QEqSettings` (a
    cutoff, no Ewald, ``grad`` implicit or envelope, ``iterations`` None). ``q0``, ``v0``:
    warm starts of the charge and adjoint CG; ``definite``: the certificate's check
    ``(op, same_pairs) -> None`` (None: no definiteness test); ``direct``: solve by
    Cholesky (which is itself the definiteness test).
    """
    s = settings
    dd = {"device": device, "dtype": dtype}
    n = positions.shape[0]
    cutoff, k_e = float(s.cutoff), float(s.coulomb_constant)
    i, j, shifts = pairs
    # coordinates as rows (3, N) and pair vectors as (3, P): 1-D gathers and scatters are
    # several times faster than those of (P, 3) rows on CPU
    pos_t = torch.as_tensor(np.ascontiguousarray(positions.T), **dd)
    vec = torch.stack([x.index_select(0, j) for x in pos_t])
    vec -= torch.stack([x.index_select(0, i) for x in pos_t])
    if shifts is not None:
        vec.addmm_(torch.as_tensor(cell, **dd).T, _cached(cache, "shifts-t", shifts.T.contiguous))
    r = vec[0] * vec[0]  # (vector_norm over dim 0 of (3, P) is a slow strided reduction)
    r.addcmul_(vec[1], vec[1]).addcmul_(vec[2], vec[2]).sqrt_()
    if r.numel():
        rmin, at = torch.min(r, 0)
        if float(rmin) < MIN_DISTANCE:
            a, b = int(i[int(at)]), int(j[int(at)])
            raise ValueError(
                f"Overlapping atoms: atoms {a} ({symbols[a]}) and {b} ({symbols[b]}) are "
                f"{float(rmin):.3g} Angstrom apart (< {MIN_DISTANCE}). Check the positions."
            )
    shape = table["sigma"] if s.kernel == "gaussian" else table["gamma"]
    w, dw = kernel_and_derivative(s.kernel, r, shape, i, j, cutoff, k_e, cache)
    diag0 = table["eta"]
    if s.kernel == "gaussian":
        diag0 = diag0 + k_e * math.sqrt(2.0 / math.pi) / table["sigma"]
    chi = table["chi"]
    implicit = s.grad == "implicit"
    tol = float(s.tol)
    max_iter = 10 * n + 100 if s.max_iter is None else int(s.max_iter)
    stats: dict[str, Any] = {"n_pairs": int((r < cutoff).sum()), "ewald_alpha": None}
    stats["n_kvectors"] = 0
    # the direct path needs only the pair values (its dense matrix is built in _direct)
    if direct:
        op = _Hardness(i, j, w, diag0)
    else:
        op = _Hardness(i, j, w, diag0, csr_min_pairs=CSR_MIN_PAIRS, pattern=pattern)
    # diag(A): a self-image pair (i == j) adds 2 w to its atom (found once per list)
    self_pairs = _cached(cache, "self-pairs", lambda: torch.nonzero(i == j).flatten())
    if self_pairs.numel():
        d = diag0.index_add(0, i.index_select(0, self_pairs), 2.0 * w.index_select(0, self_pairs))
    else:
        d = diag0
    _check_diag(diag0)
    _check_diag(d)
    v = None
    if direct:
        q, v, aq = _direct(op, chi, total_charge, implicit, cache)
        res = [_kkt_residual(aq, chi, d, total_charge)]
        k, conv = 0, res[0] <= tol
        stats["solver"] = "direct"
        if not conv:  # round-off of an ill-conditioned matrix: refine by CG
            q, k, res, conv = _pcg(op, d, chi, total_charge, q, tol, max_iter, None)
            aq = op(q)
            v = None
    if not direct:
        if definite is not None:
            definite(op, same_pairs)
        q, k, res, conv = _pcg(op, d, chi, total_charge, q0, tol, max_iter, None)
        aq = op(q)
        stats["solver"] = "cg"
    if not conv:
        raise ConvergenceError(not_converged(max_iter, res, tol, q.dtype))
    g = aq + chi
    if implicit and v is None:
        adjoint_tol = tol if s.adjoint_tol is None else float(s.adjoint_tol)
        atol = 100.0 * torch.finfo(dtype).eps * float(g.norm())
        if v0 is not None and (v0.shape != q.shape or not bool(torch.isfinite(v0).all())):
            v0 = None
        v, _, ares, aconv = _pcg(op, d, -g, 0.0, v0, adjoint_tol, max_iter, None, atol=atol)
        stats["adjoint_iterations"] = len(ares) - 1
        if not aconv:
            warnings.warn(
                f"QEq adjoint solve reached max_iter={max_iter} with residual "
                f"{ares[-1]:.3e} > tol {adjoint_tol:.1e}; forces are approximate.",
                ConvergenceWarning,
                stacklevel=4,
            )
    energy = float((chi * q).sum() + 0.5 * (q * aq).sum())
    qi, qj = q.index_select(0, i), q.index_select(0, j)
    if v is None:
        coef = qi.mul_(qj)
    else:  # q_i q_j - v_i q_j - v_j q_i = (q_i - v_i) q_j - v_j q_i
        coef = (qi - v.index_select(0, i)).mul_(qj)
        coef.addcmul_(v.index_select(0, j), qi, value=-1.0)
    coef.mul_(dw)
    if s.short_range is not None:
        with torch.enable_grad():
            rl = r.detach().requires_grad_(True)
            e_sr = short_range_energy(s.short_range, s.params, symbols, i, j, rl, cutoff)
            if e_sr.requires_grad:
                coef = coef + torch.autograd.grad(e_sr, rl)[0]
        energy += float(e_sr.detach())
    fac = coef.div_(r)
    stress_grad = None
    if want_stress:  # dE/d strain = sum_p vec_p (dE/dvec_p)^T = sum_p (coef_p / r_p) vec_p vec_p^T
        m = (vec * fac) @ vec.T
        stress_grad = (0.5 * (m + m.T)).cpu().numpy().astype(np.float64)
    gvec = vec.mul_(fac)  # dE/dvec_p, (3, P) (vec is not needed after this)
    # dE/dR_k = sum_{p: j_p = k} gvec_p - sum_{p: i_p = k} gvec_p: the incidence matrix
    b_j, b_i = _cached(cache, f"incidence-{dtype}", lambda: _incidence(i, j, n, dtype, pattern))
    grad = torch.stack([torch.mv(b_j, g) - torch.mv(b_i, g) for g in gvec], dim=1)
    with torch.no_grad():
        dinv = 1.0 / d
        mu = float((g * dinv).sum() / dinv.sum())
    forces = -grad.cpu().numpy().astype(np.float64)
    return StepResult(q, v, energy, forces, stress_grad, mu, k, res, conv, stats)
