"""Audit of the graph module (December 8): a problem built from an adjacency that is already
canonical (float64 CSR, sorted unique indices, no explicit zeros) kept the caller's arrays,
so an in-place edit of the caller's matrix changed ``p.adjacency`` (and everything derived
from it later: edge weights of a new problem, identifiability) while the cached Laplacian,
bounds and exact solution stayed those of the old graph. The first test fails on the code
before the fix; the second covers the input that was already copied."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
import scipy.sparse as sp
import torch

from unrollsci.graph import GraphInverseProblem
from unrollsci.graph._laplacian import laplacian_matrix


def _weighted_path(n: int = 12, kind: str = "matrix"):
    g = nx.path_graph(n)
    for k, (u, v) in enumerate(g.edges):
        g.edges[u, v]["weight"] = 1.0 + 0.1 * k
    a = nx.to_scipy_sparse_array(g, weight="weight", format="csr", dtype=np.float64)
    a = sp.csr_matrix(a) if kind == "matrix" else sp.csr_array(a)
    a.sort_indices()
    return a


def _shares(a, b) -> bool:
    return any(
        np.may_share_memory(x, y)
        for x in (a.data, a.indices, a.indptr)
        for y in (b.data, b.indices, b.indptr)
    )


@pytest.mark.parametrize("kind", ["matrix", "array", "float32"])
def test_problem_does_not_keep_the_callers_adjacency_arrays(kind):
    a = _weighted_path(kind="array" if kind == "array" else "matrix")
    if kind == "float32":  # converted values, shared index arrays
        a = a.astype(np.float32)
    assert a.has_canonical_format
    before = sp.csr_matrix(a, dtype=np.float64, copy=True)
    y = torch.randn(a.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    p = GraphInverseProblem.from_scipy(a, y, mask=torch.arange(a.shape[0]) % 2 == 0, lam=0.5)
    xs = p.solve_exact().clone()
    hi = p.lipschitz("gershgorin").clone()
    assert not _shares(p.adjacency, a)

    a.data *= 2.0  # the caller edits their own matrix in place
    assert (p.adjacency != before).nnz == 0  # used to follow the edit
    assert (laplacian_matrix(p.adjacency, "combinatorial") != p.lap_scipy).nnz == 0
    torch.testing.assert_close(p.solve_exact(), xs, rtol=0, atol=0)
    torch.testing.assert_close(p.lipschitz("gershgorin"), hi, rtol=0, atol=0)
    # a problem rebuilt from p.adjacency is the same problem
    q = GraphInverseProblem.from_scipy(p.adjacency, y, mask=p.mask[0], lam=0.5)
    torch.testing.assert_close(q.solve_exact(), xs, rtol=1e-12, atol=1e-12)


def test_non_canonical_input_is_canonicalized_in_one_copy_of_its_own():
    # unsorted indices (row 1) and a duplicate entry (row 0): canonical_adjacency copies
    # (this path already did) and the problem keeps that copy
    data, indices, indptr = [0.5, 0.5, 2.0, 1.0, 2.0], [1, 1, 2, 0, 1], [0, 2, 4, 5]
    b = sp.csr_matrix((np.array(data), np.array(indices), np.array(indptr)), shape=(3, 3))
    assert not b.has_canonical_format
    data0 = b.data.copy()
    p = GraphInverseProblem.from_scipy(b, torch.ones(3, dtype=torch.float64))
    np.testing.assert_array_equal(b.data, data0)  # the caller's arrays are untouched
    assert p.adjacency.has_canonical_format and not _shares(p.adjacency, b)
    np.testing.assert_array_equal(p.adjacency.toarray(), [[0, 1, 0], [1, 0, 2], [0, 2, 0]])


def test_graph_index_with_edges_between_graphs_is_refused():
    """``from_scipy(..., graph_index=...)`` accepted edges between the graphs of the batch
    vector: the per-graph Lipschitz bounds were then below ``lambda_max`` of the coupled
    ``H`` (14.53 and 14.76 against 15.13 on a 12,000-node sensor graph cut in two)."""
    import numpy as np
    import pytest
    import scipy.sparse as sp
    import torch

    from unrollsci.graph import GraphInverseProblem, sensor_graph

    adj, _ = sensor_graph(200, seed=1)
    y = torch.zeros(1, 200, dtype=torch.float64)
    gi = torch.from_numpy(np.repeat([0, 1], 100))
    with pytest.raises(ValueError, match="no edge between different graphs"):
        GraphInverseProblem.from_scipy(adj, y, graph_index=gi)
    # a proper batch (block diagonal) is accepted
    a2, _ = sensor_graph(100, seed=2)
    block = sp.block_diag([a2, a2]).tocsr()
    p = GraphInverseProblem.from_scipy(block, y, graph_index=gi)
    assert p.num_graphs == 2
