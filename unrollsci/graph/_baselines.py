"""Classical K-step baselines on a graph problem (for benchmarks and the demo)."""

from __future__ import annotations

import warnings

import torch

from .._validation import ConvergenceWarning
from ..solvers import cg, gradient_descent
from ._problem import GraphInverseProblem

__all__ = ["classical_iterates"]

BASELINES = ("GD 1/Lip", "Nesterov", "CG", "Jacobi-PCG")


def classical_iterates(problem: GraphInverseProblem, num_iter: int) -> dict[str, torch.Tensor]:
    """Estimates after ``num_iter`` iterations of each classical solver, from ``x0 = 0``.

    ``GD 1/Lip`` and ``Nesterov`` use ``unrollsci.solvers.gradient_descent`` with
    step ``1 / Lip`` (per signal); ``CG`` and ``Jacobi-PCG``
    (``M = diag(H)^{-1}``) use ``unrollsci.solvers.cg``. Each costs one product
    with ``H`` per iteration.

    Returns:
        name -> ``(batch, n)``.
    """
    p = problem
    b = p.rhs()
    lip = p.lipschitz()
    if p.num_blocks > 1:  # one step per signal: the most conservative graph's
        lip = lip.amax(dim=1, keepdim=True)
    step = 1.0 / lip
    x0 = torch.zeros_like(b)
    out: dict[str, torch.Tensor] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        out["GD 1/Lip"] = gradient_descent(p.gradient, x0, step, max_iter=num_iter, tol=0.0).x
        out["Nesterov"] = gradient_descent(
            p.gradient, x0, step, momentum="nesterov", max_iter=num_iter, tol=0.0
        ).x
        h = p.hessian_operator()
        out["CG"] = cg(h, b, tol=0.0, max_iter=num_iter, check=False).x
        dinv = 1.0 / p.hessian_diagonal()
        out["Jacobi-PCG"] = cg(
            h, b, M=lambda r: dinv * r, tol=0.0, max_iter=num_iter, check=False
        ).x
    return out
