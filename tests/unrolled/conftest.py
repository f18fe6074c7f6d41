"""Fixtures shared by the unrolled-model tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def sparse_problem():
    """``make(m, n, seed=0, batch=6) -> (A, x, y)``: a float64 ``m x n`` Gaussian matrix with
    unit columns, ``batch`` Bernoulli(0.1)-Gaussian vectors ``x`` and ``y = x A^T``."""

    def make(m: int, n: int, seed: int = 0, batch: int = 6):
        g = torch.Generator().manual_seed(seed)
        a = torch.randn(m, n, generator=g, dtype=torch.float64)
        a = a / a.norm(dim=0)
        x = torch.randn(batch, n, generator=g, dtype=torch.float64)
        x = x * (torch.rand(batch, n, generator=g, dtype=torch.float64) < 0.1)
        return a, x, x @ a.T

    return make
