"""Learned algebraic multigrid dropped into scipy: train, build, solve with scipy's cg.

    python examples/precond_amg.py

1. trains ``LearnedPreconditioner("amg")`` (GNN weights of the finest prolongation on
   smoothed aggregation's pattern) on four small diffusion systems, through three unrolled
   steps of two-level-cycle PCG,
2. builds the preconditioner for a new 128 x 128 system (the learned level on top of a PyAMG
   hierarchy) and hands it to ``scipy.sparse.linalg.cg`` as it is,
3. compares iterations with PyAMG's smoothed aggregation and the untrained model.

The figure shows the relative residual ``||b - A x_k|| / ||b||`` per scipy cg iteration with
each preconditioner. Pass a path to save it: ``python examples/precond_amg.py FIGURE.png``
(the docs gallery keeps the figure left open at exit).
"""

import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import scipy.sparse.linalg as spla
import torch

from unrollsci.precond import LearnedPreconditioner, amg, diffusion2d, fit_preconditioner

torch.set_num_threads(1)

train = [diffusion2d(n, seed=s) for s, n in enumerate([24, 32, 32, 40])]
model = LearnedPreconditioner("amg", seed=0)
fit_preconditioner(model, train, steps=3, epochs=5, lr=1e-2)

A = diffusion2d(128, seed=2024)  # a new, larger system
b = np.random.default_rng(0).standard_normal(A.shape[0])


histories = {}


def iterations(name: str, m) -> int:
    """Iterations of scipy's cg to 1e-8; the true relative residual of each goes to the figure."""
    res = histories[name] = []
    bnorm = np.linalg.norm(b)
    x, info = spla.cg(
        A, b, M=m, rtol=1e-8, callback=lambda xk: res.append(np.linalg.norm(b - A @ xk) / bnorm)
    )
    assert info == 0 and np.linalg.norm(b - A @ x) <= 1e-8 * bnorm
    return len(res)


print("scipy cg iterations to 1e-8 on a 128 x 128 diffusion system")
print("  PyAMG smoothed aggregation:", iterations("PyAMG smoothed aggregation", amg(A)))
untrained = LearnedPreconditioner("amg", seed=0).build(A)
print("  learned AMG, untrained:    ", iterations("learned AMG, untrained", untrained))
print("  learned AMG, trained:      ", iterations("learned AMG, trained", model.build(A)))

fig, ax = plt.subplots(figsize=(6.5, 4.2), layout="constrained")
for (name, res), style in zip(histories.items(), ("k-o", "C0:s", "C3-D"), strict=True):
    ax.semilogy(range(1, len(res) + 1), res, style, ms=4, label=name)
ax.axhline(1e-8, color="C7", ls=":", lw=1)
ax.set(xlabel="scipy cg iteration", ylabel="relative residual ||b - A x_k|| / ||b||")
ax.set_title("New 128 x 128 diffusion system, scipy.sparse.linalg.cg")
ax.grid(alpha=0.3)
ax.legend()
# Only a figure path: under runpy (e.g. from pytest) sys.argv holds the runner's arguments.
if len(sys.argv) == 2 and Path(sys.argv[1]).suffix in {".png", ".svg", ".pdf"}:
    fig.savefig(sys.argv[1], dpi=100)
