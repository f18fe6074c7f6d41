"""Projected, Jacobi-preconditioned CG for the QEq charges on ``sum(q) = total``."""

from __future__ import annotations

import torch

from ._hardness import PolarizationCatastropheError, _Hardness


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
