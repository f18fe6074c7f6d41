"""Standard test problems used by the solver demo, benchmark and tests."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

__all__ = ["gaussian_lasso", "poisson2d"]


def gaussian_lasso(
    m: int = 100,
    n: int = 200,
    k: int = 10,
    *,
    batch: int = 1,
    noise: float = 0.01,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """i.i.d. Gaussian ``A`` (entries of variance ``1/m``), ``k``-sparse ``x``, noisy ``y``.

    Returns ``(A: (m, n), x: (batch, n), y: (batch, m))``.
    """
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(m, n, generator=g, dtype=dtype) / m**0.5
    x = torch.zeros(batch, n, dtype=dtype)
    for row in x:
        row[torch.randperm(n, generator=g)[:k]] = torch.randn(k, generator=g, dtype=dtype)
    y = x @ a.T + noise * torch.randn(batch, m, generator=g, dtype=dtype)
    return a, x, y


def poisson2d(n: int) -> sp.csr_matrix:
    """5-point finite-difference Laplacian on an ``n x n`` grid, Dirichlet boundary (SPD)."""
    t = sp.diags([-np.ones(n - 1), 2 * np.ones(n), -np.ones(n - 1)], [-1, 0, 1])
    eye = sp.identity(n)
    return (sp.kron(eye, t) + sp.kron(t, eye)).tocsr()
