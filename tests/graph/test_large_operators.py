"""Heat-kernel and general-operator problems on graphs above the dense size (800 nodes):
their spectral bounds read a proven ``lambda_max(L)`` (the graph certificate). An ARPACK
start from the ones vector, used before, failed on every combinatorial Laplacian (``L 1 =
0``: "Starting vector is zero"), so these problems could not be solved at all."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
import torch

from unrollsci.graph import GraphInverseProblem, StepController, UnrolledGraphGD
from unrollsci.operators import MatrixOperator


def _grid(laplacian: str):
    G = nx.grid_2d_graph(30, 31)  # 930 nodes
    adj = nx.to_scipy_sparse_array(G, format="csr", dtype=float)
    lap = (
        nx.laplacian_matrix(G)
        if laplacian == "combinatorial"
        else nx.normalized_laplacian_matrix(G)
    )
    return adj, lap.toarray()


@pytest.mark.parametrize("laplacian", ["combinatorial", "normalized"])
def test_heat_kernel_bounds_bracket_the_spectrum_above_the_dense_size(laplacian):
    adj, lap = _grid(laplacian)
    n, tau, lam = adj.shape[0], 0.7, 0.3
    y = torch.randn(1, n, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    p = GraphInverseProblem.from_scipy(
        adj, y, operator="heat", tau=tau, lam=lam, laplacian=laplacian
    )
    mu = np.linalg.eigvalsh(lap)
    h_eigs = np.exp(-2 * tau * mu) + lam * mu  # A = exp(-tau L) is symmetric
    assert h_eigs.max() <= float(p.lipschitz()[0, 0])
    assert 0 <= float(p.lambda_min_bound()[0, 0]) <= h_eigs.min()
    model = UnrolledGraphGD(4, StepController(hidden=8), mode="scalar").double()
    with torch.no_grad():
        out = model(p)
    assert torch.isfinite(out.x).all()


def test_general_operator_bounds_above_the_dense_size():
    adj, lap = _grid("combinatorial")
    n = adj.shape[0]
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(40, n, dtype=torch.float64, generator=gen) / np.sqrt(n)
    y = torch.randn(1, 40, dtype=torch.float64, generator=gen)
    p = GraphInverseProblem.from_scipy(adj, y, operator=MatrixOperator(a), lam=0.5)
    h = a.numpy().T @ a.numpy() + 0.5 * lap
    ev = np.linalg.eigvalsh(h)
    assert ev[-1] <= float(p.lipschitz()[0, 0])
    assert 0 <= float(p.lambda_min_bound()[0, 0]) <= ev[0]
