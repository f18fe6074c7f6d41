"""Projected, Jacobi-preconditioned CG for the QEq charges on ``sum(q) = total``.

The iteration is the library's one CG recurrence (:func:`unrollsci.solvers._loop.pcg_iterate`)
with a projected preconditioner; this module supplies the projection, the start on the
constraint, the stop rule and the negative-curvature error.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..solvers._loop import PCGState, pcg_iterate
from ._hardness import PolarizationCatastropheError, _Hardness


def _catastrophe(which: str, k: int, value: float) -> Exception:
    if which == "A":
        return PolarizationCatastropheError(
            "QEq hardness matrix is not positive definite on the charge-constraint "
            f"subspace: found a charge-transfer direction with curvature p^T A p = "
            f"{value:.3e} <= 0 at CG iteration {k} (polarization "
            "catastrophe: the parameters are too soft for this geometry). Increase the "
            "hardness eta, use the shielded kernel, or check for too-close atoms."
        )
    # (D z)^T z >= 0 always, and the monitor stops at 0: unreachable
    return RuntimeError(f"QEq CG: r^T z = {value:.3e} < 0 at iteration {k}.")


def out_of_range(what: str, dtype: Any) -> str:
    """The message of a QEq result (``what``) that is NaN or Inf from finite inputs: the
    values left the range of ``dtype`` (e.g. float32 with a huge chi)."""
    return (
        f"{what}: the charges or energies exceed the range of {dtype}. Use dtype float64 or "
        "check chi and eta."
    )


def not_converged(max_iter: int, res: list, tol: float, dtype: Any) -> str:
    """The message of a charge solve that did not converge: a non-finite residual is said
    as such (:func:`out_of_range`), not as a budget to raise."""
    if not math.isfinite(float(res[-1])):
        what = f"QEq charge solve produced a non-finite residual ({float(res[-1])})"
        return out_of_range(f"{what} after {len(res) - 1} iterations", dtype)
    return (
        f"QEq charge solve reached max_iter={max_iter} with residual {res[-1]:.3e} > "
        f"tol {tol:.1e}. Try increasing max_iter or loosening tol."
    )


def converged_message(k: int, res: list, tol: float, dtype: Any) -> str:
    """The message of a converged charge solve; one that the round-off floor of
    :func:`_pcg` ended above ``tol`` says so (it used to report a residual rescaled by
    ``tol / floor``, always below ``tol``)."""
    if res[-1] <= tol:
        return f"QEq converged in {k} CG iterations (residual {res[-1]:.3e} <= tol {tol:.1e})."
    return (
        f"QEq converged in {k} CG iterations to the round-off floor of {dtype} (residual "
        f"{res[-1]:.3e} > tol {tol:.1e}: the rounding of forming A q + chi in {dtype} is "
        f"above what tol asks on this system; loosen tol"
        + (" or solve in float64)." if dtype != torch.float64 else ").")
    )


def scaled_norm(v: torch.Tensor) -> float:
    """``||v||`` scale-free: ``v`` divided by the power of two at its largest magnitude
    first (exact), so no square under- or overflows; the same bits as ``v.norm()`` wherever
    that has none. Energy units of 1e-20 or 1e20 in float32 (chi in joules) or 1e-160 in
    float64 made the plain norm 0 or Inf, and the stop rule fired at once."""
    v = v.detach()
    top = float(v.abs().max()) if v.numel() else 0.0
    if top == 0.0 or not math.isfinite(top):
        return top
    unit = math.ldexp(1.0, math.frexp(top)[1] - 1)  # <= top: in range of v's dtype
    return unit * float(torch.linalg.vector_norm(v / unit))


def check_norms(floor: float, scale: float, dtype: Any) -> None:
    """Refuse a non-finite round-off floor or scale: a stop rule on them holds at once."""
    if not (math.isfinite(floor) and math.isfinite(scale)):
        raise ValueError(
            f"Expected the QEq terms' norms within the range of {dtype} (got the round-off "
            f"floor {floor!r} and the scale {scale!r}); rescale the energy units of chi, "
            "eta and the Coulomb constant together, or use float64."
        )


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
    the size of the driving terms, ``scale = ||b - mu_b 1|| + |total| ||d|| / N`` (to the
    floor below where that is smaller); it stops when
    ``||D z|| <= max(tol * scale, atol, 10 eps ||b||)``. The last term, the floor, is the
    round-off of forming ``r = A q + b``: where ``tol * scale`` is below it (on ordinary
    systems ``tol`` below about 1e-6 in float32, 1e-15 in float64; or ``b`` (nearly) a
    multiple of 1 with ``total = 0``: equal chi on atoms with different hardness, where the
    solution is q = 0 and ``scale`` is itself round-off, so a purely relative test could
    never be met) the solve ends there, converged, with its relative residual above ``tol``
    (:func:`converged_message` says so). The residuals start with the start's
    (``iterations + 1`` entries).
    With ``iterations`` given exactly that many steps run (differentiable in unrolled mode),
    fewer only once ``||D z||`` reaches the round-off floor ``10 eps ||b||``: beyond it the
    direction is round-off, and so is its curvature ``p^T A p``, which can come out
    negative and would be reported as a polarization catastrophe on a definite system.

    In floating point the iterates keep ``sum(q) = total`` to the round-off of their updates
    (``z`` and ``mu`` are formed in float64 and rounded once); the returned ``q`` is shifted
    back onto it with the sum accumulated in float64, so ``|sum(q) - total|`` is of the order
    of ``sqrt(N) eps max|q|`` in float32 (tests/chem/test_audit_dec10_chem.py).

    In the shared recurrence this is CG on ``A q = -b`` (residual ``-b - A q``) with the
    preconditioner ``z = D^-1 (r - mu 1)`` and ``r^T z`` computed as ``(D z)^T z`` (equal,
    without the cancellation of the ``mu 1^T z`` term).
    """
    n = b.shape[0]
    dinv = 1.0 / d
    # the sums and the shift mu in float64 (the same operations for float64 data): in float32
    # their O(eps |mu| sum(1/d)) error gave every direction a sum of that size, and sum(q)
    # drifted from total by O(N eps) (docs/chem.md, "The inner solve")
    f64 = torch.float64
    dinv64 = dinv.to(f64)
    sinv = dinv64.sum()

    def project(r: torch.Tensor) -> torch.Tensor:
        r64 = r.to(f64)
        return (dinv64 * (r64 - (dinv64 * r64).sum() / sinv)).to(r.dtype)

    def inner(r: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return (d * z * z).sum(-1, keepdim=True)  # = r^T P r

    def on_constraint(q: torch.Tensor) -> torch.Tensor:
        """``q`` shifted onto ``sum(q) = total`` along ``D^-1 1``."""
        return q + dinv * ((total - q.sum(dtype=f64)) / sinv).to(q.dtype)

    q = project(-b) + dinv * (total / sinv).to(b.dtype) if q0 is None else on_constraint(q0)
    dd = d.detach()
    # the norms scale-free: their squares under- or overflow at extreme energy units
    floor = 10.0 * torch.finfo(b.dtype).eps * scaled_norm(b)
    scale = scaled_norm(dd * project(b.detach()).detach()) + abs(total) * scaled_norm(dd) / n
    check_norms(floor, scale, b.dtype)
    # stop on ||D z|| <= target; report ||D z|| / scale (relative to the floor only where
    # scale is below it: scale is round-off there). The floor / tol rescaling reported
    # before made up a residual <= tol for every solve that the floor ended
    target = max(tol * scale, atol, floor)
    denom = max(scale, floor, torch.finfo(b.dtype).tiny)
    residuals: list[float] = []

    def monitor(st: PCGState) -> bool:
        kkt = scaled_norm(d * st.z)
        residuals.append(kkt / denom)
        # r^T z = 0 or the round-off floor: the projected residual vanished (an exact
        # solution to working precision; only met with a fixed number of iterations,
        # otherwise the target, never below the floor, stopped first)
        met = iterations is None and kkt <= target
        return met or float(st.rz.detach()) <= 0.0 or kkt <= floor

    def true_residual(q: torch.Tensor) -> tuple[torch.Tensor, float]:
        """``(r, ||D z||)`` of the true residual ``r = -b - A q`` (``z`` its projection)."""
        r = -b - op(q)
        return r, scaled_norm(dd * project(r.detach()))

    limit = iterations if iterations is not None else max_iter

    def run(q: torch.Tensor, r: torch.Tensor, budget: int) -> tuple[torch.Tensor, int, bool]:
        q, _, used, conv = pcg_iterate(
            op,
            q,
            r,
            max_iter=budget,
            precond=project,
            inner=inner,
            monitor=monitor,
            not_spd=_catastrophe,
        )
        return q, used, conv

    q, k, converged = run(q, -b - op(q), limit if n > 1 else 0)
    # the updates keep the sum only to their round-off (O(sqrt(N k) eps max|q|) in k steps,
    # more in float64 where the shift mu cannot be formed in a wider type): shifted back
    if n <= 1:
        return on_constraint(q), k, residuals, True
    if iterations is not None:  # the reported residual is the true one (no restart)
        q = on_constraint(q)
        with torch.no_grad():
            _, kkt = true_residual(q.detach())
        residuals[-1] = kkt / denom
        return q, k, residuals, kkt <= target
    if not converged:
        return on_constraint(q), k, residuals, False
    # CG's updated residual drifts from the true -b - A q by rounding (float32, NaCl 2^3:
    # 9.5e-7 claimed, 7.5e-6 true): the claimed convergence is checked against the true
    # residual (one product) and CG restarted from it twice at most; still above the target,
    # the rounding of A q + b ends the solve there (converged to the floor, the true
    # residual reported), with the checked iterate of the smallest true residual
    best: tuple[float, torch.Tensor] | None = None
    for attempt in range(3):
        q = on_constraint(q)
        r, kkt = true_residual(q)
        residuals[-1] = kkt / denom
        if kkt <= target:
            return q, k, residuals, True
        if best is None or kkt < best[0]:
            best = (kkt, q)
        if attempt == 2 or k >= max_iter:
            break
        start = len(residuals)
        q, used, conv = run(q, r, max_iter - k)
        del residuals[start]  # the restart's start: the true residual just reported
        k += used
        if not conv:
            return on_constraint(q), k, residuals, False
    residuals[-1] = best[0] / denom
    return best[1], k, residuals, True
