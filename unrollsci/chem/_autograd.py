"""The implicit-function backward of the QEq charges (``grad="implicit"``)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch

from .._validation import ConvergenceWarning
from ._hardness import _Hardness
from ._pcg import _pcg

__all__ = ["Adjoint", "ImplicitCharges"]


@dataclass(frozen=True)
class Adjoint:
    """What the backward needs besides the saved tensors.

    ``op`` and ``d`` are the (no-grad) operator and Jacobi diagonal of the forward solve.
    The backward records the adjoint CG iteration count in ``stats["adjoint_iterations"]``
    (``stats`` is the returned solution's dict, so it appears there after ``backward``).
    """

    i: torch.Tensor
    j: torch.Tensor
    op: _Hardness
    d: torch.Tensor
    tol: float
    max_iter: int
    stats: dict[str, Any]


class ImplicitCharges(torch.autograd.Function):
    """Attach the implicit-function backward to the solved charges q*(theta).

    Forward passes ``q`` (solved by projected CG without autograd) through; backward runs
    one adjoint solve (implicit function theorem): v = A_c^{-1} P g, grad_theta =
    -v^T d(A q + chi)/d theta for theta = (chi, diag0, w, kc, ks, kf).
    """

    @staticmethod
    def forward(ctx, q, adjoint, chi, diag0, w, kc, ks, kf):  # noqa: D102
        ctx.adjoint = adjoint
        ctx.save_for_backward(q, chi, diag0, w, kc, ks, kf)
        return q.clone()

    @staticmethod
    def backward(ctx, gq):  # noqa: D102
        q, chi, diag0, w, kc, ks, kf = ctx.saved_tensors
        adj: Adjoint = ctx.adjoint
        with torch.no_grad():
            # relative to the projected right-hand side, floored at round-off
            atol = 100.0 * torch.finfo(gq.dtype).eps * float(gq.norm())
            v, _, res, conv = _pcg(
                adj.op, adj.d, -gq, 0.0, None, adj.tol, adj.max_iter, None, atol=atol
            )
            adj.stats["adjoint_iterations"] = len(res) - 1
        if not conv:
            warnings.warn(
                f"QEq adjoint solve reached max_iter={adj.max_iter} with residual "
                f"{res[-1]:.3e} > tol {adj.tol:.1e}; gradients are approximate.",
                ConvergenceWarning,
                stacklevel=2,
            )
        ins = [chi, diag0, w, kc, ks, kf]
        need = ctx.needs_input_grad[2:]
        with torch.enable_grad():
            leaves = [
                t.detach().requires_grad_(bool(nd)) if t is not None else None
                for t, nd in zip(ins, need, strict=True)
            ]
            c, dg, ww, c1, s1, f1 = leaves
            g = _Hardness(adj.i, adj.j, ww, dg, c1, s1, f1)(q) + c
            wanted = [t for t in leaves if t is not None and t.requires_grad]
            grads = torch.autograd.grad(g, wanted, grad_outputs=-v, allow_unused=True)
        it = iter(grads)
        out = [next(it) if (t is not None and t.requires_grad) else None for t in leaves]
        return (None, None, *out)
