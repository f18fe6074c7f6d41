"""Train a learned preconditioner on a family of diffusion problems, then solve a new one.

Runs in about 11 seconds on one CPU core:

    python examples/precond_diffusion.py

1. draws 16 random-coefficient diffusion matrices on a 32 x 32 grid,
2. trains a GNN that corrects the symmetric Gauss-Seidel factor (same nonzeros as
   IC(0)) through 10 unrolled PCG steps, from 2 seeded initial weights (the run with
   the better validation loss is kept),
3. solves a new, larger (128 x 128) system with PCG and compares with IC(0).

The figure shows the relative residual per PCG iteration on the new system with each
preconditioner (and plain CG for reference). Pass a path to save it:
``python examples/precond_diffusion.py FIGURE.png`` (the docs gallery keeps the figure left
open at exit).
"""

import sys
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from unrollsci.precond import LearnedPreconditioner, diffusion2d, fit_preconditioner, ic0
from unrollsci.solvers import cg

torch.set_num_threads(1)

train = [diffusion2d(32, sigma=1.0, seed=s) for s in range(16)]
val = [diffusion2d(32, sigma=1.0, seed=500 + s) for s in range(4)]
model = LearnedPreconditioner("factor", seed=0)  # M^{-1} = L L^T on tril(A)'s pattern
t0 = time.perf_counter()
hist = fit_preconditioner(
    model,
    train,
    steps=10,
    loss="energy",
    epochs=15,
    lr=3e-3,
    val_matrices=val,
    patience=5,
    restarts=2,
)
print(
    f"trained in {time.perf_counter() - t0:.1f} s; loss {hist.train_loss[0]:.2f} -> "
    f"{min(hist.train_loss):.2f} (log energy error after 10 PCG steps)"
)

A = diffusion2d(128, sigma=1.0, seed=2024)  # a new system, 16x larger than in training
b = torch.from_numpy(np.random.default_rng(0).standard_normal(A.shape[0]))
histories = {}
for name, make in [("IC(0)", lambda: ic0(A)), ("learned", lambda: model.build(A))]:
    t0 = time.perf_counter()
    M = make()
    t1 = time.perf_counter()
    sol = cg(A, b, M=M, tol=1e-8)
    t2 = time.perf_counter()
    histories[name] = sol.residuals
    print(
        f"{name:8s} nnz(L)={M.nnz:6d}  iterations={sol.iterations:3d}  "
        f"setup {t1 - t0:.3f} s  solve {t2 - t1:.3f} s  converged={sol.converged}"
    )

plain = cg(A, b, tol=1e-8, max_iter=2000)  # no preconditioner, for reference
fig, ax = plt.subplots(figsize=(6.5, 4.2), layout="constrained")
ax.semilogy(range(1, plain.iterations + 1), plain.residuals, "C7", label="CG, none")
for (name, res), color in zip(histories.items(), ("k", "C3"), strict=True):
    ax.semilogy(range(1, len(res) + 1), res, color, label=f"PCG, {name}")
ax.axhline(1e-8, color="C7", ls=":", lw=1)
ax.set(xlabel="iteration", ylabel="relative residual ||r_k|| / ||b||")
ax.set_title("New 128 x 128 diffusion system (trained on 32 x 32)")
ax.grid(alpha=0.3)
ax.legend()
# Only a figure path: under runpy (e.g. from pytest) sys.argv holds the runner's arguments.
if len(sys.argv) == 2 and Path(sys.argv[1]).suffix in {".png", ".svg", ".pdf"}:
    fig.savefig(sys.argv[1], dpi=100)
