"""PyG ``Data``/``Batch`` input for :class:`UnrolledGraphGD`, with per-graph quantities cached
on the data objects so that a ``torch_geometric.loader.DataLoader`` pipeline computes them
once per graph, not once per batch.

Attribute names read from a ``Data`` (one graph) or a ``Batch`` of them:

* ``y``: observations, ``(num_nodes,)`` (one signal) or ``(num_nodes, S)`` (S signals);
* ``mask``: observed nodes, same shape as ``y`` or ``(num_nodes,)`` shared by the signals
  (bool or 0/1; absent: every node observed);
* ``lam``: the regularization weight, a number or one entry per graph (absent: 1.0; all
  graphs of a batch must share it; PyG batches a Python float as float32, read back as
  the shortest decimal that rounds to it, with a warning: pass a float64 tensor);
* ``edge_index`` and ``edge_weight`` (or a 1-D ``edge_attr``; absent: weight 1).

:class:`CertifiedBounds` (a PyG transform) adds per graph the certified spectral bounds and
the exact solution as attributes ``cert_lip``, ``cert_lo``, ``cert_jac_lo``, ``cert_jac_hi``
(``(1, S)`` each) and ``x_star`` (``(num_nodes, S)``); PyG's batching concatenates them and
:func:`problem_from_data` puts them into the problem's cache instead of recomputing. Beside
them it stores ``cert_key`` (``(1, 32)`` uint8), a SHA-256 fingerprint of what they were
computed for (the Laplacian kind, ``lam``, the graph's Laplacian, ``y`` and ``mask``),
``cert_graph_key`` (``(1, 32)`` uint8), that of the graph alone (edges and weights), and
``cert_laplacian`` (the Laplacian kind, a string); the values are used only for a graph
whose fingerprint matches the problem built (else computed again, as without the
transform; with an ``UnrollsciWarning`` where the graph itself changed), and
``cert_laplacian`` is the Laplacian kind of the problem when the caller gives none (so
``model(data)`` uses the transform's kind). The transform always writes ``edge_weight``
(ones for an unweighted graph) and ``mask`` (ones, ``(num_nodes,)``, for a graph without
one): PyG collates the keys of a batch's first graph, so a first graph without them would
drop every graph's weights or masks; data with the transform's ``cert_graph_key`` but no
``edge_weight`` are refused (``ValueError``), and so are data without a mask whose stored
fingerprint proves a graph had one with unobserved nodes (a batch of graphs processed by
an earlier version, which wrote no mask, whose first graph had none).
"""

from __future__ import annotations

import hashlib
import math
import warnings
from typing import Any

import numpy as np
import torch

from .._validation import UnrollsciWarning
from ._convert import CERT_GRAPH_ATTR, edge_attr_weight
from ._problem import GraphInverseProblem

__all__ = ["CertifiedBounds", "problem_from_data", "is_pyg_data", "CACHED_ATTRS"]

#: Attributes :class:`CertifiedBounds` adds (graph-level ``(1, S)``; ``x_star``: node-level).
CACHED_ATTRS = ("cert_lip", "cert_lo", "cert_jac_lo", "cert_jac_hi", "x_star")

# the problem-cache keys the default bounds are stored under (see _spectral.bounds and
# _spectral.jacobi_interval: lipschitz(safety=1.01), lambda_min_bound(safety=0.95),
# jacobi_interval(safety=1.01, lo_safety=0.95))
_KEY_HI, _KEY_LO, _KEY_JAC = "bounds-1.01-0.95-hi", "bounds-1.01-0.95-lo", "jacobi-1.01-0.95"
#: The fingerprint (``(1, 32)`` uint8 per graph) and the Laplacian kind stored beside them.
_FP_ATTR, _KIND_ATTR = "cert_key", "cert_laplacian"
#: The fingerprint of the graph alone (``(1, 32)`` uint8 per graph), also stored.
_GRAPH_ATTR = CERT_GRAPH_ATTR


def _hash_rows(h: Any, mat: Any, s: int, e: int) -> None:
    """Feed ``h`` the CSR rows ``s:e`` of ``mat`` with node ids local to the block (equal
    for a graph alone and in a batch): sizes, row pointers, columns, float64 values."""
    a, b = int(mat.indptr[s]), int(mat.indptr[e])
    h.update(np.asarray([e - s, b - a], dtype=np.int64).tobytes())
    h.update((np.asarray(mat.indptr[s : e + 1], dtype=np.int64) - a).tobytes())
    h.update((np.asarray(mat.indices[a:b], dtype=np.int64) - s).tobytes())
    h.update(np.ascontiguousarray(mat.data[a:b], dtype=np.float64).tobytes())


def _fingerprints(p: GraphInverseProblem) -> list[bytes]:
    """Per graph (block) of a mask problem: SHA-256 of its Laplacian kind, ``lam``, its
    rows of the Laplacian (the block's CSR arrays, node ids local to the block: equal for
    a graph alone and in a batch), and its columns of ``y`` and of the mask; the bounds
    and ``x*`` depend on nothing else."""
    y, m = p.y.detach().cpu(), None if p.mask is None else p.mask.detach().cpu()
    ptr = p.block_ptr
    return [
        _block_key(p, y, k, None if m is None else m[:, ptr[k] : ptr[k + 1]])
        for k in range(p.num_blocks)
    ]


def _block_key(p: GraphInverseProblem, y: torch.Tensor, k: int, mask: torch.Tensor | None) -> bytes:
    """The fingerprint of block ``k`` of ``p`` (:func:`_fingerprints`; ``y``: ``p.y`` on the
    CPU) with the block's columns ``mask`` (``(rows, n_k)`` in ``y``'s dtype: ``p.mask``'s
    rows) or no mask."""
    s, e = int(p.block_ptr[k]), int(p.block_ptr[k + 1])
    h = hashlib.sha256(
        f"unrollsci-cert-1:{p.laplacian_kind}:{p.lam!r}:{y.dtype}:{y.shape[0]}:".encode()
    )
    _hash_rows(h, p.lap_scipy, s, e)
    h.update(y[:, s:e].contiguous().numpy().tobytes())
    if mask is None:
        h.update(b"no-mask")
    else:
        h.update(f"mask:{mask.shape[0]}:".encode())
        h.update(mask.contiguous().numpy().tobytes())
    return h.digest()


def _dropped_masks(data: Any, p: GraphInverseProblem) -> list[int]:
    """The graphs of ``p`` (built from data without a mask) that :class:`CertifiedBounds`
    saw with a mask leaving nodes unobserved: their stored fingerprint is that of the same
    graph, ``lam`` and ``y`` with that mask, which is read off the stored ``x_star`` (``m_i
    (x*_i - y_i) + lam (L x*)_i = 0``: observed where the first term cancels the second,
    unobserved where ``(L x*)_i = 0``) and proved by the fingerprint. Cheap (two sparse
    products), and run only where the fingerprints do not match."""
    fp, xs = getattr(data, _FP_ATTR, None), getattr(data, "x_star", None)
    if (
        p.mask is not None
        or not isinstance(fp, torch.Tensor)
        or tuple(fp.shape) != (p.num_blocks, 32)
        or not isinstance(xs, torch.Tensor)
        or tuple(xs.shape) != (p.num_nodes, p.batch_size)
    ):
        return []
    got = fp.detach().cpu().to(torch.uint8).numpy()
    x = xs.detach().cpu().double().numpy().T  # (S, n)
    yt = p.y.detach().cpu()
    y = yt.double().numpy()
    lap = p.lap_scipy
    lx = p.lam * (lap @ x.T).T
    # the rounding of x* to y's dtype, of the products, and a CG solve's residual (1e-12)
    tol = (
        4 * torch.finfo(p.dtype).eps * (np.abs(x) + np.abs(y) + p.lam * (abs(lap) @ np.abs(x).T).T)
    )
    out = []
    for k in range(p.num_blocks):
        s, e = int(p.block_ptr[k]), int(p.block_ptr[k + 1])
        t = tol[:, s:e] + 1e-10 * np.linalg.norm(y[:, s:e], axis=1, keepdims=True)
        o = np.abs(x[:, s:e] - y[:, s:e] + lx[:, s:e]) <= t
        f = np.abs(lx[:, s:e]) <= t
        if not (o | f).all():
            continue  # no mask explains x* (y, lam or the graph changed)
        for cand in (o, o & ~f):  # nodes where both hold: observed, then unobserved
            if cand.all():
                continue  # all observed: the problem without a mask is the same
            m = torch.as_tensor(cand, dtype=p.dtype)
            shapes = [m] + ([m[:1]] if m.shape[0] > 1 and bool((m == m[:1]).all()) else [])
            if any(_block_key(p, yt, k, c) == bytes(got[k]) for c in shapes):
                out.append(k)
                break
    return out


def _graph_fingerprints(p: GraphInverseProblem) -> list[bytes]:
    """Per graph (block): SHA-256 of its rows of the canonical adjacency (node ids local to
    the block), the graph alone: its edges and weights, not the Laplacian kind, ``y`` or
    the mask."""
    adj = p.adjacency
    out = []
    for k in range(p.num_blocks):
        h = hashlib.sha256(b"unrollsci-graph-1:")
        _hash_rows(h, adj, int(p.block_ptr[k]), int(p.block_ptr[k + 1]))
        out.append(h.digest())
    return out


def _changed_graphs(data: Any, p: GraphInverseProblem) -> list[int]:
    """The graphs of ``p`` whose stored graph fingerprint (:data:`_GRAPH_ATTR`) differs
    from the graph given (edges or weights changed after :class:`CertifiedBounds`); empty
    where the data carry none (e.g. processed by an earlier version)."""
    fp = getattr(data, _GRAPH_ATTR, None)
    if not isinstance(fp, torch.Tensor) or tuple(fp.shape) != (p.num_blocks, 32):
        return []
    got = fp.detach().cpu().to(torch.uint8).numpy()
    return [k for k, d in enumerate(_graph_fingerprints(p)) if bytes(got[k]) != d]


def _stored_kind(data: Any) -> str | None:
    """The Laplacian kind :class:`CertifiedBounds` stored (one for every graph), or None."""
    kind = getattr(data, _KIND_ATTR, None)
    kinds = {kind} if isinstance(kind, str) else set(kind) if isinstance(kind, list) else set()
    if len(kinds) > 1:
        raise ValueError(
            "Expected one Laplacian kind for every graph of a batch (the graphs' "
            f"CertifiedBounds used {sorted(kinds)}); pass laplacian= to choose one."
        )
    return kinds.pop() if kinds else None


def _matches(data: Any, p: GraphInverseProblem) -> bool:
    """True when the stored fingerprints are those of every graph of ``p``."""
    fp = getattr(data, _FP_ATTR, None)
    if not isinstance(fp, torch.Tensor) or tuple(fp.shape) != (p.num_blocks, 32):
        return False
    got = fp.detach().cpu().to(torch.uint8).numpy()
    return all(bytes(got[k]) == d for k, d in enumerate(_fingerprints(p)))


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


def _lam(data: Any, dtype: torch.dtype) -> float:
    """``data.lam`` (one number for the batch; 1.0 if absent) for a problem in ``dtype``.

    PyG batches a Python float as a float32 tensor: for a float64 problem such a ``lam``
    (0.7 collated as 0.699999988...) is read as the shortest decimal that rounds to it
    (0.7), with a warning saying so (pass ``lam`` as a float64 tensor to give it exactly)."""
    lam = getattr(data, "lam", None)
    if lam is None:
        return 1.0
    bits = torch.finfo(dtype).bits if dtype.is_floating_point else 64
    low = isinstance(lam, torch.Tensor) and lam.is_floating_point()
    low = low and torch.finfo(lam.dtype).bits < bits
    t = torch.as_tensor(lam, dtype=torch.float64).reshape(-1)
    if t.numel() == 0:
        raise ValueError("Expected data.lam to hold a number (got an empty tensor).")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(
            f"Expected a finite data.lam >= 0 (got {t.tolist()[:5]}): the regularization "
            "weight of the problem."
        )
    if not bool((t == t[0]).all()):
        raise ValueError(
            "Expected one lam for every graph of a batch (GraphInverseProblem has one "
            f"regularization weight; got {t.tolist()[:5]}). Batch graphs with equal lam."
        )
    value = float(t[0])
    first = lam.reshape(-1)[0].cpu() if low else None
    if first is not None and first.dtype != torch.bfloat16 and math.isfinite(value):
        # numpy's repr of a float16 / float32 is the shortest decimal that rounds to it
        short = float(str(first.numpy()))
        if short == value:  # exactly representable (1.0, 0.5): nothing was rounded
            return value
        warnings.warn(
            f"data.lam is {lam.dtype} for a {dtype} problem (PyG batches Python floats as "
            f"float32): read {value!r} as {short!r}, the shortest decimal that rounds to it; "
            "pass lam as a float64 tensor (or use the CertifiedBounds transform) to give it "
            "exactly.",
            UnrollsciWarning,
            stacklevel=3,
        )
        value = short
    return value


def problem_from_data(data: Any, *, laplacian: str | None = None) -> GraphInverseProblem:
    """The :class:`GraphInverseProblem` of a PyG ``Data``/``Batch`` (attributes: module doc).

    Where the data carry the attributes of :class:`CertifiedBounds` and their fingerprint
    matches (same Laplacian kind, ``lam``, graph, ``y`` and mask), the bounds and the exact
    solution are taken from them (no spectral computation, no solve); else they are
    computed as without the transform, with an ``UnrollsciWarning`` where the graph itself
    (its edges or weights) differs from the one the transform saw. Data carrying the
    transform's attributes without ``edge_weight`` (a batch whose first graph had none
    drops every graph's weights), or without the mask the transform saw on a graph
    (:func:`_dropped_masks`), are refused (``ValueError``). ``laplacian``: the
    Laplacian kind; None (default): the kind :class:`CertifiedBounds` stored on the
    data, else ``"combinatorial"``.

    Example:
        >>> import torch
        >>> from torch_geometric.data import Data
        >>> ei = torch.tensor([[0, 1, 1, 2], [1, 0, 2, 1]])
        >>> d = Data(edge_index=ei, y=torch.tensor([1.0, 0.0, 3.0], dtype=torch.float64),
        ...          mask=torch.tensor([True, False, True]), lam=0.5, num_nodes=3)
        >>> problem_from_data(d).solve_exact().shape
        torch.Size([1, 3])
    """
    return _problem(data, laplacian, warn_changed=True)


def _problem(data: Any, laplacian: str | None, *, warn_changed: bool) -> GraphInverseProblem:
    """:func:`problem_from_data`; ``warn_changed``: warn when the stored values are for
    another graph (not when :class:`CertifiedBounds` itself replaces them)."""
    if not is_pyg_data(data):
        raise TypeError(f"Expected a PyG Data or Batch (got {type(data).__name__}).")
    y, mask = _signals(data)
    if laplacian is None:
        laplacian = _stored_kind(data) or "combinatorial"
    p = GraphInverseProblem.from_pyg(
        data, y, mask=mask, lam=_lam(data, y.dtype), laplacian=laplacian
    )
    cached = [getattr(data, a, None) for a in CACHED_ATTRS]
    if not all(isinstance(c, torch.Tensor) for c in cached):
        return p
    if not _matches(data, p):
        dropped = _dropped_masks(data, p) if warn_changed else []
        if dropped:
            raise ValueError(
                "Expected data.mask on every graph of a batch or on none (got data without "
                f"mask whose graph(s) {dropped[:5]}{'...' if len(dropped) > 5 else ''} "
                "CertifiedBounds saw with a mask leaving nodes unobserved): PyG collates the "
                "keys of a batch's first graph, so a first graph without a mask drops every "
                "graph's mask, and their unobserved nodes would be solved as observations of "
                "0. Apply CertifiedBounds again (it writes a mask of ones where there is "
                "none; earlier versions did not), or give every graph a mask."
            )
        changed = _changed_graphs(data, p) if warn_changed else []
        if changed:
            warnings.warn(
                f"Graph(s) {changed[:5]}{'...' if len(changed) > 5 else ''} of the data "
                "differ from the graph(s) CertifiedBounds certified (edges or edge weights "
                "changed after the transform): their stored bounds and x_star are ignored "
                "and computed again for the graph given. Apply CertifiedBounds after the "
                "change to keep them.",
                UnrollsciWarning,
                stacklevel=3,
            )
        return p
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
    Also adds ``cert_key``, their fingerprint (Laplacian kind, ``lam``, graph, ``y``, mask:
    a later change of any of these makes :func:`problem_from_data` compute them again, with
    an ``UnrollsciWarning`` for a change of the graph), ``cert_graph_key``, the graph's
    alone, and ``cert_laplacian``, the Laplacian kind, which :func:`problem_from_data` (and
    so ``model(data)``) uses when not given one. A ``lam`` given as a Python number (or
    absent) is stored as a ``(1,)`` float64 tensor: PyG batches Python floats as float32.
    ``edge_weight`` is always written (where absent: the 1-D ``edge_attr`` the weights came
    from, else ones in ``y``'s dtype), and so is ``mask`` (where absent: ``(num_nodes,)``
    bool ones, shared by the signals: the same problem as without a mask, bit for bit), so
    that graphs with and without weights or masks batch together without losing any (a
    graph with ``(num_nodes, S)`` masks needs them on every graph of its batch).

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
        data = data.clone()
        y = getattr(data, "y", None)
        if getattr(data, "mask", None) is None and isinstance(y, torch.Tensor):
            # always written (ones, shared by the signals): PyG collates the keys of a
            # batch's first graph, so a first graph without one would drop every mask
            data.mask = torch.ones(y.shape[0], dtype=torch.bool, device=y.device)
        p = _problem(data, self.laplacian, warn_changed=False)
        s = p.batch_size
        if getattr(data, "edge_weight", None) is None:
            # always written: PyG collates the keys of a batch's first graph, so a first
            # graph without it would drop the weights of every other graph
            # (the weights the problem used: a 1-D edge_attr, else ones)
            ea = edge_attr_weight(data)
            data.edge_weight = (
                ea.detach().clone()
                if ea is not None
                else torch.ones(
                    data.edge_index.shape[1], dtype=p.y.dtype, device=data.edge_index.device
                )
            )

        def graph_level(t: torch.Tensor) -> torch.Tensor:
            return t[:, 0].reshape(1, -1).expand(1, s).clone()

        data.cert_lip = graph_level(p.lipschitz())
        data.cert_lo = graph_level(p.lambda_min_bound())
        jlo, jhi = p.jacobi_interval()
        data.cert_jac_lo, data.cert_jac_hi = graph_level(jlo), graph_level(jhi)
        data.x_star = p.solve_exact().t().contiguous()
        if not isinstance(getattr(data, "lam", None), torch.Tensor):
            # PyG batches a Python float as float32: a (1,) float64 tensor keeps lam exact
            # in a Batch (else its graphs would no longer match their fingerprints)
            data.lam = torch.tensor([p.lam], dtype=torch.float64)
        key = torch.tensor(list(_fingerprints(p)[0]), dtype=torch.uint8)
        setattr(data, _FP_ATTR, key[None])
        graph_key = torch.tensor(list(_graph_fingerprints(p)[0]), dtype=torch.uint8)
        setattr(data, _GRAPH_ATTR, graph_key[None])
        setattr(data, _KIND_ATTR, self.laplacian)
        return data

    def __repr__(self) -> str:
        return f"CertifiedBounds(laplacian={self.laplacian!r})"
