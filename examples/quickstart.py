"""Sparse recovery with the classical solvers: the README quickstart as a script."""

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
for solver in (ista, fista, admm, amp):
    sol = solver(A, y, lam=0.01)
    err = ((sol.x - x_true).norm(dim=1) / x_true.norm(dim=1)).max().item()
    print(f"{solver.__name__:5s} {sol.iterations:5d} iterations, worst relative error {err:.2e}")
