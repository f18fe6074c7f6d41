"""Proved Collatz-Wielandt bounds (:func:`proved`: the rounding of the product with
``H`` subtracted) and the local stage of :func:`._certify.collatz_lower` (``target=...``).

The local stage raises a Collatz-Wielandt lower bound on ``lambda_min(diag(s)^{-1/2} H
diag(s)^{-1/2})`` of a symmetric Z-matrix ``H`` to ``target`` times an estimate from above,
by solves on small neighbourhoods of the nodes where the bound is low (one sparse
factorization of a neighbourhood, never of ``H``). Every value returned is proved from
products with ``H``; docs/graph.md ("Certified bounds without factorizing H") has the
argument."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["gamma", "local_stage", "proved"]

_U = np.finfo(np.float64).eps / 2  # unit roundoff


def gamma(h: Any) -> float:
    """Twice Higham's ``gamma_k`` for a product with ``h`` (``k`` = most entries in a row,
    plus one): ``|fl(H u) - H u| <= gamma_k (|H| u)``."""
    k = int(np.diff(h.indptr).max(initial=0)) + 1
    return 2 * (k * _U / (1 - k * _U))


def proved(
    u: np.ndarray, hu: np.ndarray, dgc: np.ndarray, scales: np.ndarray | None, gam: float
) -> np.ndarray:
    """The Collatz-Wielandt bound ``min_i (H u)_i / (D_i u_i)`` per column: the minimum of
    :func:`_node_proved` over the nodes. ``dgc``: ``diag(H)`` as a column; ``scales``: the
    ``D`` columns (None: ones). Non-finite bounds become 0."""
    lo = _node_proved(u, hu, dgc, u if scales is None else scales * u, gam).min(axis=0)
    return np.where(np.isfinite(lo), lo, 0.0)


def _node_proved(
    u: np.ndarray, hu: np.ndarray, dg: np.ndarray, su: np.ndarray, gam: float
) -> np.ndarray:
    """Each node's proved ratio ``(H u)_i / (D_i u_i)`` (``su = D u``), the rounding of the
    product ``hu = fl(H u)`` subtracted: ``|fl(H u) - H u| <= gamma_k (|H| u)`` and, for a
    Z-matrix, ``|H| u = 2 diag(H) u - H u`` (computed here to within a factor ``1 +
    O(gamma)``: the factor 2 in ``gam`` covers it, and no product with ``|H|`` is needed).
    ``-inf`` where not finite."""
    # (hu - gam |2 dg u - hu|) / su (1 - 8 u), in place: this runs on every smoothing step
    r = np.multiply(dg, u, out=np.empty(np.broadcast_shapes(dg.shape, u.shape)))
    r *= 2.0
    r -= hu
    np.abs(r, out=r)
    r *= -gam
    r += hu
    r /= su
    r *= 1 - 8 * _U
    r[~np.isfinite(r)] = -np.inf
    return r


_GROW = 1.08  # a local round aims this far above the best bound while no estimate exists
_BAD = 0.03  # nodes with a ratio below (1 + _BAD) times the level aimed at are repaired
_FIX = 1e-4  # the local system is shifted this much above the level (rounding room)
_POST = 3  # shifted Jacobi steps after a local solve (the ring just outside it)
_EST_STEPS = 4  # inverse-iteration steps on the local factor for the estimate


def _row_entries(h: Any, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions in ``h``'s CSR arrays of the entries of ``rows`` (in row order) and each
    entry's row number within ``rows``: a gather without scipy's fancy indexing (which
    copies the rows into a new matrix)."""
    starts = h.indptr[rows]
    lens = h.indptr[rows + 1] - starts
    owner = np.repeat(np.arange(rows.size), lens)
    first = np.cumsum(lens) - lens  # where each row's entries begin in the gather
    return np.arange(owner.size) + (starts - first)[owner], owner


def _rows_times(h: Any, rows: np.ndarray, u: np.ndarray) -> np.ndarray:
    """``(h @ u)[rows]`` from those rows only (each row summed in stored order, as scipy's
    product does)."""
    pos, owner = _row_entries(h, rows)
    return np.bincount(owner, weights=h.data[pos] * u[h.indices[pos]], minlength=rows.size)


def _ring(h: Any, nodes: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """The neighbours of ``nodes`` in ``h``'s graph that are not ``inside`` (sorted)."""
    nb = h.indices[_row_entries(h, nodes)[0]]
    nb = nb[~inside[nb]]
    if 32 * nb.size < h.shape[0]:  # a few: sort them rather than scan n flags
        return np.unique(nb)
    mark = np.zeros(h.shape[0], dtype=bool)
    mark[nb] = True
    return np.flatnonzero(mark)


def _grow(h: Any, idx: np.ndarray, hops: int) -> np.ndarray:
    """Boolean mask of ``idx`` and its neighbours up to ``hops`` hops in ``h``'s graph."""
    inside = np.zeros(h.shape[0], dtype=bool)
    inside[idx] = True
    front = idx
    for _ in range(hops):
        front = _ring(h, front, inside)
        if front.size == 0:
            break
        inside[front] = True
    return inside


def local_stage(
    h: Any,
    dg: np.ndarray,
    s: np.ndarray,
    u: np.ndarray,
    hu: np.ndarray,
    best: float,
    target: float,
    gam: float,
    *,
    rounds: int,
    hops: int,
    budget: int,
    hu_exact: bool = False,
) -> float:
    """Raise the Collatz-Wielandt bound of one column to ``target * est`` (or as far as it
    goes); see ``target`` in :func:`collatz_lower`.

    A round aims at a level ``sig`` (``target * est`` once an estimate exists, else
    ``_GROW`` times the best bound). ``N``: the nodes whose ratio ``(H u)_i / (s_i u_i)``
    is below ``sig`` (with a margin) and their ``hops``-hop neighbours. On ``N`` the vector
    becomes the solution ``x`` of ``(H_NN - sig' S_N) x = -H_N,out u_out + kappa S_N u_N``
    (``sig'`` just above ``sig``, ``kappa > 0`` small): the right-hand side is positive
    (``H`` is a Z-matrix), so where ``x > 0`` every ratio in ``N`` is at least ``sig'``.
    ``x`` is not trusted: the new vector is kept only as a candidate, and the bound is
    proved from a fresh product with ``H`` (:func:`proved`), as everywhere else. The
    same factor gives ``est``: the Rayleigh quotient of a few inverse-iteration steps on
    ``N`` (any vector's Rayleigh quotient is ``>= lambda_min``), which is the level the
    next round aims at when ``x`` was not positive (``sig`` above the neighbourhood's
    smallest eigenvalue).
    """
    import scipy.sparse as sp

    from ._inertia import symmetric_lu

    def node_bounds(rows: np.ndarray | None) -> None:
        """``rp`` (each node's proved ratio) recomputed on ``rows`` (all if None) from a
        fresh product of those rows of ``H`` with ``u``: a row's product depends only on
        ``u`` at its neighbours, so the other rows keep their proof."""
        if rows is None:
            hu[:] = h @ u
            rp[:] = _node_proved(u, hu, dg, s * u, gam)
        else:
            hu[rows] = _rows_times(h, rows, u)
            rp[rows] = _node_proved(u[rows], hu[rows], dg[rows], s[rows] * u[rows], gam)

    rp = np.empty_like(u)
    if hu_exact:  # hu is fl(h @ u) already (the caller's last product): no product again
        rp[:] = _node_proved(u, hu, dg, s * u, gam)
    else:
        node_bounds(None)
    best = max(best, float(rp.min()))
    cap = 0.99 * float((dg / s).min())  # sig < min_i H_ii / s_i: the smoother's denominators
    est = np.inf
    spent = 0
    for _ in range(rounds):
        if best >= target * est:
            break
        if best > 0:
            sig = min(target * est, _GROW * best)
        else:  # nothing proved yet: aim below almost every node's ratio
            ok = rp[np.isfinite(rp)]
            sig = min(target * est, target * float(np.quantile(ok, 0.01)) if ok.size else 0.0)
        sig = min(sig, cap)
        if not (np.isfinite(sig) and sig > 0):
            break
        bad = np.flatnonzero(~(rp >= sig * (1 + _BAD)))
        if bad.size == 0:  # nothing left below the level (it is capped): done
            break
        inside = _grow(h, bad, hops)
        nodes = np.flatnonzero(inside)
        spent += nodes.size
        if spent > budget:
            break
        h_n = h[nodes]
        h_nn = h_n[:, nodes]
        s_n = s[nodes]
        shift = sig * (1 + _FIX)
        rhs = -(h_n @ np.where(inside, 0.0, u)) + 1e-3 * shift * s_n * u[nodes]
        try:
            lu = symmetric_lu(sp.csc_matrix(h_nn - sp.diags(shift * s_n)))
        except RuntimeError:  # exactly singular at this shift
            break
        y = u[nodes].copy()
        for _ in range(_EST_STEPS):
            y = lu.solve(s_n * y)
            top = float(np.abs(y).max())
            if not (np.isfinite(top) and top > 0):
                break
            y /= top
        else:
            mu = float(np.dot(y, h_nn @ y) / np.dot(y, s_n * y))
            if np.isfinite(mu) and mu > 0:
                est = min(est, mu)
        x = lu.solve(rhs)
        if not (np.all(np.isfinite(x)) and np.all(x > 0)):
            continue  # sig is above this neighbourhood's bottom: the next round aims lower
        u[nodes] = x
        out = _ring(h, nodes, inside)
        node_bounds(np.concatenate([nodes, out]))
        for _ in range(_POST):  # repair the ring just outside N (shifted Jacobi, as above)
            low = out[rp[out] < sig]
            if low.size == 0:
                break
            u[low] = np.maximum(
                0.5 * ((dg[low] * u[low] - hu[low]) / (dg[low] - sig * s[low]) + u[low]),
                np.finfo(float).tiny,
            )
            mark = np.zeros(u.shape[0], dtype=bool)
            mark[low] = True
            node_bounds(np.concatenate([low, _ring(h, low, mark)]))
        best = max(best, float(rp.min()))
    if np.isfinite(est) and best >= target * est:
        return target * est
    return best
