"""The rows of the learned-AMG benchmark (:mod:`unrollsci.bench.amg`): the PyAMG
preconditioners it compares with, one timed set-up and solve in either PCG loop, and the
per-block summaries."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

__all__ = ["amg_floor", "pyamg_build", "run", "summarise"]


def pyamg_build(kind: str, opts: dict[str, Any], sweeps: int = 1) -> Callable[[Any], Any]:
    def build(a: Any) -> Any:
        import pyamg

        from ..precond import AMGPreconditioner, amg

        if kind == "sa":
            return amg(a, **opts)
        if kind == "sa-csr":
            return _csr_levels(amg(a, **opts).ml, sweeps)
        state = np.random.get_state()
        try:
            np.random.seed(0)
            ml = pyamg.ruge_stuben_solver(a, **opts)
        finally:
            np.random.set_state(state)
        if sweeps != 1:
            _smoothers(ml, sweeps)
        return AMGPreconditioner(ml, a.shape[0])

    return build


def _smoothers(ml: Any, sweeps: int) -> None:
    """Symmetric Gauss-Seidel on every level; ``sweeps`` sweeps on the finest."""
    from pyamg.relaxation.smoothing import change_smoothers

    smoother = [
        ("gauss_seidel", {"sweep": "symmetric", "iterations": sweeps}),
        ("gauss_seidel", {"sweep": "symmetric"}),
    ]
    change_smoothers(ml, smoother, smoother)


def _csr_levels(ml: Any, sweeps: int = 1) -> Any:
    """PyAMG's SA hierarchy with every level converted to CSR (PyAMG keeps BSR with 1 x 1
    blocks, whose products are slower), same smoother (symmetric Gauss-Seidel; ``sweeps``
    sweeps on the finest level): the same operator for one sweep, a faster cycle; the
    conversion is counted in the set-up."""
    import scipy.sparse as sp

    for lev in ml.levels:
        lev.A = sp.csr_matrix(lev.A)
        if hasattr(lev, "P"):
            lev.P, lev.R = sp.csr_matrix(lev.P), sp.csr_matrix(lev.R)
    from ..precond import AMGPreconditioner

    _smoothers(ml, sweeps)
    return AMGPreconditioner(ml, ml.levels[0].A.shape[0])


def run(
    build: Callable[[Any], Any], a: Any, b: torch.Tensor, rtol: float, loop: str = "unrollsci"
) -> dict[str, Any]:
    """Set-up and solve times of one method. ``loop="unrollsci"``: the library's
    :func:`unrollsci.solvers.cg`; ``loop="scipy"``: ``scipy.sparse.linalg.cg`` with the
    preconditioner's ``to_scipy()`` (for a PyAMG hierarchy, learned or not, PyAMG's own
    ``ml.aspreconditioner()``: what a PyAMG user runs), its conversion counted in the set-up."""
    t0 = time.perf_counter()
    m = build(a)
    if loop == "scipy":
        m = m.to_scipy()
    t1 = time.perf_counter()
    if loop == "scipy":
        iters, converged = _scipy_cg(a, b.numpy(), m, rtol)
    else:
        from ..solvers import cg

        sol = cg(a, b, M=m, tol=rtol, max_iter=5000)
        iters, converged = int(sol.iterations), bool(sol.converged)
    t2 = time.perf_counter()
    return {"setup": t1 - t0, "solve": t2 - t1, "iters": iters, "converged": converged}


def _scipy_cg(a: Any, b: np.ndarray, m: Any, rtol: float) -> tuple[int, bool]:
    """scipy's ``cg`` to ``||r|| <= rtol ||b||`` (the library's rule): iterations, converged."""
    import scipy.sparse.linalg as sla

    count = [0]

    def step(_: Any) -> None:
        count[0] += 1

    _, info = sla.cg(a, b, M=m, rtol=rtol, atol=0.0, maxiter=5000, callback=step)
    return count[0], info == 0


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    setup = statistics.median(r["setup"] for r in runs)
    solve = statistics.median(r["solve"] for r in runs)
    return {
        "iters": runs[0]["iters"],
        "converged": all(r["converged"] for r in runs),
        "setup_s": setup,
        "solve_s": solve,
        "total_s": statistics.median(r["setup"] + r["solve"] for r in runs),
    }


def amg_floor(block: list[dict[str, Any]]) -> float:
    """The least set-up plus the least solve time among the block's AMG rows (PyAMG's and the
    learned ones, possibly of different rows): what an AMG built through PyAMG would need if
    it had the cheapest hierarchy set-up and the fastest solve measured here at once. Above
    the best classical total, no such AMG meets the time goal on that system."""
    amg = [r for r in block if r["method"].startswith(("pyamg", "learned"))]
    return min(r["setup_s"] for r in amg) + min(r["solve_s"] for r in amg)
