"""Spectral bounds of the Hessian ``H = A^T A + lam L`` of a :class:`GraphInverseProblem`.

Upper bounds (``Lip >= lambda_max``), lower bounds (``lo <= lambda_min``), the spectral
interval of the Jacobi-scaled Hessian, and the Gershgorin row sums. Small blocks use dense
eigenvalues; larger mask blocks get bounds proved without factorizing ``H``
(:mod:`._certify`). Results are cached on the problem (``problem._cache``).
:func:`._inertia.factor_proved` (Sylvester's law of inertia) proves estimates where a
factorization is affordable.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from . import _certify, _dense, _graphcert, _split
from ._dense import dense_eigs as _dense_eigs
from ._inertia import affordable as _affordable
from ._inertia import factor_proved as _factor_proved
from ._inertia import fills_in as _fills_in

if TYPE_CHECKING:
    from ._problem import GraphInverseProblem

__all__ = [
    "as_bound",
    "bounds",
    "gershgorin_np",
    "gershgorin_per_block",
    "graph_digest",
    "hessian_diagonal_np",
    "jacobi_interval",
    "lap_lmax",
    "spectrum_mask",
]

_DENSE_MAX = 800  # blocks up to this size get exact dense eigenvalues
# blocks up to this size: ARPACK estimates times the safety factor, proved by one sparse
# factorization (cheap at this size); larger blocks: factorization-free proofs
_FACTOR_MAX = 5000
_EPS = float(np.finfo(np.float64).eps)


def _mask_rows(p: GraphInverseProblem) -> range:
    return range(1 if p.mask is None else p.mask.shape[0])


def _mask_np(p: GraphInverseProblem) -> np.ndarray:
    """The mask as a float64 ``(rows, n)`` array (one row of ones without a mask)."""
    if p.mask is None:
        return np.ones((1, p.num_nodes))
    return p.mask.detach().cpu().double().numpy()


def _diag_positions(lap: Any) -> np.ndarray | None:
    """Positions of the diagonal entries in the CSR arrays of ``lap`` (sorted indices, one
    stored diagonal entry per row), or None when some row stores none."""
    n = lap.shape[0]
    if not lap.has_sorted_indices:
        return None
    rows = np.repeat(np.arange(n, dtype=lap.indices.dtype), np.diff(lap.indptr))
    pos = np.flatnonzero(lap.indices == rows)
    if pos.size != n or not np.array_equal(rows[pos], np.arange(n)):
        return None
    return pos


def _lap_diag_positions(p: GraphInverseProblem) -> np.ndarray | None:
    """:func:`_diag_positions` of the problem's Laplacian, once per graph (the positions
    depend on its index arrays only; cached with the graph certificates)."""
    return p.cached(
        "lap-diag-positions",
        lambda: _graphcert.cached_for_graph(
            p.lap_scipy, "diag-positions", lambda: _diag_positions(p.lap_scipy), graph_digest(p)
        ),
    )


def _lap_diagonal(p: GraphInverseProblem) -> np.ndarray:
    """``diag(L)`` of the problem's Laplacian (cached): read at the diagonal positions
    when the Laplacian stores every diagonal entry, else scipy's ``diagonal()``."""

    import scipy.sparse as sp

    def build() -> np.ndarray:
        lap = p.lap_scipy
        pos = _lap_diag_positions(p) if sp.isspmatrix_csr(lap) else None
        return lap.data[pos] if pos is not None else lap.diagonal()

    return p.cached("lap-diagonal", build)


def _rounded_up(p: GraphInverseProblem, x: Any) -> Any:
    """``x`` (float64 values ``m_i + lam sum_j |L_ij|``, or maxima of them) times ``1 + (k +
    4) eps``, ``k`` the most stored entries in a row of ``L``: then at least the exact row
    sums of ``|H|``. The row sum takes ``k - 1`` additions of non-negative terms, then one
    product and one sum, so it is at least ``(1 - u)^(k+1)`` times the exact value (``u =
    eps / 2``); ``H``'s own entries are at most ``(1 + u)^2`` times ``m_i + lam |L_ij|``;
    and ``1 + 2 (k + 4) u``, rounded once more, covers ``(1 + u)^2 / (1 - u)^(k+1)``."""
    lap = p.lap_scipy
    k = p.cached(
        "lap-row-terms",
        lambda: (
            int(np.diff(lap.indptr).max(initial=0))
            if lap.format in ("csr", "csc")
            else int(np.diff(lap.tocsr().indptr).max(initial=0))
        ),
    )
    return x * (1.0 + (k + 4) * _EPS)


def _hessian_key(p: GraphInverseProblem, b: int, k: int) -> str:
    """Cache key of ``H`` of block ``k`` for signal ``b`` (one per signal only when the
    masks differ between signals)."""
    return f"block-hessian-{b if p.mask is not None and p.mask.shape[0] > 1 else 0}-{k}"


def _block_hessian_scipy(p: GraphInverseProblem, b: int, k: int):  # type: ignore[no-untyped-def]
    """``H`` of block ``k`` for signal ``b`` (CSR, cached on the problem).

    For the whole graph, ``H`` shares the Laplacian's index arrays: ``lam L`` with the mask
    added at the diagonal entries (no sparse addition); ``diag(H)`` is kept beside it
    (:func:`_block_diag`)."""
    import scipy.sparse as sp

    key = _hessian_key(p, b, k)
    if key not in p._cache:
        s, e = p.block_ptr[k], p.block_ptr[k + 1]
        if p.mask is None:
            d = np.ones(e - s)
        else:
            mb = p.mask[b if p.mask.shape[0] > 1 else 0]
            d = mb[s:e].detach().cpu().double().numpy()
        whole = s == 0 and e == p.num_nodes and sp.isspmatrix_csr(p.lap_scipy)
        pos = _lap_diag_positions(p) if whole else None
        if pos is not None:
            lap = p.lap_scipy
            data = p.lam * lap.data
            data[pos] += d
            h = sp.csr_matrix((data, lap.indices, lap.indptr), shape=lap.shape)
            h.has_sorted_indices = True
            p._cache[key + "-diag"] = data[pos]
        else:
            lap = p.lap_scipy[s:e, s:e]
            h = sp.csr_matrix(sp.diags(d) + p.lam * lap)
            p._cache[key + "-diag"] = h.diagonal()
        p._cache[key] = h
    return p._cache[key]


def _block_diag(p: GraphInverseProblem, b: int, k: int) -> np.ndarray:
    """``diag(H)`` of block ``k`` for signal ``b`` (cached with :func:`_block_hessian_scipy`)."""
    _block_hessian_scipy(p, b, k)
    return p._cache[_hessian_key(p, b, k) + "-diag"]


def _block_laplacian(p: GraphInverseProblem, k: int):  # type: ignore[no-untyped-def]
    s, e = p.block_ptr[k], p.block_ptr[k + 1]
    if s == 0 and e == p.num_nodes:
        return p.lap_scipy.tocsr()
    return p.lap_scipy[s:e, s:e].tocsr()


def graph_digest(p: GraphInverseProblem, k: int | None = None) -> bytes:
    """:func:`._graphcert.graph_key` of the Laplacian of block ``k`` (of the whole graph
    if None), hashed once per problem: the key of the graph certificate cache."""
    if k is None or (p.block_ptr[k] == 0 and p.block_ptr[k + 1] == p.num_nodes):
        return p.cached("graph-digest", lambda: _graphcert.graph_key(p.lap_scipy))
    return p.cached(f"graph-digest-{k}", lambda: _graphcert.graph_key(_block_laplacian(p, k)))


def _max_per_block(p: GraphInverseProblem, per_node: np.ndarray) -> np.ndarray:
    """``(rows, n)`` -> ``(rows, num_blocks)``: the maximum over the nodes of each block."""
    out = np.zeros((per_node.shape[0], p.num_blocks))
    for k in range(p.num_blocks):
        s, e = p.block_ptr[k], p.block_ptr[k + 1]
        out[:, k] = per_node[:, s:e].max(axis=1)
    return out


def spectrum_mask(
    p: GraphInverseProblem,
    which: str,
    safety: float,
    *,
    scaled: bool = False,
    inertia: bool = False,
) -> np.ndarray:
    """Bound on the largest (``"hi"``) or smallest (``"lo"``) eigenvalue, kind 'mask'.

    Of ``H`` (``scaled=False``) or of the Jacobi-scaled ``S = D^{-1/2} H D^{-1/2}``
    with ``D = diag(H)`` (``scaled=True``; same spectrum as ``D^{-1} H``).
    Blocks up to ``_DENSE_MAX`` nodes: dense ``eigvalsh`` times ``safety`` (``lo`` only
    where its rounding is small against it, :func:`._dense.dense_bound`, else the
    Collatz-Wielandt bound below; ``hi`` at least an absolute rounding margin). Up to
    ``_FACTOR_MAX`` nodes: ARPACK estimates times ``safety``, proved by one sparse
    factorization (:func:`_factor_proved`; cheap at that size). Larger
    blocks (or when that proof fails), without factorizing ``H`` (``_certify``,
    ``_graphcert``; proofs in docs/graph.md):

    * ``hi`` of ``H``: the graph bound ``max m + lam lambda_max(L)``
      (:func:`_graphcert.laplacian_top`, capped by Gershgorin; where it is more than 2%
      above the estimate below, also by the per-graph split bound of :mod:`._split`, the
      mask exactly on a ball around the hub) when it is within 10% of an
      estimate from below: the Rayleigh quotient of ``H`` at the graph's cached top
      Laplacian vector (one product), else 5 Lanczos steps from that vector; else that
      estimate times ``safety`` (then 1.1, 1.25), accepted once
      :func:`_certify.certify_upper` proves ``Lip I - H >= 0``, else the graph bound.
      ``hi`` of ``S``: the graph bound :func:`_graphcert.jacobi_top` (one factorization
      of a Laplacian per graph, cached across problems); the caller caps it by Gershgorin.
    * ``lo``: the Collatz-Wielandt bound of :func:`_certify.collatz_lower` (``H`` is a
      Z-matrix), a proof for any vector it is evaluated at, with its local stage:
      ``safety`` times an estimate from above (a local Rayleigh quotient) once that is
      proved, else the best bound proved; where that proves nothing (0: an ill-conditioned
      ``H``, e.g. ``lam`` of 1e4 on a sparse graph), the factorization proof where
      :func:`._inertia.affordable` allows it.

    ``inertia=True`` (``hi`` of ``H`` only): above ``_DENSE_MAX`` nodes, ARPACK's estimate
    times ``safety`` proved by one sparse factorization wherever :func:`._inertia.affordable`
    allows it (at the price of a factorization), else as above; :func:`bounds` keeps the
    smaller of it and the default.
    """
    key = f"eig-{which}-{safety}-{scaled}-{inertia}"
    if key in p._cache:
        return p._cache[key]
    rows = _mask_rows(p)
    out = np.zeros((len(rows), p.num_blocks))
    for b in rows:
        for k in range(p.num_blocks):
            h = _block_hessian_scipy(p, b, k)
            m = h.shape[0]
            if m <= _DENSE_MAX:
                ev = _dense_eigs(h, h.diagonal() if scaled else None)
                val = _dense.dense_bound(ev, which, safety)  # None: ill-conditioned lo
                out[b, k] = _collatz(p, b, k, h, scaled, safety) if val is None else val
                continue
            if inertia and which == "hi" and not scaled:
                ok = p.cached(f"affordable-{k}", lambda h=h: _affordable(h))
                val = _factor_proved(h, which, safety, scaled, dense_fill=not ok)
                if val is not None:
                    out[b, k] = val
                    continue
            elif m <= _FACTOR_MAX:
                # the envelope test depends on the graph only: once per block
                fills = p.cached(f"fills-in-{k}", lambda h=h: _fills_in(h))
                val = _factor_proved(h, which, safety, scaled, dense_fill=fills)
                if val is not None:
                    out[b, k] = val
                    continue
            if which == "hi":
                lap = _block_laplacian(p, k)
                dig = graph_digest(p, k)
                if scaled:
                    out[b, k] = _graphcert.jacobi_top(lap, safety, digest=dig)
                else:
                    s, e = p.block_ptr[k], p.block_ptr[k + 1]
                    mb = _mask_np(p)[b if p.mask is not None and p.mask.shape[0] > 1 else 0]
                    gersh = _rounded_up(p, float((mb[s:e] + p.lam * p.lap_rowabs_np[s:e]).max()))
                    top, vec = _graphcert.laplacian_top(lap, safety, digest=dig)
                    # two roundings, and H's own entries' (2 u ||H||, ||H|| <= 2 x this):
                    # (1 + 8 eps) covers them
                    cap = min(gersh, (float(mb[s:e].max()) + p.lam * top) * (1 + 8 * _EPS))
                    # the graph bound is proved already: a Schur test only where it could
                    # gain more than 10% over an estimate from below, first the Rayleigh
                    # quotient at the graph's top vector (one product), then 5 Lanczos steps
                    hv = h @ vec
                    rq = float(
                        np.einsum("i,i->", vec, hv) / max(np.einsum("i,i->", vec, vec), 1e-300)
                    )
                    cert = _graphcert.split_top(lap, vec, dig) if cap > 1.02 * rq else None
                    if cert is not None:  # the mask exactly on a ball around the hub
                        cap = min(cap, _split.split_bound(cert, mb[s:e], p.lam))
                    if cap <= 1.1 * rq:
                        out[b, k] = cap
                        continue
                    est = max(rq, _certify.lanczos(h, np.ones(m), steps=5, v0=vec)[0])
                    out[b, k] = (
                        cap
                        if cap <= 1.1 * est
                        else _certify.upper_bound(h, np.ones(m), safety, cap, est=est)
                    )
            else:
                val = _collatz(p, b, k, h, scaled, safety)
                if not val > 0 and m > _FACTOR_MAX:
                    # nothing proved (an ill-conditioned H: lam >~ 1e3 on sparse graphs):
                    # 0 is valid but leaves the window modes no certificate, so the
                    # factorization proof, where affordable, at the price of one
                    ok = p.cached(f"affordable-{k}", lambda h=h: _affordable(h))
                    proved = _factor_proved(h, which, safety, scaled, dense_fill=not ok)
                    val = val if proved is None else proved
                out[b, k] = val
    p._cache[key] = out
    return out


def _collatz(p: GraphInverseProblem, b: int, k: int, h: Any, scaled: bool, safety: float) -> float:
    """Proven lower bound on ``lambda_min(H)`` (``scaled=False``) or ``lambda_min(S)``
    of block ``k``, signal ``b``: ``safety`` times an estimate from above, once proved
    (the local stage of :func:`_certify.collatz_lower`), else the best bound proved."""
    key = f"collatz-{b}-{k}-{scaled}-{safety}"
    if key not in p._cache:
        dg = _block_diag(p, b, k)
        scale = dg if scaled else np.ones(h.shape[0])
        # the first inverse-iteration step is shared by the two columns (lambda_min_bound()
        # and jacobi_interval() on one problem)
        shared = p.cached(f"collatz-shared-{b}-{k}", dict)
        lo = _certify.collatz_lower(
            h, scale[:, None], stall=0.01, diag=dg, shared=shared, target=safety
        )
        # nothing proved: with several connected components, inverse iteration on the
        # whole graph resolves only the one of the smallest eigenvalue (the others' entries
        # are too small for PCG's accuracy), so bound each component on its own
        p._cache[key] = (
            float(lo[0]) if lo[0] > 0 else _dense.by_component(h, scale, dg, safety, _DENSE_MAX)
        )
    return p._cache[key]


def lap_lmax(p: GraphInverseProblem) -> np.ndarray:
    """Proven upper bounds on ``lambda_max(L)`` per block, capped by Gershgorin: dense
    eigenvalues times 1.001 up to ``_DENSE_MAX`` nodes, above the graph certificate
    :func:`._graphcert.laplacian_top` (once per graph). (An ARPACK start from the ones
    vector, used before, fails on a combinatorial Laplacian: ``L 1 = 0``.)"""
    out = np.zeros(p.num_blocks)
    for k in range(p.num_blocks):
        s, e = p.block_ptr[k], p.block_ptr[k + 1]
        gersh = _rounded_up(p, float(p.lap_rowabs_np[s:e].max())) if e > s else 0.0
        if e - s <= _DENSE_MAX:
            lap = p.lap_scipy[s:e, s:e]
            est = float(np.linalg.eigvalsh(lap.toarray())[-1]) * 1.001 + 1e-12
        else:
            lap = _block_laplacian(p, k)
            est = _graphcert.laplacian_top(lap, 1.01, digest=graph_digest(p, k))[0]
        out[k] = min(gersh, est)
    return out


def _operator_lo(p: GraphInverseProblem, b: int, lo_safety: float) -> float:
    """ARPACK's smallest eigenvalue of ``H`` (general operator, signal ``b``), or 0."""
    from scipy.sparse.linalg import LinearOperator as SpOp
    from scipy.sparse.linalg import eigsh

    op = p.operator
    assert op is not None
    n = p.num_nodes

    def mv(v: np.ndarray) -> np.ndarray:
        t = torch.as_tensor(np.asarray(v).reshape(1, -1), dtype=torch.float64, device=p.device)
        m = None if p.mask is None else p.mask[b : b + 1].double()
        ax = op(t)
        ax = ax if m is None else ax * m
        out = op.adjoint(ax) + p.lam * p.lap.mv(t)
        return out.detach().cpu().numpy().ravel()

    # a random start (seeded): from the ones vector the Krylov space stays in an invariant
    # subspace whenever H has a symmetry that fixes it (a mirror-symmetric graph and
    # operator), and ARPACK returns that subspace's smallest eigenvalue, not H's
    v0 = np.random.default_rng(0).standard_normal(n)
    try:
        est = eigsh(
            SpOp((n, n), matvec=mv, dtype=np.float64),
            k=1,
            which="SA",
            tol=1e-6,
            maxiter=20 * n,
            return_eigenvectors=False,
            v0=v0,
        )[0]
        return max(float(est), 0.0) * lo_safety
    except Exception:  # noqa: BLE001 - ARPACK did not converge: no lower bound
        return 0.0


def bounds(
    p: GraphInverseProblem, safety: float, lo_safety: float, which: str, *, inertia: bool = False
) -> np.ndarray:
    """``(rows, num_blocks)`` upper (``"hi"``) or lower (``"lo"``) bounds on the spectrum of H.

    Masks: :func:`spectrum_mask` (``hi`` capped by Gershgorin); the heat kernel without a
    mask: its spectral function ``exp(-2 tau mu) + lam mu`` on a grid of ``[0, lambda_max(L)]``;
    general operators: ``||A||^2`` by power iteration with a 5% margin plus ``lam
    lambda_max(L)``, and ARPACK's smallest eigenvalue (0 if it fails).
    """
    # the default key is also written by the PyG transform (_pyg._KEY_HI)
    key = f"bounds-{safety}-{lo_safety}-{which}" + ("-inertia" if inertia else "")
    if key in p._cache:
        return p._cache[key]
    rows = _mask_rows(p)
    if p.kind == "mask":
        if which == "hi":
            gb = _max_per_block(p, gershgorin_np(p))
            res = np.minimum(spectrum_mask(p, "hi", safety, inertia=inertia), gb)
            # never looser than the default (both proofs; the same one up to _FACTOR_MAX)
            if inertia and int(np.diff(p.block_ptr).max(initial=0)) > _FACTOR_MAX:
                res = np.minimum(res, spectrum_mask(p, "hi", safety))
        else:
            res = spectrum_mask(p, "lo", lo_safety)
        p._cache[key] = res
        return res
    elif p.kind == "heat" and p.mask is None:
        lmax = lap_lmax(p)
        hi = np.zeros((1, p.num_blocks))
        lo = np.zeros_like(hi)
        for k in range(p.num_blocks):
            mu = np.linspace(0.0, lmax[k], 20001)
            r = p.heat.response(mu) ** 2 + p.lam * mu  # type: ignore[union-attr]
            hi[0, k], lo[0, k] = r.max() * safety, max(r.min(), 0.0) * lo_safety
    else:
        op = p.operator
        assert op is not None
        anorm2 = op.norm() ** 2 * 1.05  # power iteration underestimates: 5% margin
        lmax = float(lap_lmax(p).max())
        hi = np.full((len(rows), 1), anorm2 + p.lam * lmax)
        lo = np.zeros_like(hi)
        for b in rows if which == "lo" else ():
            lo[b, 0] = _operator_lo(p, b, lo_safety)
    res = hi if which == "hi" else lo
    if res.shape[1] != p.num_blocks:  # one value for every graph of the batch
        res = np.repeat(res, p.num_blocks, axis=1)
    p._cache[key] = res
    return res


def gershgorin_np(p: GraphInverseProblem) -> np.ndarray:
    """``R_i >= sum_j |H_ij|`` per node (rows of a diagonally dominant majorant)."""
    if "gersh" in p._cache:
        return p._cache["gersh"]
    lam_part = p.lam * p.lap_rowabs_np[None]
    if p.kind == "mask":
        out = _mask_np(p) + lam_part
    elif p.kind == "heat" and p.mask is None:
        mu = np.linspace(0.0, float(lap_lmax(p).max()), 20001)
        c = float((p.heat.response(mu) ** 2).max()) * 1.01  # type: ignore[union-attr]
        out = c + lam_part
    else:
        assert p.operator is not None
        out = p.operator.norm() ** 2 * 1.05 + lam_part
    out = _rounded_up(p, out)  # rounded up: a bound despite the rounding of the sums
    p._cache["gersh"] = out
    return out


def gershgorin_per_block(p: GraphInverseProblem) -> np.ndarray:
    """The Gershgorin bound on ``lambda_max(H)``, ``(rows, num_blocks)``."""
    return _max_per_block(p, gershgorin_np(p))


def jacobi_interval(
    p: GraphInverseProblem, safety: float, lo_safety: float
) -> tuple[np.ndarray, np.ndarray]:
    """``(lo, hi)`` of ``S = D^{-1/2} H D^{-1/2}`` per row and block (mask problems; cached).

    ``hi``: the smaller of the Gershgorin bound of ``D^{-1} H`` and the certified estimate
    of :func:`spectrum_mask`; ``lo``: the certified lower estimate, capped by ``hi``.
    """
    key = f"jacobi-{safety}-{lo_safety}"
    if key not in p._cache:
        # diag(H) exactly as stored (the same two roundings); the quotient rounded up
        dg = _mask_np(p) + p.lam * _lap_diagonal(p)[None]
        if not np.all(dg > 0):
            raise ValueError(
                "Expected diag(H) > 0 for the Jacobi scaling, got "
                f"{float(dg.min())} (a node unobserved with lam * weights 0 or underflowing)."
            )
        ratio = np.nextafter(gershgorin_np(p) / dg, np.inf)
        gb = _max_per_block(p, ratio)
        hi = np.minimum(spectrum_mask(p, "hi", safety, scaled=True), gb)
        lo = np.minimum(spectrum_mask(p, "lo", lo_safety, scaled=True), hi)
        p._cache[key] = (lo, hi)
    return p._cache[key]


def hessian_diagonal_np(p: GraphInverseProblem) -> np.ndarray:
    """``diag(H)`` per row (mask problems exactly; else with the ``||A||^2`` bound)."""
    lap_diag = _lap_diagonal(p)
    if p.kind == "mask":
        return _mask_np(p) + p.lam * lap_diag[None]
    g = gershgorin_np(p) - p.lam * p.lap_rowabs_np[None]
    return g + p.lam * lap_diag[None]


def as_bound(a: np.ndarray, dtype: torch.dtype, device: Any, direction: str | None) -> torch.Tensor:
    """The float64 bounds ``a`` as a tensor of ``dtype``: a narrower dtype rounds upper bounds
    (``direction="up"``) up and lower bounds (``"down"``) down, so that they stay bounds;
    else (float64, or ``direction=None``) rounded to nearest."""
    if direction is None or dtype == torch.float64:
        return torch.as_tensor(a, dtype=dtype, device=device)
    ref = torch.as_tensor(a, dtype=torch.float64)  # on the CPU: MPS has no float64
    t = ref.to(dtype)
    up = direction == "up"
    wrong = t.double() < ref if up else t.double() > ref
    if bool(wrong.any()):
        step = torch.nextafter(t, torch.full_like(t, float("inf") if up else float("-inf")))
        t = torch.where(wrong, step, t)
    return t.to(device)
