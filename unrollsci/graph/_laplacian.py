"""Graph Laplacians, adjacency validation and the Chebyshev heat-kernel filter."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .._validation import SYMMETRY_EPS_FACTOR, check_symmetric, detached_from
from ..operators import LinearOperator, SparseOperator

__all__ = [
    "validate_adjacency",
    "canonical_adjacency",
    "check_adjacency_values",
    "check_adjacency_symmetric",
    "laplacian_matrix",
    "HeatKernel",
    "check_laplacian",
    "chebyshev_coefficients",
]

_KINDS = ("combinatorial", "normalized")
#: a heat kernel's Chebyshev polynomial must match exp(-tau mu) to this on [0, lmax]
HEAT_TOL = 1e-6


def validate_adjacency(adj: Any, name: str = "adjacency"):  # type: ignore[no-untyped-def]
    """Check a weighted adjacency and return it as a float64 ``scipy.sparse.csr_matrix``.

    Self-loops (diagonal entries) are kept: :func:`laplacian_matrix` treats them as
    networkx does (they cancel in the combinatorial Laplacian and add to the degree of
    the normalized one). The caller's matrix is never changed (a copy is canonicalized
    where needed; a canonical float64 CSR matrix is returned as it is).

    Raises:
        TypeError: not a scipy sparse matrix, or complex weights.
        ValueError: not square, not symmetric, NaN/Inf or negative weights.
    """
    a = canonical_adjacency(adj, name)
    check_adjacency_values(a, name)
    return a


def canonical_adjacency(adj: Any, name: str = "adjacency"):  # type: ignore[no-untyped-def]
    """The first half of :func:`validate_adjacency`: ``adj`` as float64 CSR with sorted,
    unique indices and no explicit zeros (a copy where that changes anything), square; the
    weights are not checked (:func:`check_adjacency_values`)."""
    import scipy.sparse as sp

    if not sp.issparse(adj):
        raise TypeError(
            f"Expected '{name}' to be a scipy sparse matrix (got {type(adj).__name__})."
        )
    if getattr(adj.dtype, "kind", "") == "c":
        raise TypeError(
            f"Expected '{name}' with real edge weights (got complex dtype {adj.dtype})."
        )
    a = sp.csr_matrix(adj, dtype=np.float64)
    if a.shape[0] != a.shape[1]:
        raise ValueError(f"Expected '{name}' to be square (got shape {a.shape}).")
    if not a.has_canonical_format or (a.nnz and not np.all(a.data)):
        a = detached_from(a, adj)  # canonicalized here: never in the caller's arrays
        a.sum_duplicates()
        if a.nnz and not np.all(a.data):
            a.eliminate_zeros()
        a.sort_indices()
    return a


def check_adjacency_values(a: Any, name: str = "adjacency") -> None:
    """The second half of :func:`validate_adjacency` on a canonical ``a``: finite,
    non-negative, symmetric weights (:func:`check_adjacency_symmetric`; ``ValueError``
    otherwise)."""
    if a.nnz and not np.all(np.isfinite(a.data)):
        raise ValueError(f"Expected finite edge weights in '{name}' (got NaN or Inf).")
    if a.nnz and float(a.data.min()) < 0:
        raise ValueError(
            f"Expected non-negative edge weights (got min weight {float(a.data.min()):.3g}); a "
            "Laplacian with negative weights is indefinite and the problem is not convex."
        )
    check_adjacency_symmetric(a, name)


#: an adjacency's mirrored weights may differ by this relative to the larger of the two
#: (``1000 eps`` of float64: the rounding of entries assembled in floating point)
ADJ_SYMMETRY_RTOL = SYMMETRY_EPS_FACTOR * float(np.finfo(np.float64).eps)


def check_adjacency_symmetric(a: Any, name: str = "adjacency") -> None:
    """Raise ``ValueError`` unless the canonical CSR adjacency ``a`` is symmetric entry by
    entry: every stored ``W_ij`` has its mirror ``W_ji`` stored (a one-directional edge is
    refused however small), and ``|W_ij - W_ji| <= rtol max(|W_ij|, |W_ji|)`` with
    ``rtol =`` :data:`ADJ_SYMMETRY_RTOL` (the rounding of the two entries). Stricter than
    the library's matrix rule (:func:`check_symmetric`, relative to ``max|W|`` over the
    whole matrix), under which a small edge beside large weights could be one-directional."""
    hint = "An undirected graph has a symmetric adjacency: symmetrize it, e.g. (W + W.T) / 2."
    at = a.T.tocsr()  # sorted indices: equal arrays exactly when the patterns are equal
    if not (np.array_equal(at.indptr, a.indptr) and np.array_equal(at.indices, a.indices)):
        n = a.shape[0]
        rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(a.indptr))
        keys = rows * n + a.indices
        tkeys = np.repeat(np.arange(n, dtype=np.int64), np.diff(at.indptr)) * n + at.indices
        lone = np.setdiff1d(keys, tkeys, assume_unique=True)  # canonical: unique keys
        i, j = divmod(int(lone[0]), n)
        raise ValueError(
            f"Expected '{name}' to be symmetric, every edge stored in both directions (got "
            f"{lone.size} one-directional entries, e.g. W[{i}, {j}] = {float(a[i, j]):.3g} "
            f"but W[{j}, {i}] absent). {hint}"
        )
    if a.nnz == 0:
        return
    diff = np.abs(at.data - a.data)
    bad = diff > ADJ_SYMMETRY_RTOL * np.maximum(np.abs(a.data), np.abs(at.data))
    if bad.any():
        k = int(np.argmax(bad))
        i = int(np.searchsorted(a.indptr, k, side="right")) - 1
        j = int(a.indices[k])
        raise ValueError(
            f"Expected '{name}' to be symmetric entry by entry, up to {ADJ_SYMMETRY_RTOL:.1e} "
            f"relative (got {int(bad.sum())} mismatched pairs, e.g. W[{i}, {j}] = "
            f"{float(a.data[k])!r} but W[{j}, {i}] = {float(at.data[k])!r}). {hint}"
        )


def laplacian_matrix(adj: Any, kind: str = "combinatorial"):  # type: ignore[no-untyped-def]
    """``L = D - W`` (combinatorial) or ``D^{-1/2} (D - W) D^{-1/2}`` (normalized), scipy CSR.

    ``D = diag(d)`` with ``d_i = sum_j W_ij`` the weighted degree, self-loop weight
    ``W_ii`` included: the convention of networkx's ``laplacian_matrix`` and
    ``normalized_laplacian_matrix``. A self-loop therefore cancels in the combinatorial
    Laplacian (``L_ii = sum_{j != i} W_ij``), while in the normalized one it lowers the
    diagonal to ``1 - W_ii / d_i = sum_{j != i} W_ij / d_i`` and raises the degree that
    scales the off-diagonal entries. The cancellation is exact: ``D - W`` is formed with
    the off-diagonal row sums on its diagonal and no self-loop (``d_i - W_ii`` in floating
    point would round a node's edges away beside a large loop), so ``L`` is
    ``D^{-1/2} L_0 D^{-1/2}`` with ``L_0`` the loop-free combinatorial Laplacian.
    Isolated nodes (``d_i = 0``) get ``L_ii = 0`` in both cases.

    Example:
        >>> import scipy.sparse as sp
        >>> adj = sp.csr_matrix([[0.0, 1.0], [1.0, 0.0]])
        >>> laplacian_matrix(adj).toarray()
        array([[ 1., -1.],
               [-1.,  1.]])
    """
    import scipy.sparse as sp

    if kind not in _KINDS:
        raise ValueError(f"Expected laplacian 'combinatorial' or 'normalized' (got {kind!r}).")
    adj = sp.csr_matrix(adj, dtype=np.float64)
    deg = np.asarray(adj.sum(axis=1), dtype=np.float64).ravel()  # self-loops included
    off = adj
    if adj.diagonal().any():  # D - W without the self-loops: they cancel exactly
        rows = np.repeat(np.arange(adj.shape[0]), np.diff(adj.indptr))
        off = adj.copy()
        off.data[off.indices == rows] = 0.0
        off.eliminate_zeros()
    lap = sp.diags(deg if off is adj else np.asarray(off.sum(axis=1)).ravel()) - off
    if kind == "normalized":
        inv = np.zeros_like(deg)
        nz = deg > 0
        inv[nz] = 1.0 / np.sqrt(deg[nz])
        lap = sp.diags(inv) @ lap @ sp.diags(inv)
    lap = sp.csr_matrix(lap)
    lap.eliminate_zeros()
    lap.sort_indices()
    return lap


def chebyshev_coefficients(fn: Any, degree: int, lmax: float) -> np.ndarray:
    """Coefficients ``c_k`` with ``fn(mu) ~ sum_k c_k T_k(2 mu / lmax - 1)`` on ``[0, lmax]``.

    Chebyshev-Gauss interpolation at ``degree + 1`` nodes (the first coefficient is
    halved, so the sum runs over ``c_0 .. c_degree`` plainly). ``degree >= 0``.
    """
    if not degree >= 0:
        raise ValueError(f"Expected degree >= 0 (got {degree}).")
    m = degree + 1
    theta = np.pi * (np.arange(m) + 0.5) / m
    mu = 0.5 * lmax * (np.cos(theta) + 1.0)
    f = fn(mu)
    c = np.array([2.0 / m * np.sum(f * np.cos(k * theta)) for k in range(m)])
    c[0] /= 2.0
    return c


def check_laplacian(lap: Any, name: str = "laplacian"):  # type: ignore[no-untyped-def]
    """``lap`` as float64 CSR after checking it has a graph Laplacian's structure: square,
    real, finite, symmetric (the library's rule, :func:`check_symmetric`), off-diagonal
    entries ``<= 0`` and diagonal entries ``>= 0`` (both up to ``1000 eps max|L|``), as
    the combinatorial and the normalized Laplacian of a graph with non-negative weights
    have (``TypeError`` / ``ValueError`` otherwise)."""
    import scipy.sparse as sp

    if getattr(lap.dtype, "kind", "") == "c":
        raise TypeError(f"Expected a real '{name}' (got complex dtype {lap.dtype}).")
    a = sp.csr_matrix(lap, dtype=np.float64)
    if a.shape[0] != a.shape[1]:
        raise ValueError(f"Expected '{name}' to be square (got shape {a.shape}).")
    if a.nnz and not np.all(np.isfinite(a.data)):
        raise ValueError(f"Expected finite entries in '{name}' (got NaN or Inf).")
    coo = a.tocoo()
    tol = 1000 * np.finfo(np.float64).eps * (float(np.abs(coo.data).max()) if a.nnz else 0.0)
    diag = coo.row == coo.col
    bad_diag = coo.data[diag] < -tol
    bad_off = coo.data[~diag] > tol
    if bad_diag.any() or bad_off.any():
        got = (
            f"diagonal entry {float(coo.data[diag][bad_diag][0]):.3g} < 0"
            if bad_diag.any()
            else f"off-diagonal entry {float(coo.data[~diag][bad_off][0]):.3g} > 0"
        )
        raise ValueError(
            f"Expected '{name}' to be a graph Laplacian (diagonal >= 0, off-diagonal <= 0, "
            f"as laplacian_matrix returns; got {got})."
        )
    check_symmetric(a, name, hint="A graph Laplacian is symmetric: see laplacian_matrix.")
    return a


class HeatKernel(LinearOperator):
    """Graph heat-kernel blur ``A = exp(-tau L)`` by a Chebyshev polynomial of ``L``.

    ``A x = sum_k c_k T_k(2 L / lmax - 1) x`` with ``lmax`` an upper bound on the
    spectrum of ``L`` (Gershgorin: ``max_i 2 L_ii`` ... here ``max_i sum_j |L_ij|``).
    ``A`` is a polynomial of a symmetric matrix, hence symmetric: the adjoint is
    ``A`` itself, exactly (also for the truncated polynomial).

    Args:
        laplacian: ``(n, n)`` scipy sparse Laplacian of a graph (e.g. from
            :func:`laplacian_matrix`): real, finite, symmetric, with off-diagonal entries
            ``<= 0`` and diagonal entries ``>= 0`` (:func:`check_laplacian`; ``ValueError``
            otherwise).
        tau: diffusion time ``>= 0``.
        degree: polynomial degree (error decays like ``(e tau lmax / 2 degree)^degree``).

    Example:
        >>> import networkx as nx, torch
        >>> from unrollsci.graph import HeatKernel, laplacian_matrix
        >>> import scipy.sparse as sp
        >>> L = laplacian_matrix(sp.csr_matrix(nx.to_scipy_sparse_array(nx.path_graph(5))))
        >>> out = HeatKernel(L, tau=0.5)(torch.ones(1, 5, dtype=torch.float64))
        >>> round(out.sum().item(), 6)
        5.0
    """

    def __init__(self, laplacian: Any, tau: float = 1.0, *, degree: int = 30) -> None:
        super().__init__()
        import scipy.sparse as sp

        if not sp.issparse(laplacian):
            raise TypeError(
                f"Expected 'laplacian' as a scipy sparse matrix (got {type(laplacian).__name__})."
            )
        if not (math.isfinite(tau) and tau >= 0):
            raise ValueError(f"Expected tau >= 0 (got {tau!r}).")
        if degree < 1:
            raise ValueError(f"Expected degree >= 1 (got {degree}).")
        lap = check_laplacian(laplacian)
        n = lap.shape[0]
        self.lmax = float(max(np.asarray(abs(lap).sum(axis=1)).max(), 1e-12)) if n else 1.0
        self.tau, self.degree = float(tau), int(degree)
        self.coef = chebyshev_coefficients(lambda mu: np.exp(-tau * mu), degree, self.lmax)
        err = self._error()
        if not err <= HEAT_TOL:  # e.g. tau * lmax ~ 1e6: every coefficient underflows to 0
            need = next(
                (d for d in range(degree + 1, 4 * degree + 400) if self._error(d) <= HEAT_TOL),
                None,
            )
            hint = f"use degree >= {need}" if need else "lower tau (or the edge weights)"
            raise ValueError(
                f"Expected tau * lambda_max(L) small enough for a degree-{degree} Chebyshev "
                f"polynomial of exp(-tau L) (got tau * lambda_max bound = {tau * self.lmax:.4g}: "
                f"the polynomial is off exp(-tau mu) by {err:.2e} on [0, {self.lmax:.4g}]); "
                f"{hint} (heat_degree= in GraphInverseProblem)."
            )
        self.lap = SparseOperator(lap)
        self.in_shape = self.out_shape = (n,)

    def _error(self, degree: int | None = None) -> float:
        """Largest error of the degree-``degree`` polynomial (the one applied if None)
        against ``exp(-tau mu)`` on a grid of ``[0, lmax]``."""
        mu = np.linspace(0.0, self.lmax, 4001)
        coef = self.coef
        if degree is not None:
            coef = chebyshev_coefficients(lambda m: np.exp(-self.tau * m), degree, self.lmax)
        approx = np.polynomial.chebyshev.chebval(2.0 * mu / self.lmax - 1.0, coef)
        return float(np.max(np.abs(approx - np.exp(-self.tau * mu))))

    def response(self, mu: np.ndarray) -> np.ndarray:
        """The polynomial actually applied, as a function of a Laplacian eigenvalue ``mu``."""
        t = 2.0 * np.asarray(mu, dtype=np.float64) / self.lmax - 1.0
        return np.polynomial.chebyshev.chebval(t, self.coef)

    def _mv(self, x: torch.Tensor) -> torch.Tensor:
        def lt(v: torch.Tensor) -> torch.Tensor:  # (2 L / lmax - I) v
            return self.lap.mv(v) * (2.0 / self.lmax) - v

        t_prev, t_cur = x, lt(x)
        out = self.coef[0] * t_prev + self.coef[1] * t_cur
        for k in range(2, self.degree + 1):
            t_prev, t_cur = t_cur, 2.0 * lt(t_cur) - t_prev
            out = out + self.coef[k] * t_cur
        return out

    def _rmv(self, y: torch.Tensor) -> torch.Tensor:
        return self._mv(y)

    def extra_repr(self) -> str:
        return f"n={self.in_shape[0]}, tau={self.tau}, degree={self.degree}"
