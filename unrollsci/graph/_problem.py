"""Laplacian-regularized linear inverse problems on graphs.

    min_x  f(x) = 0.5 ||m o (B x - y)||^2 + 0.5 lam x^T L x,      grad f = H x - A^T y,
    A = m o B (m: the 0/1 mask, all ones without one),  H = A^T A + lam L.

The problem object holds the graph (one graph or a block-diagonal batch of graphs),
the forward operator, the data (a batch of signals) and everything the solvers
need: gradient, Hessian products, objective per graph, spectral bounds and the
exact solution. The pieces live in sibling modules: ``_convert`` (networkx / PyG
inputs), ``_identifiability`` (is ``H`` invertible?), ``_spectral`` (certified
spectral bounds) and ``_exact`` (the exact minimizer).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from .._validation import check_batch, check_finite, check_tensor, detached_from
from ..operators import LinearOperator, Mask, SparseOperator
from . import _exact, _features, _graphcert, _guard, _spectral
from ._convert import check_block_edges, check_graph_index, networkx_adjacency, pyg_inputs
from ._exact import _Hessian
from ._identifiability import _CHUNK_ENTRIES, _RANK_DENSE_MAX, check_unique  # noqa: F401
from ._inertia import is_pd as _is_pd  # noqa: F401
from ._laplacian import HeatKernel, canonical_adjacency
from ._problem_args import check_heat_options, check_lam
from ._problem_copy import CopyableCache
from ._spectral import _DENSE_MAX  # noqa: F401
from ._sqrt import sqrt0

__all__ = ["GraphInverseProblem"]
# _CHUNK_ENTRIES, _DENSE_MAX, _RANK_DENSE_MAX, _is_pd: importable here, as before the split


class GraphInverseProblem(CopyableCache):
    """Recover a signal on the nodes of a graph from ``y = A x + noise``.

    Solves ``min_x f(x) = 0.5 ||m o (B x - y)||^2 + 0.5 lam x^T L x`` for a batch of
    signals, the forward operator being ``A x = m o (B x)``: ``B`` the identity, the heat
    kernel or a general operator, ``m`` the 0/1 mask (all ones without one). Entries of
    ``y`` where ``m = 0`` carry no information and enter nothing (the data term is
    ``0.5 ||A x - y||^2`` once they are zeroed; :meth:`objective`). ``A`` is one of

    * a sampling mask (``mask=``: ``(n,)`` shared or ``(batch, n)`` per signal, or a
      :class:`unrollsci.operators.Mask`): ``A x = mask * x`` (inpainting);
    * ``operator="heat"``: the heat kernel ``exp(-tau L)`` (graph blur) by Chebyshev
      polynomials of ``L`` of degree ``heat_degree`` (optionally followed by a mask);
      ``tau`` (default 1.0) and ``heat_degree`` (default 30) act only there, and are
      refused (``ValueError``) with another value for any other operator;
    * any :class:`~unrollsci.operators.LinearOperator` with ``in_shape == (n,)``
      (optionally followed by a mask on its output), taken by reference: the cached
      bounds and solution are recomputed once its tensors change (docs/graph.md).

    A block-diagonal batch of graphs (a PyG ``Batch``) is one problem whose nodes
    carry a ``graph_index``; for masks and the heat kernel every graph is its own
    system (its own objective, spectral bounds and steps). A general operator may
    couple the graphs, so the whole batch is then treated as one block.

    Use the constructors :meth:`from_networkx`, :meth:`from_pyg`, :meth:`from_scipy`.

    Attributes:
        y: ``(batch, m)`` data (a copy). ``num_nodes``: n. ``lam``: regularization weight
            (read-only: a new ``lam`` is a new problem).
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
        # in arrays of its own: an edit of the caller's matrix must not reach the problem
        adj = detached_from(canonical_adjacency(adjacency), adjacency)  # weights checked below
        n = adj.shape[0]
        lam = check_lam(lam)
        check_tensor("y", y, ndim=(1, 2))
        if y.is_complex():
            raise TypeError("Expected a real 'y' (got a complex tensor).")
        if y.dtype not in (torch.float32, torch.float64):  # the sparse products refuse half
            raise TypeError(
                f"Expected 'y' of dtype torch.float32 or torch.float64 (got {y.dtype})."
            )
        self.unbatched = y.dim() == 1
        y = y[None] if self.unbatched else y
        check_batch("y", y)  # the library's rule: no batch of zero signals
        check_finite("y", y)
        self._lam = float(lam)
        self.laplacian_kind = laplacian
        self.adjacency = adj
        self.num_nodes = n
        # once per graph: the weights' checks, L, the row sums of |L| and the graph's digest
        self.lap_scipy, self.lap_rowabs_np, graph_digest = _graphcert.laplacian_of(adj, laplacian)
        device, dtype = y.device, y.dtype

        # ------------------------------------------------------------- operator
        if isinstance(operator, Mask):
            if mask is not None:
                raise ValueError("Pass either mask= or operator=Mask(...), not both.")
            mask, operator = operator.mask, None
        # a general operator is taken by reference (its state keys the cache: _cache)
        self.heat: HeatKernel | None
        self.operator: LinearOperator | None
        check_heat_options(operator, tau=tau, heat_degree=heat_degree)
        self.kind, self.operator, self.heat, out_n = _guard.parse_operator(
            operator, n, self.lap_scipy, tau, heat_degree, device
        )
        if y.shape[1] != out_n:
            what = "the node count" if out_n == n else "the operator's output size"
            raise ValueError(
                f"Expected 'y' of length {out_n} ({what}; got shape {tuple(y.shape)})."
            )
        # copies: a caller's in-place edit of y or mask must not reach the cached bounds,
        # Hessian and solution (a float mask in the problem's dtype would alias otherwise)
        self.y = y.clone()
        self.mask: torch.Tensor | None = (
            None if mask is None else _guard.parse_mask(mask, out_n, y.shape[0], device, dtype)
        )

        # ---------------------------------------------------------------- graph
        gi = (
            np.zeros(n, dtype=np.int64)
            if graph_index is None
            else check_graph_index(graph_index, n)
        )
        self.graph_index_np = gi
        self.num_graphs = int(gi.max()) + 1 if n else 0
        block = gi if self.kind in ("mask", "heat") else np.zeros(n, dtype=np.int64)
        self.block_index_np = block
        self.num_blocks = int(block.max()) + 1 if n else 0
        self.block_index = torch.as_tensor(block, device=device)
        self.block_ptr = np.searchsorted(block, np.arange(self.num_blocks + 1))

        # message passing (edge_index, degree) runs over neighbours: self-loops enter only
        # the Laplacian (networkx's convention), filtered from the COO entries
        coo = adj.tocoo()
        off = (coo.row != coo.col) & (coo.data != 0)
        rows, cols, vals = coo.row[off], coo.col[off], coo.data[off]
        check_block_edges(gi, rows, cols)
        self.edge_index = torch.as_tensor(np.vstack([rows, cols]), device=device)
        self.edge_weight = torch.as_tensor(vals, device=device, dtype=dtype)
        self.degree = torch.as_tensor(
            np.bincount(rows, weights=vals, minlength=n), device=device, dtype=dtype
        )
        self._store: dict[str, Any] = {"graph-digest": graph_digest}
        self._op_key = None if self.kind != "operator" else _guard.operator_key(operator)
        check_unique(self)

    @property
    def _cache(self) -> dict[str, Any]:
        # for a general operator: emptied of what depends on it (identifiability checked
        # again) once the operator's state changed, e.g. an in-place edit or optimizer step
        if self._op_key is not None:
            _guard.sync_operator(self, self._store)
        return self._store

    def cached(self, key: str, build: Callable[[], Any]) -> Any:
        """The value stored under ``key`` for this problem, built by ``build()`` on first use.

        Derived quantities that depend only on the problem (spectral bounds, the exact
        solve, a model's aggregation matrix) are computed once per problem through this.
        """
        # what depends on the graph only (the Laplacian) skips the operator's state check
        cache = self._store if key.startswith(_guard.GRAPH_ONLY) else self._cache
        if key not in cache:
            cache[key] = build()
        return cache[key]

    # ------------------------------------------------------------ constructors
    @classmethod
    def from_scipy(cls, adjacency: Any, y: torch.Tensor, **kwargs: Any) -> GraphInverseProblem:
        """Build from a symmetric non-negative scipy sparse adjacency ``(n, n)``.

        ``kwargs``: ``mask``, ``operator``, ``lam``, ``laplacian``, ``graph_index``,
        ``tau``, ``heat_degree`` (see the class docstring).
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
        adj = networkx_adjacency(G, weight)
        return cls(adj, y, mask=mask, operator=operator, lam=lam, laplacian=laplacian, **kwargs)

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
        adj, y, gi = pyg_inputs(data, y)
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
    def lam(self) -> float:
        """The regularization weight, fixed at construction (read-only)."""
        return self._lam

    @lam.setter
    def lam(self, value: Any) -> None:
        raise AttributeError(
            "GraphInverseProblem.lam is read-only: the bounds, Hessian and exact solution "
            "cached on the problem depend on it. Build a new problem for another lam, e.g. "
            "GraphInverseProblem.from_scipy(p.adjacency, p.y, mask=p.mask, lam=new_lam)."
        )

    @property
    def lap(self) -> SparseOperator:
        """``L`` as a torch operator on the problem's device (built on first use)."""
        return self.cached("lap-operator", lambda: SparseOperator(self.lap_scipy).to(self.device))

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
        _guard.check_rows(self, x, "x", data=False)
        out = x if self.operator is None else self.operator(x)
        m = self._mask_like(x)
        return out if m is None else out * m

    def adjoint_op(self, r: torch.Tensor) -> torch.Tensor:
        """``A^T r`` for ``r: (batch, m)``."""
        _guard.check_rows(self, r, "r", data=False)
        m = self._mask_like(r)
        r = r if m is None else r * m
        return r if self.operator is None else self.operator.adjoint(r)

    def laplacian(self, x: torch.Tensor) -> torch.Tensor:
        """``L x`` for ``x: (batch, n)``."""
        return self.lap.mv(x)

    def hessian(self, x: torch.Tensor) -> torch.Tensor:
        """``H x = A^T A x + lam L x`` (one fused sparse product for a shared mask).

        ``x``: ``(batch, n)``, one row per signal when the masks differ per signal (else
        any number of rows; ``ValueError`` otherwise)."""
        _guard.check_rows(self, x, "x", data=False)
        if self.kind == "mask" and (self.mask is None or self.mask.shape[0] == 1):
            h = _exact.full_hessian_scipy  # the problem's own H: the operator need not copy it
            fused = self.cached(
                "fused-hessian",
                lambda: SparseOperator(h(self, 0, share=True), copy=False).to(self.device),
            )
            return fused.mv(x)
        return self.adjoint_op(self.forward_op(x)) + self.lam * self.laplacian(x)

    def hessian_operator(self) -> LinearOperator:
        """``H`` as a LinearOperator (for per-signal masks the batch must be the problem's:
        ``ValueError`` otherwise)."""
        return _Hessian(self)

    def rhs(self, like: torch.Tensor | None = None) -> torch.Tensor:
        """``b = A^T y``, ``(batch, n)``."""
        y = self.y if like is None else self.y.to(like.dtype)
        return self.adjoint_op(y)

    def gradient(self, x: torch.Tensor) -> torch.Tensor:
        """``grad f(x) = H x - A^T y``, ``(batch, n)``: one row of ``x`` per signal (any
        number of rows for a problem of one signal; ``ValueError`` otherwise)."""
        _guard.check_rows(self, x, "x", data=True)
        return self.hessian(x) - self.rhs(x)

    def segment_sum(self, v: torch.Tensor) -> torch.Tensor:
        """Sum ``v: (batch, n)`` over the nodes of each block -> ``(batch, num_blocks)``."""
        if self.num_blocks == 1:  # one block: a plain sum (a scatter costs far more)
            return v.sum(-1, keepdim=True)
        out = v.new_zeros(v.shape[0], self.num_blocks)
        return out.index_add(1, self.block_index, v)

    def objective(self, x: torch.Tensor) -> torch.Tensor:
        """``f(x) = 0.5 ||m o (B x - y)||^2 + 0.5 lam x^T L x`` per signal and block,
        ``(batch, num_blocks)`` (rows as :meth:`gradient`): ``A x = m o B x`` (class
        docstring), ``m`` the mask (all ones without one), so ``y`` at unobserved entries
        does not enter; its gradient is :meth:`gradient`."""
        _guard.check_rows(self, x, "x", data=True)
        return self._objective(x, self.y.to(x.dtype))

    def _objective(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # objective() for the data y in x's dtype (graph_loss scales x and y by 2^k)
        m = self._mask_like(x)
        r = self.forward_op(x) - (y if m is None else y * m)  # m o (B x - y): m is 0/1
        if self.kind == "operator":
            data = 0.5 * (r * r).sum(-1, keepdim=True)
        else:  # block-diagonal A: the residual splits over nodes
            data = 0.5 * self.segment_sum(r * r)
        return data + 0.5 * self.lam * self.segment_sum(x * self.laplacian(x))

    def energy_norm_sq(self, e: torch.Tensor) -> torch.Tensor:
        """``e^T H e`` per signal and block, ``(batch, num_blocks)``."""
        return self.segment_sum(e * self.hessian(e))

    def relative_error(self, x: torch.Tensor, x_star: torch.Tensor | None = None) -> torch.Tensor:
        """Energy-norm relative error ``||x - x*||_H / ||x*||_H`` per signal and block
        (its gradient at ``x = x*`` is 0, not NaN)."""
        _guard.check_rows(self, x, "x", data=True)
        if x_star is not None:
            _guard.check_rows(self, x_star, "x_star", data=True)
        xs = self.solve_exact() if x_star is None else x_star
        # over 2^k per signal and block: the same ratio, no under/overflow (data of 1e-170)
        c = _features.block_pow2(self, xs := xs.to(x.dtype))
        num = self.energy_norm_sq(x / c - xs / c)
        den = torch.clamp(self.energy_norm_sq(xs / c), min=torch.finfo(x.dtype).tiny)
        return sqrt0(torch.clamp(num, min=0) / den)

    # --------------------------------------------------------- spectral bounds
    def _expand(self, a: np.ndarray, direction: str | None = None) -> torch.Tensor:
        # direction: "up" for upper bounds, "down" for lower bounds (_spectral.as_bound)
        t = _spectral.as_bound(a, self.dtype, self.device, direction)
        return t.expand(self.batch_size, t.shape[1]) if t.shape[0] == 1 else t

    def lipschitz(self, method: str = "auto", *, safety: float = 1.01) -> torch.Tensor:
        """Upper bound on ``lambda_max(H)`` (the gradient's Lipschitz constant).

        Args:
            method: ``"gershgorin"``: the rigorous bound ``max_i (A^T A)_ii + lam sum_j
                |L_ij|`` for masks (``||A||^2 + lam lambda_max(L)`` otherwise);
                ``"lanczos"``/``"auto"``: the largest eigenvalue (dense ``eigvalsh`` up to
                800 nodes per graph, Lanczos/ARPACK above) times ``safety``, capped by the
                Gershgorin bound. Masks of 800-5000 nodes: the estimate proved by the
                inertia of ``Lip I - H`` (one sparse factorization); above (or if that
                fails): the graph bound ``max m + lam lambda_max(L)`` (per graph; refined by
                the split certificate, the mask exactly on a ball around the graph's hub)
                within 10% of an estimate, else the estimate times 1.01 (1.1, 1.25) once a
                Schur test proves ``Lip I - H >= 0``. ``"inertia"`` (masks): the smaller of
                that and the inertia proof where a factorization is affordable. Heat kernel
                / general operators: spectral function on a grid / power iteration + 5%.
            safety: factor on the eigenvalue estimate (``>= 1``).

        Returns:
            ``(batch, num_blocks)`` tensor.
        """
        if method not in ("auto", "lanczos", "gershgorin", "inertia"):
            raise ValueError(
                f"Expected method 'auto', 'lanczos', 'gershgorin' or 'inertia' (got {method!r})."
            )
        if safety < 1:
            raise ValueError(f"Expected safety >= 1 (got {safety}).")
        if method == "gershgorin":
            return self._expand(_spectral.gershgorin_per_block(self), "up")
        hi = _spectral.bounds(self, safety, 0.95, "hi", inertia=method == "inertia")
        return self._expand(hi, "up")

    def lambda_min_bound(self, *, safety: float = 0.95) -> torch.Tensor:
        """Lower estimate of ``lambda_min(H) > 0`` per signal and block.

        ``safety`` times the smallest eigenvalue, proved: dense up to 800 nodes; for
        masks up to 5000 nodes shift-invert ARPACK, proved by the inertia of ``H - lo I``;
        above (or if that fails) the Collatz-Wielandt bound of the Z-matrix ``H`` with
        local repairs, which proves ``safety`` times an estimate from above where it can
        (else its best bound; no factorization of ``H``; docs/graph.md). The heat
        kernel's spectral function on a grid (``operator="heat"``) or ARPACK's smallest
        eigenvalue (general operators; 0 if it fails), times ``safety``. Used by the
        ``window`` mode's certificate.

        Returns:
            ``(batch, num_blocks)`` tensor.
        """
        if not 0 < safety <= 1:
            raise ValueError(f"Expected 0 < safety <= 1 (got {safety}).")
        return self._expand(_spectral.bounds(self, 1.01, safety, "lo"), "down")

    def jacobi_interval(self, *, safety: float = 1.01, lo_safety: float = 0.95):
        """Spectral interval ``[lo, hi]`` of ``S = D^{-1/2} H D^{-1/2}``, ``D = diag(H)``.

        ``S`` has the spectrum of ``D^{-1} H`` (the Jacobi-preconditioned Hessian),
        so these bound what the ``window_jacobi`` mode certifies on. Mask problems
        only (``diag(H) = m + lam diag(L)`` exactly).

        * ``hi``: ``min(Gershgorin, eigen-estimate x safety)``. Gershgorin applied
          to ``D^{-1} H`` gives ``max_i sum_j |H_ij| / H_ii``, that is
          ``1 + lam sum_{j != i} |L_ij| / (m_i + lam L_ii)`` (``<= 2`` for a
          combinatorial Laplacian; a normalized one can exceed 2 on irregular graphs);
          the estimate is dense up to 800 nodes, Lanczos proved by the inertia of ``hi D
          - H`` up to 5000; above, the graph bound ``max(1, c_G) >= lambda_max(diag(L)^{-1}
          L)`` for every mask and ``lam`` on the graph (proved once per graph, cached).
        * ``lo``: ``lo_safety`` times the smallest eigenvalue, proved as in
          :meth:`lambda_min_bound` (with ``D`` in place of ``I``; docs/graph.md).

        Returns:
            ``(lo, hi)``, each ``(batch, num_blocks)``.
        """
        if self.kind != "mask":
            raise ValueError(
                "Expected a mask problem for the Jacobi interval (diag(H) is exact only for "
                f"A = mask; got kind {self.kind!r})."
            )
        lo, hi = _spectral.jacobi_interval(self, safety, lo_safety)
        return self._expand(lo, "down"), self._expand(hi, "up")

    def gershgorin_rows(self) -> torch.Tensor:
        """Per-node ``R_i`` with ``diag(R) - H`` positive semidefinite, ``(batch, n)``.

        For a mask ``R_i = m_i + lam sum_j |L_ij|`` = the Gershgorin row sum of ``H``;
        otherwise ``||A||^2`` (with a 5% power-iteration margin) replaces ``(A^T A)_ii``.
        """
        return self._expand(_spectral.gershgorin_np(self), "up")

    # ----------------------------------------------------------- exact solution
    def solve_exact(self, method: str = "auto", *, tol: float = 1e-12) -> torch.Tensor:
        """The minimizer ``x* = H^{-1} A^T y``, ``(batch, n)`` (cached).

        Args:
            method: ``"direct"`` (scipy sparse LU; masks only), ``"cg"``
                (``unrollsci.solvers.cg`` in float64), or ``"auto"`` (direct for masks
                unless the graph fills in, :func:`._exact.auto_method`; else CG).
            tol: relative residual tolerance for CG (a cached CG solution is reused for
                the same or a looser ``tol`` only).
        """
        if method not in ("auto", "direct", "cg"):
            raise ValueError(f"Expected method 'auto', 'direct' or 'cg' (got {method!r}).")
        method = _exact.auto_method(self) if method == "auto" else method
        if method == "direct" and self.kind != "mask":
            raise ValueError("method='direct' needs a mask operator; use method='cg'.")
        return _exact.solve_exact(self, method, tol).to(self.dtype)

    def hessian_scipy(self, b: int = 0):  # type: ignore[no-untyped-def]
        """``H`` of signal ``b`` as a scipy sparse matrix (mask problems only)."""
        if self.kind != "mask":
            raise ValueError("hessian_scipy needs a mask operator (A^T A is diagonal).")
        return _exact.full_hessian_scipy(self, b)

    def hessian_diagonal(self) -> torch.Tensor:
        """``diag(H)``, ``(batch, n)`` (mask problems exactly; else ``||A||^2`` bound)."""
        return self._expand(_spectral.hessian_diagonal_np(self))
