"""Adjacency matrices (and batch vectors) from networkx graphs and PyG ``Data``/``Batch``.

Helpers of :meth:`GraphInverseProblem.from_networkx` and :meth:`GraphInverseProblem.from_pyg`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["check_block_edges", "check_graph_index", "networkx_adjacency", "pyg_inputs"]


def check_block_edges(gi: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> None:
    """Refuse edges ``(rows, cols)`` between different graphs of the batch vector ``gi``:
    every graph's bounds and solution are computed as if it were alone (a PyG batch never
    has such edges; with them the per-graph bounds are not bounds of the coupled ``H``)."""
    cross = int(np.count_nonzero(gi[rows] != gi[cols]))
    if cross:
        raise ValueError(
            f"Expected no edge between different graphs of 'graph_index' (got {cross // 2 or 1} "
            "such edge(s)): give each connected set of nodes one graph index, or merge them."
        )


def check_graph_index(graph_index: Any, n: int) -> np.ndarray:
    """``graph_index`` as an int64 ``(n,)`` array: integers (a float or bool index was
    truncated), sorted from 0 without gaps (as PyG's batch vector; a graph with no node
    left an empty block that failed later with a raw numpy error)."""
    raw = graph_index.detach().cpu() if isinstance(graph_index, torch.Tensor) else graph_index
    arr = np.asarray(raw)
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"Expected an integer 'graph_index' (got dtype {arr.dtype}).")
    gi = arr.astype(np.int64)
    if gi.shape != (n,):
        raise ValueError(f"Expected 'graph_index' of shape ({n},) (got {gi.shape}).")
    if n and (gi[0] != 0 or np.any(np.diff(gi) < 0) or np.any(np.diff(gi) > 1)):
        raise ValueError(
            "Expected 'graph_index' sorted, from 0 and without gaps, as PyG's batch vector "
            f"(got values {np.unique(gi)[:8].tolist()}{'...' if np.unique(gi).size > 8 else ''}"
            "): a graph without nodes has no problem to solve; leave it out of the batch."
        )
    return gi


def networkx_adjacency(G: Any, weight: str | None = "weight"):  # type: ignore[no-untyped-def]  # noqa: N803
    """CSR adjacency of an undirected ``networkx`` graph, nodes in ``list(G.nodes)`` order.

    Edge attribute ``weight`` (default 1 where missing) gives the edge weights.
    """
    import networkx as nx

    if not isinstance(G, nx.Graph):
        raise TypeError(f"Expected a networkx graph (got {type(G).__name__}).")
    if G.is_directed():
        raise ValueError(
            "Expected an undirected graph (got a directed networkx graph); use "
            "G.to_undirected() first."
        )
    adj = nx.to_scipy_sparse_array(G, nodelist=list(G.nodes), weight=weight, format="csr")
    import scipy.sparse as sp

    return sp.csr_matrix(adj)


def pyg_inputs(data: Any, y: torch.Tensor | None) -> tuple[Any, torch.Tensor, Any]:
    """``(adjacency, y, graph_index)`` of a PyG ``Data`` or ``Batch``.

    Edge weights come from ``data.edge_weight`` (or a 1-D ``edge_attr``), else 1; ``y``
    defaults to ``data.y``; ``graph_index`` is ``data.batch`` (None for a single graph).
    """
    from torch_geometric.utils import to_scipy_sparse_matrix

    ei = getattr(data, "edge_index", None)
    if ei is None:
        raise ValueError("Expected a PyG Data/Batch with 'edge_index'.")
    w = getattr(data, "edge_weight", None)
    if w is None:
        ea = getattr(data, "edge_attr", None)
        if ea is not None and (ea.dim() == 1 or (ea.dim() == 2 and ea.shape[1] == 1)):
            w = ea.reshape(-1)
    if y is None:
        y = getattr(data, "y", None)
        if y is None:
            raise ValueError("Expected 'y' (or data.y) with the observed signal.")
    if w is not None and w.is_complex():
        raise TypeError(f"Expected real edge weights in the PyG data (got dtype {w.dtype}).")
    n = int(data.num_nodes)
    adj = to_scipy_sparse_matrix(ei.cpu(), None if w is None else w.detach().cpu().double(), n)
    return adj, y, getattr(data, "batch", None)
