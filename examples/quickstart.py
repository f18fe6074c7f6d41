"""Sparse recovery with the classical solvers: the README quickstart as a script.

The figure shows each solver's stopping residual per iteration (log scale) and, for the
first of the four signals, the recovered coefficients over the true ones.

Run: python examples/quickstart.py [FIGURE.png]   (the figure is saved only when a path
is given; the docs gallery keeps the figure left open at exit)
"""

import sys
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from unrollsci.operators import MatrixOperator, check_adjoint
from unrollsci.solvers import admm, amp, fista, ista

torch.manual_seed(0)
m, n, k = 100, 200, 8
A = MatrixOperator(torch.randn(m, n, dtype=torch.float64) / m**0.5)
x_true = torch.zeros(4, n, dtype=torch.float64)
for row in x_true:
    row[torch.randperm(n)[:k]] = torch.randn(k, dtype=torch.float64)
y = A(x_true) + 1e-3 * torch.randn(4, m, dtype=torch.float64)

print(f"adjoint error {check_adjoint(A):.1e}, ||A|| = {A.norm():.3f}")
solutions = {}
for solver in (ista, fista, admm, amp):
    sol = solutions[solver.__name__] = solver(A, y, lam=0.01)
    err = ((sol.x - x_true).norm(dim=1) / x_true.norm(dim=1)).max().item()
    print(f"{solver.__name__:5s} {sol.iterations:5d} iterations, worst relative error {err:.2e}")

fig, (ax_res, ax_x) = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
for name, sol in solutions.items():
    ax_res.semilogy(range(1, sol.iterations + 1), sol.residuals, label=name)
ax_res.set(xlabel="iteration", ylabel="stopping residual (max over the batch)")
ax_res.set_title("Convergence, lam = 0.01")
ax_res.legend()
idx = torch.arange(n)
support = x_true[0] != 0
ax_x.axhline(0, color="C7", lw=0.8)
ax_x.set_xlim(-2, n + 1)
ax_x.stem(
    idx[support], x_true[0][support], linefmt="C7-", markerfmt="C7o", basefmt=" ", label="true"
)
for name, marker in (("fista", "C1x"), ("amp", "C3+")):
    x_hat = solutions[name].x[0]
    nonzero = x_hat.abs() > 1e-8
    ax_x.plot(idx[nonzero], x_hat[nonzero], marker, ms=9, label=f"{name} (nonzeros)")
ax_x.set(xlabel="coefficient index", ylabel="value", title="Signal 1: nonzeros, recovered vs true")
ax_x.legend()
# Only a figure path: under runpy (e.g. from pytest) sys.argv holds the runner's arguments.
if len(sys.argv) == 2 and Path(sys.argv[1]).suffix in {".png", ".svg", ".pdf"}:
    fig.savefig(sys.argv[1], dpi=100)
