"""Graph generators and the controller's sparse aggregation matrix."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
import torch
from scipy.sparse.csgraph import connected_components

from unrollsci.graph import StepController, road_graph


@pytest.mark.parametrize("extra", [0.0, 0.25, 0.5])
def test_road_graph_is_a_connected_planar_low_degree_network(extra):
    adj, pts = road_graph(600, extra=extra, seed=3)
    assert adj.shape == (600, 600) and pts.shape == (600, 2)
    assert (adj != adj.T).nnz == 0 and adj.diagonal().sum() == 0
    assert connected_components(adj, directed=False)[0] == 1
    edges = adj.nnz // 2
    assert edges == 599 + round(extra * 600)  # spanning tree + the extra edges
    assert nx.check_planarity(nx.from_scipy_sparse_array(adj))[0]
    again, _ = road_graph(600, extra=extra, seed=3)
    assert (again != adj).nnz == 0


def test_road_graph_bad_input():
    with pytest.raises(ValueError, match="n >= 4"):
        road_graph(2)
    with pytest.raises(ValueError, match="extra"):
        road_graph(50, extra=1.5)


def test_mean_adjacency_matches_a_dense_reference(device):
    rng = np.random.default_rng(0)
    G = nx.gnm_random_graph(9, 20, seed=1)
    src, dst, w = [], [], []
    for u, v in G.edges:
        for a, b in ((u, v), (v, u)):
            src.append(a)
            dst.append(b)
            w.append(rng.uniform(0.1, 2.0))  # deliberately non-symmetric weights
    ei = torch.tensor([src, dst], device=device)
    ew = torch.tensor(w, dtype=torch.float64, device=device)
    m = StepController.mean_adjacency(ei, ew, 9).to_dense().cpu().numpy()
    ref = np.zeros((9, 9))
    deg = np.zeros(9)
    for a, b, wt in zip(src, dst, w, strict=True):
        ref[b, a] += wt
        deg[b] += wt
    ref /= np.maximum(deg, 1e-300)[:, None]
    np.testing.assert_allclose(m, ref, rtol=1e-14, atol=0)
    # the controller gives the same logits with a precomputed adjacency or without one
    ctrl = StepController(hidden=8, window=3).double().to(device)
    feat = torch.randn(2, 9, 7, dtype=torch.float64, device=device)
    glob = torch.randn(2, 1, 4, dtype=torch.float64, device=device)
    bi = torch.zeros(9, dtype=torch.long, device=device)
    a = ctrl(feat, glob, ei, ew, bi, 1)
    b = ctrl(feat, glob, ei, ew, bi, 1, adj=StepController.mean_adjacency(ei, ew, 9))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-14, atol=1e-14)
