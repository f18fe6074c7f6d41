"""The matrix graph a learned preconditioner reads: :class:`MatrixGraph` and its features.

Built once per matrix (:func:`_build_graph`, numpy): the pattern of the learned factor, the
base factor's values, node and edge features of the Jacobi-scaled matrix, and the index
maps the GNN head uses. :class:`SystemBatch` is one training system built on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..operators import SparseOperator
from ._amg_setup import clip_f32
from ._incomplete import ic0_from_pattern, mic0_from_pattern
from ._sparse import LowerPattern, lower_pattern

__all__ = ["MatrixGraph", "NodeGraph", "SystemBatch"]


@dataclass
class MatrixGraph:
    """Everything the GNN and the preconditioner need about one matrix (built once).

    The GNN sees the Jacobi-scaled matrix ``S = D^{-1/2} A D^{-1/2}`` (unit diagonal), so
    a trained model is invariant to the scale of the coefficients.
    """

    n: int
    pattern: LowerPattern  # pattern of the learned factor
    base: torch.Tensor  # (nnz,) base factor values for S on the pattern
    dsqrt: torch.Tensor  # (n,) sqrt(diag(A))
    x: torch.Tensor  # (n, F) node features
    lo_i: torch.Tensor  # (E/2,) row i and column j of each strict-lower entry of A, i.e.
    lo_j: torch.Tensor  # of the edges j -> i (reversed, i -> j: see edge_index())
    edge_attr: torch.Tensor  # (E/2, F) features of the edges j -> i, i > j (full_edge_attr)
    low_fwd: torch.Tensor  # for strict-lower pattern entries (i, j): edge j -> i (its
    # reverse i -> j is edge low_fwd + E/2)
    aligned: bool  # low_fwd == arange(E/2): the lower edges are the pattern's entries
    strict: torch.Tensor  # bool mask over the pattern: off-diagonal entries
    shift: float  # IC(0) diagonal shift used for the base (0 when none)
    ri: torch.Tensor  # row / column of each strict-lower pattern entry
    ci: torch.Tensor
    matrix: Any = None  # A itself (scipy CSR), kept for kind="poly"
    cache: dict = field(default_factory=dict)  # per-graph objects built on first use
    # Base-only constants of factor_values (float64): positions of the strict entries, base
    # diagonal and strict values, the base's row ratios sum_j |b_ij / b_ii|, sqrt(d_i) of
    # each strict entry's row.
    consts: dict[str, torch.Tensor] = field(default_factory=dict)
    # With an ordering: the graph is that of P A P^T, perm[k] the unknown of A placed k-th,
    # iperm its inverse (kept: from_graph runs at every training step)
    perm: torch.Tensor | None = None
    iperm: torch.Tensor | None = None
    ordering: str | None = None

    def edge_index(self) -> torch.Tensor:
        """``(2, E)`` directed edges, source -> target: the strict-lower entries ``j -> i``,
        then their reverses (built on first use: only message passing needs it; outside
        ``torch.inference_mode()``, so a first use under it leaves training working)."""
        ei = self.cache.get("edge_index")
        if ei is None:
            with torch.inference_mode(False):
                i, j = self.lo_i, self.lo_j
                ei = torch.stack([torch.cat([j, i]), torch.cat([i, j])])
            self.cache["edge_index"] = ei
        return ei

    def full_edge_attr(self) -> torch.Tensor:
        """``(E, F)`` features of every directed edge, in ``edge_index()`` order: the reverse
        edge ``i -> j`` has the features of ``j -> i`` times ``_EDGE_FLIP``."""
        flip = torch.tensor(_EDGE_FLIP, dtype=self.edge_attr.dtype, device=self.edge_attr.device)
        return torch.cat([self.edge_attr, self.edge_attr * flip])

    def to(self, device: torch.device | str) -> MatrixGraph:
        return MatrixGraph(
            self.n,
            self.pattern.to(device),
            self.base.to(device),
            self.dsqrt.to(device),
            self.x.to(device),
            self.lo_i.to(device),
            self.lo_j.to(device),
            self.edge_attr.to(device),
            self.low_fwd.to(device),
            self.aligned,
            self.strict.to(device),
            self.shift,
            self.ri.to(device),
            self.ci.to(device),
            self.matrix,
            consts={k: v.to(device) for k, v in self.consts.items()},
            perm=None if self.perm is None else self.perm.to(device),
            iperm=None if self.iperm is None else self.iperm.to(device),
            ordering=self.ordering,
        )


@dataclass
class NodeGraph:
    """Node features only: what a learned AMG without message passing (``layers=0``) reads
    (its per-entry features live in the AMG setup, ``cache["amg"]``)."""

    n: int
    x: torch.Tensor  # (n, 5) node features, as MatrixGraph's
    cache: dict = field(default_factory=dict)
    perm: torch.Tensor | None = None
    iperm: torch.Tensor | None = None
    ordering: str | None = None

    def to(self, device: torch.device | str) -> NodeGraph:
        return NodeGraph(self.n, self.x.to(device), dict(self.cache))


#: Edge features of the reverse edge j -> i are these signs times those of i -> j (entry
#: and base value are symmetric, the direction sign and the log-diagonal ratio flip).
_EDGE_FLIP = (1.0, 1.0, -1.0, -1.0)


def _build_graph(a: Any, kind: str, base: str, block_size: int | None) -> MatrixGraph:
    import scipy.sparse as sp

    n = a.shape[0]
    d = a.diagonal()
    dis = 1.0 / np.sqrt(d)
    # a is canonical CSR (check_spd_input): scale its entries in place of two products.
    rows_all = np.repeat(np.arange(n), np.diff(a.indptr))
    cols_all = a.indices.astype(np.int64)
    sv = a.data * dis[rows_all] * dis[cols_all]
    s = sp.csr_matrix((sv, a.indices, a.indptr), shape=(n, n))
    keep = None
    if kind == "block":
        lower = cols_all <= rows_all
        keep = (rows_all[lower] // block_size) == (cols_all[lower] // block_size)
    elif kind == "poly":  # no factor: a diagonal pattern keeps the shared code cheap
        keep = np.zeros(int((cols_all <= rows_all).sum()), dtype=bool)
    pat, svals = lower_pattern(s, keep=keep)
    row, col = pat.row.numpy(), pat.col.numpy()
    strict = col < row
    shift = 0.0
    if base == "ic0":
        bvals, shift = ic0_from_pattern(pat, svals)
    elif base == "mic":
        # MIC of A itself (its row sums, i.e. the constant vector, are what the
        # compensation preserves), rescaled to the factor of S = D^-1/2 A D^-1/2.
        sq = np.sqrt(d)
        bvals = mic0_from_pattern(pat, svals * sq[row] * sq[col])[0] / sq[row]
    elif base == "ssor":
        bvals = np.where(strict, svals, 1.0)
    else:
        bvals = np.where(strict, 0.0, 1.0)
    # Directed edges: first every strict-lower entry S_ij (j -> i) in CSR order, then the
    # same entries transposed (i -> j), so edge k + half is the reverse of edge k. Only the
    # forward edges' features are stored (the reverse ones follow by _EDGE_FLIP).
    lo = cols_all < rows_all
    li, lj, lv = rows_all[lo], cols_all[lo], sv[lo]
    half = li.size
    sidx = np.flatnonzero(strict)
    bdiag = bvals[pat.diag.numpy()]
    bstrict = bvals[sidx]
    aligned = kind not in ("block", "poly")
    if aligned:  # the pattern's strict entries are the lower edges, in the same order
        ri, ci, fwd, ebase = li, lj, np.arange(half), bstrict
    else:  # pattern entries are a subset of the lower edges
        ri, ci = row[sidx], col[sidx]
        fwd = np.searchsorted(li * n + lj, ri * n + ci)
        ebase = np.zeros(half)
        ebase[fwd] = bstrict
    logd = np.log(d)
    tf = np.tanh(0.5 * (logd[lj] - logd[li]))
    # Features are stored feature-major ((F, E/2), (F, n)) and exposed as transposed views:
    # the factor head reads them that way round (see factor_values).
    edge_attr = np.empty((4, half), dtype=np.float32)
    # the base factor's values (MIC's diagonal, on badly row-scaled matrices) may lie
    # beyond float32's range: clipped to it before the float32 cast
    edge_attr[0], edge_attr[1], edge_attr[2], edge_attr[3] = lv, clip_f32(ebase), 1.0, tf
    # Node features: sums over the edges into each node, both directions.
    deg = (np.bincount(li, minlength=n) + np.bincount(lj, minlength=n)).astype(np.float64)
    alv = np.abs(lv)
    x = np.empty((5, n), dtype=np.float32)
    x[0] = np.bincount(li, lv, n) + np.bincount(lj, lv, n) + 1.0
    x[1] = np.bincount(li, alv, n) + np.bincount(lj, alv, n)
    x[2] = deg / 8.0
    x[3] = clip_f32(bdiag)
    x[4] = (np.bincount(li, tf, n) - np.bincount(lj, tf, n)) / np.maximum(deg, 1)
    consts = {
        "sidx": sidx,
        "bdiag": bdiag,
        "bstrict": bstrict,
        "ratio": np.bincount(ri, np.abs(bstrict / bdiag[ri]), n),
        "row_scale_strict": np.sqrt(d)[ri],
    }
    return MatrixGraph(
        n=n,
        pattern=pat,
        base=torch.from_numpy(bvals),
        dsqrt=torch.from_numpy(np.sqrt(d)),
        x=torch.from_numpy(x).T,
        lo_i=torch.from_numpy(li),
        lo_j=torch.from_numpy(lj),
        edge_attr=torch.from_numpy(edge_attr).T,
        low_fwd=torch.from_numpy(fwd.astype(np.int64)),
        aligned=aligned,
        strict=torch.from_numpy(strict),
        shift=float(shift),
        ri=torch.from_numpy(ri),
        ci=torch.from_numpy(ci),
        consts={k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in consts.items()},
        matrix=a if kind == "poly" else None,
    )


def _split_edges(g: MatrixGraph, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of the per-edge tensor ``e`` for the pattern's strict-lower entries ``(i, j)``:
    the edge ``j -> i`` and its reverse ``i -> j``."""
    if g.aligned:
        half = e.shape[0] // 2
        return e[:half], e[half:]
    return e[g.low_fwd], e[g.low_fwd + e.shape[0] // 2]


@dataclass
class SystemBatch:
    """One training system: its graph, operator, right-hand sides and solutions."""

    graph: MatrixGraph
    op: SparseOperator
    b: torch.Tensor  # (nrhs, n)
    x: torch.Tensor  # (nrhs, n) exact solutions
    steps: int | None = None  # unroll length for this system (None: the loss's default)
