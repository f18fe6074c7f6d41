"""A per-graph split certificate for ``lambda_max`` of mask problems, tight where the top
eigenvector of the Laplacian is localized (a hub): computed once per graph, then each
mask's bound costs a dense eigenvalue problem on a few dozen nodes.

**The proof.** Split the nodes into a small set ``S`` (a ball around the peak of the top
Laplacian eigenvector) and the rest ``R``. For any symmetric ``L`` let ``r_S,i = sum_{j in
R} |L_ij|`` and ``r_R,j = sum_{i in S} |L_ij|`` and

    L~ = blockdiag(L_SS + diag(r_S), L_RR + diag(r_R)).

``L~ - L`` is the sum over the cut entries ``(i, j)`` of ``|L_ij| (e_i - s e_j)(e_i - s
e_j)^T`` with ``s = sign(L_ij)``, positive semidefinite, so ``L <= L~`` (Loewner order), and
for a mask problem ``H = diag(m) + lam L`` (``lam >= 0``)

    lambda_max(H) <= lambda_max(diag(m) + lam L~)
                   = max(lambda_max(diag(m_S) + lam L~_SS), lambda_max(diag(m_R) + lam L~_RR))
                  <= max(lambda_max(diag(m_S) + lam L~_SS), max m + lam mu_R),

with ``mu_R >= lambda_max(L~_RR)`` proved once per graph: a Lanczos estimate times 1.001
(then 1.01) accepted when one sparse factorization of ``mu_R I - L~_RR`` has every pivot
positive (:func:`._inertia.upper_proved`, Sylvester's law of inertia with the
factorization's backward error accounted for: the shift factored is ``mu_R`` minus a bound
on it, about ``1e-5 mu_R`` at 10^5 nodes against the 1e-3 margin). The first term is a
dense ``eigvalsh`` per mask.

**Rounding.** The sums ``r`` are rounded up by a relative ``1e-12`` (far above the error of
a sum of a row's entries); the per-mask bound gets ``1e-10`` times the block's largest
absolute row sum added (``eigvalsh``'s absolute error on at most :data:`MAX_NODES` nodes is
about ``n eps ||.||``) and is then multiplied by ``1 + 1e-10``, which also covers the
rounding of the diagonal additions ``L_ii + r_i`` and of forming ``lam L~_SS + diag(m_S)``.

**Why it is tight.** When the top eigenvector is localized on a ball around a hub (on kNN
sensor graphs its inverse participation ratio is about 0.75), ``L~_SS`` carries it with
little change, and ``mu_R`` is about the next eigenvalue of ``L``; the mask enters exactly
on ``S``. On the 10^5-node sensor graph the graph bound ``max m + lam lambda_max(L)``
exceeded ``lambda_max(H)`` by 8% when the hub was unobserved (6% even with
``lambda_max(L)`` exact, 8% with it proved at 1.02 times an estimate); this one is within 1%
(the sensor problem of docs/graph.md, issue 23).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["MAX_NODES", "SplitCertificate", "split_bound", "split_certificate"]

#: largest ball kept as the dense block ``S`` (its ``eigvalsh`` runs once per mask)
MAX_NODES = 300
_HOPS = (3, 2, 1)  # candidate balls around the peak; the one with the least top is kept
_FACTORS = (1.001, 1.01)  # mu_R = estimate times these, until the inertia check proves one
_UP_SUM = 1.0 + 1e-12
_UP_BOUND = 1.0 + 1e-10


@dataclass(frozen=True)
class SplitCertificate:
    """``nodes``: ``S`` (sorted); ``block``: dense ``L~_SS``; ``mu_rest``: the proved
    ``mu_R >= lambda_max(L~_RR)`` (``R`` is never empty: a ball covering the graph is
    skipped)."""

    nodes: np.ndarray
    block: np.ndarray
    mu_rest: float

    def graph_top(self) -> float:
        """A proved upper bound on ``lambda_max(L)`` itself (the bound with ``m = 0``,
        ``lam = 1``)."""
        return split_bound(self, np.zeros(0), 1.0, m_max=0.0)


def _split(lap: Any, inside: np.ndarray) -> tuple[np.ndarray, Any, np.ndarray]:
    """``(S, L~_RR, dense L~_SS)`` of the split at the boolean mask ``inside`` of ``S``."""
    import scipy.sparse as sp

    s_idx, r_idx = np.flatnonzero(inside), np.flatnonzero(~inside)
    rows = sp.csr_matrix(lap[s_idx])
    cut = abs(rows[:, r_idx])
    r_s = np.asarray(cut.sum(axis=1)).ravel() * _UP_SUM
    r_r = np.asarray(cut.sum(axis=0)).ravel() * _UP_SUM
    block = rows[:, s_idx].toarray()
    block[np.diag_indices_from(block)] += r_s
    rest = sp.csr_matrix(lap[r_idx][:, r_idx] + sp.diags(r_r))
    return s_idx, rest, block


def split_certificate(lap: Any, vec: np.ndarray) -> SplitCertificate | None:
    """The certificate of ``lap`` (symmetric CSR) split at a ball around the largest entry
    of ``vec`` (the top Lanczos vector of ``lap``), or None where no ball of at most
    :data:`MAX_NODES` nodes exists or the inertia check proves no ``mu_R``. Costs a few
    Lanczos runs and one sparse factorization of the size of ``lap``: callers cache it per
    graph (:func:`._graphcert.split_top`) and only on graphs where a factorization is
    affordable."""

    from ._certify import lanczos
    from ._inertia import upper_proved
    from ._local import _grow

    n = lap.shape[0]
    if n < 2 or vec.shape != (n,) or not np.all(np.isfinite(vec)):
        return None
    hub = np.array([int(np.argmax(np.abs(vec)))])
    # the ball with the least score max(top of L~_SS, Lanczos top of L~_RR), the first of
    # _HOPS on a tie; balls in order of their top, and the Lanczos run (a product with the
    # whole graph per step) skipped where that top alone cannot win: the same choice
    cands = []
    for order, hops in enumerate(_HOPS):
        inside = _grow(lap, hub, hops)
        if inside.sum() > MAX_NODES or inside.all():
            continue
        s_idx, rest, block = _split(lap, inside)
        cands.append((float(np.linalg.eigvalsh(block)[-1]), order, s_idx, rest, block))
    best = None
    for top_s, order, s_idx, rest, block in sorted(cands, key=lambda c: (c[0], c[1])):
        if best is not None and (top_s, order) > best[:2]:
            break  # its score is at least its top: no later ball wins either
        est = lanczos(rest, np.ones(rest.shape[0]), steps=30)[0]
        score = max(top_s, est)
        if best is None or (score, order) < best[:2]:
            best = (score, order, est, s_idx, rest, block)
    if best is None:
        return None
    _, _, est, s_idx, rest, block = best
    for f in _FACTORS:
        mu = f * max(est, 0.0)
        if mu > 0 and upper_proved(rest, mu):
            block.setflags(write=False)
            s_idx.setflags(write=False)
            return SplitCertificate(s_idx, block, mu)
    return None


def split_bound(
    cert: SplitCertificate, m: np.ndarray, lam: float, *, m_max: float | None = None
) -> float:
    """Proved ``lambda_max(diag(m) + lam L)`` for the mask values ``m`` (``(n,)``, in
    ``[0, 1]``; ``m_max``: their maximum if known) of the graph of ``cert``."""
    ms = m[cert.nodes] if m.size else np.zeros(cert.nodes.size)
    mmax = float(m.max(initial=0.0)) if m_max is None else m_max
    hs = lam * cert.block
    hs[np.diag_indices_from(hs)] += ms
    top = float(np.linalg.eigvalsh(hs)[-1])
    top += 1e-10 * float(np.abs(hs).sum(axis=1).max(initial=0.0))  # eigvalsh's absolute error
    return max(top, mmax + lam * cert.mu_rest) * _UP_BOUND
