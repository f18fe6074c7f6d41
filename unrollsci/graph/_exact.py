"""The exact minimizer ``x* = H^{-1} A^T y`` of a :class:`GraphInverseProblem`."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from ..operators import LinearOperator

if TYPE_CHECKING:
    from ._problem import GraphInverseProblem

__all__ = ["auto_method", "full_hessian_scipy", "solve_exact"]


def auto_method(p: GraphInverseProblem) -> str:
    """``solve_exact(method="auto")``: ``"direct"`` for mask problems on graphs whose
    sparse factorization is affordable (:func:`._inertia.affordable`, once per graph:
    meshes, sensor, road-like and geometric graphs, small graphs of any kind), else
    ``"cg"`` (to ``tol``). On expander-like graphs the LU fills in to nearly dense
    (measured in docs/graph.md, "Graphs where no factorization is affordable")."""
    if p.kind != "mask":
        return "cg"
    from ._graphcert import _factorable
    from ._spectral import graph_digest

    return "direct" if _factorable(p.lap_scipy, graph_digest(p)) else "cg"


def full_hessian_scipy(p: GraphInverseProblem, b: int, *, share: bool = False):  # type: ignore[no-untyped-def]
    """``H = diag(mask_b) + lam L`` of signal ``b`` as a scipy CSR matrix (mask problems).

    With one block and ``lam > 0`` it is the bounds' ``H``
    (:func:`._spectral._block_hessian_scipy`, cached on the problem): ``share=True``
    (internal use: the fused product, the exact solve) returns that matrix itself, else a
    copy the caller may change."""
    import scipy.sparse as sp

    from ._spectral import _block_hessian_scipy

    if p.lam > 0 and p.num_blocks == 1:
        h = _block_hessian_scipy(p, b, 0)
        return h if share else h.copy()
    if p.mask is None:
        d = np.ones(p.num_nodes)
    else:
        d = p.mask[b if p.mask.shape[0] > 1 else 0].detach().cpu().double().numpy()
    return sp.csr_matrix(sp.diags(d) + p.lam * p.lap_scipy)


def solve_exact(p: GraphInverseProblem, method: str, tol: float) -> torch.Tensor:
    """``x*`` in float64 by sparse LU (``"direct"``) or CG (``"cg"``), cached on ``p``.

    A CG solution is cached with its ``tol`` (key ``exact-cg-{tol}``) and reused for any
    request of that ``tol`` or looser, never for a tighter one."""
    cache = p._cache
    key = "exact-direct" if method == "direct" else f"exact-cg-{float(tol)!r}"
    if method == "cg":  # the tightest solve at least as tight as asked, if any
        done = [(t, k) for k in cache if (t := _cg_tol(k)) is not None and t <= tol]
        key = min(done)[1] if done else key
    if key in cache:
        return cache[key]
    if method == "direct":
        # H is symmetric positive definite (the constructor checks identifiability)
        b = p.rhs(p.y.double()).double().detach().cpu().numpy()
        x = np.zeros_like(b)
        if p.mask is None or p.mask.shape[0] == 1:
            x = _factor(p, 0).solve(b.T).T
        else:
            for i in range(b.shape[0]):
                x[i] = _factor(p, i).solve(b[i])
        out = torch.as_tensor(np.ascontiguousarray(x), device=p.device)
    else:
        from ..solvers import cg

        b = p.rhs(p.y.double()).double().detach()
        sol = cg(
            p.hessian_operator(),
            b,
            tol=tol,
            max_iter=20 * p.num_nodes + 100,
            check=False,
            throw=True,
        )
        out = sol.x
    p._cache[key] = out
    return out


def _factor(p: GraphInverseProblem, b: int):  # type: ignore[no-untyped-def]
    """SuperLU of signal ``b``'s ``H``; ``ValueError`` where it is numerically singular.

    ``H`` is positive definite in exact arithmetic (identifiability is checked), but in
    float64 it can be singular: edge weights (times ``lam``) spanning about 16 orders of
    magnitude round the small ones out of the degrees (condition number beyond
    ``1 / eps``). SuperLU then raises a bare ``RuntimeError``."""
    from ._inertia import symmetric_lu

    try:
        return symmetric_lu(full_hessian_scipy(p, b, share=True))
    except RuntimeError as err:
        if "singular" not in str(err):
            raise
        h = full_hessian_scipy(p, b, share=True)
        span = np.abs(h.data[h.data != 0]) if h.nnz else np.ones(1)
        raise ValueError(
            f"Expected H = A^T A + lam L of signal {b} to be invertible in float64 (got a "
            "numerically singular H: its LU factorization has an exactly zero pivot; H's "
            f"entries span {float(span.min()):.3g} to {float(span.max()):.3g}, too wide for "
            "float64, whose rounding (eps = 2.2e-16) erased the small ones: its condition "
            "number is of order 1 / eps or more). Rescale the edge weights or lam to a "
            "narrower range."
        ) from err


def _cg_tol(key: str) -> float | None:
    """The ``tol`` of a cached CG solution's key ``exact-cg-{tol}``, else None."""
    return float(key[9:]) if key.startswith("exact-cg-") else None


class _Hessian(LinearOperator):
    """``H = A^T A + lam L`` of a problem, as a LinearOperator (per-sample masks allowed)."""

    def __init__(self, problem: GraphInverseProblem) -> None:
        super().__init__()
        self.problem = problem
        n = problem.num_nodes
        self.in_shape = self.out_shape = (n,)

    @property
    def device(self) -> torch.device | None:
        return self.problem.y.device

    def _mv(self, x: torch.Tensor) -> torch.Tensor:
        return self.problem.hessian(x)

    def _rmv(self, y: torch.Tensor) -> torch.Tensor:
        return self.problem.hessian(y)
