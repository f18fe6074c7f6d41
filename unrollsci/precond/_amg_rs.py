"""Learned AMG on Ruge-Stuben coarsening (``LearnedPreconditioner("amg", coarsening="rs")``).

The setting of Luz, Galun, Maron, Basri and Yavneh (ICML 2020): the C/F splitting is
classical Ruge-Stuben's (PyAMG: classical strength of connection with ``theta = 0.25``,
``RS`` splitting, PyAMG's ``ruge_stuben_solver`` defaults) and the GNN predicts the values of
the prolongation on the interpolation pattern that splitting gives: a C point's row is its
unit vector, an F point ``i``'s row has an entry for each strongly connected C point ``j``
(the pattern of direct interpolation, which PyAMG's default modified classical
interpolation shares). The learned values are

    P_ij = w_ij P0_ij,   w_ij = exp(tanh(f(h_i, h_j, e_ij))) in [1/e, e],

with ``P0`` PyAMG's classical interpolation; the output layer starts at zero, so an untrained
model is PyAMG's Ruge-Stuben level (tested). The C rows stay unit vectors, so ``P`` has full
column rank for any weights and ``P^T A P`` is SPD: with symmetric Gauss-Seidel smoothing
the cycle is SPD for any weights (the argument of :mod:`._amg`).

Edge features of a learned entry ``(i, j)``: ``S_ij = a_ij / sqrt(a_ii a_jj)``, ``P0_ij``,
``1 / (number of interpolating C points of i)`` and the row sum of ``P0``'s row ``i``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ._amg_setup import EDGE_FEATURES, AMGSetup, _tt, clip_f32, node_features

__all__ = ["pow2_scaled", "rs_setup"]


def pow2_scaled(a: Any) -> tuple[Any, float]:
    """``(s a, s)`` with ``s`` the power of two that puts ``max |a_ij|`` in ``[1/2, 1)``
    (``s = 1``, ``a`` itself, where it is there already or ``a`` has no non-zero; ``s =
    2^1023``, the largest finite one, where ``max |a_ij| < 2^-1024``, a subnormal).

    A power of two scales every entry exactly (bar entries ``2^-1022`` below the largest,
    which are negligible next to it), and the Ruge-Stuben set-up, the Galerkin product and
    PyAMG's cycle are homogeneous in ``A``: run on ``s A`` they give the same splitting and
    interpolation, and a hierarchy for ``s A``, whatever the scale of ``a``. On ``a``
    itself, near the ends of float64's range, products of entries overflow (a coarse
    matrix of Inf) or underflow (PyAMG's interpolation divides by zero).
    """
    import scipy.sparse as sp

    data = np.abs(np.asarray(a.data, dtype=np.float64))
    top = float(data.max()) if data.size else 0.0
    if not (np.isfinite(top) and top > 0.0):
        return a, 1.0
    # 2^1023 is the largest finite power of two: where max |a_ij| < 2^-1024 (subnormal)
    # s stops there (no overflow to Inf), and max |s a_ij| is in [2^-51, 1/2)
    s = float(np.ldexp(1.0, min(-int(np.frexp(top)[1]), 1023)))
    if s == 1.0:
        return a, 1.0
    return sp.csr_matrix((a.data * s, a.indices, a.indptr), shape=a.shape), s


def _entries(
    a: Any, splitting: np.ndarray, counts: np.ndarray, e_row: np.ndarray, e_col: np.ndarray
) -> np.ndarray:
    """``a_ij`` of the learned entries ``(e_row, e_col)`` (row-major, columns ascending:
    the F rows of ``P``), by one sparse element-wise product with their pattern (a merge
    of sorted rows); by a search among ``A``'s sorted keys if some ``a_ij`` is not a
    stored non-zero (not the case for strong connections)."""
    import scipy.sparse as sp

    n = a.shape[0]
    ip = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.where(splitting == 0, counts, 0), out=ip[1:])
    mask = sp.csr_matrix((np.ones(e_row.size), e_col, ip), shape=a.shape)
    prod = a.multiply(mask).tocsr()
    if prod.nnz == e_row.size:
        return prod.data
    rows = np.repeat(np.arange(n), np.diff(a.indptr))
    return a.data[np.searchsorted(rows * n + a.indices, e_row * n + e_col)]


@torch.inference_mode(False)  # built under a caller's inference mode, usable in autograd
def rs_setup(a: Any, *, theta: float = 0.25, direct: bool = False) -> AMGSetup:
    """PyAMG's Ruge-Stuben splitting and classical interpolation of ``a`` (validated
    canonical CSR), and the features of the learned entries of ``P`` (its F rows).

    Args:
        a: SPD matrix, canonical scipy CSR, float64.
        theta: classical strength threshold (PyAMG's ``ruge_stuben_solver`` default).
        direct: base values from PyAMG's direct interpolation (same pattern, cheaper to
            form; strong F-F connections are not distributed) instead of classical.

    Returns:
        an :class:`~unrollsci.precond._amg.AMGSetup` with ``coarsening="rs"``.
    """
    import scipy.sparse as sp
    from pyamg.classical.interpolate import classical_interpolation, direct_interpolation
    from pyamg.classical.split import RS
    from pyamg.strength import classical_strength_of_connection

    n = a.shape[0]
    # on s A, s a power of two near 1 / max|a_ij| (exact): the same splitting and P0 as on
    # A, at any scale of A (pow2_scaled)
    a_s = pow2_scaled(a)[0]
    c = classical_strength_of_connection(a_s, theta=theta)
    splitting = RS(c, second_pass=False)
    interpolation = direct_interpolation if direct else classical_interpolation
    p0 = sp.csr_matrix(interpolation(a_s, c, splitting))
    p0.sort_indices()
    nc = p0.shape[1]
    cpts = np.flatnonzero(splitting)  # coarse index J is the J-th C point
    counts = np.diff(p0.indptr)
    p_row = np.repeat(np.arange(n), counts)
    learned = np.flatnonzero(splitting[p_row] == 0)  # F rows' entries
    e_row = p_row[learned]
    e_col = cpts[p0.indices[learned]].astype(np.int64)
    d = a.diagonal()
    dis = 1.0 / np.sqrt(d)
    pv = np.asarray(p0.data, dtype=np.float64)
    rowsum = p0 @ np.ones(nc)
    edge_attr = np.empty((EDGE_FEATURES, learned.size), dtype=np.float32)
    edge_attr[0] = _entries(a, splitting, counts, e_row, e_col) * dis[e_row] * dis[e_col]
    # P0's values and row sums are unbounded on badly row-scaled matrices: clipped to
    # float32's range before the cast (as amg_setup's features)
    edge_attr[1] = clip_f32(pv[learned])
    edge_attr[2] = 1.0 / counts[e_row]
    edge_attr[3] = clip_f32(rowsum[e_row])
    return AMGSetup(
        a=a,
        n=n,
        nc=nc,
        t=p0,
        e_row=_tt(e_row.astype(np.int64)),
        e_col=_tt(e_col),
        edge_attr=torch.from_numpy(edge_attr).T,
        x=node_features(a, d),
        omega0=1.0,
        coarse_b=np.ones((nc, 1)),
        coarsening="rs",
        target=_tt(learned.astype(np.int64)),
    )
