"""Cheap certified spectral bounds for the Hessian ``H = diag(m) + lam L`` of a mask problem.

Both bounds cost a few dozen sparse products, never a factorization of ``H``; the proofs are
in docs/graph.md ("Certified bounds without factorizing H").

* Lower bound (:func:`collatz_lower`): ``H`` is a symmetric Z-matrix (off-diagonal entries
  ``<= 0``: every Laplacian of a non-negative adjacency is one, and ``diag(m)`` adds nothing
  off the diagonal). For any positive vector ``v`` and positive scaling ``d``,
  ``lambda_min(D^{-1/2} H D^{-1/2}) >= min_i (H v)_i / (d_i v_i)`` (Collatz-Wielandt).
  ``v`` comes from two steps of inverse iteration, each a short Jacobi-PCG run, then shifted
  Jacobi smoothing; a poor ``v`` only makes the bound smaller, never wrong.
* Upper bound (:func:`certify_upper`): ``c D - H`` is proved positive semidefinite by
  eliminating the rows that are diagonally dominant with a margin (replacing their block by
  a diagonal matrix below it in the Loewner order) and checking the Schur complement on the
  remaining few nodes, block by connected component, with dense eigenvalues.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._inertia import DIAG_MIN as _DIAG_MIN
from ._local import gamma, local_stage, proved

__all__ = ["collatz_lower", "lanczos", "lanczos_max", "certify_upper", "upper_bound"]

_MAX_COMPONENT = 100  # a Schur block larger than this is not worth a dense check: give up


def _norm(v: np.ndarray) -> float:
    # einsum, not BLAS: numpy's threaded BLAS stalls on vector reductions when the cores
    # are shared
    return float(np.sqrt(np.einsum("i,i->", v, v)))


def _mv(h: Any, x: np.ndarray) -> np.ndarray:
    """``h @ x`` for ``x: (n, k)`` or ``(n,)``; one column as a vector product (scipy's
    product with a 2-D array is slower than its matrix-vector product)."""
    if x.ndim == 1:
        return h @ x
    if x.shape[1] == 1:
        return (h @ x[:, 0])[:, None]
    return h @ x


def _start(
    h: Any, b: np.ndarray, iters: int, x0: np.ndarray | None, hx0: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, int]:
    """PCG's start from ``x0`` (0 if None): ``x``, the residual ``b - H x`` (from ``hx0``
    when given) and the products left of ``iters`` (one is spent when ``H x0`` is formed)."""
    if x0 is None:
        return np.zeros_like(b), b.copy(), iters
    r = b - (_mv(h, x0) if hx0 is None else hx0)
    return x0.copy(), r, iters - (hx0 is None)


def _pcg(
    h: Any,
    b: np.ndarray,
    dinv: np.ndarray,
    iters: int,
    rtol: float,
    x0: np.ndarray | None = None,
    hx0: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Jacobi-PCG for ``H X = B`` (``B: (n, k)``, columns independent) from ``x0`` (0 if
    None; ``hx0 = H x0`` if known, approximately): at most ``iters`` products, stopping once
    every column's residual is below ``rtol`` times its rhs. Returns ``X`` and ``B - R``
    (``H X`` up to the drift of the residual recurrence: an estimate, not a product)."""
    if b.shape[1] == 1:
        col = [None if v is None else v[:, 0] for v in (x0, hx0)]
        x1, hx1 = _pcg1(h, b[:, 0], dinv, iters, rtol, *col)
        return x1[:, None], hx1[:, None]
    x, r, iters = _start(h, b, iters, x0, hx0)
    stop = rtol**2 * np.einsum("ij,ij->j", b, b)
    if np.all(np.einsum("ij,ij->j", r, r) <= stop):
        return x, b - r
    z = dinv[:, None] * r
    p = z.copy()
    rz = np.einsum("ij,ij->j", r, z)
    for _ in range(iters):
        hp = _mv(h, p)
        php = np.einsum("ij,ij->j", p, hp)
        ok = (php > 0) & (rz > 0)
        a = np.where(ok, rz / np.where(ok, php, 1.0), 0.0)
        x += a * p
        r -= a * hp
        if np.all(np.einsum("ij,ij->j", r, r) <= stop):
            break
        z = dinv[:, None] * r
        rz_new = np.einsum("ij,ij->j", r, z)
        p = z + np.where(ok, rz_new / np.where(ok, rz, 1.0), 0.0) * p
        rz = rz_new
    return x, b - r


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.einsum("i,i->", a, b))  # not BLAS: see _norm


def _pcg1(
    h: Any,
    b: np.ndarray,
    dinv: np.ndarray,
    iters: int,
    rtol: float,
    x0: np.ndarray | None,
    hx0: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_pcg` for one column (vectors, updates in place: the vector work of an
    iteration stays close to scipy's ``cg``)."""
    x, r, iters = _start(h, b, iters, x0, hx0)
    stop = rtol**2 * _dot(b, b)
    rr = _dot(r, r)
    if rr <= stop:
        return x, b - r
    z = dinv * r
    p = z.copy()
    rz = _dot(r, z)
    tmp = np.empty_like(b)
    for _ in range(iters):
        hp = _mv(h, p)
        php = _dot(p, hp)
        if not (php > 0 and rz > 0):
            break
        a = rz / php
        x += np.multiply(a, p, out=tmp)
        r -= np.multiply(a, hp, out=tmp)
        if _dot(r, r) <= stop:
            break
        np.multiply(dinv, r, out=z)
        rz_new = _dot(r, z)
        p *= rz_new / rz
        p += z
        rz = rz_new
    return x, b - r


def _unit(u: np.ndarray, hu: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``u`` and ``hu`` divided by the largest entry of ``u`` per column."""
    top = np.abs(u).max(axis=0)
    top = np.where(np.isfinite(top) & (top > 0), top, 1.0)
    return u / top, hu / top


def collatz_lower(
    h: Any,
    scales: np.ndarray,
    *,
    iters: int = 30,
    rtol: float = 3e-2,
    steps: int = 2,
    smooth: int = 8,
    stall: float = 0.0,
    diag: np.ndarray | None = None,
    shared: dict | None = None,
    refine: int = 0,
    refine_gain: float = 0.01,
    refine_iters: int = 15,
    refine_rtol: float = 0.2,
    refine_smooth: int = 2,
    target: float | None = None,
    local_rounds: int = 6,
    local_hops: int = 4,
    local_budget: float = 0.1,
) -> np.ndarray:
    """Proven lower bounds on ``lambda_min(S_k)``, ``S_k = D_k^{-1/2} H D_k^{-1/2}``.

    Args:
        h: symmetric CSR Z-matrix (off-diagonal entries ``<= 0``).
        scales: ``(n, k)`` positive columns ``D_k`` (ones for ``H`` itself, ``diag(H)``
            for the Jacobi-scaled Hessian); all columns are processed together.
        iters, rtol: Jacobi-PCG budget of each inverse-iteration step (the vector only
            needs the global shape of the bottom eigenvector: the smoothing below fixes
            local errors).
        steps: inverse-iteration steps ``u <- H^{-1} (D_k u)`` from ``u = D_k^{-1} 1``, so
            that the first step, ``H^{-1} 1``, is the same for every column (solved once,
            and kept in ``shared`` for a later call on the same ``H``). Each later step
            starts PCG from ``u / mu`` with ``mu`` the Rayleigh quotient ``u^T H u / u^T
            D_k u``, next to the solution when ``u`` is near the bottom eigenvector.
        smooth: at most this many shifted Jacobi steps after them, ``u <- (1 - w) u + w
            (diag(H) u - H u) / (diag(H) - mu D_k)``, ``w = 1/2``, ``mu`` the best bound
            proved so far (``0 <= mu <= lambda_min(S_k) <= min_i H_ii / D_k,i``). The
            iteration matrix is non-negative (``diag(H) u - H u = |offdiag(H)| u``), so
            ``u`` stays positive; its fixed points satisfy ``H u = mu D_k u`` locally, so
            it repairs exactly the nodes where the ratio below is low (small entries that
            PCG got wrong in relative terms).
        stall: stop the smoothing once no column's bound rose by more than ``stall``
            (relative) in the last step (0: run all ``smooth`` steps). Every step's bound
            is a proof, so stopping early can only give a smaller bound, never a wrong one.
        diag: ``diag(H)`` if the caller has it (else read from ``h``).
        shared: a dict owned by the caller for one ``H``: the first inverse-iteration step
            is stored there and reused by later calls (e.g. ``lambda_min_bound()`` then
            ``jacobi_interval()`` on one problem).
        refine: at most this many further rounds after the smoothing, each one more
            inverse-iteration step started from the smoothed vector (PCG from ``u / mu``,
            ``H u`` known from the last product, at most ``refine_iters`` products, until
            the residual is ``refine_rtol`` times the starting one) and at most
            ``refine_smooth`` (at least one) smoothing steps; a round that raises no
            column's bound by more than ``refine_gain`` (relative) ends them. Each round's
            bounds are proofs like the others (the maximum is kept), so a round that lands
            on a worse vector costs products, never validity. None when ``smooth`` is 0.
            Off by default: what it buys and costs is in docs/graph.md (issue 23).
        target: a factor ``t`` in ``(0, 1]`` (e.g. 0.95): a local stage follows
            (:func:`._local.local_stage`: solves on small neighbourhoods where the ratio is
            low, never a factorization of ``H``, and a local Rayleigh quotient ``est >=
            lambda_min(S_k)``); the column's result is ``t est`` once the bound proves
            ``lambda_min(S_k) >= t est`` (the semantics of an eigenvalue times a safety
            factor), else the best bound proved. None (default): no local stage.
        local_rounds, local_hops: its rounds; a neighbourhood is the nodes below the level
            aimed at and their ``local_hops``-hop neighbours.
        local_budget: it stops once its neighbourhoods together exceed ``max(2000,
            local_budget n)`` nodes (its cost stays a fraction of a solve).

    Every ``u > 0`` gives a valid bound ``min_i (H u)_i / (D_k,i u_i)`` (Collatz-Wielandt),
    evaluated with the rounding of the product subtracted; the largest over the smoothing
    steps is returned (a maximum of proven lower bounds is one). Returns ``(k,)`` bounds,
    each ``max(bound, 0)``; 0 where it is subnormal or ``diag(H)`` is near underflow
    (:data:`_DIAG_MIN`: rounding there is absolute, which the proof does not cover).
    """
    if target is not None and not 0 < target <= 1:
        raise ValueError(f"Expected 0 < target <= 1 (got {target}).")
    dg = h.diagonal() if diag is None else diag
    ncol = scales.shape[1]
    if not np.all(dg >= _DIAG_MIN):  # also for NaN: rounding near underflow is absolute
        # (u >= 1e-6 min diag(H) / H_ii keeps H_ii u_i >= tiny / eps: products stay normal)
        return np.zeros(ncol)
    dinv = 1.0 / dg
    hu_est = None  # H u estimated by PCG's residual: steers the iteration, proves nothing
    if steps > 0:
        key = ("first", iters, rtol)
        if shared is not None and key in shared:
            u1, hu1 = shared[key]
        else:
            u1, hu1 = _unit(*_pcg(h, np.ones((dg.shape[0], 1)), dinv, iters, rtol))
            if shared is not None:
                shared[key] = (u1, hu1)
        u, hu_est = np.repeat(u1, ncol, axis=1), np.repeat(hu1, ncol, axis=1)
        for _ in range(steps - 1):
            b = scales * u
            mu = np.einsum("ij,ij->j", u, hu_est) / np.einsum("ij,ij->j", u, b)
            mu = np.where(np.isfinite(mu) & (mu > 0), mu, 1.0)
            x, hx = _pcg(h, b, dinv, iters, rtol, x0=u / mu, hx0=hu_est / mu)
            u, hu_est = _unit(x, hx)
    else:
        u = 1.0 / scales
    floor = 1e-6 * (dinv / float(dinv.max()))[:, None]
    bad = ~np.isfinite(u)
    u = np.maximum(np.where(bad, 1.0, u), floor)  # any positive u: a valid bound
    gam = gamma(h)
    dgc = dg[:, None]
    unit_scale = bool(np.all(scales == 1.0))

    def bound(u: np.ndarray, hu: np.ndarray) -> np.ndarray:
        return proved(u, hu, dgc, None if unit_scale else scales, gam)

    cap = 0.99 * (dgc / scales).min(axis=0)  # mu < min_i H_ii / D_k,i: no zero denominator
    if hu_est is None or smooth == 0 or not np.all(np.isfinite(hu_est)) or bad.any():
        hu = _mv(h, u)
        best = bound(u, hu)
        mu = best
    else:
        # the first smoothing step is steered by PCG's estimate of H u (the floor changed
        # u only where it is tiny); the first bound is proved after it, from a product
        hu = hu_est
        best = np.full(ncol, -np.inf)
        with np.errstate(divide="ignore", invalid="ignore"):
            mu = (hu / (scales * u)).min(axis=0)

    def smoothing(u, hu, best, mu, smooth=smooth):  # type: ignore[no-untyped-def]
        for _ in range(smooth):
            mu = np.minimum(np.maximum(np.where(np.isfinite(mu), mu, 0.0), 0.0), cap)
            t = dgc * u
            t -= hu
            t /= dgc - mu * scales
            t += u
            t *= 0.5
            u = np.maximum(t, floor, out=t)
            hu = _mv(h, u)
            new = np.maximum(best, bound(u, hu))
            gain = new - best
            best = mu = new
            if stall > 0 and np.all(gain <= stall * np.abs(best)):
                break
        return u, hu, best

    u, hu, best = smoothing(u, hu, best, mu)
    for _ in range(refine if smooth > 0 else 0):
        if not (np.all(np.isfinite(hu)) and np.all(np.isfinite(best))):
            break
        # one more inverse-iteration step from the smoothed (positive) vector; H u is the
        # last product, so PCG starts at u / mu with its residual known
        b = scales * u
        rq = np.einsum("ij,ij->j", u, hu) / np.einsum("ij,ij->j", u, b)
        rq = np.where(np.isfinite(rq) & (rq > 0), rq, 1.0)
        # the start is already close: the tolerance is relative to PCG's first residual
        res = b - hu / rq
        r0 = np.einsum("ij,ij->j", res, res)
        rel = float(np.sqrt(np.max(r0 / np.maximum(np.einsum("ij,ij->j", b, b), 1e-300))))
        x, hx = _pcg(h, b, dinv, refine_iters, refine_rtol * min(rel, 1.0), x0=u / rq, hx0=hu / rq)
        x, hx = _unit(x, hx)
        if not (np.all(np.isfinite(x)) and np.all(np.isfinite(hx))):
            break
        x = np.maximum(x, floor)
        prev = best
        u, hu, best = smoothing(x, hx, best, best, max(refine_smooth, 1))
        if np.all(best - prev <= refine_gain * np.abs(best)):
            break
    if target is not None:
        # hu = fl(H u) here (a smoothing step or the branch without one ends with the product)
        budget = max(2000, int(local_budget * h.shape[0]))
        best = np.array(
            [
                local_stage(
                    h,
                    dg,
                    scales[:, j],
                    u[:, j].copy(),
                    hu[:, j].copy(),
                    float(best[j]),
                    target,
                    gam,
                    rounds=local_rounds,
                    hops=local_hops,
                    budget=budget,
                    hu_exact=True,
                )
                for j in range(ncol)
            ]
        )
    return np.where(best >= np.finfo(np.float64).tiny, best, 0.0)  # subnormal: no proof


def lanczos(
    h: Any,
    scale: np.ndarray,
    *,
    steps: int = 30,
    v0: np.ndarray | None = None,
    seed: int = 0,
) -> tuple[float, np.ndarray]:
    """Largest Ritz value of ``diag(scale)^{-1/2} H diag(scale)^{-1/2}`` after ``steps``
    Lanczos steps (no reorthogonalization) and its Ritz vector (unit norm, in the scaled
    coordinates).

    ``v0``: start vector (e.g. the vector of a nearby matrix; a random one if None). An
    estimate from below only; :func:`certify_upper` turns it into a proof or rejects it.
    """
    n = h.shape[0]
    s = 1.0 / np.sqrt(scale)
    rng = np.random.default_rng(seed)
    q = rng.standard_normal(n) if v0 is None else np.array(v0, dtype=np.float64)
    if v0 is not None:  # a little noise: never exactly an eigenvector of a nearby matrix
        q = q + 1e-3 * np.linalg.norm(q) / np.sqrt(max(n, 1)) * rng.standard_normal(n)
    q /= _norm(q)
    q_prev = np.zeros(n)
    alpha, beta, basis = [], [], []
    b = 0.0
    for _ in range(min(steps, n)):
        basis.append(q)
        w = s * (h @ (s * q)) - b * q_prev
        a = float(np.einsum("i,i->", q, w))
        w -= a * q
        alpha.append(a)
        b = _norm(w)
        if b <= 1e-12 * abs(a):
            break
        beta.append(b)
        q_prev, q = q, w / b
    k = len(alpha)
    t = np.diag(alpha) + np.diag(beta[: k - 1], 1) + np.diag(beta[: k - 1], -1)
    ev, evec = np.linalg.eigh(t)
    vec = np.einsum("ki,k->i", np.asarray(basis), evec[:, -1])
    return float(ev[-1]), vec / max(_norm(vec), 1e-300)


def lanczos_max(h: Any, scale: np.ndarray, *, steps: int = 30, seed: int = 0) -> float:
    """Estimate (from below) of ``lambda_max(diag(scale)^{-1/2} H diag(scale)^{-1/2})``:
    the largest Ritz value of :func:`lanczos`."""
    return lanczos(h, scale, steps=steps, seed=seed)[0]


def certify_upper(h: Any, scale: np.ndarray, c: float, *, eta: float = 0.05) -> bool:
    """True only if ``A = c diag(scale) - H`` is proved positive semidefinite.

    Rows whose diagonal exceeds their off-diagonal absolute sum by ``eta c scale_i`` form
    the set ``C``; ``A_CC >= diag(Lam)``, ``Lam_i = A_ii - sum_{j in C, j != i} |A_ij| > 0``
    (a diagonally dominant remainder is PSD). Then ``A >= 0`` if the bound on the Schur
    complement ``T = A_FF - A_FC diag(Lam)^{-1} A_CF`` on the other rows ``F`` is positive
    definite: checked per connected component of ``T`` by dense eigenvalues, with a margin
    for rounding. False when the check fails or a component is too large.
    """
    import scipy.sparse as sp
    from scipy.sparse.csgraph import connected_components

    h = sp.csr_matrix(h)
    n = h.shape[0]
    dg = h.diagonal()
    a_diag = c * scale - dg
    if not np.all(a_diag > 0):
        return False
    # |A_ij| = |H_ij| off the diagonal; row sums from one product with |H|
    habs = abs(h)
    rowsum = habs @ np.ones(n) - np.abs(dg)
    margin = eta * c * scale
    cold = a_diag - rowsum >= margin
    hot_idx = np.nonzero(~cold)[0]
    if hot_idx.size == 0:
        return True
    cold_idx = np.nonzero(cold)[0]
    # Lam_i = A_ii - sum_{j in C, j != i} |A_ij| for i in C: the hot part of the row sum
    # comes from one more product (a cold row has no diagonal entry in F)
    into_hot = habs @ (~cold).astype(np.float64)
    lam = (a_diag - rowsum + into_hot)[cold_idx]
    if not np.all(lam >= _DIAG_MIN):  # near underflow: 1 / lam below would overflow
        return False
    # the hot rows of A = c diag(scale) - H, split into their F and C columns
    a_f = sp.csr_matrix(-h[hot_idx])
    pos_f = np.full(n, -1, dtype=np.int64)
    pos_f[hot_idx] = np.arange(hot_idx.size)
    pos_c = np.full(n, -1, dtype=np.int64)
    pos_c[cold_idx] = np.arange(cold_idx.size)
    coo = a_f.tocoo()
    in_f = pos_f[coo.col] >= 0
    a_ff = sp.csr_matrix(
        (coo.data[in_f], (coo.row[in_f], pos_f[coo.col[in_f]])), shape=(hot_idx.size,) * 2
    ) + sp.diags(c * scale[hot_idx])
    a_fc = sp.csr_matrix(
        (coo.data[~in_f], (coo.row[~in_f], pos_c[coo.col[~in_f]])),
        shape=(hot_idx.size, cold_idx.size),
    )
    t = sp.csr_matrix(a_ff - (a_fc @ sp.diags(1.0 / lam)) @ a_fc.T)
    # rounding of T's entries: a relative margin on the scale of A's diagonal
    tol = 1e-10 * float(np.max(c * scale[hot_idx]))
    ncomp, labels = connected_components(t, directed=False)
    sizes = np.bincount(labels, minlength=ncomp)
    if sizes.max() > _MAX_COMPONENT:
        return False
    single = sizes[labels] == 1
    if np.any(t.diagonal()[single] <= tol):
        return False
    multi = np.nonzero(sizes > 1)[0]
    if multi.size == 0:
        return True
    # dense blocks, grouped by padded size, checked with batched eigvalsh
    order = np.argsort(labels, kind="stable")
    start = np.concatenate([[0], np.cumsum(sizes)])
    pos = np.empty(len(labels), dtype=np.int64)
    pos[order] = np.arange(len(labels)) - start[labels[order]]
    t.sum_duplicates()  # one entry per position: the dense blocks are filled by assignment
    coo = t.tocoo()
    pad = 1 << np.ceil(np.log2(sizes)).astype(np.int64)
    for size in np.unique(pad[multi]):
        comps = multi[pad[multi] == size]
        slot = np.full(ncomp, -1, dtype=np.int64)
        slot[comps] = np.arange(len(comps))
        blocks = np.zeros((len(comps), size, size))
        sel = slot[labels[coo.row]] >= 0
        r, cc = coo.row[sel], coo.col[sel]
        blocks[slot[labels[r]], pos[r], pos[cc]] = coo.data[sel]
        # padding: a diagonal entry above every eigenvalue of the block (decoupled)
        idx = np.arange(size)
        big = float(np.abs(coo.data).max()) * size + 1.0
        padded = idx[None, :] >= sizes[comps][:, None]
        kk, ii = np.nonzero(padded)
        blocks[kk, ii, ii] = big
        if np.linalg.eigvalsh(blocks)[:, 0].min() <= tol:
            return False
    return True


def upper_bound(
    h: Any,
    scale: np.ndarray,
    safety: float,
    cap: float,
    *,
    steps: int = 30,
    est: float | None = None,
    v0: np.ndarray | None = None,
    factors: tuple[float, ...] = (1.1, 1.25),
) -> float:
    """The first of ``safety * est`` and ``f * est`` (``f`` in ``factors``) that
    :func:`certify_upper` proves, where ``est`` is given or :func:`lanczos` (``steps``,
    start ``v0``); ``cap`` (a bound proved otherwise, e.g. Gershgorin) when none is proved
    or they exceed it."""
    if est is None:
        est = lanczos(h, scale, steps=steps, v0=v0)[0]
    est = max(est, 0.0)
    for f in (safety, *(max(safety, f) for f in factors)):
        c = f * est
        if c >= cap:
            break
        if certify_upper(h, scale, c):
            return c
    return cap
