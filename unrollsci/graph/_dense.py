"""Dense eigenvalue bounds of small blocks of ``H`` (helpers of :mod:`._spectral`).

``numpy.linalg.eigvalsh`` is backward stable: each computed eigenvalue is within about
``n eps ||H||`` of the true one (absolute error). ``safety`` times the computed eigenvalue is
therefore a bound only when that error is small against the eigenvalue: the smallest one is
used only where ``ev_0 > C n eps max|ev|`` (:data:`DENSE_REL`; else the caller proves a
bound another way), and the largest gets at least that absolute margin.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _certify

__all__ = ["DENSE_REL", "by_component", "dense_bound", "dense_eigs"]

#: ``C`` of the rule above: the dense ``lo`` needs ``ev_0 > C n eps max|ev|``, so that
#: ``safety`` times it stays below ``lambda_min`` for an absolute error up to ``(1 -
#: safety) C n eps max|ev|`` (``5 n eps max|ev|`` at ``safety = 0.95``)
DENSE_REL = 100.0


def dense_eigs(h: Any, scale: np.ndarray | None) -> np.ndarray:
    """Dense eigenvalues of ``diag(scale)^{-1/2} H diag(scale)^{-1/2}`` (``H`` if None)."""
    if scale is None:
        return np.linalg.eigvalsh(h.toarray())
    dis = np.sqrt(scale)
    return np.linalg.eigvalsh(h.toarray() / dis[:, None] / dis[None, :])


def dense_bound(ev: np.ndarray, which: str, safety: float) -> float | None:
    """``safety`` times the largest (``"hi"``) or smallest (``"lo"``) of the ascending
    eigenvalues ``ev`` computed by :func:`dense_eigs`, where that is a bound despite their
    rounding (module doc): ``hi`` at least ``ev[-1]`` plus the absolute margin ``C n eps
    max|ev|`` (only a ``safety`` below ``1 + C n eps`` meets it); ``lo`` None when
    ``ev[0] <= C n eps max|ev|`` (ill-conditioned: its relative error may be large)."""
    tol = DENSE_REL * ev.size * np.finfo(np.float64).eps * float(np.abs(ev).max())
    if which == "hi":
        return max(float(ev[-1]) * safety, float(ev[-1]) + tol)
    if ev[0] > tol:
        return max(float(ev[0]), 0.0) * safety
    return None


def by_component(h: Any, scale: np.ndarray, dg: np.ndarray, safety: float, dense_max: int) -> float:
    """The smallest over the connected components of ``H`` of their own bounds (dense
    eigenvalues times ``safety`` up to ``dense_max`` nodes where :func:`dense_bound` allows
    it, else the Collatz-Wielandt bound with its local stage): ``lambda_min`` of a
    block-diagonal matrix is the smallest of its blocks'. 0 for a connected ``H``."""
    import scipy.sparse as sp
    from scipy.sparse.csgraph import connected_components

    ncomp, labels = connected_components(h, directed=False)
    if ncomp < 2:
        return 0.0
    order = np.argsort(labels, kind="stable")
    starts = np.searchsorted(labels[order], np.arange(ncomp + 1))
    out = np.inf
    for c in range(ncomp):
        idx = order[starts[c] : starts[c + 1]]
        hc = sp.csr_matrix(h[idx][:, idx])
        val = None
        if idx.size <= dense_max:
            val = dense_bound(dense_eigs(hc, scale[idx]), "lo", safety)
        if val is None:
            sc = scale[idx][:, None]
            val = float(_certify.collatz_lower(hc, sc, stall=0.01, diag=dg[idx], target=safety)[0])
        out = min(out, val)
    return max(out, 0.0)
