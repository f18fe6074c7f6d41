"""Demo section: train a learned IC(0)-pattern factor in seconds, solve a held-out system."""

from __future__ import annotations

import pathlib
import time
from typing import Any

import numpy as np
import torch

from .._common import keep_caller_rng

__all__ = ["FIGURES", "run_demo"]

#: files ``run_demo`` writes into ``outdir`` (``unrollsci demo`` checks them beforehand).
FIGURES = ["precond_demo.png"]


@keep_caller_rng
def run_demo(outdir: pathlib.Path) -> list[dict[str, Any]]:
    """Train on eight 16x16 diffusion systems, compare PCG on a held-out 48x48 one.

    Returns table rows (method, nonzeros, iterations, setup and solve seconds) and
    writes ``precond_demo.png`` (residual vs iteration) into ``outdir``.
    """
    from ...precond import LearnedPreconditioner, diffusion2d, fit_preconditioner, ic0, jacobi
    from ...solvers import cg

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = LearnedPreconditioner("factor", seed=0)
        t0 = time.perf_counter()
        fit_preconditioner(
            model, [diffusion2d(16, seed=s) for s in range(8)], steps=8, epochs=6, lr=5e-3, n_rhs=2
        )
        train_s = time.perf_counter() - t0
        a = diffusion2d(48, seed=12345)  # held out: seed and size not seen in training
        b = torch.from_numpy(np.random.default_rng(0).standard_normal(a.shape[0]))
        rows, hist = [], {}
        for name, make in [
            ("none", lambda: None),
            ("jacobi", lambda: jacobi(a)),
            ("ic0", lambda: ic0(a)),
            ("learned factor", lambda: model.build(a)),
        ]:
            t1 = time.perf_counter()
            m = make()
            t2 = time.perf_counter()
            sol = cg(a, b, M=m, tol=1e-8, max_iter=5000)
            t3 = time.perf_counter()
            hist[name] = sol.residuals
            rows.append(
                {
                    "method": name,
                    "nnz": getattr(m, "nnz", 0),
                    "iterations": sol.iterations,
                    "setup_s": t2 - t1,
                    "solve_s": t3 - t2,
                    "train_s": train_s if name.startswith("learned") else 0.0,
                }
            )
        try:
            from .._common import new_figure, save_figure

            fig, ax = new_figure(figsize=(5, 3.5))
            for name, res in hist.items():
                ax.semilogy(np.arange(1, len(res) + 1), res, label=name)
            ax.set_xlabel("PCG iteration")
            ax.set_ylabel("relative residual")
            ax.set_title("48x48 diffusion, held out")
            ax.legend()
            fig.tight_layout()
            save_figure(fig, pathlib.Path(outdir) / FIGURES[0], dpi=100)
        except ImportError:  # pragma: no cover - matplotlib is optional
            pass
        return rows
    finally:
        torch.set_num_threads(threads)
