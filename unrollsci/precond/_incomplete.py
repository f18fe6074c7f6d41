"""Incomplete Cholesky factorizations on ``tril(A)``'s pattern: IC(0) and relaxed MIC(0).

Both are written here (scipy has no incomplete Cholesky): a symbolic phase (entry pairs of
every update, a level schedule) and a numeric phase vectorized per level.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .._validation import check_device
from ._factors import FactorPreconditioner
from ._ordering import PermutedPreconditioner, reorder
from ._sparse import LowerPattern, check_spd_input, first_not_invertible, lower_pattern
from ._triangles import column_pairs, lower_triangles

__all__ = [
    "ICBreakdownError",
    "ic0",
    "ic0_values",
    "ic0_from_pattern",
    "mic0",
    "mic0_from_pattern",
]


class ICBreakdownError(ValueError):
    """Incomplete Cholesky met a non-positive pivot."""


def _levels(pat: LowerPattern) -> np.ndarray:
    """Level schedule of a lower pattern: row (column) ``j`` waits for the rows of row
    ``j``'s strict-lower columns, so the rows (columns) of one level are independent."""
    crow_l, col_l = pat.crow.tolist(), pat.col.tolist()
    lev_l = [0] * pat.n
    for i in range(pat.n):
        m = -1
        for c in col_l[crow_l[i] : crow_l[i + 1] - 1]:
            if lev_l[c] > m:
                m = lev_l[c]
        lev_l[i] = m + 1
    return np.asarray(lev_l, dtype=np.int64)


def _lookup(keys: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of ``targets`` in the sorted, non-empty ``keys`` (``row * n + col`` of a
    pattern) and whether each target is there at all."""
    loc = np.minimum(np.searchsorted(keys, targets), keys.size - 1)
    return loc, keys[loc] == targets


def _ic0_plan(pat: LowerPattern) -> dict[str, Any]:
    """Symbolic IC(0): entry pairs of every update and a level schedule (numpy)."""
    n = pat.n
    crow, col, row = pat.crow.numpy(), pat.col.numpy(), pat.row.numpy()
    nnz = col.size
    strict = col < row
    counts = np.diff(crow)
    dmax = int(counts.max()) if n else 1
    pos = np.arange(nnz) - crow[row]
    # Pairs (i,j),(i,k) with j < k < i in row i, and (k,j) in the pattern: L_ik -= L_ij L_kj
    # (the pattern's triangles), ordered by the distance of (i,k) from (i,j), then (i,j).
    tij, tkj, tik = lower_triangles(n, row, col)
    o = np.lexsort((tij, tik - tij))
    ta, tb, tt = [tij[o]], [tkj[o]], [tik[o]]
    # Diagonal: L_ii^2 = a_ii - sum_j L_ij^2.
    sidx = np.nonzero(strict)[0]
    ta.append(sidx)
    tb.append(sidx)
    tt.append(pat.diag.numpy()[row[sidx]])
    pa, pb, ptgt = np.concatenate(ta), np.concatenate(tb), np.concatenate(tt)
    lev = _levels(pat)  # a row depends on the rows of its strict-lower columns
    slot = np.where(strict, pos, dmax)  # diagonal entries come last in their row's level
    stage = lev[row] * (dmax + 1) + slot
    order = np.argsort(stage, kind="stable")
    st_sorted = stage[order]
    bounds = np.flatnonzero(np.diff(st_sorted)) + 1
    starts = np.concatenate([[0], bounds])
    ends = np.concatenate([bounds, [nnz]])
    pstage = stage[ptgt]
    porder = np.argsort(pstage, kind="stable")
    pa, pb, ptgt, pstage = pa[porder], pb[porder], ptgt[porder], pstage[porder]
    pstarts = np.searchsorted(pstage, st_sorted[starts], side="left")
    pends = np.searchsorted(pstage, st_sorted[starts], side="right")
    return {
        "order": order,
        "starts": starts,
        "ends": ends,
        "is_diag": ~strict,
        "pa": pa,
        "pb": pb,
        "ptgt": ptgt,
        "pstarts": pstarts,
        "pends": pends,
        "diag": pat.diag.numpy(),
        "col": col,
    }


def _ic0_numeric(plan: dict[str, Any], a_vals: np.ndarray) -> np.ndarray:
    vals = a_vals.astype(np.float64).copy()
    order, is_diag, diag, col = plan["order"], plan["is_diag"], plan["diag"], plan["col"]
    pa, pb, ptgt = plan["pa"], plan["pb"], plan["ptgt"]
    for s, e, ps, pe in zip(
        plan["starts"], plan["ends"], plan["pstarts"], plan["pends"], strict=True
    ):
        tgt = order[s:e]
        if pe > ps:
            np.subtract.at(vals, ptgt[ps:pe], vals[pa[ps:pe]] * vals[pb[ps:pe]])
        if is_diag[tgt[0]]:
            piv = vals[tgt]
            if np.any(piv <= 0) or not np.all(np.isfinite(piv)):
                raise ICBreakdownError("IC(0) met a non-positive pivot")
            vals[tgt] = np.sqrt(piv)
        else:
            vals[tgt] = vals[tgt] / vals[diag[col[tgt]]]
    return vals


#: Columns with more strict-lower entries than this get MIC(0)'s diagonal compensation
#: from sums over the column (no list of their dropped pairs, which grows as the count
#: squared); the others list every dropped pair.
MIC_LIST_MAX = 32


def _mic_plan(pat: LowerPattern) -> dict[str, Any]:
    """Symbolic right-looking incomplete Cholesky with the dropped fill recorded.

    Eliminating column ``j`` updates ``a_ik -= L_ij L_kj`` for every pair of entries
    ``i >= k > j`` of column ``j``; a pair whose target ``(i, k)`` is not in the pattern
    is dropped fill. The kept pairs are ``i = k`` and the pattern's triangles. Dropped
    pairs are listed for the columns of at most :data:`MIC_LIST_MAX` entries; in a longer
    column, entry ``(i, j)`` instead gets ``L_ij`` times the sum of ``L_kj`` over its
    dropped partners (the column's sum less ``L_ij`` and its kept partners). Columns are
    grouped in levels (a column's updates all come from columns of lower levels), so the
    numeric phase is a few vectorized operations per level.
    """
    n = pat.n
    row, col = pat.row.numpy(), pat.col.numpy()
    diag = pat.diag.numpy()
    strict = np.flatnonzero(col < row)
    # Strict-lower entries grouped by column (CSC order), rows ascending in each column.
    csc = strict[np.lexsort((row[strict], col[strict]))]
    ccol = col[csc]
    counts = np.diff(np.searchsorted(ccol, np.arange(n + 1)))
    where = np.full(col.size, -1, dtype=np.int64)  # CSC index of each strict entry
    where[csc] = np.arange(csc.size)
    # Kept pairs (p, q), row(p) >= row(q), ordered by their distance in the column, then
    # by q: the diagonal ones (p = q, target (i, i)) and the triangles (target (i, k)).
    tij, tkj, tik = lower_triangles(n, row, col)
    e1 = np.concatenate([np.arange(csc.size), where[tkj]])
    dist = np.concatenate([np.zeros(csc.size, dtype=np.int64), where[tij] - where[tkj]])
    o = np.lexsort((e1, dist))
    pa = np.concatenate([csc, tij])[o]
    pb = np.concatenate([csc, tkj])[o]
    pt = np.concatenate([diag[row[csc]], tik])[o]
    # Dropped pairs of the short columns, in the same order.
    listed = np.repeat(counts <= MIC_LIST_MAX, counts)
    s_csc = csc[listed]
    x, y, _, found = column_pairs(n, row, col, s_csc, counts[counts <= MIC_LIST_MAX])
    x, y = x[~found], y[~found]
    o = np.lexsort((x, y - x))
    fa, fb = s_csc[y[o]], s_csc[x[o]]
    lev = _levels(pat)
    n_lev = int(lev.max()) + 1 if n else 0
    # Every array sorted by the level of the column it belongs to, with level offsets.

    def by_level(colidx: np.ndarray, *arrs: np.ndarray) -> tuple[np.ndarray, ...]:
        lv = lev[colidx]
        o = np.argsort(lv, kind="stable")
        bounds = np.searchsorted(lv[o], np.arange(n_lev + 1))
        return (bounds, *(a[o] for a in arrs))

    plan = {
        "n_lev": n_lev,
        "d": by_level(np.arange(n), diag),
        "o": by_level(ccol, csc, diag[ccol]),
        "p": by_level(col[pb], pa, pb, pt),
        "f": by_level(col[fb], fa, fb, diag[row[fa]], diag[row[fb]]),
    }
    plan.update(_long_columns(csc[~listed], (tij, tkj), row, col, diag, lev, by_level))
    return plan


def _long_columns(
    l_csc: np.ndarray,
    tri: tuple[np.ndarray, np.ndarray],
    row: np.ndarray,
    col: np.ndarray,
    diag: np.ndarray,
    lev: np.ndarray,
    by_level: Any,
) -> dict[str, tuple[np.ndarray, ...]]:
    """What the numeric phase needs for the long columns' compensation, per level: their
    entries (``"g"``: positions and the column of each, numbered within the level), their
    kept triangle pairs (``"k"``: indices within the level's entries) and the entries with
    at least one dropped partner (``"c"``: index within the level, diagonal position)."""
    gb, gpos = by_level(col[l_csc], l_csc)
    glev = lev[col[gpos]]
    first = np.ones(gpos.size, dtype=bool)
    first[1:] = col[gpos[1:]] != col[gpos[:-1]]
    seg = np.cumsum(first) - 1
    if gpos.size:
        seg -= seg[gb[glev]]
    loc = np.full(col.size, -1, dtype=np.int64)
    loc[gpos] = np.arange(gpos.size) - gb[glev]
    tij, tkj = tri
    long_ = loc[tij] >= 0  # the triangle's column is a long one
    tij, tkj = tij[long_], tkj[long_]
    kb, kp, kq = by_level(col[tij], loc[tij], loc[tkj])
    # partners of an entry: every other entry of its column, less the kept ones
    nkept = np.bincount(loc[tij] + gb[lev[col[tij]]], minlength=gpos.size)
    nkept += np.bincount(loc[tkj] + gb[lev[col[tkj]]], minlength=gpos.size)
    ccount = np.bincount(col[gpos], minlength=diag.size)[col[gpos]]
    has = np.flatnonzero(ccount - 1 - nkept > 0)
    cb = np.searchsorted(glev[has], np.arange(gb.size))
    return {
        "g": (gb, gpos, seg),
        "k": (kb, kp, kq),
        "c": (cb, has - gb[glev[has]], diag[row[gpos[has]]]),
    }


def _mic_numeric(
    plan: dict[str, Any], a_vals: np.ndarray, omega: float, robust: bool = False
) -> np.ndarray:
    """Numeric phase; ``robust`` adds ``omega |f|`` to both pivots instead of subtracting
    ``omega f`` (the dropped fill ``f``), so pivots only grow (no breakdown on SPD input)."""
    vals = a_vals.astype(np.float64).copy()
    db, dpos = plan["d"]
    ob, opos, odiag = plan["o"]
    pbd, pa, pb, pt = plan["p"]
    fbd, fa, fb, fi, fk = plan["f"]
    gb, gpos, gseg = plan["g"]
    kb, kp, kq = plan["k"]
    cb, cloc, cdiag = plan["c"]
    for lv in range(plan["n_lev"]):
        d = dpos[db[lv] : db[lv + 1]]
        piv = vals[d]
        if np.any(piv <= 0) or not np.all(np.isfinite(piv)):
            raise ICBreakdownError("incomplete Cholesky met a non-positive pivot")
        vals[d] = np.sqrt(piv)
        s, e = ob[lv], ob[lv + 1]
        if e > s:
            o = opos[s:e]
            vals[o] /= vals[odiag[s:e]]
        s, e = pbd[lv], pbd[lv + 1]
        if e > s:
            np.subtract.at(vals, pt[s:e], vals[pa[s:e]] * vals[pb[s:e]])
        if not omega:
            continue
        s, e = fbd[lv], fbd[lv + 1]
        if e > s:
            f = omega * vals[fa[s:e]] * vals[fb[s:e]]
            if robust:
                f = -np.abs(f)
            np.subtract.at(vals, fi[s:e], f)
            np.subtract.at(vals, fk[s:e], f)
        s, e = cb[lv], cb[lv + 1]
        if e > s:  # long columns: sum over the dropped partners of each entry
            g = vals[gpos[gb[lv] : gb[lv + 1]]]
            if robust:
                g = np.abs(g)
            seg = gseg[gb[lv] : gb[lv + 1]]
            p, q = kp[kb[lv] : kb[lv + 1]], kq[kb[lv] : kb[lv + 1]]
            kept = np.bincount(p, weights=g[q], minlength=g.size)
            kept += np.bincount(q, weights=g[p], minlength=g.size)
            dropped = np.bincount(seg, weights=g)[seg] - g - kept
            c = cloc[s:e]
            f = omega * g[c] * dropped[c]
            np.subtract.at(vals, cdiag[s:e], -f if robust else f)
    return vals


def ic0_from_pattern(
    pat: LowerPattern, vals: np.ndarray, *, shift: float = 0.0, max_shift_tries: int = 30
) -> tuple[np.ndarray, float]:
    """Numeric IC(0) on a given lower pattern with the values of ``tril(A)`` on it.

    On breakdown (non-positive pivot) retries with ``A + alpha diag(A)``, doubling
    ``alpha`` from ``1e-3`` (Manteuffel's shifted incomplete Cholesky).

    Returns:
        factor values (numpy, CSR order) and the shift ``alpha`` used.
    """
    plan = _ic0_plan(pat)
    diag_pos = pat.diag.numpy()
    alpha = shift
    for _ in range(max_shift_tries):
        v = np.array(vals, dtype=np.float64)
        v[diag_pos] *= 1.0 + alpha
        try:
            return _ic0_numeric(plan, v), alpha
        except ICBreakdownError:
            alpha = 1e-3 if alpha == 0 else 2 * alpha
    raise ICBreakdownError(  # pragma: no cover - alpha ~ 5e5 makes any SPD diagonal dominant
        "IC(0) broke down even with a diagonal shift; is A positive definite?"
    )


def _factor_tensor(
    what: str, pat: LowerPattern, vals: np.ndarray, dtype: torch.dtype, device: Any
) -> torch.Tensor:
    """The factor's values as a ``dtype`` tensor on ``device``; refused (ValueError) where
    the cast leaves an entry non-finite or a diagonal entry not strictly positive with a
    finite reciprocal: a factor outside ``dtype``'s range (``A`` scaled far from 1, e.g.
    ``L`` of order 1e45 or 1e-45 in float32), whose every output would be NaN."""
    v = torch.as_tensor(vals, dtype=dtype, device=device)
    if not v.is_floating_point():
        return v
    fix = "build it in torch.float64 or rescale A"
    bad = ~torch.isfinite(v)
    if bool(bad.any()):
        raise ValueError(
            f"Expected the {what} factor to be finite in {dtype} (got {int(bad.sum())} "
            f"non-finite of {v.numel()} entries, largest |L_ij| = {np.abs(vals).max():.3e} "
            f"in float64): it is outside {dtype}'s range; {fix}."
        )
    d = v.index_select(0, pat.diag.to(v.device))
    i = first_not_invertible(d)
    if i is not None:
        raise ValueError(
            f"Expected the {what} factor's diagonal in {dtype} to be strictly positive "
            f"with finite reciprocals (got L[{i}, {i}] = {float(d[i]):.3e}, from "
            f"{float(vals[int(pat.diag[i])]):.3e} in float64): the preconditioner must be "
            f"positive definite; {fix}."
        )
    return v


def ic0_values(a: Any, *, shift: float = 0.0) -> tuple[LowerPattern, np.ndarray, float]:
    """IC(0) of a validated scipy CSR matrix on ``tril(A)``'s pattern.

    Returns:
        pattern, factor values (numpy, CSR order) and the diagonal shift used.
    """
    pat, vals = lower_pattern(a)
    out, alpha = ic0_from_pattern(pat, vals, shift=shift)
    return pat, out, alpha


def ic0(
    A: Any,
    *,
    device: torch.device | str | None = None,  # noqa: N803
    dtype: torch.dtype = torch.float64,
    ordering: Any = None,
) -> FactorPreconditioner | PermutedPreconditioner:
    """Zero fill-in incomplete Cholesky, ``A ~ L L^T`` with ``L`` on ``tril(A)``'s pattern.

    Scipy has no incomplete Cholesky (``spilu`` is ILUTP), so this is written here:
    a level-scheduled (vectorized per wavefront) up-looking IC(0). On a
    non-positive pivot it restarts with a diagonal shift (``M.shift`` records it).

    Args:
        A: SPD scipy sparse matrix or torch sparse / dense tensor ``(n, n)``.
        device, dtype: where the factor lives.
        ordering: None factors ``A`` as numbered. Otherwise candidate orderings
            (``"grid"``, ``"rcm"``, ``{name: perm}``, ... see
            :func:`~unrollsci.precond.candidate_orderings`): the one whose IC(0) drops the
            least positive fill (:func:`~unrollsci.precond.select_ordering`) is used, and
            the factor of ``P A P^T`` is wrapped in a
            :class:`~unrollsci.precond.PermutedPreconditioner` (same nonzeros).

    Returns:
        FactorPreconditioner applying ``(L L^T)^{-1}`` by sparse triangular solves.

    Example:
        >>> import scipy.sparse as sp
        >>> from unrollsci.precond import ic0
        >>> A = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(5, 5), format="csr")
        >>> L = ic0(A).factor().toarray()   # tridiagonal: IC(0) is exact Cholesky
        >>> bool(abs(L @ L.T - A.toarray()).max() < 1e-12)
        True
    """
    device = check_device(device)
    a = check_spd_input(A)
    a, perm, name = reorder(a, ordering)
    pat, vals, alpha = ic0_values(a)
    m = FactorPreconditioner(pat, _factor_tensor("IC(0)", pat, vals, dtype, device))
    m.shift = alpha
    return _wrap(m, perm, name)


def _check_omega(omega: Any) -> None:
    if isinstance(omega, bool) or not isinstance(omega, (int, float, np.floating, np.integer)):
        raise TypeError(f"Expected 'omega' to be a real number (got {type(omega).__name__}).")
    if not 0.0 <= omega <= 1.0:  # also refuses NaN
        raise ValueError(f"Expected 0 <= omega <= 1 (got {omega}).")


def mic0_from_pattern(
    pat: LowerPattern, vals: np.ndarray, *, omega: float = 0.95, max_growth: float = 1e4
) -> tuple[np.ndarray, float, str]:
    """Relaxed modified incomplete Cholesky on a given lower pattern (values of ``tril(A)``).

    The fill that IC(0) drops at ``(i, k)`` is subtracted, times ``omega``, from the
    pivots of rows ``i`` and ``k`` (``omega = 1``: row sums of ``L L^T`` equal those of
    ``A``, Gustafsson's MIC; ``omega = 0``: IC(0)). On matrices that are not M-matrices
    this can make a pivot non-positive or the factor grow without bound; then the
    factorization is redone with ``omega |f|`` *added* to both pivots (the stabilized
    compensation of Ajiz and Jennings, which cannot break down on an SPD matrix), and as
    a last resort IC(0) with its diagonal shift.

    Returns:
        factor values (numpy, CSR order), the ``omega`` used, and the variant used:
        ``"mic"``, ``"robust"`` or ``"ic0"`` (``"ic0+shift"`` if IC(0) needed a shift).
    """
    _check_omega(omega)
    a = np.asarray(vals, dtype=np.float64)
    if omega > 0:
        plan = _mic_plan(pat)
        limit = max_growth * float(np.sqrt(np.abs(a[pat.diag.numpy()]).max()))
        for robust in (False, True):
            try:
                with np.errstate(over="ignore", invalid="ignore"):
                    out = _mic_numeric(plan, a, omega, robust)
            except ICBreakdownError:
                continue
            if np.all(np.isfinite(out)) and np.abs(out).max() <= limit:
                return out, omega, "robust" if robust else "mic"
    out, alpha = ic0_from_pattern(pat, a)
    return out, 0.0, "ic0+shift" if alpha else "ic0"


def mic0(
    A: Any,  # noqa: N803
    *,
    omega: float = 0.95,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float64,
    ordering: Any = None,
) -> FactorPreconditioner | PermutedPreconditioner:
    """Relaxed modified incomplete Cholesky (MIC(0)), ``L`` on ``tril(A)``'s pattern.

    Same nonzeros and the same triangular solves as :func:`ic0`; the dropped fill is
    moved to the diagonal (times ``omega``), which for diffusion-type matrices removes
    most of IC(0)'s error on smooth vectors. A right-looking factorization vectorized per
    column level. ``M.variant`` says which factorization was used (``"mic"``, or after a
    breakdown ``"robust"`` / ``"ic0"``, see :func:`mic0_from_pattern`). ``ordering``: as
    in :func:`ic0`; MIC(0) gains the most from it: moving dropped fill onto the diagonal
    lowers the pivots where that fill is negative, which on a matrix that is not an
    M-matrix can leave the factor nearly singular, and the ordering decides where that
    happens (see :mod:`unrollsci.precond._ordering` and ``docs/precond.md``, "Orderings").

    Example:
        >>> from unrollsci.precond import diffusion2d, ic0, mic0
        >>> M = mic0(diffusion2d(8, seed=0))
        >>> M.variant, M.nnz == ic0(diffusion2d(8, seed=0)).nnz
        ('mic', True)
    """
    device = check_device(device)
    _check_omega(omega)
    a = check_spd_input(A)
    a, perm, name = reorder(a, ordering)
    pat, vals = lower_pattern(a)
    out, w, variant = mic0_from_pattern(pat, vals, omega=omega)
    m = FactorPreconditioner(pat, _factor_tensor("MIC(0)", pat, out, dtype, device))
    m.omega, m.variant = w, variant
    return _wrap(m, perm, name)


def _wrap(
    m: FactorPreconditioner, perm: np.ndarray | None, name: str | None
) -> FactorPreconditioner | PermutedPreconditioner:
    m.ordering = name
    if perm is None:
        return m
    out = PermutedPreconditioner(m, perm, name).to(m.values.device)
    for attr in ("shift", "omega", "variant"):  # documented on ic0's / mic0's result
        if hasattr(m, attr):
            setattr(out, attr, getattr(m, attr))
    return out
