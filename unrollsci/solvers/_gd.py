"""Gradient descent (with optional Nesterov momentum) for smooth objectives."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .._validation import check_batch, check_finite, check_positive, check_tensor
from ..operators._base import check_real
from ._common import check_stopping
from ._loop import run_until
from ._solution import Solution, finish
from ._steps import fista_momentum

__all__ = ["gradient_descent"]


def gradient_descent(
    grad: Callable[[torch.Tensor], torch.Tensor],
    x0: torch.Tensor,
    step: float | torch.Tensor,
    *,
    momentum: str | None = None,
    max_iter: int = 10_000,
    tol: float = 1e-10,
    throw: bool = False,
) -> Solution:
    """Minimize a smooth function given its gradient: ``x <- x - step * grad(x)``.

    Batched: ``x0: (batch, n)``; ``grad`` maps ``(batch, n) -> (batch, n)``. With
    ``momentum="nesterov"`` uses the accelerated scheme for L-smooth convex
    functions (``step <= 1/L``). Stops when ``||grad(x)|| <= tol * ||grad(x0)||``
    for every batch entry.

    Example:
        >>> import torch
        >>> sol = gradient_descent(lambda x: 2 * (x - 1), torch.zeros(1, 2), 0.25, tol=1e-6)
        >>> sol.converged, sol.x.round(decimals=4)
        (True, tensor([[1., 1.]]))
    """
    check_tensor("x0", x0, ndim=(1, 2))
    check_real("x0", x0)
    if x0.dim() == 2:
        check_batch("x0", x0)
    check_finite("x0", x0)
    if momentum not in (None, "nesterov"):
        raise ValueError(f"Expected momentum None or 'nesterov' (got {momentum!r}).")
    if isinstance(step, torch.Tensor) and step.numel() != 1:  # per-entry steps
        check_real("step", step)
        st = step.detach()
        if not bool(torch.isfinite(st).all()) or bool((st <= 0).any()):
            raise ValueError(f"Expected every 'step' > 0 and finite (got {step}).")
    elif not isinstance(step, torch.Tensor):
        step = check_positive("step", step)
    else:  # a one-element tensor: keep it (it may carry gradients)
        check_positive("step", step.detach())
    tol = check_stopping(tol, max_iter)
    unbatched = x0.dim() == 1
    x = x0[None] if unbatched else x0
    g = grad(x)
    if g.shape != x.shape:
        raise ValueError(f"grad returned shape {tuple(g.shape)}, expected {tuple(x.shape)}.")
    g0 = torch.clamp(g.detach().norm(dim=-1), min=torch.finfo(x.dtype).tiny)
    residuals: list[float] = []
    converged = bool((g.detach().norm(dim=-1) / g0).max() <= tol)
    k = 0

    def advance(s: tuple[Any, ...]) -> tuple[tuple[Any, ...], float]:
        x, x_prev, g, tk = s
        if momentum == "nesterov":
            tk, beta = fista_momentum(tk)
            v = x + beta * (x - x_prev)
            x_prev, x = x, v - step * grad(v)
        else:
            x_prev, x = x, x - step * g
        g = grad(x)
        r = float((g.detach().norm(dim=-1) / g0).max())
        if r != r:
            raise ValueError("gradient_descent diverged (NaN); reduce the step size.")
        return (x, x_prev, g, tk), r

    if not converged:
        (x, _, _, _), k, residuals, converged = run_until(
            advance, (x, x, g, 1.0), max_iter=max_iter, tol=tol
        )
    return finish(
        "gradient_descent",
        x[0] if unbatched else x,
        k,
        residuals,
        converged,
        tol,
        max_iter,
        throw,
        hint="A step close to 1/L, or momentum='nesterov', helps.",
    )
