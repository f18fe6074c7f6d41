"""Demo section: inpainting on a small sensor graph, learned steps vs classical solvers."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from ...graph import (
    MODES,
    StepController,
    UnrolledGraphGD,
    graph_loss,
    inpainting_problem,
    sensor_graph,
)
from ...graph._baselines import BASELINES, classical_iterates
from .._common import keep_caller_rng

__all__ = ["FIGURES", "run_demo"]

#: files ``run_demo`` writes into ``outdir`` (``unrollsci demo`` checks them beforehand).
FIGURES = ["graph_inpainting.png"]


@keep_caller_rng
def run_demo(outdir: Path) -> list[dict[str, Any]]:
    """Train the three modes for a few seconds on small sensor graphs, evaluate on an
    unseen one (50% observed, noise 0.1, lam = 1, K = 10), and plot the convergence.

    Returns:
        table rows: method, energy-norm relative error at K = 10, certified windows.
    """
    from ...train import fit

    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train = []
        for s in range(2):
            adj, _ = sensor_graph(150, k=5, seed=10 + s)
            p = inpainting_problem(adj, 4, noise=(0.05, 0.2), seed=s)
            p.solve_exact()
            train.append(p)
        adj, _ = sensor_graph(300, k=5, seed=99)
        test = inpainting_problem(adj, 4, noise=0.1, seed=123)
        k = 10
        rows: list[dict[str, Any]] = []
        curves: dict[str, list[float]] = {}
        base = classical_iterates(test, k)
        for name in BASELINES:
            rows.append(
                {
                    "method": name,
                    "K": k,
                    "energy_rel_err": float(test.relative_error(base[name]).mean()),
                    "note": "classical",
                }
            )
            curves[name] = [1.0] + [
                float(test.relative_error(classical_iterates(test, j)[name]).mean())
                for j in range(1, k + 1)
            ]
        for mode in MODES:
            model = UnrolledGraphGD(
                k, StepController(hidden=16, hops=1, window=k), mode=mode
            ).double()
            t0 = time.perf_counter()
            fit(
                model,
                lambda m, p: graph_loss(m, p),
                train,
                epochs=3 if not mode.startswith("window") else 10,
                lr=3e-3 if not mode.startswith("window") else 1e-3,
                progress=False,
            )
            secs = time.perf_counter() - t0
            with torch.no_grad():
                out = model(test)
            note = f"trained {secs:.1f} s"
            if mode.startswith("window"):
                cert = float(torch.stack(out.certified).double().mean())
                note += f", {100 * cert:.0f}% windows certified"
            rows.append(
                {
                    "method": f"learned {mode}",
                    "K": k,
                    "energy_rel_err": float(test.relative_error(out.x).mean()),
                    "note": note,
                }
            )
            curves[f"learned {mode}"] = [float(test.relative_error(x).mean()) for x in out.iterates]
        _plot(curves, Path(outdir) / FIGURES[0])
        return rows
    finally:
        torch.set_num_threads(threads)


def _plot(curves: dict[str, list[float]], path: Path) -> None:
    from .._common import new_figure, save_figure

    fig, ax = new_figure(figsize=(5, 3.5))
    for name, c in curves.items():
        ax.semilogy(
            c,
            marker="o" if name.startswith("learned") else ".",
            ls="-" if name.startswith("learned") else "--",
            label=name,
        )
    ax.set_xlabel("layer / iteration")
    ax.set_ylabel("energy-norm relative error")
    ax.set_title("Inpainting on an unseen 300-node sensor graph")
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
