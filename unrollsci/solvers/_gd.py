"""Gradient descent (with optional Nesterov momentum) for smooth objectives."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .._validation import check_batch, check_finite, check_positive, check_tensor
from ..operators._base import check_real
from ._common import check_stopping, row_norm
from ._loop import run_until
from ._solution import Solution, finish
from ._steps import fista_momentum

__all__ = ["gradient_descent"]


def _step_shape(step: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """A tensor ``step`` as it multiplies the ``(batch, n)`` gradient: ``(batch,)`` (one per
    batch entry) becomes ``(batch, 1)``; ``(batch, 1)`` and the shape of ``x0`` are kept;
    any other shape is refused (it would broadcast over the coordinates, or fail)."""
    batch, n = (1, x0.shape[0]) if x0.dim() == 1 else tuple(x0.shape)
    if x0.dim() == 2 and tuple(step.shape) == (batch,):
        return step[:, None]
    if tuple(step.shape) in ((batch, 1), tuple(x0.shape)):
        return step
    raise ValueError(
        f"Expected a tensor 'step' of shape ({batch},) or ({batch}, 1) (one per batch entry) "
        f"or {tuple(x0.shape)} (one per entry of x0) (got {tuple(step.shape)})."
    )


def _check_grad_output(g: Any, x: torch.Tensor) -> None:
    """``grad(x0)`` must be a tensor of ``x0``'s shape (batched), dtype and device."""
    if not isinstance(g, torch.Tensor):
        raise TypeError(f"Expected 'grad' to return a torch.Tensor (got {type(g).__name__}).")
    if g.dtype != x.dtype or g.device != x.device:
        raise TypeError(
            f"Expected 'grad' to return a tensor of the dtype and device of 'x0' ({x.dtype} "
            f"on {x.device}; got {g.dtype} on {g.device})."
        )
    if g.shape != x.shape:
        raise ValueError(f"grad returned shape {tuple(g.shape)}, expected {tuple(x.shape)}.")


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
    for every batch entry. ``step``: a number, or a tensor of positive steps: one per
    batch entry (``(batch,)`` or ``(batch, 1)``) or one per entry of ``x0`` (its shape).

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
        step = _step_shape(step, x0)
    elif not isinstance(step, torch.Tensor):
        step = check_positive("step", step)
    else:  # a one-element tensor: keep it (it may carry gradients)
        check_positive("step", step.detach())
    tol = check_stopping(tol, max_iter)
    unbatched = x0.dim() == 1
    x = x0[None] if unbatched else x0
    g = grad(x)
    _check_grad_output(g, x)
    # row_norm: squares of a gradient of size 1e20 (float32) overflow, of 1e-20 underflow
    g0 = torch.clamp(row_norm(g), min=torch.finfo(x.dtype).tiny)
    start = float((row_norm(g) / g0).max())
    converged = start <= tol  # x0 already stationary (a zero gradient): no iteration
    residuals: list[float] = [start] if converged else []
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
        r = float((row_norm(g) / g0).max())
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
