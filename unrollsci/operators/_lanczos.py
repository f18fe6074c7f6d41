"""Restarted Lanczos for the top eigenvalue of ``A^T A`` (the engine of ``op.norm()``)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

__all__ = ["lanczos_top"]


def lanczos_top(
    gram: Callable[[torch.Tensor], torch.Tensor],
    v: torch.Tensor,
    *,
    max_iter: int,
    tol: float,
    kdim: int,
) -> tuple[float, bool]:
    """``(estimate, converged)`` of the largest eigenvalue of the symmetric positive
    semi-definite map ``gram`` (flat vectors in and out), started from ``v``.

    Each cycle builds a Krylov basis of ``kdim`` vectors (fully re-orthogonalized) and
    restarts from the top Ritz vector; it stops when the Ritz residual is at most ``tol``
    times the estimate, or after ``max_iter`` applications of ``gram``, or as soon as the
    estimate or its residual is not finite (then ``converged`` is False; the caller
    rescales). Runs without autograd.
    """
    dtype, device = v.dtype, v.device
    est, used, converged = 0.0, 0, False
    with torch.no_grad():
        while used < max_iter and not converged:
            basis = [v / v.norm()]
            alphas: list[torch.Tensor] = []
            betas: list[torch.Tensor] = []
            beta_last = torch.zeros((), dtype=dtype, device=device)
            for j in range(kdim):
                w = gram(basis[j])
                used += 1
                alphas.append(w @ basis[j])
                q = torch.stack(basis)
                w = w - q.T @ (q @ w)
                w = w - q.T @ (q @ w)  # twice is enough (Kahan-Parlett)
                beta_last = w.norm()
                if j == kdim - 1 or float(beta_last) <= 1e-14 * max(float(alphas[0].abs()), 1e-300):
                    break
                betas.append(beta_last)
                basis.append(w / beta_last)
            k = len(alphas)
            t = torch.diag(torch.stack(alphas))
            if k > 1:
                off = torch.stack(betas[: k - 1])
                t = t + torch.diag(off, 1) + torch.diag(off, -1)
            if not bool(torch.isfinite(t).all()):  # overflow: eigh would fail or give NaN
                return math.nan, False
            evals, evecs = torch.linalg.eigh(t)
            est = float(evals[-1])
            resid = float(beta_last * evecs[-1, -1].abs())
            if not (math.isfinite(est) and math.isfinite(resid)):
                return math.nan, False
            if est <= 0.0:
                return 0.0, True
            converged = resid <= tol * est
            v = torch.stack(basis).T @ evecs[:, -1]
    return est, converged
