"""Inpaint a smooth signal on a networkx graph with a learned, certified unrolled solver.

The figure shows, on the 30 x 30 grid, the true signal, the noisy observations (unobserved
nodes blank) and the 10-layer reconstruction, and the energy-norm error to the exact
minimizer after each layer of the learned solver next to conjugate gradients (scipy) on
the same system from the same start. Pass a path to save it:
``python examples/graph_inpainting.py FIGURE.png`` (the docs gallery keeps the figure left
open at exit).
"""

import sys
from pathlib import Path

import matplotlib.pyplot as plt
import networkx as nx
import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

import unrollsci.graph as ug
from unrollsci.train import fit

# Train the step controller on random sensor graphs (50% observed nodes, noisy data).
train = [ug.inpainting_problem(ug.sensor_graph(300, seed=s)[0], 4, seed=s) for s in range(3)]
model = ug.UnrolledGraphGD(10, ug.StepController(hidden=16, window=10), mode="window").double()
fit(model, ug.graph_loss, train, epochs=15, progress=False)

# A new graph (a 30 x 30 grid) and signal: observe half of the nodes, with noise.
G = nx.grid_2d_graph(30, 30)
x_true = ug.smooth_signal(sp.csr_matrix(nx.to_scipy_sparse_array(G)), 1, seed=7)
gen = torch.Generator().manual_seed(0)
mask = torch.rand(900, generator=gen) < 0.5
y = (x_true + 0.1 * torch.randn(1, 900, generator=gen, dtype=torch.float64)) * mask
problem = ug.GraphInverseProblem.from_networkx(G, y, mask=mask, lam=1.0)

with torch.no_grad():
    out = model(problem)
print(f"error to the exact minimizer after 10 layers: {problem.relative_error(out.x).item():.3f}")
print(f"relative error to the true signal: {((out.x - x_true).norm() / x_true.norm()).item():.3f}")
print(f"every window certified: {all(bool(c.all()) for c in out.certified)}")

# Reference: conjugate gradients on H x = A^T y from x0 = 0, one iterate per iteration.
cg_iterates = [torch.zeros_like(out.x)]
spla.cg(
    problem.hessian_scipy(0),
    problem.rhs()[0].numpy(),
    rtol=1e-14,
    maxiter=len(out.iterates) - 1,
    callback=lambda xk: cg_iterates.append(torch.from_numpy(xk.copy())[None]),
)
learned_err = [problem.relative_error(x).item() for x in out.iterates]
cg_err = [problem.relative_error(x).item() for x in cg_iterates]
print(f"conjugate gradients after {len(cg_err) - 1} iterations: {cg_err[-1]:.3f}")

# Nodes of grid_2d_graph are (i, j) in row-major order, so a signal reshapes to the grid.
observed = np.where(mask.numpy(), y[0].numpy(), np.nan).reshape(30, 30)
panels = [
    ("true signal", x_true[0].numpy().reshape(30, 30)),
    ("observed (50% of nodes, noise 0.1)", observed),
    ("learned solver, 10 layers", out.x[0].numpy().reshape(30, 30)),
]
lim = np.abs(x_true.numpy()).max()
fig, axes = plt.subplots(1, 4, figsize=(16, 3.8), layout="constrained")
for ax, (title, img) in zip(axes[:3], panels, strict=True):
    im = ax.imshow(img, cmap="RdBu_r", vmin=-lim, vmax=lim)
    ax.set(title=title, xticks=[], yticks=[])
fig.colorbar(im, ax=axes[:3], shrink=0.8)
ax = axes[3]
ax.semilogy(range(len(learned_err)), learned_err, "C3o-", label="learned (window mode)")
ax.semilogy(range(len(cg_err)), cg_err, "ks--", label="conjugate gradients")
ax.set(
    xlabel="layer / iteration",
    ylabel="||x_k - x*||_H / ||x*||_H",
    title="Energy-norm error to the exact minimizer",
)
ax.grid(alpha=0.3)
ax.legend()
# Only a figure path: under runpy (e.g. from pytest) sys.argv holds the runner's arguments.
if len(sys.argv) == 2 and Path(sys.argv[1]).suffix in {".png", ".svg", ".pdf"}:
    fig.savefig(sys.argv[1], dpi=100)
