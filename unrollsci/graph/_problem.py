"""Laplacian-regularized linear inverse problems on graphs.

    min_x  f(x) = 0.5 ||A x - y||^2 + 0.5 lam x^T L x,      grad f = H x - A^T y,
    H = A^T A + lam L.

The problem object holds the graph (one graph or a block-diagonal batch of graphs),
the forward operator, the data (a batch of signals) and everything the solvers
need: gradient, Hessian products, objective per graph, spectral bounds and the
exact solution.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .._validation import check_finite, check_tensor
from ..operators import LinearOperator, Mask, SparseOperator
from ._laplacian import HeatKernel, laplacian_matrix, validate_adjacency

__all__ = ["GraphInverseProblem"]

_DENSE_MAX = 800  # blocks up to this size get exact dense eigenvalues
_RANK_DENSE_MAX = 4_000_000  # identifiability: dense rank of (components x m) up to this
_CHUNK_ENTRIES = 4_000_000  # identifiability: entries per batch of operator applications


def _is_pd(a: Any, tol: float = 0.0) -> bool:
    """True if the symmetric sparse matrix ``a`` is positive definite.

    Sylvester's law of inertia: SuperLU in symmetric mode without row pivoting
    (``diag_pivot_thresh=0``) factors ``P a P^T = L U`` with ``U = D L^T``; ``a`` is
    positive definite iff every pivot ``D_ii`` is positive. Any failure (a zero
    pivot, an unsymmetric permutation) answers False. With ``tol > 0`` every pivot must
    exceed ``tol`` (for a matrix with unit diagonal: numerically positive definite).
    """
    from scipy.sparse.linalg import splu

    try:
        lu = splu(
            a.tocsc(),
            permc_spec="MMD_AT_PLUS_A",
            diag_pivot_thresh=0.0,
            options={"SymmetricMode": True},
        )
    except Exception:  # noqa: BLE001 - singular matrix
        return False
    if not np.array_equal(lu.perm_r, lu.perm_c):
        return False
    d = lu.U.diagonal()
    return bool(np.all(np.isfinite(d)) and np.all(d > tol))


class _Hessian(LinearOperator):
    """``H = A^T A + lam L`` of a problem, as a LinearOperator (per-sample masks allowed)."""

    def __init__(self, problem: GraphInverseProblem) -> None:
        super().__init__()
        self.problem = problem
        n = problem.num_nodes
        self.in_shape = self.out_shape = (n,)

    @property
    def device(self) -> torch.device | None:
        return self.problem.y.device

    def _mv(self, x: torch.Tensor) -> torch.Tensor:
        return self.problem.hessian(x)

    def _rmv(self, y: torch.Tensor) -> torch.Tensor:
        return self.problem.hessian(y)


class GraphInverseProblem:
    """Recover a signal on the nodes of a graph from ``y = A x + noise``.

    Solves ``min_x 0.5 ||A x - y||^2 + 0.5 lam x^T L x`` for a batch of signals. The
    forward operator ``A`` is one of

    * a sampling mask (``mask=``: ``(n,)`` shared or ``(batch, n)`` per signal, or a
      :class:`unrollsci.operators.Mask`): ``A x = mask * x`` (inpainting);
    * ``operator="heat"``: the heat kernel ``exp(-tau L)`` (graph blur) by Chebyshev
      polynomials of ``L`` (optionally followed by a mask);
    * any :class:`~unrollsci.operators.LinearOperator` with ``in_shape == (n,)``
      (optionally followed by a mask on its output).

    A block-diagonal batch of graphs (a PyG ``Batch``) is one problem whose nodes
    carry a ``graph_index``; for masks and the heat kernel every graph is its own
    system (its own objective, spectral bounds and steps). A general operator may
    couple the graphs, so the whole batch is then treated as one block.

    Use the constructors :meth:`from_networkx`, :meth:`from_pyg`, :meth:`from_scipy`.

    Attributes:
        y: ``(batch, m)`` data. ``num_nodes``: n. ``lam``: regularization weight.
        block_index: ``(n,)`` block (graph) of each node; ``num_blocks`` blocks.
        edge_index, edge_weight: the graph in PyG form (both directions).

    Example:
        >>> import networkx as nx, torch
        >>> from unrollsci.graph import GraphInverseProblem
        >>> G = nx.cycle_graph(6)
        >>> y = torch.arange(6.0, dtype=torch.float64)
        >>> p = GraphInverseProblem.from_networkx(G, y, mask=torch.tensor([1, 0, 1, 0, 1, 0]))
        >>> p.solve_exact().shape
        torch.Size([1, 6])
    """

    def __init__(
        self,
        adjacency: Any,
        y: torch.Tensor,
        *,
        mask: Any = None,
        operator: Any = None,
        lam: float = 1.0,
        laplacian: str = "combinatorial",
        graph_index: Any = None,
        tau: float = 1.0,
        heat_degree: int = 30,
    ) -> None:
        adj = validate_adjacency(adjacency)
        n = adj.shape[0]
        if isinstance(lam, torch.Tensor):
            if lam.numel() != 1:
                raise ValueError(f"Expected a scalar 'lam' (got shape {tuple(lam.shape)}).")
            lam = float(lam)
        if not isinstance(lam, (int, float)) or isinstance(lam, bool):
            raise TypeError(f"Expected 'lam' to be a float (got {type(lam).__name__}).")
        if not math.isfinite(lam) or lam < 0:
            raise ValueError(f"Expected lam >= 0 and finite (got {lam!r}).")
        check_tensor("y", y, ndim=(1, 2))
        if y.is_complex():
            raise TypeError("Expected a real 'y' (got a complex tensor).")
        self.unbatched = y.dim() == 1
        y = y[None] if self.unbatched else y
        check_finite("y", y)
        self.lam = float(lam)
        self.laplacian_kind = laplacian
        self.adjacency = adj
        self.num_nodes = n
        self.lap_scipy = laplacian_matrix(adj, laplacian)
        device, dtype = y.device, y.dtype

        # ------------------------------------------------------------- operator
        if isinstance(operator, Mask):
            if mask is not None:
                raise ValueError("Pass either mask= or operator=Mask(...), not both.")
            mask, operator = operator.mask, None
        self.heat: HeatKernel | None = None
        if operator is None:
            self.kind = "mask"
            self.operator: LinearOperator | None = None
            out_n = n
        elif isinstance(operator, str):
            if operator != "heat":
                raise ValueError(
                    f"Expected operator None, 'heat' or a LinearOperator (got {operator!r})."
                )
            self.kind = "heat"
            self.heat = HeatKernel(self.lap_scipy, tau, degree=heat_degree).to(device)
            self.operator = self.heat
            out_n = n
        elif isinstance(operator, LinearOperator):
            if tuple(operator.in_shape) != (n,) or len(operator.out_shape) != 1:
                raise ValueError(
                    f"Expected an operator with in_shape ({n},) (one entry per node) and a "
                    f"vector output (got {operator.in_shape} -> {operator.out_shape})."
                )
            self.kind = "operator"
            self.operator = operator
            out_n = int(operator.out_shape[0])
        else:
            raise TypeError(
                "Expected 'operator' to be None, 'heat' or a LinearOperator (got "
                f"{type(operator).__name__})."
            )
        if y.shape[1] != out_n:
            what = "the node count" if out_n == n else "the operator's output size"
            raise ValueError(
                f"Expected 'y' of length {out_n} ({what}; got shape {tuple(y.shape)})."
            )
        self.y = y
        if mask is not None:
            if not isinstance(mask, torch.Tensor):
                mask = torch.as_tensor(np.asarray(mask))
            if mask.dtype != torch.bool:
                if not bool(((mask == 0) | (mask == 1)).all()):
                    raise ValueError("Expected 'mask' to be boolean or contain only 0 and 1.")
            m = mask.to(device=device, dtype=dtype)
            m = m[None] if m.dim() == 1 else m
            if m.dim() != 2 or m.shape[1] != out_n or m.shape[0] not in (1, y.shape[0]):
                raise ValueError(
                    f"Expected 'mask' of shape ({out_n},) or ({y.shape[0]}, {out_n}) (got "
                    f"{tuple(mask.shape)})."
                )
            self.mask: torch.Tensor | None = m
        else:
            self.mask = None

        # ---------------------------------------------------------------- graph
        if graph_index is None:
            gi = np.zeros(n, dtype=np.int64)
        else:
            gi = np.asarray(
                graph_index.detach().cpu() if isinstance(graph_index, torch.Tensor) else graph_index
            ).astype(np.int64)
            if gi.shape != (n,):
                raise ValueError(f"Expected 'graph_index' of shape ({n},) (got {gi.shape}).")
            if n and (gi.min() < 0 or np.any(np.diff(gi) < 0)):
                raise ValueError("Expected 'graph_index' sorted and >= 0 (as PyG's batch vector).")
        self.graph_index_np = gi
        self.num_graphs = int(gi.max()) + 1 if n else 0
        block = gi if self.kind in ("mask", "heat") else np.zeros(n, dtype=np.int64)
        self.block_index_np = block
        self.num_blocks = int(block.max()) + 1 if n else 0
        self.block_index = torch.as_tensor(block, device=device)
        self.block_ptr = np.searchsorted(block, np.arange(self.num_blocks + 1))

        # message passing (edge_index, degree) runs over neighbours: self-loops enter
        # only the Laplacian (networkx's convention, see laplacian_matrix)
        # (filtered from the COO entries: setdiag(0) on a matrix without a stored diagonal
        # would insert n explicit entries first)
        coo = adj.tocoo()
        off = (coo.row != coo.col) & (coo.data != 0)
        rows, cols, vals = coo.row[off], coo.col[off], coo.data[off]
        self.edge_index = torch.as_tensor(np.vstack([rows, cols]), device=device)
        self.edge_weight = torch.as_tensor(vals, device=device, dtype=dtype)
        self.degree = torch.as_tensor(
            np.bincount(rows, weights=vals, minlength=n), device=device, dtype=dtype
        )
        self.lap_rowabs_np = np.asarray(abs(self.lap_scipy).sum(axis=1)).ravel()
        self.lap = SparseOperator(self.lap_scipy).to(device)
        self._cache: dict[str, Any] = {}
        self._check_unique()

    # ------------------------------------------------------------ constructors
    @classmethod
    def from_scipy(cls, adjacency: Any, y: torch.Tensor, **kwargs: Any) -> GraphInverseProblem:
        """Build from a symmetric non-negative scipy sparse adjacency ``(n, n)``.

        ``kwargs``: ``mask``, ``operator``, ``lam``, ``laplacian``, ``graph_index``,
        ``tau`` (see the class docstring).
        """
        return cls(adjacency, y, **kwargs)

    @classmethod
    def from_networkx(
        cls,
        G: Any,  # noqa: N803 - graph notation
        y: torch.Tensor,
        mask: Any = None,
        operator: Any = None,
        lam: float = 1.0,
        laplacian: str = "combinatorial",
        *,
        weight: str | None = "weight",
        **kwargs: Any,
    ) -> GraphInverseProblem:
        """Build from an undirected ``networkx`` graph; nodes in ``list(G.nodes)`` order.

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

        return cls(
            sp.csr_matrix(adj),
            y,
            mask=mask,
            operator=operator,
            lam=lam,
            laplacian=laplacian,
            **kwargs,
        )

    @classmethod
    def from_pyg(
        cls,
        data: Any,
        y: torch.Tensor | None = None,
        mask: Any = None,
        operator: Any = None,
        lam: float = 1.0,
        laplacian: str = "combinatorial",
        **kwargs: Any,
    ) -> GraphInverseProblem:
        """Build from a PyG ``Data`` or ``Batch`` (block-diagonal batch of graphs).

        Edge weights come from ``data.edge_weight`` (or a 1-D ``edge_attr``), else 1.
        ``y`` defaults to ``data.y``; ``(n,)`` or ``(batch, n)`` with n the total node count.
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
        n = int(data.num_nodes)
        adj = to_scipy_sparse_matrix(ei.cpu(), None if w is None else w.detach().cpu().double(), n)
        gi = getattr(data, "batch", None)
        return cls(
            adj,
            y,
            mask=mask,
            operator=operator,
            lam=lam,
            laplacian=laplacian,
            graph_index=gi,
            **kwargs,
        )

    # ------------------------------------------------------------------ basics
    @property
    def batch_size(self) -> int:
        return int(self.y.shape[0])

    @property
    def device(self) -> torch.device:
        return self.y.device

    @property
    def dtype(self) -> torch.dtype:
        return self.y.dtype

    def __repr__(self) -> str:
        return (
            f"GraphInverseProblem(n={self.num_nodes}, batch={self.batch_size}, "
            f"graphs={self.num_graphs}, kind={self.kind!r}, lam={self.lam}, "
            f"laplacian={self.laplacian_kind!r})"
        )

    def _mask_like(self, x: torch.Tensor) -> torch.Tensor | None:
        return None if self.mask is None else self.mask.to(x.dtype)

    def forward_op(self, x: torch.Tensor) -> torch.Tensor:
        """``A x`` for ``x: (batch, n)``."""
        out = x if self.operator is None else self.operator(x)
        m = self._mask_like(x)
        return out if m is None else out * m

    def adjoint_op(self, r: torch.Tensor) -> torch.Tensor:
        """``A^T r`` for ``r: (batch, m)``."""
        m = self._mask_like(r)
        r = r if m is None else r * m
        return r if self.operator is None else self.operator.adjoint(r)

    def laplacian(self, x: torch.Tensor) -> torch.Tensor:
        """``L x`` for ``x: (batch, n)``."""
        return self.lap._mv(x)

    def hessian(self, x: torch.Tensor) -> torch.Tensor:
        """``H x = A^T A x + lam L x`` for ``x: (batch, n)``."""
        return self.adjoint_op(self.forward_op(x)) + self.lam * self.laplacian(x)

    def hessian_operator(self) -> LinearOperator:
        """``H`` as a LinearOperator (batch must match the problem's for per-sample masks)."""
        return _Hessian(self)

    def rhs(self, like: torch.Tensor | None = None) -> torch.Tensor:
        """``b = A^T y``, ``(batch, n)``."""
        y = self.y if like is None else self.y.to(like.dtype)
        return self.adjoint_op(y)

    def gradient(self, x: torch.Tensor) -> torch.Tensor:
        """``grad f(x) = H x - A^T y``, ``(batch, n)``."""
        return self.hessian(x) - self.rhs(x)

    def segment_sum(self, v: torch.Tensor) -> torch.Tensor:
        """Sum ``v: (batch, n)`` over the nodes of each block -> ``(batch, num_blocks)``."""
        out = v.new_zeros(v.shape[0], self.num_blocks)
        return out.index_add(1, self.block_index, v)

    def objective(self, x: torch.Tensor) -> torch.Tensor:
        """``f(x)`` per signal and block, ``(batch, num_blocks)``."""
        if self.kind == "operator":
            r = self.forward_op(x) - self.y.to(x.dtype)
            data = 0.5 * (r * r).sum(-1, keepdim=True)
        else:  # block-diagonal A: the residual splits over nodes
            r = self.forward_op(x) - (
                self.y.to(x.dtype) if self.mask is None else self.y.to(x.dtype) * self._mask_like(x)
            )
            data = 0.5 * self.segment_sum(r * r)
        return data + 0.5 * self.lam * self.segment_sum(x * self.laplacian(x))

    def energy_norm_sq(self, e: torch.Tensor) -> torch.Tensor:
        """``e^T H e`` per signal and block, ``(batch, num_blocks)``."""
        return self.segment_sum(e * self.hessian(e))

    def relative_error(self, x: torch.Tensor, x_star: torch.Tensor | None = None) -> torch.Tensor:
        """Energy-norm relative error ``||x - x*||_H / ||x*||_H`` per signal and block."""
        xs = self.solve_exact() if x_star is None else x_star
        xs = xs.to(x.dtype)
        num = self.energy_norm_sq(x - xs)
        den = torch.clamp(self.energy_norm_sq(xs), min=torch.finfo(x.dtype).tiny)
        return torch.sqrt(torch.clamp(num, min=0) / den)

    # -------------------------------------------------------------- uniqueness
    def _check_unique(self) -> None:
        """Raise if ``H`` is singular because a component carries no information."""
        from scipy.sparse.csgraph import connected_components

        ncomp, labels = connected_components(self.adjacency, directed=False)
        if self.lam == 0.0:
            if self.kind == "mask" and self.mask is not None:
                bad = (self.mask == 0).any(dim=1)
                if bool(bad.any()):
                    b = int(torch.nonzero(bad)[0])
                    k = int((self.mask[b] == 0).sum())
                    raise ValueError(
                        f"No unique solution: lam = 0 and {k} nodes are not observed in signal "
                        f"{b}; with no regularization they are undetermined. Use lam > 0."
                    )
            return
        if self.kind == "heat" and self.mask is None:
            return  # exp(-tau L) is invertible
        if self.kind == "operator" or self.kind == "heat":
            self._check_operator_unique(ncomp, labels)
            return
        if self.mask is None:
            return
        obs = np.zeros((self.mask.shape[0], ncomp))
        mk = self.mask.detach().cpu().double().numpy()
        for b in range(mk.shape[0]):
            np.add.at(obs[b], labels, mk[b])
        bad = np.argwhere(obs == 0)
        if len(bad):
            b, c = (int(v) for v in bad[0])
            nodes = np.nonzero(labels == c)[0]
            shown = ", ".join(map(str, nodes[:5])) + (", ..." if len(nodes) > 5 else "")
            raise ValueError(
                f"No unique solution: connected component {c} (nodes [{shown}], "
                f"{len(nodes)} nodes) has no observed node in signal {b}, so the signal "
                "there is only determined up to a constant. Observe at least one node in "
                "every connected component (or add edges)."
            )

    def _null_basis(self, ncomp: int, labels: np.ndarray):  # type: ignore[no-untyped-def]
        """Sparse ``(ncomp, n)`` basis of the null space of ``L``, one unit row per component.

        Combinatorial: the component's indicator; normalized: ``D^{1/2}`` times it
        (``d`` the degree with self-loops, as in :func:`laplacian_matrix`; an isolated
        node, ``d = 0``, is its own component with the unit vector).
        """
        import scipy.sparse as sp

        n = self.num_nodes
        if self.laplacian_kind == "normalized":
            deg = np.asarray(self.adjacency.sum(axis=1)).ravel()
            v = np.where(deg > 0, np.sqrt(np.maximum(deg, 0.0)), 1.0)
        else:
            v = np.ones(n)
        norm = np.sqrt(np.bincount(labels, weights=v * v, minlength=ncomp))
        return sp.csr_matrix((v / norm[labels], (labels, np.arange(n))), shape=(ncomp, n))

    def _check_operator_unique(self, ncomp: int, labels: np.ndarray) -> None:
        """Raise unless ``A`` (with the mask of every signal) is injective on ``null(L)``.

        ``H = A^T A + lam L`` with ``lam > 0`` is singular iff some ``z != 0`` in the null
        space of ``L`` (spanned by one vector ``v_c`` per connected component) has
        ``A z = 0``, i.e. iff the columns ``A v_c`` are linearly dependent. ``A`` is applied
        to the ``v_c`` in chunks (any number of components). Up to ``_RANK_DENSE_MAX``
        entries, the rank of the dense ``(ncomp, m)`` matrix decides (SVD); above, the
        sparse Gram matrix ``G = W W^T`` (unit diagonal after scaling) must factor as
        ``L D L^T`` with every pivot above ``1e-10`` (Sylvester's law of inertia).
        """
        import scipy.sparse as sp

        op = self.operator
        assert op is not None
        n = self.num_nodes
        m_out = int(op.out_shape[0])
        if ncomp == 0:
            return
        masks = [None] if self.mask is None else list(self.mask.detach().double().cpu().numpy())

        def fail(b: int, detail: str) -> None:
            raise ValueError(
                f"No unique solution for signal {b}: the operator does not see the null "
                "space of the Laplacian (one vector per connected component, constant for "
                f"the combinatorial Laplacian; {ncomp} components): {detail}, so x is "
                "undetermined there. Observe every component."
            )

        if ncomp > m_out:
            fail(0, f"{ncomp} components but only {m_out} measurements")
        basis = self._null_basis(ncomp, labels)
        dense = ncomp * m_out <= _RANK_DENSE_MAX
        chunk = max(1, min(ncomp, _CHUNK_ENTRIES // max(n, m_out, 1)))
        parts: list[Any] = []
        with torch.no_grad():
            for s in range(0, ncomp, chunk):
                z = torch.as_tensor(
                    basis[s : s + chunk].toarray(), dtype=torch.float64, device=self.device
                )
                az = op(z).detach().to(torch.float64).cpu().numpy()
                parts.append(az if dense else sp.csr_matrix(az))
        az = np.concatenate(parts, axis=0) if dense else sp.vstack(parts).tocsr()
        for b, mb in enumerate(masks):
            if dense:
                w = az if mb is None else az * mb[None]
                norms = np.linalg.norm(w, axis=1)
            else:
                w = az if mb is None else sp.csr_matrix(az @ sp.diags(mb))
                w.eliminate_zeros()
                norms = np.sqrt(np.asarray(w.multiply(w).sum(axis=1)).ravel())
            zero = np.nonzero(norms <= 1e-12 * max(float(norms.max()), 1e-300))[0]
            if len(zero):
                nodes = np.nonzero(labels == zero[0])[0]
                shown = ", ".join(map(str, nodes[:5])) + (", ..." if len(nodes) > 5 else "")
                fail(b, f"A maps component {int(zero[0])} (nodes [{shown}]) to zero")
            if dense:
                full = int(torch.linalg.matrix_rank(torch.as_tensor(w))) == ncomp
            else:
                w = sp.csr_matrix(sp.diags(1.0 / norms) @ w)
                full = _is_pd(sp.csr_matrix(w @ w.T), tol=1e-10)
            if not full:
                fail(b, f"the images A v_c of the {ncomp} components are linearly dependent")

    # --------------------------------------------------------- spectral bounds
    def _block_hessian_scipy(self, b: int, k: int):  # type: ignore[no-untyped-def]
        import scipy.sparse as sp

        s, e = self.block_ptr[k], self.block_ptr[k + 1]
        lap = self.lap_scipy[s:e, s:e]
        if self.mask is None:
            d = np.ones(e - s)
        else:
            mb = self.mask[b if self.mask.shape[0] > 1 else 0]
            d = mb[s:e].detach().cpu().double().numpy()
        return sp.csr_matrix(sp.diags(d) + self.lam * lap)

    def _mask_rows(self) -> range:
        return range(1 if self.mask is None else self.mask.shape[0])

    def _spectrum_mask(self, which: str, safety: float, *, scaled: bool = False) -> np.ndarray:
        """Bound on the largest (``"hi"``) or smallest (``"lo"``) eigenvalue, kind 'mask'.

        Of ``H`` (``scaled=False``) or of the Jacobi-scaled ``S = D^{-1/2} H D^{-1/2}``
        with ``D = diag(H)`` (``scaled=True``; same spectrum as ``D^{-1} H``).
        Blocks up to ``_DENSE_MAX`` nodes: dense ``eigvalsh`` times ``safety``. Larger
        blocks: a Lanczos (``hi``) or shift-invert Lanczos (``lo``) estimate times
        ``safety``, then certified by Sylvester's law of inertia (:func:`_is_pd`):
        ``Lip M - H`` (resp. ``H - lo M``) must factor as ``L D L^T`` with ``D > 0``,
        where ``M = I`` (resp. ``M = diag(H)`` when scaled: ``v M - H`` is congruent
        to ``D^{1/2} (v I - S) D^{1/2}``, so it has the same inertia). An uncertified
        ``hi`` becomes ``inf`` (the caller then uses Gershgorin); an uncertified
        ``lo`` is halved up to 6 times, then 0.
        """
        import scipy.sparse as sp
        from scipy.sparse.linalg import eigsh

        key = f"eig-{which}-{safety}-{scaled}"
        if key in self._cache:
            return self._cache[key]
        rows = self._mask_rows()
        out = np.zeros((len(rows), self.num_blocks))
        for b in rows:
            for k in range(self.num_blocks):
                h = self._block_hessian_scipy(b, k)
                m = h.shape[0]
                if scaled:
                    dg = h.diagonal()
                    metric = sp.diags(dg).tocsc()
                    dis = sp.diags(1.0 / np.sqrt(dg))
                    hs = sp.csr_matrix(dis @ h @ dis)
                else:
                    metric = sp.identity(m, format="csc")
                    hs = h
                if m <= _DENSE_MAX:
                    ev = np.linalg.eigvalsh(hs.toarray())
                    out[b, k] = ev[-1] * safety if which == "hi" else max(ev[0], 0.0) * safety
                    continue
                eye = metric
                v0 = np.ones(m)
                if which == "hi":
                    est = eigsh(hs, k=1, which="LA", tol=1e-8, return_eigenvectors=False, v0=v0)
                    val = float(est[0]) * safety
                    out[b, k] = val if _is_pd(val * eye - h) else np.inf
                    continue
                try:  # shift-invert Lanczos (one sparse factorization)
                    est = eigsh(
                        hs.tocsc(),
                        k=1,
                        sigma=0.0,
                        which="LM",
                        tol=1e-8,
                        return_eigenvectors=False,
                        v0=v0,
                    )
                    val = max(float(est[0]), 0.0) * safety
                except Exception:  # noqa: BLE001 - singular / factorization failure
                    val = 0.0
                for _ in range(6):
                    if val <= 0 or _is_pd(h - val * eye):
                        break
                    val /= 2
                else:
                    val = 0.0
                out[b, k] = val
        self._cache[key] = out
        return out

    def _lap_lmax(self) -> np.ndarray:
        """Upper bounds on lambda_max(L) per block (Gershgorin and eigen-estimate x 1.01)."""
        from scipy.sparse.linalg import eigsh

        out = np.zeros(self.num_blocks)
        for k in range(self.num_blocks):
            s, e = self.block_ptr[k], self.block_ptr[k + 1]
            lap = self.lap_scipy[s:e, s:e]
            gersh = float(self.lap_rowabs_np[s:e].max()) if e > s else 0.0
            if e - s <= _DENSE_MAX:
                est = float(np.linalg.eigvalsh(lap.toarray())[-1]) * 1.001 + 1e-12
            else:
                est = (
                    float(
                        eigsh(
                            lap,
                            k=1,
                            which="LA",
                            tol=1e-8,
                            return_eigenvectors=False,
                            v0=np.ones(e - s),
                        )[0]
                    )
                    * 1.01
                )
            out[k] = min(gersh, est)
        return out

    def _bounds(self, safety: float, lo_safety: float, which: str) -> np.ndarray:
        key = f"bounds-{safety}-{lo_safety}-{which}"
        if key in self._cache:
            return self._cache[key]
        rows = self._mask_rows()
        if self.kind == "mask":
            if which == "hi":
                gersh = self._gershgorin_np()
                gb = np.zeros((len(rows), self.num_blocks))
                for k in range(self.num_blocks):
                    s, e = self.block_ptr[k], self.block_ptr[k + 1]
                    gb[:, k] = gersh[:, s:e].max(axis=1)
                res = np.minimum(self._spectrum_mask("hi", safety), gb)
            else:
                res = self._spectrum_mask("lo", lo_safety)
            self._cache[key] = res
            return res
        elif self.kind == "heat" and self.mask is None:
            lmax = self._lap_lmax()
            hi = np.zeros((1, self.num_blocks))
            lo = np.zeros_like(hi)
            for k in range(self.num_blocks):
                mu = np.linspace(0.0, lmax[k], 20001)
                r = self.heat.response(mu) ** 2 + self.lam * mu  # type: ignore[union-attr]
                hi[0, k], lo[0, k] = r.max() * safety, max(r.min(), 0.0) * lo_safety
        else:
            from scipy.sparse.linalg import LinearOperator as SpOp
            from scipy.sparse.linalg import eigsh

            op = self.operator
            assert op is not None
            anorm2 = op.norm() ** 2 * 1.05  # power iteration underestimates: 5% margin
            lmax = float(self._lap_lmax().max())
            hi = np.full((len(rows), 1), anorm2 + self.lam * lmax)
            lo = np.zeros_like(hi)
            n = self.num_nodes
            for b in rows if which == "lo" else ():

                def mv(v: np.ndarray, b: int = b) -> np.ndarray:
                    t = torch.as_tensor(
                        np.asarray(v).reshape(1, -1), dtype=torch.float64, device=self.device
                    )
                    m = None if self.mask is None else self.mask[b : b + 1].double()
                    ax = op(t)
                    ax = ax if m is None else ax * m
                    out = op.adjoint(ax) + self.lam * self.lap._mv(t)
                    return out.detach().cpu().numpy().ravel()

                try:
                    est = eigsh(
                        SpOp((n, n), matvec=mv, dtype=np.float64),
                        k=1,
                        which="SA",
                        tol=1e-6,
                        maxiter=20 * n,
                        return_eigenvectors=False,
                        v0=np.ones(n),
                    )[0]
                    lo[b, 0] = max(float(est), 0.0) * lo_safety
                except Exception:  # noqa: BLE001 - ARPACK did not converge: no lower bound
                    lo[b, 0] = 0.0
        res = hi if which == "hi" else lo
        if res.shape[1] != self.num_blocks:  # one value for every graph of the batch
            res = np.repeat(res, self.num_blocks, axis=1)
        self._cache[key] = res
        return res

    def _expand(self, a: np.ndarray, like: torch.Tensor | None = None) -> torch.Tensor:
        dtype = self.dtype if like is None else like.dtype
        t = torch.as_tensor(a, dtype=dtype, device=self.device)
        return t.expand(self.batch_size, t.shape[1]) if t.shape[0] == 1 else t

    def lipschitz(self, method: str = "auto", *, safety: float = 1.01) -> torch.Tensor:
        """Upper bound on ``lambda_max(H)`` (the gradient's Lipschitz constant).

        Args:
            method: ``"gershgorin"``: the rigorous bound ``max_i (A^T A)_ii + lam sum_j
                |L_ij|`` for masks (``||A||^2 + lam lambda_max(L)`` otherwise, e.g.
                ``1 + 2 lam max degree`` for a mask and the combinatorial Laplacian);
                ``"lanczos"``/``"auto"``: the largest eigenvalue (dense ``eigvalsh`` up to
                800 nodes per graph, Lanczos/ARPACK above) times ``safety``, capped by the
                Gershgorin bound. For masks above 800 nodes the Lanczos value is
                certified: ``Lip I - H`` must pass an ``L D L^T`` inertia check (one
                sparse factorization), else the Gershgorin bound is used. Heat kernel
                and general operators: the spectral function on a grid, resp. power
                iteration with a 5% margin (estimates, not proofs).
            safety: factor on the eigenvalue estimate (``>= 1``).

        Returns:
            ``(batch, num_blocks)`` tensor.
        """
        if method not in ("auto", "lanczos", "gershgorin"):
            raise ValueError(f"Expected method 'auto', 'lanczos' or 'gershgorin' (got {method!r}).")
        if safety < 1:
            raise ValueError(f"Expected safety >= 1 (got {safety}).")
        if method == "gershgorin":
            g = self._gershgorin_np()
            out = np.zeros((g.shape[0], self.num_blocks))
            for k in range(self.num_blocks):
                s, e = self.block_ptr[k], self.block_ptr[k + 1]
                out[:, k] = g[:, s:e].max(axis=1)
            return self._expand(out)
        return self._expand(self._bounds(safety, 0.95, "hi"))

    def lambda_min_bound(self, *, safety: float = 0.95) -> torch.Tensor:
        """Lower estimate of ``lambda_min(H) > 0`` per signal and block.

        Exact (dense) for graphs up to 800 nodes; for masks above, shift-invert
        Lanczos, certified by an inertia check that ``H - lo I`` is positive definite
        (halving ``lo`` until it passes); the heat kernel's spectral function on a
        fine grid (``operator="heat"``), or ARPACK's smallest eigenvalue (general
        operators; 0 if it fails). Each times ``safety``. Used by the ``window``
        mode's certificate.

        Returns:
            ``(batch, num_blocks)`` tensor.
        """
        if not 0 < safety <= 1:
            raise ValueError(f"Expected 0 < safety <= 1 (got {safety}).")
        return self._expand(self._bounds(1.01, safety, "lo"))

    def jacobi_interval(self, *, safety: float = 1.01, lo_safety: float = 0.95):
        """Spectral interval ``[lo, hi]`` of ``S = D^{-1/2} H D^{-1/2}``, ``D = diag(H)``.

        ``S`` has the spectrum of ``D^{-1} H`` (the Jacobi-preconditioned Hessian),
        so these bound what the ``window_jacobi`` mode certifies on. Mask problems
        only (``diag(H) = m + lam diag(L)`` exactly).

        * ``hi``: ``min(Gershgorin, eigen-estimate x safety)``. Gershgorin applied
          to ``D^{-1} H`` gives ``max_i sum_j |H_ij| / H_ii``, that is
          ``1 + lam sum_{j != i} |L_ij| / (m_i + lam L_ii)`` (``<= 2`` for a
          combinatorial Laplacian; a normalized one can exceed 2 on irregular graphs);
          the estimate is dense up to 800 nodes, Lanczos above, certified by the
          inertia of ``hi D - H``.
        * ``lo``: dense smallest eigenvalue (up to 800 nodes) or shift-invert
          Lanczos certified by the inertia of ``H - lo D`` (halved until it
          passes), times ``lo_safety``.

        Returns:
            ``(lo, hi)``, each ``(batch, num_blocks)``.
        """
        if self.kind != "mask":
            raise ValueError(
                "Expected a mask problem for the Jacobi interval (diag(H) is exact only for "
                f"A = mask; got kind {self.kind!r})."
            )
        key = f"jacobi-{safety}-{lo_safety}"
        if key not in self._cache:
            rows = self._mask_rows()
            lap_diag = self.lap_scipy.diagonal()
            gb = np.zeros((len(rows), self.num_blocks))
            gersh = self._gershgorin_np()
            m = (
                np.ones((1, self.num_nodes))
                if self.mask is None
                else self.mask.detach().cpu().double().numpy()
            )
            ratio = gersh / (m + self.lam * lap_diag[None])
            for k in range(self.num_blocks):
                s, e = self.block_ptr[k], self.block_ptr[k + 1]
                gb[:, k] = ratio[:, s:e].max(axis=1)
            hi = np.minimum(self._spectrum_mask("hi", safety, scaled=True), gb)
            lo = np.minimum(self._spectrum_mask("lo", lo_safety, scaled=True), hi)
            self._cache[key] = (lo, hi)
        lo, hi = self._cache[key]
        return self._expand(lo), self._expand(hi)

    def _gershgorin_np(self) -> np.ndarray:
        """``R_i >= sum_j |H_ij|`` per node (rows of a diagonally dominant majorant)."""
        if "gersh" in self._cache:
            return self._cache["gersh"]
        lam_part = self.lam * self.lap_rowabs_np[None]
        if self.kind == "mask":
            m = (
                np.ones((1, self.num_nodes))
                if self.mask is None
                else self.mask.detach().cpu().double().numpy()
            )
            out = m + lam_part
        elif self.kind == "heat" and self.mask is None:
            mu = np.linspace(0.0, float(self._lap_lmax().max()), 20001)
            c = float((self.heat.response(mu) ** 2).max()) * 1.01  # type: ignore[union-attr]
            out = c + lam_part
        else:
            assert self.operator is not None
            out = self.operator.norm() ** 2 * 1.05 + lam_part
        self._cache["gersh"] = out
        return out

    def gershgorin_rows(self) -> torch.Tensor:
        """Per-node ``R_i`` with ``diag(R) - H`` positive semidefinite, ``(batch, n)``.

        For a mask ``R_i = m_i + lam sum_j |L_ij|`` = the Gershgorin row sum of ``H``;
        otherwise ``||A||^2`` (with a 5% power-iteration margin) replaces ``(A^T A)_ii``.
        """
        return self._expand(self._gershgorin_np())

    # ----------------------------------------------------------- exact solution
    def solve_exact(self, method: str = "auto", *, tol: float = 1e-12) -> torch.Tensor:
        """The minimizer ``x* = H^{-1} A^T y``, ``(batch, n)`` (cached).

        Args:
            method: ``"direct"`` (scipy sparse LU; masks only), ``"cg"``
                (``unrollsci.solvers.cg`` in float64), or ``"auto"`` (direct for masks).
            tol: relative residual tolerance for CG.
        """
        if method not in ("auto", "direct", "cg"):
            raise ValueError(f"Expected method 'auto', 'direct' or 'cg' (got {method!r}).")
        if method == "auto":
            method = "direct" if self.kind == "mask" else "cg"
        if method == "direct" and self.kind != "mask":
            raise ValueError("method='direct' needs a mask operator; use method='cg'.")
        key = f"exact-{method}"
        if key in self._cache:
            return self._cache[key].to(self.dtype)
        if method == "direct":
            from scipy.sparse.linalg import splu

            b = self.rhs(self.y.double()).double().detach().cpu().numpy()
            x = np.zeros_like(b)
            if self.mask is None or self.mask.shape[0] == 1:
                lu = splu(self._full_hessian_scipy(0).tocsc())
                x = lu.solve(b.T).T
            else:
                for i in range(b.shape[0]):
                    x[i] = splu(self._full_hessian_scipy(i).tocsc()).solve(b[i])
            out = torch.as_tensor(np.ascontiguousarray(x), device=self.device)
        else:
            from ..solvers import cg

            b = self.rhs(self.y.double()).double().detach()
            sol = cg(
                self.hessian_operator(),
                b,
                tol=tol,
                max_iter=20 * self.num_nodes + 100,
                check=False,
                throw=True,
            )
            out = sol.x
        self._cache[key] = out
        return out.to(self.dtype)

    def _full_hessian_scipy(self, b: int):  # type: ignore[no-untyped-def]
        import scipy.sparse as sp

        if self.mask is None:
            d = np.ones(self.num_nodes)
        else:
            d = self.mask[b if self.mask.shape[0] > 1 else 0].detach().cpu().double().numpy()
        return sp.csr_matrix(sp.diags(d) + self.lam * self.lap_scipy)

    def hessian_scipy(self, b: int = 0):  # type: ignore[no-untyped-def]
        """``H`` of signal ``b`` as a scipy sparse matrix (mask problems only)."""
        if self.kind != "mask":
            raise ValueError("hessian_scipy needs a mask operator (A^T A is diagonal).")
        return self._full_hessian_scipy(b)

    def hessian_diagonal(self) -> torch.Tensor:
        """``diag(H)``, ``(batch, n)`` (mask problems exactly; else ``||A||^2`` bound)."""
        lap_diag = self.lap_scipy.diagonal()
        if self.kind == "mask":
            m = (
                np.ones((1, self.num_nodes))
                if self.mask is None
                else self.mask.detach().cpu().double().numpy()
            )
            return self._expand(m + self.lam * lap_diag[None])
        g = self._gershgorin_np() - self.lam * self.lap_rowabs_np[None]
        return self._expand(g + self.lam * lap_diag[None])
