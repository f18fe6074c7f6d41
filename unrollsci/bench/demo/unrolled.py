"""Demo section: a few seconds of LISTA training against the ISTA it unrolls."""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from .._common import keep_caller_rng

__all__ = ["FIGURES", "run_demo"]

#: files ``run_demo`` writes into ``outdir`` (``unrollsci demo`` checks them beforehand).
FIGURES = ["lista_demo.png"]


@keep_caller_rng
def run_demo(outdir: Path) -> list[dict[str, Any]]:
    """Train small LISTA-CP and ALISTA models (m=40, n=80, K=8) and compare with ISTA/FISTA.

    Returns table rows (method, NMSE in dB after K layers/iterations, training
    seconds) and writes ``lista_demo.png`` (NMSE per layer) into ``outdir``.
    """
    from ... import solvers
    from ..._validation import ConvergenceWarning
    from ...losses import mse, nmse_db
    from ...operators import MatrixOperator
    from ...train import fit
    from ...unrolled import ALISTA, LISTACP
    from ..lista import make_problem, sample

    torch.manual_seed(0)
    m, n, k, lam, p = 40, 80, 8, 0.05, 0.1
    a = make_problem(m, n, 0)
    op = MatrixOperator(a)
    y_te, x_te = sample(a, 500, p, math.inf, torch.Generator().manual_seed(1))
    val = sample(a, 200, p, math.inf, torch.Generator().manual_seed(2))

    def sampler(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return sample(a, 64, p, math.inf, gen)

    def loss(model: Any, batch: Any) -> torch.Tensor:
        return mse(model(batch[0]), batch[1])

    curves: dict[str, list[float]] = {"ISTA": [], "FISTA": []}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for it in range(1, k + 1):
            curves["ISTA"].append(
                float(nmse_db(solvers.ista(op, y_te, lam, max_iter=it, tol=0).x, x_te))
            )
            curves["FISTA"].append(
                float(
                    nmse_db(solvers.fista(op, y_te, lam, max_iter=it, tol=0, restart=False).x, x_te)
                )
            )
    rows = [{"method": name, f"NMSE@{k} (dB)": c[-1], "train s": 0.0} for name, c in curves.items()]
    for name, model, lr in [
        ("LISTA-CPSS", LISTACP(op, k, lam=lam, support_selection=True), 3e-3),
        ("ALISTA", ALISTA(op, k, lam=lam), 2e-2),
    ]:
        t0 = time.perf_counter()
        fit(
            model,
            loss,
            sampler,
            val_data=val,
            epochs=4,
            steps_per_epoch=20,
            lr=lr,
            lr_decay=0.6,
            progress=False,
            seed=0,
        )
        sec = time.perf_counter() - t0
        with torch.no_grad():
            _, xs = model(y_te, return_all=True)
        curves[name] = [float(nmse_db(xk, x_te)) for xk in xs]
        rows.append({"method": name, f"NMSE@{k} (dB)": curves[name][-1], "train s": sec})
    try:
        from .._common import new_figure, save_figure

        fig, ax = new_figure(figsize=(5, 3.5))
        for name, c in curves.items():
            ax.plot(range(1, k + 1), c, marker=".", label=name)
        ax.set_xlabel("layer / iteration")
        ax.set_ylabel("NMSE (dB)")
        ax.set_title(f"LISTA vs ISTA, A {m}x{n}")
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        save_figure(fig, Path(outdir) / FIGURES[0], dpi=100)
    except ImportError:  # pragma: no cover - matplotlib optional
        pass
    return rows
