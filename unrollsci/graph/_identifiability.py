"""Identifiability: is the Hessian ``H = A^T A + lam L`` of a problem invertible?

``H`` is singular exactly when some ``z != 0`` with ``L z = 0`` (one vector per connected
component of the graph) and ``lam z^T L z = 0`` also has ``A z = 0`` (or, with ``lam = 0``,
when ``A`` alone has a null space). :func:`check_unique` raises a ``ValueError`` naming
the component or signal that carries no information.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from . import _graphcert
from ._inertia import is_pd as _is_pd
from ._spectral import graph_digest

if TYPE_CHECKING:
    from ._problem import GraphInverseProblem

__all__ = ["check_range", "check_unique"]

_RANK_DENSE_MAX = 4_000_000  # identifiability: dense rank of (components x m) up to this
_CHUNK_ENTRIES = 4_000_000  # identifiability: entries per batch of operator applications


def _shown(nodes: np.ndarray) -> str:
    return ", ".join(map(str, nodes[:5])) + (", ..." if len(nodes) > 5 else "")


def check_range(p: GraphInverseProblem) -> None:
    """Raise ``ValueError`` if ``L`` or ``lam L`` overflows the problem's dtype: their
    Gershgorin bound ``max(1, lam) max_i sum_j |L_ij|`` (which bounds every entry of
    ``L`` and ``lam L``, their largest eigenvalues and so the Lipschitz bound) must stay
    below half the dtype's largest finite number (the other half: ``A^T A`` and the
    bounds' safety factors). Beyond it the Lipschitz bound is ``inf`` and the Hessian
    products ``inf``/NaN (``L`` is applied in the problem's dtype, then scaled by
    ``lam``)."""
    rowabs = p.lap_rowabs_np
    if rowabs.size == 0:
        return
    dtype = p.y.dtype if p.y.dtype.is_floating_point else torch.float64
    top = torch.finfo(dtype).max
    lmax = float(rowabs.max())
    bound = max(1.0, p.lam) * lmax
    if not bound <= top / 2:  # also inf / NaN (a degree overflowing float64)
        raise ValueError(
            f"Expected max(1, lam) * max_i sum_j |L_ij| (the Gershgorin bound of L and lam L) "
            f"below half the largest {dtype} number, {top / 2:.3g} (got {bound:.3g}, from lam = "
            f"{p.lam:.3g} and max_i sum_j |L_ij| = {lmax:.3g}: H = A^T A + lam L would "
            f"overflow {dtype}). Rescale the edge weights or lam, or use a wider dtype for y."
        )


def check_unique(p: GraphInverseProblem) -> None:
    """Raise if ``H`` is singular because a component carries no information, or if
    ``L`` or ``lam L`` overflows the problem's dtype (:func:`check_range`)."""
    check_range(p)
    if p.lam == 0.0:
        if p.kind == "mask" and p.mask is not None:
            bad = (p.mask == 0).any(dim=1)
            if bool(bad.any()):
                b = int(torch.nonzero(bad)[0])
                k = int((p.mask[b] == 0).sum())
                raise ValueError(
                    f"No unique solution: lam = 0 and {k} nodes are not observed in signal "
                    f"{b}; with no regularization they are undetermined. Use lam > 0."
                )
        return
    if p.kind == "heat" and p.mask is None:
        return  # exp(-tau L) is invertible
    if p.kind == "mask" and p.mask is None:
        return
    # the components depend on the graph only: once per graph (the certificate cache)
    ncomp, labels = _graphcert.components(p.lap_scipy, graph_digest(p))
    if p.kind == "operator" or p.kind == "heat":
        _check_operator_unique(p, ncomp, labels)
        return
    assert p.mask is not None
    obs = np.zeros((p.mask.shape[0], ncomp))
    mk = p.mask.detach().cpu().double().numpy()
    for b in range(mk.shape[0]):
        np.add.at(obs[b], labels, mk[b])
    bad = np.argwhere(obs == 0)
    if len(bad):
        b, c = (int(v) for v in bad[0])
        nodes = np.nonzero(labels == c)[0]
        raise ValueError(
            f"No unique solution: connected component {c} (nodes [{_shown(nodes)}], "
            f"{len(nodes)} nodes) has no observed node in signal {b}, so the signal "
            "there is only determined up to a constant. Observe at least one node in "
            "every connected component (or add edges)."
        )


def _null_basis(p: GraphInverseProblem, ncomp: int, labels: np.ndarray):  # type: ignore[no-untyped-def]
    """Sparse ``(ncomp, n)`` basis of the null space of ``L``, one unit row per component.

    Combinatorial: the component's indicator; normalized: ``D^{1/2}`` times it
    (``d`` the degree with self-loops, as in :func:`laplacian_matrix`; an isolated
    node, ``d = 0``, is its own component with the unit vector).
    """
    import scipy.sparse as sp

    n = p.num_nodes
    if p.laplacian_kind == "normalized":
        deg = np.asarray(p.adjacency.sum(axis=1)).ravel()
        v = np.where(deg > 0, np.sqrt(np.maximum(deg, 0.0)), 1.0)
    else:
        v = np.ones(n)
    norm = np.sqrt(np.bincount(labels, weights=v * v, minlength=ncomp))
    return sp.csr_matrix((v / norm[labels], (labels, np.arange(n))), shape=(ncomp, n))


def _check_operator_unique(p: GraphInverseProblem, ncomp: int, labels: np.ndarray) -> None:
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

    op = p.operator
    assert op is not None
    n = p.num_nodes
    m_out = int(op.out_shape[0])
    if ncomp == 0:
        return
    masks = [None] if p.mask is None else list(p.mask.detach().double().cpu().numpy())

    def fail(b: int, detail: str) -> None:
        raise ValueError(
            f"No unique solution for signal {b}: the operator does not see the null "
            "space of the Laplacian (one vector per connected component, constant for "
            f"the combinatorial Laplacian; {ncomp} components): {detail}, so x is "
            "undetermined there. Observe every component."
        )

    if ncomp > m_out:
        fail(0, f"{ncomp} components but only {m_out} measurements")
    basis = _null_basis(p, ncomp, labels)
    dense = ncomp * m_out <= _RANK_DENSE_MAX
    chunk = max(1, min(ncomp, _CHUNK_ENTRIES // max(n, m_out, 1)))
    parts: list[Any] = []
    with torch.no_grad():
        for s in range(0, ncomp, chunk):
            z = torch.as_tensor(
                basis[s : s + chunk].toarray(), dtype=torch.float64, device=p.device
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
            fail(b, f"A maps component {int(zero[0])} (nodes [{_shown(nodes)}]) to zero")
        if dense:
            full = int(torch.linalg.matrix_rank(torch.as_tensor(w))) == ncomp
        else:
            w = sp.csr_matrix(sp.diags(1.0 / norms) @ w)
            full = _is_pd(sp.csr_matrix(w @ w.T), tol=1e-10)
        if not full:
            fail(b, f"the images A v_c of the {ncomp} components are linearly dependent")
