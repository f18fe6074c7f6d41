"""Graphs and smooth signals for training and benchmarks."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .._validation import check_count, check_device, check_positive
from ._laplacian import HeatKernel, laplacian_matrix, validate_adjacency
from ._problem import GraphInverseProblem

__all__ = [
    "sensor_graph",
    "road_graph",
    "random_graph",
    "load_minnesota",
    "smooth_signal",
    "inpainting_problem",
]


def _connect(adj: Any, pts: np.ndarray | None = None):  # type: ignore[no-untyped-def]
    """Join every connected component to the largest one by one (shortest) edge."""
    import scipy.sparse as sp
    from scipy.sparse.csgraph import connected_components

    ncomp, labels = connected_components(adj, directed=False)
    if ncomp == 1:
        return adj
    big = np.bincount(labels).argmax()
    adj = sp.lil_matrix(adj)
    main = np.nonzero(labels == big)[0]
    if pts is not None:
        from scipy.spatial import cKDTree

        tree = cKDTree(pts[main])
    for c in range(ncomp):
        if c == big:
            continue
        nodes = np.nonzero(labels == c)[0]
        if pts is not None:
            dist, idx = tree.query(pts[nodes])
            i = int(np.argmin(dist))
            u, v = nodes[i], main[idx[i]]
        else:
            u, v = nodes[0], main[0]
        adj[u, v] = adj[v, u] = 1.0
    return sp.csr_matrix(adj)


def sensor_graph(n: int, *, k: int = 6, seed: int = 0):  # type: ignore[no-untyped-def]
    """Random sensor network: ``n`` uniform points in the unit square, symmetrized
    ``k``-nearest-neighbour graph with unit weights, made connected.

    Returns:
        ``(adjacency, coords)``: scipy CSR ``(n, n)`` and ``(n, 2)`` positions.
    """
    import scipy.sparse as sp
    from scipy.spatial import cKDTree

    if n < 2 or k < 1:
        raise ValueError(f"Expected n >= 2 and k >= 1 (got n={n}, k={k}).")
    rng = np.random.default_rng(seed)
    pts = rng.random((n, 2))
    _, idx = cKDTree(pts).query(pts, k=min(k, n - 1) + 1)
    rows = np.repeat(np.arange(n), idx.shape[1] - 1)
    cols = idx[:, 1:].ravel()
    adj = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))
    adj = ((adj + adj.T) > 0).astype(np.float64)
    return sp.csr_matrix(_connect(adj, pts)), pts


def road_graph(n: int, *, extra: float = 0.25, seed: int = 0):  # type: ignore[no-untyped-def]
    """Random planar road-like network: ``n`` uniform points in the unit square, the
    Euclidean minimum spanning tree of their Delaunay triangulation plus ``extra * n``
    further Delaunay edges drawn from the shorter half, unit weights.

    With the default ``extra = 0.25`` the mean degree is 2.5, as in the Minnesota road
    graph (2642 nodes, 3304 edges), with mostly degree-2 and -3 nodes.

    Returns:
        ``(adjacency, coords)``: scipy CSR ``(n, n)`` and ``(n, 2)`` positions.
    """
    import scipy.sparse as sp
    from scipy.sparse.csgraph import minimum_spanning_tree
    from scipy.spatial import Delaunay

    if n < 4 or not 0.0 <= extra <= 1.0:
        raise ValueError(f"Expected n >= 4 and 0 <= extra <= 1 (got n={n}, extra={extra}).")
    rng = np.random.default_rng(seed)
    pts = rng.random((n, 2))
    tri = Delaunay(pts).simplices
    e = np.sort(np.concatenate([tri[:, [0, 1]], tri[:, [1, 2]], tri[:, [0, 2]]]), axis=1)
    e = np.unique(e, axis=0)
    length = np.linalg.norm(pts[e[:, 0]] - pts[e[:, 1]], axis=1)
    w = sp.csr_matrix((length, (e[:, 0], e[:, 1])), shape=(n, n))
    tree = minimum_spanning_tree(w).tocoo()
    in_tree = sp.csr_matrix(
        (np.ones(tree.nnz), (np.minimum(tree.row, tree.col), np.maximum(tree.row, tree.col))),
        shape=(n, n),
    )
    rest = np.nonzero(np.asarray(in_tree[e[:, 0], e[:, 1]]).ravel() == 0)[0]
    rest = rest[np.argsort(length[rest], kind="stable")][: max(1, len(rest) // 2)]
    pick = rng.choice(rest, size=min(len(rest), int(round(extra * n))), replace=False)
    rows = np.concatenate([np.minimum(tree.row, tree.col), e[pick, 0]])
    cols = np.concatenate([np.maximum(tree.row, tree.col), e[pick, 1]])
    adj = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))
    adj = ((adj + adj.T) > 0).astype(np.float64)
    return sp.csr_matrix(adj), pts


def random_graph(kind: str, n: int, *, seed: int = 0) -> Any:
    """A connected ``networkx`` graph with about ``n`` nodes.

    Args:
        kind: ``"geometric"`` (random geometric, mean degree ~8), ``"grid"`` (2D grid),
            ``"sbm"`` (4-block stochastic block model), ``"ba"`` (Barabasi-Albert, m=2).
        n: target number of nodes (grid: nearest square; others: largest
            component joined to the rest).
        seed: random seed.

    Example:
        >>> import networkx as nx
        >>> g = random_graph("grid", 49)
        >>> nx.is_connected(g)
        True
    """
    import networkx as nx

    if kind == "geometric":
        radius = float(np.sqrt(8.0 / (np.pi * n)))
        G = nx.random_geometric_graph(n, radius, seed=seed)  # noqa: N806
    elif kind == "grid":
        side = max(2, int(round(np.sqrt(n))))
        G = nx.convert_node_labels_to_integers(nx.grid_2d_graph(side, side))  # noqa: N806
    elif kind == "sbm":
        sizes = [n // 4] * 3 + [n - 3 * (n // 4)]
        pin, pout = min(1.0, 12.0 / max(n // 4, 1)), min(1.0, 0.5 / max(n // 4, 1))
        probs = [[pin if i == j else pout for j in range(4)] for i in range(4)]
        G = nx.stochastic_block_model(sizes, probs, seed=seed)  # noqa: N806
    elif kind == "ba":
        G = nx.barabasi_albert_graph(n, 2, seed=seed)  # noqa: N806
    else:
        raise ValueError(f"Expected kind 'geometric', 'grid', 'sbm' or 'ba' (got {kind!r}).")
    G = nx.Graph(G)  # noqa: N806 - drop generator-specific attributes
    comps = list(nx.connected_components(G))
    if len(comps) > 1:
        comps.sort(key=len, reverse=True)
        anchor = next(iter(comps[0]))
        for c in comps[1:]:
            G.add_edge(next(iter(c)), anchor)
    return G


def load_minnesota():  # type: ignore[no-untyped-def]
    """The Minnesota road graph (2642 nodes) from PyGSP, as ``(adjacency, coords)``.

    Raises:
        ImportError: ``pygsp`` is not installed (``pip install pygsp``).
    """
    try:
        from pygsp import graphs
    except ImportError as exc:  # pragma: no cover - optional extra
        raise ImportError(
            "The Minnesota graph needs the optional 'pygsp' package (pip install pygsp)."
        ) from exc
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        g = graphs.Minnesota(connected=True)
    import scipy.sparse as sp

    adj = validate_adjacency(sp.csr_matrix(g.W, dtype=np.float64))
    return adj, np.asarray(g.coords)


def smooth_signal(
    adjacency: Any,
    num: int = 1,
    *,
    tau: float = 10.0,
    laplacian: str = "normalized",
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Smooth random signals: heat-filtered white noise ``exp(-tau L) w``, unit RMS.

    Args:
        adjacency: scipy sparse ``(n, n)``.
        num: number of signals.
        tau: diffusion time (larger: smoother, lower graph frequencies).
        laplacian: Laplacian used for the filter.
        seed: random seed.

    Returns:
        ``(num, n)`` tensor.

    Example:
        >>> import scipy.sparse as sp
        >>> adj = sp.diags([1.0, 1.0], [-1, 1], shape=(10, 10))
        >>> smooth_signal(adj, 3).shape
        torch.Size([3, 10])
    """
    num = check_count("num", num)
    check_positive("tau", tau, allow_zero=True)
    adj = validate_adjacency(adjacency)
    lap = laplacian_matrix(adj, laplacian)
    heat = HeatKernel(lap, tau, degree=40)
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(num, adj.shape[0], generator=gen, dtype=torch.float64)
    with torch.no_grad():
        x = heat(w)
    x = x - x.mean(-1, keepdim=True)
    x = x / x.pow(2).mean(-1, keepdim=True).sqrt().clamp(min=1e-30)
    return x.to(dtype)


def inpainting_problem(
    adjacency: Any,
    num: int = 1,
    *,
    observed: float = 0.5,
    noise: float | tuple[float, float] = 0.1,
    lam: float = 1.0,
    laplacian: str = "combinatorial",
    tau: float = 10.0,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> GraphInverseProblem:
    """A batch of inpainting problems on one graph: smooth signal, random mask, noise.

    Every signal gets its own random mask (each node observed with probability
    ``observed``; one random node per unobserved component is added so that the
    solution is unique) and noise level (uniform in ``noise`` if a range).

    Returns:
        a :class:`GraphInverseProblem` with ``num`` signals.

    Example:
        >>> import scipy.sparse as sp
        >>> adj = sp.diags([1.0, 1.0], [-1, 1], shape=(10, 10))
        >>> p = inpainting_problem(adj, 2)
        >>> p.y.shape
        torch.Size([2, 10])
    """
    from scipy.sparse.csgraph import connected_components

    device = check_device(device)
    num = check_count("num", num)
    if not 0.0 <= check_positive("observed", observed, allow_zero=True) <= 1.0:
        raise ValueError(f"Expected 0 <= observed <= 1 (got {observed!r}).")
    adj = validate_adjacency(adjacency)
    n = adj.shape[0]
    rng = np.random.default_rng(seed)
    x = smooth_signal(adj, num, tau=tau, seed=int(rng.integers(2**31)), dtype=torch.float64)
    mask = rng.random((num, n)) < observed
    ncomp, labels = connected_components(adj, directed=False)
    # the nodes of component c, ascending: members[bounds[c] : bounds[c + 1]]
    members = np.argsort(labels, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(labels, minlength=ncomp))])
    for b in range(num):
        seen = np.bincount(labels[mask[b]], minlength=ncomp)  # observed nodes per component
        for c in np.flatnonzero(seen == 0):
            mask[b, rng.choice(members[bounds[c] : bounds[c + 1]])] = True
    lo, hi = (noise, noise) if isinstance(noise, (int, float)) else noise
    sig = lo + (hi - lo) * rng.random((num, 1))
    y = (x.numpy() + sig * rng.standard_normal((num, n))) * mask
    yt = torch.as_tensor(y, dtype=dtype, device=device)
    return GraphInverseProblem.from_scipy(
        adj, yt, mask=torch.as_tensor(mask, device=device), lam=lam, laplacian=laplacian
    )
