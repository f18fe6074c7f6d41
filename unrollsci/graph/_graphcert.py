"""Certificates that depend on the graph only: computed once per graph, reused for every
mask, signal and ``lam`` on it.

For a mask problem ``H = diag(m) + lam L`` (``0 <= m <= 1``, ``lam >= 0``, ``L`` a Laplacian:
symmetric, positive semidefinite, off-diagonal entries ``<= 0``):

* ``lambda_max(H) <= max_i m_i + lam lambda_max(L)`` (``H <= (max m) I + lam L``), so one
  certified bound on ``lambda_max(L)`` caps the Lipschitz constant of every problem on
  the graph (proved by a local Schur test or, failing that, by the inertia of
  ``c I - L``); its Lanczos vector also warm-starts the per-problem estimate.
* ``lambda_max(D^{-1} H) <= max(1, c_G)`` for ``D = diag(H)`` and any
  ``c_G >= lambda_max(diag(L)^{-1} L)``: for ``c >= max(1, c_G)``,
  ``c D - H = (c - 1) diag(m) + lam (c diag(L) - L)`` is a sum of two positive
  semidefinite matrices. ``c_G`` is a Lanczos estimate proved by the inertia of
  ``c_G diag(L) - L`` (one sparse ``L D L^T`` factorization per graph), else Gershgorin.

Both inertia checks run only where the factorization is affordable
(:func:`._inertia.affordable`, once per graph): on expander-like graphs (block models,
scale-free graphs) a sparse factorization fills in to nearly dense (docs/graph.md has the
measured cost), and the factorization-free proofs are used instead.

Proofs and their tests: docs/graph.md ("Certified bounds without factorizing H").
The certificates are kept in a small module-level cache keyed by a hash of the Laplacian's
entries (the last :data:`_CACHE_SIZE` graphs), so a problem built again on the same graph
(another mask, other signals, another ``lam``) reuses them.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import Any

import numpy as np

from . import _certify
from ._inertia import affordable, upper_proved

__all__ = [
    "abs_perron_bound",
    "clear_cache",
    "cached_for_graph",
    "components",
    "graph_key",
    "jacobi_top",
    "laplacian_of",
    "laplacian_top",
    "split_top",
]

_CACHE_SIZE = 8
_CACHE: OrderedDict[tuple[bytes, str], Any] = OrderedDict()
_LOCK = threading.Lock()  # the two caches are shared by threads that build problems


def clear_cache() -> None:
    """Forget what is kept per graph: the last graphs' Laplacians, components, certificates
    and controller samples (``unrollsci.graph.clear_graph_cache``: frees their memory; the
    next problem on a graph computes them again)."""
    with _LOCK:
        _CACHE.clear()
        _BUILT.clear()


def graph_key(lap: Any) -> bytes:
    """A digest of the CSR Laplacian ``lap`` (shape, structure and values); pass it as
    ``digest=`` to the functions below to hash a graph once."""
    lap = lap.tocsr()
    h = hashlib.sha256()  # SHA extensions: hardware-accelerated on most x86 and Arm CPUs
    h.update(np.asarray(lap.shape, dtype=np.int64).tobytes())
    for arr in (lap.indptr, lap.indices, lap.data):
        arr = np.ascontiguousarray(arr)
        h.update(f"{arr.dtype.str}:{arr.size};".encode())
        h.update(arr)  # the buffer itself: no copy
    return h.digest()


#: Laplacians of the last graphs problems were built on (:func:`laplacian_of`); few, as
#: each holds a copy of a graph's CSR arrays
_BUILT_SIZE = 2
_BUILT: OrderedDict[tuple[bytes, str], tuple[Any, np.ndarray, bytes]] = OrderedDict()


def laplacian_of(adj: Any, kind: str) -> tuple[Any, np.ndarray, bytes]:
    """``(L, row sums of |L|, digest)`` of a canonical adjacency (:func:`._laplacian.
    canonical_adjacency`): its weights checked (:func:`._laplacian.check_adjacency_values`)
    and ``L`` built once per graph and Laplacian kind, for the last :data:`_BUILT_SIZE`
    graphs (a problem on a known graph, e.g. another mask, skips both); ``digest`` (from
    the adjacency's SHA-256 and the kind: ``L`` is a function of the two) keys the graph's
    certificates. The arrays are read-only: they are shared by the problems on the graph."""
    from ._laplacian import _KINDS, check_adjacency_values, laplacian_matrix

    if kind not in _KINDS:
        raise ValueError(f"Expected laplacian 'combinatorial' or 'normalized' (got {kind!r}).")
    adj_key = graph_key(adj)
    key = (adj_key, kind)
    with _LOCK:
        if key in _BUILT:
            _BUILT.move_to_end(key)
            return _BUILT[key]
    check_adjacency_values(adj)
    lap = laplacian_matrix(adj, kind)
    # row sums of |L|: one product, without copying the index arrays
    abs_lap = type(lap)((np.abs(lap.data), lap.indices, lap.indptr), shape=lap.shape)
    rowabs = abs_lap @ np.ones(lap.shape[0])
    for arr in (lap.data, lap.indices, lap.indptr, rowabs):
        arr.setflags(write=False)
    digest = hashlib.sha256(b"laplacian:" + kind.encode() + b":" + adj_key).digest()
    out = (lap, rowabs, digest)
    with _LOCK:
        _BUILT[key] = out
        while len(_BUILT) > _BUILT_SIZE:
            _BUILT.popitem(last=False)
    return out


def cached_for_graph(lap: Any, what: str, build: Any, digest: bytes | None) -> Any:
    """``build()`` once per graph: kept under ``what`` and the digest of ``lap`` (hashed
    here when ``digest`` is None) among the last graphs' certificates."""
    key = (graph_key(lap) if digest is None else digest, what)
    with _LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    val = build()  # outside the lock: two threads may build the same value, both valid
    with _LOCK:
        _CACHE[key] = val
        while len(_CACHE) > 6 * _CACHE_SIZE:  # about six entries per graph
            _CACHE.popitem(last=False)
    return val


def components(lap: Any, digest: bytes | None = None) -> tuple[int, np.ndarray]:
    """scipy's ``connected_components`` of the graph of ``lap`` (its off-diagonal pattern:
    the adjacency's), once per graph (cached; the labels are read-only)."""
    from scipy.sparse.csgraph import connected_components

    def build() -> tuple[int, np.ndarray]:
        ncomp, labels = connected_components(lap, directed=False)
        labels.setflags(write=False)
        return int(ncomp), labels

    return cached_for_graph(lap, "components", build, digest)


def _factorable(lap: Any, digest: bytes | None) -> bool:
    """:func:`._inertia.affordable` for the graph (once per graph, cached): the inertia
    checks below are skipped on graphs that would fill in (expanders)."""
    return bool(cached_for_graph(lap, "factorable", lambda: affordable(lap), digest))


def abs_perron_bound(a: Any, steps: int = 50) -> float:
    """A proven upper bound on ``lambda_max(a)`` for a symmetric sparse ``a``, without a
    factorization: ``lambda_max(a) <= rho(|a|) <= max_i (|a| x)_i / x_i`` for any
    ``x > 0`` (``|x^T a x| <= |x|^T |a| |x|``, then Collatz-Wielandt for the non-negative
    ``|a|``). ``x``: ``steps`` power-iteration steps on ``|a|`` from the ones (whose ratio
    is Gershgorin's bound), floored at a tiny positive value; the least ratio over the
    steps is returned, rounded up: a product of non-negative terms is computed to within
    the relative error ``gamma_k`` (:func:`._local.gamma`). For a graph Laplacian, ``|L| =
    D + W`` is the signless Laplacian, whose top eigenvalue equals ``lambda_max(L)`` on a
    bipartite graph; measured, it is within 1-8% of it on block models and scale-free
    graphs (where no factorization is affordable) and 18% above it on a random geometric
    graph (where the inertia check runs instead)."""
    import scipy.sparse as sp

    from ._local import gamma

    m = a.shape[0]
    if m == 0:
        return 0.0
    b = abs(sp.csr_matrix(a))
    up = (1.0 + 8.0 * np.finfo(np.float64).eps) / (1.0 - gamma(b))
    x = np.ones(m)
    best = np.inf
    for _ in range(max(int(steps), 1)):
        y = b @ x
        best = min(best, float(np.max(y / x)) * up)
        top = float(y.max())
        if not (np.isfinite(top) and top > 0):
            break
        x = np.maximum(y / top, 1e-300)
    return best


def laplacian_top(
    lap: Any, safety: float = 1.01, *, digest: bytes | None = None
) -> tuple[float, np.ndarray]:
    """``(bound, v)``: a proven upper bound on ``lambda_max(lap)`` and the Lanczos vector
    of the top Ritz value (unit norm).

    The bound is the Lanczos estimate times ``safety`` accepted by
    :func:`_certify.certify_upper` (cheap, local), else the split certificate's bound
    (:func:`split_top`, :mod:`._split`: one factorization of the graph minus a ball
    around the vector's peak; tight where the top vector is localized) where it is below
    the estimate times ``max(safety, 1.02)``, else that product
    accepted by the inertia check (``c I - L`` positive definite: one sparse ``L D L^T``
    factorization without pivoting, every pivot positive, Sylvester's law of inertia, with
    the shift lowered by a bound on the factorization's backward error,
    :func:`._inertia.upper_proved`; skipped on graphs that would fill in,
    :func:`._inertia.affordable`), else the
    smaller of the first of the estimate times 1.05, 1.1, 1.25 accepted by the Schur test
    and the Perron bound :func:`abs_perron_bound` (at most Gershgorin's ``max_i sum_j
    |L_ij|``; within a few percent of ``lambda_max(L)`` on block models and scale-free
    graphs). Paid once per graph: a tight ``lambda_max(L)`` lets every
    problem on the graph take ``max m + lam lambda_max(L)`` as its Lipschitz bound
    without a per-problem proof.
    """

    def build() -> tuple[float, np.ndarray]:

        m = lap.shape[0]
        cap = float(np.asarray(abs(lap).sum(axis=1)).max()) if m else 0.0
        est, vec = _certify.lanczos(lap, np.ones(m), steps=30)
        c = safety * max(est, 0.0)
        if c < cap and _certify.certify_upper(lap, np.ones(m), c):
            return c, vec
        c = max(safety, 1.02) * max(est, 0.0)
        cert = split_top(lap, vec, digest)  # tighter where the top vector is localized
        top = cert.graph_top() if cert is not None else np.inf
        if top < min(c, cap):
            return top, vec
        if 0 < c < cap and _factorable(lap, digest):
            if upper_proved(lap, c):
                return c, vec
        cap = min(cap, abs_perron_bound(lap))
        f = (1.05, 1.1, 1.25)
        return _certify.upper_bound(lap, np.ones(m), 1.05, cap, est=est, factors=f), vec

    return cached_for_graph(lap, f"top-{safety}", build, digest)


def split_top(lap: Any, vec: np.ndarray, digest: bytes | None = None) -> Any:
    """The split certificate of :func:`._split.split_certificate` (a ball around the
    peak of ``vec``, the graph's top Lanczos vector), once per graph; None where a
    factorization is not affordable or none is proved. :func:`._split.split_bound` turns
    it into each mask's bound on ``lambda_max(H)``."""
    from ._split import split_certificate

    def build() -> Any:
        return split_certificate(lap, vec) if _factorable(lap, digest) else None

    return cached_for_graph(lap, "split", build, digest)


def jacobi_top(lap: Any, safety: float = 1.01, *, digest: bytes | None = None) -> float:
    """A proven upper bound ``c_G >= 1`` on ``lambda_max(diag(L)^{-1} L)``, hence on the
    top of the Jacobi-scaled Hessian of every mask problem on this graph (module docstring).

    Nodes with ``L_ii = 0`` have a zero row (``L`` is positive semidefinite) and are left
    out. The Lanczos estimate times ``safety``, then times 1.05, is accepted when the
    ``L D L^T`` inertia check proves ``c diag(L) - L`` positive semidefinite with the
    factorization's rounding accounted for (:func:`._inertia.upper_proved`); else the
    Gershgorin bound ``max_i sum_j |L_ij| / L_ii`` (``<= 2`` for a combinatorial Laplacian).
    On graphs that would fill in (:func:`._inertia.affordable`: expanders) no factorization
    is tried: the estimate times ``safety``, 1.05, 1.1 or 1.25 proved by the Schur test
    (:func:`_certify.certify_upper` on ``c diag(L) - L``), else Gershgorin.
    """

    def build() -> float:
        import scipy.sparse as sp

        d = lap.diagonal()
        keep = np.nonzero(d > 0)[0]
        if keep.size == 0:
            return 1.0
        sub = sp.csr_matrix(lap[keep][:, keep]) if keep.size < lap.shape[0] else lap.tocsr()
        ds = sub.diagonal()
        gersh = float((np.asarray(abs(sub).sum(axis=1)).ravel() / ds).max())
        est = _certify.lanczos(sub, ds, steps=30)[0]
        if not _factorable(lap, digest):  # the Schur test of c diag(L) - L, else Gershgorin
            f = (1.05, 1.1, 1.25)
            return max(_certify.upper_bound(sub, ds, safety, gersh, est=est, factors=f), 1.0)
        for f in (safety, max(safety, 1.05)):
            c = max(est * f, 1.0)
            if c >= gersh:
                break
            if upper_proved(sub, c, ds):
                return c
        return max(gersh, 1.0)

    return cached_for_graph(lap, f"jacobi-{safety}", build, digest)
