"""One iteration of each lasso algorithm, shared by the classical solvers and the
unrolled networks (so the two cannot drift apart).

Lasso convention: ``min_x 0.5 ||A x - y||^2 + lam ||x||_1``. Every step takes
batched tensors ``x: (batch, n)``, ``y: (batch, m)`` and broadcastable
step/threshold tensors, and is differentiable in all of them.
"""

from __future__ import annotations

import torch

from ..operators import LinearOperator
from ..prox import soft_threshold

__all__ = [
    "ista_step",
    "fista_momentum",
    "admm_step",
    "amp_step",
    "lasso_objective",
    "lasso_kkt_residual",
]


def ista_step(
    op: LinearOperator,
    x: torch.Tensor,
    y: torch.Tensor,
    step: torch.Tensor | float,
    threshold: torch.Tensor | float,
) -> torch.Tensor:
    """``soft(x - step * A^T (A x - y), threshold)``; ISTA uses ``threshold = step * lam``."""
    return soft_threshold(x - step * op.adjoint(op(x) - y), threshold)


def fista_momentum(t: float) -> tuple[float, float]:
    """Nesterov/FISTA sequence: returns ``(t_next, beta)`` with ``beta = (t - 1) / t_next``."""
    t_next = 0.5 * (1.0 + (1.0 + 4.0 * t * t) ** 0.5)
    return t_next, (t - 1.0) / t_next


def admm_step(
    x_solve,  # callable: rhs (batch, n) -> (A^T A + rho I)^{-1} rhs
    aty: torch.Tensor,
    z: torch.Tensor,
    u: torch.Tensor,
    rho: torch.Tensor | float,
    threshold: torch.Tensor | float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One scaled-form ADMM iteration for the lasso split ``x = z``.

    ``x = (A^T A + rho I)^{-1} (A^T y + rho (z - u))``, ``z = soft(x + u, lam / rho)``,
    ``u = u + x - z``; ADMM uses ``threshold = lam / rho``.
    """
    x = x_solve(aty + rho * (z - u))
    z = soft_threshold(x + u, threshold)
    u = u + x - z
    return x, z, u


def amp_step(
    op: LinearOperator,
    x: torch.Tensor,
    z: torch.Tensor,
    y: torch.Tensor,
    threshold: torch.Tensor | float,
    onsager: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One AMP iteration with the Onsager correction.

    ``z = y - A x + onsager * z_prev``, then ``x_next = soft(x + A^T z, threshold)``.
    Returns ``(x_next, z, onsager_next)`` where ``onsager_next = ||x_next||_0 / m``
    (the average derivative of the soft threshold, times ``n / m``).
    """
    m = y.shape[-1]
    z = y - op(x) + onsager * z
    pseudo = x + op.adjoint(z)
    x_next = soft_threshold(pseudo, threshold)
    b = (pseudo.abs() > threshold).sum(dim=-1, keepdim=True).to(x.dtype) / m
    return x_next, z, b


def lasso_objective(
    op: LinearOperator, x: torch.Tensor, y: torch.Tensor, lam: torch.Tensor | float
) -> torch.Tensor:
    """``0.5 ||A x - y||^2 + lam ||x||_1`` per batch entry, shape ``(batch,)``."""
    lam_t = torch.as_tensor(lam, dtype=x.dtype, device=x.device).reshape(-1)
    return 0.5 * (op(x) - y).pow(2).sum(-1) + lam_t * x.abs().sum(-1)


def lasso_kkt_residual(
    op: LinearOperator,
    x: torch.Tensor,
    y: torch.Tensor,
    lam: torch.Tensor | float,
    step: float | torch.Tensor,
) -> torch.Tensor:
    """Fixed-point (KKT) residual ``||x - soft(x - t A^T(Ax - y), t lam)|| / t`` per batch entry.

    Zero exactly at lasso minimizers; ``t`` is any positive step (``1 / ||A||^2`` is natural).
    """
    lam_t = torch.as_tensor(lam, dtype=x.dtype, device=x.device).reshape(-1, 1)
    return (x - ista_step(op, x, y, step, step * lam_t)).norm(dim=-1) / step
