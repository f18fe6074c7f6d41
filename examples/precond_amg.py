"""Learned algebraic multigrid dropped into scipy: train, build, solve with scipy's cg.

    python examples/precond_amg.py

1. trains ``LearnedPreconditioner("amg")`` (GNN weights of the finest prolongation on
   smoothed aggregation's pattern) on four small diffusion systems, through three unrolled
   steps of two-level-cycle PCG,
2. builds the preconditioner for a new 128 x 128 system (the learned level on top of a PyAMG
   hierarchy) and hands it to ``scipy.sparse.linalg.cg`` as it is,
3. compares iterations with PyAMG's smoothed aggregation and the untrained model.
"""

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


def iterations(m) -> int:
    count = [0]
    x, info = spla.cg(A, b, M=m, rtol=1e-8, callback=lambda _x: count.__setitem__(0, count[0] + 1))
    assert info == 0 and np.linalg.norm(b - A @ x) <= 1e-8 * np.linalg.norm(b)
    return count[0]


print("scipy cg iterations to 1e-8 on a 128 x 128 diffusion system")
print("  PyAMG smoothed aggregation:", iterations(amg(A)))
print("  learned AMG, untrained:    ", iterations(LearnedPreconditioner("amg", seed=0).build(A)))
print("  learned AMG, trained:      ", iterations(model.build(A)))
