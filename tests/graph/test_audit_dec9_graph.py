"""The graph module, an adversarial audit (December 9): each test fails on the code before."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from scipy.sparse.linalg import eigsh

from unrollsci.graph import GraphInverseProblem, road_graph, sensor_graph


def test_lower_bounds_above_5000_nodes_survive_an_ill_conditioned_h():
    """A 6,000-node road graph, 30% observed, lam = 1e4: lambda_min(H) = 0.298, but the
    factorization-free bound proved nothing and returned 0 (the Jacobi lo too), so the
    window modes certified q = 1 + 7e-15 and never ran a learned step. Where nothing is
    proved and a factorization is affordable, the factorization proof is used."""
    n = 6000
    rng = np.random.default_rng(1)
    adj = road_graph(n, seed=2)[0]
    mask = torch.tensor((rng.random(n) < 0.3).astype(float))
    mask[0] = 1
    p = GraphInverseProblem.from_scipy(adj, torch.randn(n, dtype=torch.float64), mask=mask, lam=1e4)
    h = sp.csc_matrix(p.hessian_scipy())
    true_min = float(eigsh(h, 1, sigma=0, which="LM", return_eigenvectors=False)[0])
    lo = float(p.lambda_min_bound())
    assert 0.9 * true_min <= lo <= true_min * (1 + 1e-9)
    jlo, _ = p.jacobi_interval()
    dis = sp.diags(1.0 / np.sqrt(h.diagonal()))
    s = sp.csc_matrix(dis @ h @ dis)
    true_jmin = float(eigsh(s, 1, sigma=0, which="LM", return_eigenvectors=False)[0])
    assert 0.9 * true_jmin <= float(jlo) <= true_jmin * (1 + 1e-9)


def test_graph_index_must_be_integer_sorted_from_zero_without_gaps():
    """A float index was truncated ([0, 0.4, 1, 1.7] read as [0, 0, 1, 1]); a gap (a graph
    without nodes) built a problem whose bounds then failed with a raw numpy error."""
    adj = sp.block_diag([sensor_graph(20, seed=1)[0], sensor_graph(20, seed=2)[0]]).tocsr()
    y = torch.randn(40, dtype=torch.float64)
    good = torch.cat([torch.zeros(20), torch.ones(20)]).long()
    GraphInverseProblem.from_scipy(adj, y, graph_index=good).lipschitz()
    with pytest.raises(TypeError, match="integer 'graph_index'"):
        GraphInverseProblem.from_scipy(adj, y, graph_index=good.double())
    for bad in (good * 2, good + 1):  # a gap; an empty graph 0
        with pytest.raises(ValueError, match="without gaps"):
            GraphInverseProblem.from_scipy(adj, y, graph_index=bad)
