"""PyG ``Data``/``Batch`` input for :class:`UnrolledGraphGD`, with per-graph quantities cached
on the data objects so that a ``torch_geometric.loader.DataLoader`` pipeline computes them
once per graph, not once per batch.

Attribute names read from a ``Data`` (one graph) or a ``Batch`` of them:

* ``y``: observations, ``(num_nodes,)`` (one signal) or ``(num_nodes, S)`` (S signals);
* ``mask``: observed nodes, same shape as ``y`` or ``(num_nodes,)`` shared by the signals
  (bool or 0/1; absent: every node observed);
* ``lam``: the regularization weight, a number or one entry per graph (absent: 1.0; all
  graphs of a batch must share it);
* ``edge_index`` and ``edge_weight`` (or a 1-D ``edge_attr``; absent: weight 1).

:class:`CertifiedBounds` (a PyG transform) adds per graph the certified spectral bounds and
the exact solution as attributes ``cert_lip``, ``cert_lo``, ``cert_jac_lo``, ``cert_jac_hi``
(``(1, S)`` each) and ``x_star`` (``(num_nodes, S)``); PyG's batching concatenates them and
:func:`problem_from_data` puts them into the problem's cache instead of recomputing.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ._problem import GraphInverseProblem

__all__ = ["CertifiedBounds", "problem_from_data", "is_pyg_data", "CACHED_ATTRS"]

#: Attributes :class:`CertifiedBounds` adds (graph-level ``(1, S)``; ``x_star``: node-level).
CACHED_ATTRS = ("cert_lip", "cert_lo", "cert_jac_lo", "cert_jac_hi", "x_star")

# the problem-cache keys the default bounds are stored under (see _spectral.bounds and
# _spectral.jacobi_interval: lipschitz(safety=1.01), lambda_min_bound(safety=0.95),
# jacobi_interval(safety=1.01, lo_safety=0.95))
_KEY_HI, _KEY_LO, _KEY_JAC = "bounds-1.01-0.95-hi", "bounds-1.01-0.95-lo", "jacobi-1.01-0.95"


def is_pyg_data(obj: Any) -> bool:
    """True for a PyG ``Data``/``Batch`` (anything derived from ``torch_geometric``'s
    ``BaseData``)."""
    try:
        from torch_geometric.data.data import BaseData
    except ImportError:  # pragma: no cover - torch_geometric is a dependency of unrollsci.graph
        return False
    return isinstance(obj, BaseData)


def _signals(data: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(y, mask)`` as ``(S, n)`` tensors (mask ``(1, n)`` when shared) from node-major data."""
    n = int(data.num_nodes)
    y = getattr(data, "y", None)
    if not isinstance(y, torch.Tensor):
        raise ValueError(
            "Expected data.y: the observations, a tensor (num_nodes,) or (num_nodes, S) "
            f"(got {type(y).__name__})."
        )
    if y.dim() not in (1, 2) or y.shape[0] != n:
        raise ValueError(
            f"Expected data.y of shape ({n},) or ({n}, S) (num_nodes first, as PyG batches "
            f"node attributes; got {tuple(y.shape)})."
        )
    y = y[:, None] if y.dim() == 1 else y
    mask = getattr(data, "mask", None)
    if mask is not None:
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"Expected data.mask to be a tensor (got {type(mask).__name__}).")
        if mask.dim() not in (1, 2) or mask.shape[0] != n:
            raise ValueError(
                f"Expected data.mask of shape ({n},) or ({n}, S) (got {tuple(mask.shape)})."
            )
        mask = mask[:, None] if mask.dim() == 1 else mask
        mask = mask.t()
    return y.t().contiguous(), mask


def _lam(data: Any) -> float:
    lam = getattr(data, "lam", None)
    if lam is None:
        return 1.0
    t = torch.as_tensor(lam, dtype=torch.float64).reshape(-1)
    if t.numel() == 0:
        raise ValueError("Expected data.lam to hold a number (got an empty tensor).")
    if not bool((t == t[0]).all()):
        raise ValueError(
            "Expected one lam for every graph of a batch (GraphInverseProblem has one "
            f"regularization weight; got {t.tolist()[:5]}). Batch graphs with equal lam."
        )
    return float(t[0])


def problem_from_data(data: Any, *, laplacian: str = "combinatorial") -> GraphInverseProblem:
    """The :class:`GraphInverseProblem` of a PyG ``Data``/``Batch`` (attributes: module doc).

    Where the data carry the attributes of :class:`CertifiedBounds`, the bounds and the exact
    solution are taken from them (no spectral computation, no solve).

    Example:
        >>> import torch
        >>> from torch_geometric.data import Data
        >>> ei = torch.tensor([[0, 1, 1, 2], [1, 0, 2, 1]])
        >>> d = Data(edge_index=ei, y=torch.tensor([1.0, 0.0, 3.0], dtype=torch.float64),
        ...          mask=torch.tensor([True, False, True]), lam=0.5, num_nodes=3)
        >>> problem_from_data(d).solve_exact().shape
        torch.Size([1, 3])
    """
    if not is_pyg_data(data):
        raise TypeError(f"Expected a PyG Data or Batch (got {type(data).__name__}).")
    y, mask = _signals(data)
    p = GraphInverseProblem.from_pyg(data, y, mask=mask, lam=_lam(data), laplacian=laplacian)
    cached = [getattr(data, a, None) for a in CACHED_ATTRS]
    if all(isinstance(c, torch.Tensor) for c in cached):
        lip, lo, jlo, jhi, xs = cached
        rows = 1 if p.mask is None else p.mask.shape[0]

        def per_row(t: torch.Tensor) -> np.ndarray:
            a = t.detach().cpu().double().numpy().T  # (S, num_graphs)
            return a[:rows] if rows < a.shape[0] else a

        if per_row(lip).shape == (rows, p.num_blocks) and xs.shape == (p.num_nodes, p.batch_size):
            p._cache[_KEY_HI] = per_row(lip)
            p._cache[_KEY_LO] = per_row(lo)
            p._cache[_KEY_JAC] = (per_row(jlo), per_row(jhi))
            # a copy: the problem's cache must not alias the caller's Data
            p._cache["exact-direct"] = xs.detach().t().double().to(p.device).clone()
    return p


class CertifiedBounds:
    """PyG transform: store a graph's certified bounds and exact solution on its ``Data``.

    Apply it once per graph (``dataset.transform`` with an in-memory dataset re-runs it on
    every access; prefer ``pre_transform`` or ``[CertifiedBounds()(d) for d in graphs]``).
    Adds ``cert_lip`` (``lipschitz()``), ``cert_lo`` (``lambda_min_bound()``),
    ``cert_jac_lo``/``cert_jac_hi`` (``jacobi_interval()``), each ``(1, S)``, and
    ``x_star`` (``(num_nodes, S)``). The values are exactly those the problem would compute.

    Example:
        >>> import torch
        >>> from torch_geometric.data import Data
        >>> ei = torch.tensor([[0, 1, 1, 2], [1, 0, 2, 1]])
        >>> d = Data(edge_index=ei, y=torch.tensor([1.0, 0.0, 3.0], dtype=torch.float64),
        ...          mask=torch.tensor([True, False, True]), num_nodes=3)
        >>> CertifiedBounds()(d).cert_lip.shape
        torch.Size([1, 1])
    """

    def __init__(self, laplacian: str = "combinatorial") -> None:
        self.laplacian = laplacian

    def __call__(self, data: Any) -> Any:
        if getattr(data, "batch", None) is not None:
            raise ValueError("Expected one graph (a Data), not a Batch: apply it per graph.")
        p = problem_from_data(data, laplacian=self.laplacian)
        s = p.batch_size
        data = data.clone()

        def graph_level(t: torch.Tensor) -> torch.Tensor:
            return t[:, 0].reshape(1, -1).expand(1, s).clone()

        data.cert_lip = graph_level(p.lipschitz())
        data.cert_lo = graph_level(p.lambda_min_bound())
        jlo, jhi = p.jacobi_interval()
        data.cert_jac_lo, data.cert_jac_hi = graph_level(jlo), graph_level(jhi)
        data.x_star = p.solve_exact().t().contiguous()
        return data

    def __repr__(self) -> str:
        return f"CertifiedBounds(laplacian={self.laplacian!r})"
