"""The adjoint solve of the implicit-function backward of the QEq charges (``grad="implicit"``).

The backward itself is the library's one implicit mode
(:func:`unrollsci.solvers._loop.implicit_solution`): the charges ``q*`` solve
``A(theta) q = -chi`` on ``sum(q) = Q``, and for an incoming gradient ``g`` one projected CG
solve ``v = A_c^{-1} P g`` (on ``sum(v) = 0``) gives ``grad_theta = -v^T d(A q + chi)/d theta``
for theta = (chi, diag0, w, kc, ks, kf), by a vector-Jacobian product of the differentiable
mat-vec recorded once at ``q*``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch

from .._validation import ConvergenceWarning
from ._hardness import _Hardness
from ._pcg import _pcg

__all__ = ["charge_adjoint"]


def charge_adjoint(
    op: _Hardness, d: torch.Tensor, tol: float, max_iter: int, stats: dict[str, Any]
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``g -> v``: the projected adjoint solve with the forward's (no-grad) operator ``op``
    and Jacobi diagonal ``d``, relative tolerance ``tol`` floored at ``100 eps ||g||``.
    Records its iteration count in ``stats["adjoint_iterations"]`` (``stats`` is the
    returned solution's dict, so it appears there after ``backward``); a non-converged
    adjoint solve warns."""

    def solve(gq: torch.Tensor) -> torch.Tensor:
        # relative to the projected right-hand side, floored at round-off
        atol = 100.0 * torch.finfo(gq.dtype).eps * float(gq.norm())
        v, _, res, conv = _pcg(op, d, -gq, 0.0, None, tol, max_iter, None, atol=atol)
        stats["adjoint_iterations"] = len(res) - 1
        if not conv:
            warnings.warn(
                f"QEq adjoint solve reached max_iter={max_iter} with residual "
                f"{res[-1]:.3e} > tol {tol:.1e}; gradients are approximate.",
                ConvergenceWarning,
                stacklevel=3,
            )
        return v

    return solve
