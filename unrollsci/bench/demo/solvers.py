"""Demo section: the classical lasso solvers and CG on small problems."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ...operators import MatrixOperator
from ...solvers import admm, amp, cg, fista, ista, lasso_objective
from ...solvers._problems import gaussian_lasso, poisson2d

__all__ = ["FIGURES", "run_demo"]

#: files ``run_demo`` writes into ``outdir`` (``unrollsci demo`` checks them beforehand).
FIGURES = ["solvers_convergence.png"]


def run_demo(outdir: Path) -> list[dict]:
    a, _, y = gaussian_lasso(100, 200, 10, seed=0)
    op = MatrixOperator(a)
    lam = 0.05
    rows, curves = [], {}
    results = {}
    for name, solver in [("ista", ista), ("fista", fista), ("admm", admm), ("amp", amp)]:
        t0 = time.perf_counter()
        sol = solver(op, y, lam, tol=1e-10)
        results[name] = (sol, time.perf_counter() - t0)
        curves[name] = sol.residuals
    best = min(float(lasso_objective(op, s.x, y, lam)) for s, _ in results.values())
    for name, (sol, sec) in results.items():
        obj = float(lasso_objective(op, sol.x, y, lam))
        rows.append(
            {
                "solver": name,
                "problem": "lasso 100x200",
                "iterations": sol.iterations,
                "seconds": sec,
                "converged": sol.converged,
                "rel. objective gap": (obj - best) / best,
            }
        )
    a2 = poisson2d(64)
    b = torch.ones(1, a2.shape[0], dtype=torch.float64)
    t0 = time.perf_counter()
    sol = cg(a2, b, tol=1e-8)
    rows.append(
        {
            "solver": "cg",
            "problem": "Poisson 64x64",
            "iterations": sol.iterations,
            "seconds": time.perf_counter() - t0,
            "converged": sol.converged,
            "rel. objective gap": float("nan"),
        }
    )
    curves["cg (Poisson)"] = sol.residuals
    _plot(curves, Path(outdir) / FIGURES[0])
    return rows


def _plot(curves: dict[str, list[float]], path: Path) -> None:
    from .._common import new_figure, save_figure

    try:
        fig, ax = new_figure(figsize=(6, 4))
    except ImportError:  # matplotlib is in the 'bench' extra
        return
    for name, r in curves.items():
        ax.semilogy(range(1, len(r) + 1), r, label=name)
    ax.set_xlabel("iteration")
    ax.set_ylabel("relative residual")
    ax.set_title("Classical solvers: convergence")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
