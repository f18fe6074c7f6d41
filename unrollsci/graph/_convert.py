"""Adjacency matrices (and batch vectors) from networkx graphs and PyG ``Data``/``Batch``.

Helpers of :meth:`GraphInverseProblem.from_networkx` and :meth:`GraphInverseProblem.from_pyg`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = [
    "CERT_GRAPH_ATTR",
    "check_block_edges",
    "check_edge_index",
    "check_graph_index",
    "edge_attr_weight",
    "networkx_adjacency",
    "pyg_inputs",
]

#: The per-graph fingerprint of the graph alone (``(1, 32)`` uint8) that
#: :class:`._pyg.CertifiedBounds` stores beside ``edge_weight``, which it always writes.
CERT_GRAPH_ATTR = "cert_graph_key"


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


def check_edge_index(ei: torch.Tensor, n: int) -> None:
    """Refuse a PyG ``edge_index`` that is not of node ids: a float (or bool) one, which
    scipy truncated to another graph, silently (``TypeError``), and entries outside ``[0,
    n)``, for which scipy's message named no argument (``ValueError``)."""
    if ei.dtype == torch.bool or ei.is_floating_point() or ei.is_complex():
        raise TypeError(
            f"Expected an integer data.edge_index (node ids; got dtype {ei.dtype}): a float "
            "or bool edge_index would be read as other node ids."
        )
    if ei.numel() and (int(ei.min()) < 0 or int(ei.max()) >= n):
        raise ValueError(
            f"Expected data.edge_index entries in [0, num_nodes) = [0, {n}) (got entries from "
            f"{int(ei.min())} to {int(ei.max())})."
        )


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


def edge_attr_weight(data: Any) -> torch.Tensor | None:
    """``data.edge_attr`` as edge weights where it is 1-D (or ``(E, 1)``), else None: what
    :func:`pyg_inputs` uses when ``data.edge_weight`` is absent."""
    ea = getattr(data, "edge_attr", None)
    if ea is not None and (ea.dim() == 1 or (ea.dim() == 2 and ea.shape[1] == 1)):
        return ea.reshape(-1)
    return None


def pyg_inputs(data: Any, y: torch.Tensor | None) -> tuple[Any, torch.Tensor, Any]:
    """``(adjacency, y, graph_index)`` of a PyG ``Data`` or ``Batch``.

    Edge weights come from ``data.edge_weight`` (or a 1-D ``edge_attr``), else 1, one per
    edge (``ValueError`` otherwise); ``y`` defaults to ``data.y``; ``graph_index`` is
    ``data.batch`` (None for a single graph). Data that carry :class:`CertifiedBounds`'
    graph fingerprint must have ``edge_weight`` (the transform writes it): PyG collates
    the keys of a batch's first graph, so a first graph without ``edge_weight`` drops the
    weights of every graph (``ValueError``: give every graph of a batch ``edge_weight``,
    or none). ``edge_index`` must hold integer node ids in ``[0, num_nodes)``
    (:func:`check_edge_index`).
    """
    from torch_geometric.utils import to_scipy_sparse_matrix

    ei = getattr(data, "edge_index", None)
    if ei is None:
        raise ValueError("Expected a PyG Data/Batch with 'edge_index'.")
    if not isinstance(ei, torch.Tensor) or ei.dim() != 2 or ei.shape[0] != 2:
        got = tuple(ei.shape) if isinstance(ei, torch.Tensor) else type(ei).__name__
        raise ValueError(f"Expected data.edge_index of shape (2, E) (got {got}).")
    w = getattr(data, "edge_weight", None)
    if w is None and getattr(data, CERT_GRAPH_ATTR, None) is not None:
        raise ValueError(
            "Expected data.edge_weight on every graph of a batch or on none (got data "
            "without edge_weight whose graphs carry CertifiedBounds' attributes, and the "
            "transform writes edge_weight): PyG collates the keys of a batch's first graph, "
            "so a first graph without edge_weight drops every graph's weights. Give every "
            "graph an edge_weight (ones where unweighted), e.g. by CertifiedBounds."
        )
    if w is None:
        w = edge_attr_weight(data)
    if y is None:
        y = getattr(data, "y", None)
        if y is None:
            raise ValueError("Expected 'y' (or data.y) with the observed signal.")
    if w is not None and w.is_complex():
        raise TypeError(f"Expected real edge weights in the PyG data (got dtype {w.dtype}).")
    if w is not None and w.numel() != ei.shape[1]:
        raise ValueError(
            f"Expected one edge weight per edge of edge_index ({ei.shape[1]}; data.edge_weight "
            f"or a 1-D edge_attr) (got {w.numel()} weights, shape {tuple(w.shape)})."
        )
    n = int(data.num_nodes)
    check_edge_index(ei, n)
    adj = to_scipy_sparse_matrix(ei.cpu(), None if w is None else w.detach().cpu().double(), n)
    return adj, y, getattr(data, "batch", None)
