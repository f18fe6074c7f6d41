"""Proofs by Sylvester's law of inertia (one sparse factorization) and the cheap tests that
decide, before factorizing, whether such a factorization is affordable.

A sparse factorization costs little on graphs that embed in low dimension (meshes, sensor,
road and random geometric graphs: fill ``O(n log n)``) and close to a dense one on
expander-like graphs (stochastic block models, scale-free graphs), where even a minimum-
degree ordering leaves ``O(n^2)`` fill: on a block model the factor held 8.7e6, 3.5e7 and
1.4e8 entries at 5,000, 10,000 and 20,000 nodes, so at 10^5 nodes it would need some 40 GB
(times against CG: docs/graph.md, "Graphs where no factorization is affordable"). Both
tests read the envelope
(profile) after reverse Cuthill-McKee, in ``O(nnz)``: row widths of about ``sqrt(n)`` for
planar-like graphs (measured: 0.3-1.3 ``sqrt(n)`` per row from 2,000 to 10^5 nodes), of a
fraction of ``n`` for expanders (8-48 ``sqrt(n)``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "affordable",
    "envelope_widths",
    "factor_proved",
    "fills_in",
    "is_pd",
    "symmetric_lu",
]

#: per-problem factorization tier (800-5000 nodes): refused above this mean envelope width
ENVELOPE_PER_NODE = 100
#: graph-level certificates: refused above this mean envelope width per ``sqrt(n)`` ...
WIDTH_PER_SQRT_N = 4.0
#: ... unless the envelope factorization's flop count is this small anyway
SMALL_FLOPS = 1e9


def symmetric_lu(a: Any) -> Any:
    """SuperLU of the symmetric sparse matrix ``a``: a symmetric minimum-degree ordering
    (``P a P^T``), no row pivoting, symmetric mode, so ``U = D L^T`` (the library's one
    sparse factorization of symmetric matrices: inertia proofs, exact solves, local solves;
    SuperLU's default COLAMD fills in far more on block-model graphs). Raises SuperLU's
    ``RuntimeError`` for an exactly singular matrix."""
    from scipy.sparse.linalg import splu

    return splu(
        a.tocsc(),
        permc_spec="MMD_AT_PLUS_A",
        diag_pivot_thresh=0.0,
        options={"SymmetricMode": True},
    )


def is_pd(a: Any, tol: float = 0.0) -> bool:
    """True if the symmetric sparse matrix ``a`` is positive definite.

    Sylvester's law of inertia: SuperLU in symmetric mode without row pivoting
    (``diag_pivot_thresh=0``) factors ``P a P^T = L U`` with ``U = D L^T``; ``a`` is
    positive definite iff every pivot ``D_ii`` is positive. Any failure (a zero
    pivot, an unsymmetric permutation) answers False. With ``tol > 0`` every pivot must
    exceed ``tol`` (for a matrix with unit diagonal: numerically positive definite).
    Callers on matrices of unknown structure check :func:`affordable` first.
    """
    try:
        lu = symmetric_lu(a)
    except Exception:  # noqa: BLE001 - singular matrix
        return False
    if not np.array_equal(lu.perm_r, lu.perm_c):
        return False
    d = lu.U.diagonal()
    return bool(np.all(np.isfinite(d)) and np.all(d > tol))


def envelope_widths(h: Any) -> np.ndarray:
    """Each row's envelope width (distance from the diagonal to its first stored entry)
    of the symmetric sparse matrix ``h`` after reverse Cuthill-McKee, ``(n,)`` int64."""
    import scipy.sparse as sp
    from scipy.sparse.csgraph import reverse_cuthill_mckee

    a = sp.csr_matrix(h)
    n = a.shape[0]
    perm = reverse_cuthill_mckee(a, symmetric_mode=True)
    b = a[perm][:, perm].tocsr()
    first = np.arange(n)
    np.minimum.at(first, np.repeat(np.arange(n), np.diff(b.indptr)), b.indices)
    return np.arange(n) - first


def fills_in(h: Any) -> bool:
    """True when the envelope exceeds :data:`ENVELOPE_PER_NODE` entries per row (the
    per-problem factorization tier, up to 5000 nodes: meshes, sensor and road graphs stay
    at 30-80 per row there; block models and scale-free graphs exceed it)."""
    n = h.shape[0]
    return int(envelope_widths(h).sum()) > ENVELOPE_PER_NODE * n


def affordable(h: Any) -> bool:
    """True when a sparse factorization of ``h`` (or of a matrix with its pattern) is
    cheap enough for a certificate paid once per graph: mean envelope width at most
    :data:`WIDTH_PER_SQRT_N` ``sqrt(n)`` (planar-like graphs, any size), or an envelope
    factorization of at most :data:`SMALL_FLOPS` flops (``sum_i w_i^2``: small graphs of
    any kind)."""
    n = h.shape[0]
    if n == 0:
        return True
    w = envelope_widths(h).astype(np.float64)
    return bool(w.mean() <= WIDTH_PER_SQRT_N * np.sqrt(n) or float(w @ w) <= SMALL_FLOPS)


def factor_proved(
    h: Any, which: str, safety: float, scaled: bool, *, dense_fill: bool | None = None
) -> float | None:
    """``safety`` times ARPACK's estimate of ``lambda_max`` (``"hi"``) or ``lambda_min``
    (``"lo"``, shift-invert) of ``H`` or of ``S = D^{-1/2} H D^{-1/2}``, proved by
    Sylvester's law of inertia (:func:`is_pd`: ``v M - H``, resp. ``H - v M``, positive
    definite, ``M = I`` or ``diag(H)``; ``v M - H`` is congruent to ``D^{1/2} (v I - S)
    D^{1/2}``); None when the estimate fails or the proof does not go through, and without
    trying when the matrix would fill in (:func:`fills_in`, or ``dense_fill`` if the caller
    knows it): the caller falls back to the factorization-free bounds."""
    import scipy.sparse as sp
    from scipy.sparse.linalg import eigsh

    m = h.shape[0]
    if fills_in(h) if dense_fill is None else dense_fill:
        return None
    dg = h.diagonal()
    metric = sp.diags(dg if scaled else np.ones(m)).tocsc()
    dis = sp.diags(1.0 / np.sqrt(dg))
    hs = sp.csr_matrix(dis @ h @ dis) if scaled else h
    try:
        if which == "hi":
            est = eigsh(hs, k=1, which="LA", tol=1e-8, return_eigenvectors=False, v0=np.ones(m))
            val = float(est[0]) * safety
            return val if is_pd(sp.csr_matrix(val * metric - h)) else None
        est = eigsh(
            sp.csc_matrix(hs),
            k=1,
            sigma=0.0,
            which="LM",
            tol=1e-8,
            return_eigenvectors=False,
            v0=np.ones(m),
        )
        val = max(float(est[0]), 0.0) * safety
    except Exception:  # noqa: BLE001 - ARPACK failed or a singular factorization
        return None
    return val if val > 0 and is_pd(sp.csr_matrix(h - val * metric)) else None
