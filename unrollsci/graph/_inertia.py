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
    "DIAG_MIN",
    "affordable",
    "envelope_widths",
    "factor_proved",
    "fills_in",
    "is_pd",
    "symmetric_lu",
    "upper_proved",
]

#: ``diag(H)`` below this (subnormal or near it: ``lam`` or weights close to underflow): no
#: proof by a factorization or the Collatz-Wielandt bound, whose rounding analyses assume
#: relative rounding (near underflow it is absolute): the callers fall back to a valid bound
DIAG_MIN = np.finfo(np.float64).tiny / np.finfo(np.float64).eps ** 2
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


def _backward_error(lu: Any, w: np.ndarray) -> float:
    """Bound on ``||Delta A||_2`` for the LU factors ``lu`` of ``A`` (no pivoting,
    ``perm_r == perm_c``), in the scaling where ``sqrt(|A_ii|) <= w_i`` (module
    :func:`factor_proved`): twice ``gamma_{c+2}/(1 - gamma_{c+2}) max_i w_i sum_{j in F_i} w_j``,
    ``c`` the most entries in a row of ``L`` (terms of each inner product) and ``F`` the
    pattern of ``L + U`` (where ``|L||U|`` can be nonzero)."""
    import scipy.sparse as sp

    lo = sp.csr_matrix(lu.L)
    up = sp.csr_matrix(lu.U)
    c = int(np.diff(lo.indptr).max(initial=0))
    wp = np.empty_like(w)
    wp[lu.perm_r] = w  # row i of A is row perm_r[i] of L U
    pat = (abs(lo) + abs(up)).tocsr()
    pat.data[:] = 1.0
    g = _gamma(c + 2)  # one term more: the rounding of the shift s (below)
    return 2.0 * g / (1.0 - g) * float((wp * (pat @ wp)).max(initial=0.0))


def _gamma(k: int) -> float:
    """Higham's ``gamma_k = k u / (1 - k u)`` (``u`` the unit roundoff of float64); inf
    once ``k u >= 1``."""
    ku = k * np.finfo(np.float64).eps / 2
    return ku / (1.0 - ku) if ku < 1 else float("inf")


def _shift_proved(h: Any, mdiag: np.ndarray, val: float, lower: bool) -> bool:
    """True when Sylvester's law of inertia proves ``H - val M >= 0`` (``lower``) or ``val M
    - H >= 0`` with the rounding of the factorization accounted for, ``M = diag(mdiag)``.

    The matrix factored is ``A = H - s M`` (resp. ``s M - H``) with ``s = val + E`` (resp.
    ``val - E``). Positive pivots make ``A + Delta A`` positive definite, where, for a
    factorization without pivoting of a symmetric matrix whose pivots are positive,
    ``|Delta A| <= gamma_{c+1} |L||U|`` and ``(|L||U|)_ij <= sqrt(a_ii a_jj) / (1 -
    gamma_{c+1})`` (Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., Thms
    9.3 and 10.3: the Cholesky bound, ``U = D L^T``), nonzero only on the pattern of ``L +
    U``. In the scaling ``M^{-1/2} . M^{-1/2}`` (``w_i^2 = |h_ii| / m_i + 2 val`` bounds
    ``|a_ii| / m_i``) that is at most ``E / 2`` (:func:`_backward_error`; the other half,
    and ``gamma_{c+2}`` for ``gamma_{c+1}``, cover the rounding of forming ``A``, at most
    ``2 u w_i^2`` per diagonal entry, of ``s`` and of ``E``), so ``lambda_min(M^{-1/2} H
    M^{-1/2}) >= s - E = val`` (resp. ``lambda_max <= val``). ``E`` is first bounded for
    any pattern (``F`` full, ``c = m``: one factorization when the margin is wide), then,
    if that fails, for the pattern of the factor found (the same for every shift)."""
    import scipy.sparse as sp

    m = h.shape[0]
    w = np.sqrt(np.abs(h.diagonal()) / mdiag + 2.0 * abs(val))
    g = _gamma(m + 2)
    e = 2.0 * g / (1.0 - g) * float(w.max(initial=0.0) * w.sum())
    for _ in range(2):
        if not np.isfinite(e) or (lower and e >= val):  # s <= 2 val: the w above holds
            return False
        s = val + e if lower else val - e
        met = sp.diags(s * mdiag)
        try:
            lu = symmetric_lu(sp.csr_matrix(h - met if lower else met - h))
        except Exception:  # noqa: BLE001 - exactly singular
            return False
        if not np.array_equal(lu.perm_r, lu.perm_c):
            return False
        d = lu.U.diagonal()
        if bool(np.all(np.isfinite(d)) and np.all(d > 0)):
            return True
        need = _backward_error(lu, w)  # the pattern of the factor is the same for any s
        if not need < e:
            return False
        e = need
    return False


def upper_proved(h: Any, val: float, mdiag: np.ndarray | None = None) -> bool:
    """True when Sylvester's law of inertia proves ``lambda_max(M^{-1/2} H M^{-1/2}) <= val``
    for the symmetric sparse ``h``, ``M = diag(mdiag)`` (the identity when None), with the
    factorization's rounding accounted for (:func:`_shift_proved`: the shift factored is
    ``val`` minus a bound on the backward error). False (no proof; the caller falls back to
    a factorization-free bound) when ``val`` or an entry of ``mdiag`` is below
    :data:`DIAG_MIN` or not finite: near underflow rounding is absolute, which the
    analysis does not cover."""
    m = h.shape[0]
    mdiag = np.ones(m) if mdiag is None else np.asarray(mdiag, dtype=np.float64)
    if not (np.isfinite(val) and val >= DIAG_MIN) or not np.all(mdiag >= DIAG_MIN):
        return False
    if not np.all(np.isfinite(mdiag)) or not np.all(np.isfinite(h.diagonal())):
        return False
    return _shift_proved(h, mdiag, float(val), lower=False)


def factor_proved(
    h: Any, which: str, safety: float, scaled: bool, *, dense_fill: bool | None = None
) -> float | None:
    """``safety`` times ARPACK's estimate of ``lambda_max`` (``"hi"``) or ``lambda_min``
    (``"lo"``, shift-invert) of ``H`` or of ``S = D^{-1/2} H D^{-1/2}``, proved by
    Sylvester's law of inertia (:func:`_shift_proved`: ``v M - H``, resp. ``H - v M``,
    positive definite with the factorization's rounding accounted for, ``M = I`` or
    ``diag(H)``; ``v M - H`` is congruent to ``D^{1/2} (v I - S) D^{1/2}``); None when the
    estimate fails or the proof does not go through (an ill-conditioned ``H``: ``v`` within
    the factorization's backward error of the eigenvalue), and without trying when the
    matrix would fill in (:func:`fills_in`, or ``dense_fill`` if the caller knows it): the
    caller falls back to the factorization-free bounds."""
    import scipy.sparse as sp
    from scipy.sparse.linalg import eigsh

    m = h.shape[0]
    if fills_in(h) if dense_fill is None else dense_fill:
        return None
    dg = h.diagonal()
    if not np.all(dg >= DIAG_MIN):  # also NaN; 0 (a singular H): no proof
        return None
    mdiag = dg if scaled else np.ones(m)
    dis = sp.diags(1.0 / np.sqrt(dg))
    hs = sp.csr_matrix(dis @ h @ dis) if scaled else h
    try:
        if which == "hi":
            est = eigsh(hs, k=1, which="LA", tol=1e-8, return_eigenvectors=False, v0=np.ones(m))
            val = float(est[0]) * safety
            return val if _shift_proved(h, mdiag, val, lower=False) else None
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
    return val if val > 0 and _shift_proved(h, mdiag, val, lower=True) else None
