"""The record every solver returns."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import torch

from .._validation import ConvergenceError, ConvergenceWarning

__all__ = ["Solution", "finish"]


@dataclass
class Solution:
    """How a solve ended.

    Attributes:
        x: the solution estimate, same leading shape as the data (``(batch, n)`` or ``(n,)``).
        iterations: number of iterations performed.
        residuals: residual history (max over the batch), one float per iteration (``cg``:
            one, the start's, for a solve that needs no iteration; a ``QEqSolution`` has
            ``iterations + 1``, its first the start's).
        converged: True when every batch entry reached the tolerance.
        message: how the solve ended and, on failure, how to fix it.
        stats: solver-specific extras (e.g. per-sample residuals, step size).
    """

    x: torch.Tensor
    iterations: int
    residuals: list[float] = field(default_factory=list)
    converged: bool = False
    message: str = ""
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def residual(self) -> float:
        """Final residual (max over the batch); ``inf`` if no iteration ran."""
        return self.residuals[-1] if self.residuals else float("inf")

    def __repr__(self) -> str:
        return (
            f"Solution(x.shape={tuple(self.x.shape)}, iterations={self.iterations}, "
            f"residual={self.residual:.3e}, converged={self.converged})"
        )


def finish(
    name: str,
    x: torch.Tensor,
    iterations: int,
    residuals: list[float],
    converged: bool,
    tol: float,
    max_iter: int,
    throw: bool,
    stats: dict[str, Any] | None = None,
    hint: str = "",
    reason: str = "",
) -> Solution:
    """Build a Solution, and warn (or raise with ``throw=True``) on non-convergence
    (``reason``: why it stopped before ``max_iter``, if it did)."""
    if converged:
        message = (
            f"{name} converged in {iterations} iterations "
            f"(residual {residuals[-1]:.3e} <= tol {tol:.1e})."
        )
    elif not residuals:  # max_iter=0 and a start not known (cg: not found) to meet tol
        message = (
            f"{name} reached max_iter={max_iter} before its first iteration: no iteration "
            f"ran, so the result (the start) is not known to meet tol {tol:.1e}. Increase "
            "max_iter."
        )
    else:
        last = residuals[-1]
        message = (
            f"{name} stopped after {iterations} iterations with residual {last:.3e} > tol "
            f"{tol:.1e}: {reason}"
            if reason
            else f"{name} reached max_iter={max_iter} with residual {last:.3e} > tol "
            f"{tol:.1e}. Try increasing max_iter or loosening tol."
            f"{(' ' + hint) if hint else ''}"
        )
    if not converged:
        if throw:
            raise ConvergenceError(message)
        warnings.warn(message, ConvergenceWarning, stacklevel=3)
    return Solution(x, iterations, residuals, converged, message, stats or {})
