"""Audit Dec 13, "no runaway cost": ordering selection and MIC(0) on matrices with a dense
row / column (a hub).

1. ``dropped_fill`` / ``select_ordering`` padded every sampled row to the widest one (cost
   rows x d_max^2); now the pairs are built per row (sum of d_i^2, dense rows capped).
2. ``mic0``'s symbolic phase looped over the longest column's length and listed every
   dropped pair (sum of squared column counts); now the kept pairs are the pattern's
   triangles and long columns compensate from column sums.

The references are copies of the previous implementations (the results on matrices
without dense rows / columns must not change) and dense loops.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import scipy.sparse as sp

from unrollsci.precond import (
    _incomplete,
    _ordering,
    anisotropic2d,
    candidate_orderings,
    diffusion2d,
    dropped_fill,
    graph_laplacian,
    grid_orderings,
    ic0,
    mic0,
    select_ordering,
)
from unrollsci.precond._sparse import lower_pattern

# ----------------------------------------------------------------------------- matrices


def _path_and_hub(n, *, hub_first):
    """Laplacian (+ 1e-2 I) of a path of n nodes plus one node joined to all of them."""
    if hub_first:
        rows = list(range(1, n)) + [0] * n
        cols = list(range(2, n + 1)) + list(range(1, n + 1))
    else:
        rows = list(range(n - 1)) + [n] * n
        cols = list(range(1, n)) + list(range(n))
    w = sp.coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n + 1, n + 1))
    w = (w + w.T).tocsr()
    return (sp.diags(np.asarray(w.sum(1)).ravel()) - w + 1e-2 * sp.eye(n + 1)).tocsr()


def _random_m_matrix(n, density, seed):
    rng = np.random.default_rng(seed)
    w = sp.triu(sp.random(n, n, density=density, random_state=rng), 1).tocsr()
    w.data[:] = rng.uniform(0.1, 2.0, w.nnz)
    w = (w + w.T).tocsr()
    d = np.asarray(w.sum(1)).ravel() * rng.uniform(1.0, 1.5, n) + 0.01
    return (sp.diags(d) - w).tocsr()


def _random_spd(n, density, seed):
    rng = np.random.default_rng(seed)
    w = sp.triu(sp.random(n, n, density=density, random_state=rng), 1).tocsr()
    w.data[:] = rng.standard_normal(w.nnz)
    w = (w + w.T).tocsr()
    return (sp.diags(np.asarray(abs(w).sum(1)).ravel() + 0.1) + w).tocsr()


FAMILIES = [
    diffusion2d(9, seed=0),
    diffusion2d(12, sigma=2.0, seed=1),
    anisotropic2d(10, seed=2),
    anisotropic2d(12, epsilon=0.01, theta=0.4, seed=None),
    graph_laplacian(10, seed=3),
    graph_laplacian(12, degree=14.0, seed=4),
]


# ------------------------------------------- 1. the previous dropped_fill (padded rows)


def _old_fill_scores(a, perms, sample=512, seed=0):
    """The padded implementation that was replaced, verbatim in what it computes."""
    a = sp.csr_matrix(a, copy=True)
    a.sum_duplicates()
    n = a.shape[0]
    rows = (
        np.sort(np.random.default_rng(seed).choice(n, size=sample, replace=False))
        if sample is not None and sample < n
        else np.arange(n)
    )
    lengths = np.diff(a.indptr)[rows]
    pos = np.concatenate([np.arange(a.indptr[r], a.indptr[r + 1]) for r in rows])
    r = np.repeat(rows, lengths)
    c = a.indices[pos].astype(np.int64)
    off = r != c
    pos, r, c = pos[off], r[off], c[off]
    d = np.sqrt(a.diagonal())
    counts = np.bincount(np.searchsorted(rows, r), minlength=rows.size)
    width = int(counts.max())
    slot = np.arange(r.size) - np.repeat(np.cumsum(counts) - counts, counts)
    col = np.zeros((rows.size, width), dtype=np.int64)
    val = np.zeros((rows.size, width))
    ri = np.repeat(np.arange(rows.size), counts)
    col[ri, slot] = c
    val[ri, slot] = a.data[pos] / (d[r] * d[c])
    x, y = np.triu_indices(width, 1)
    j, k = col[:, x], col[:, y]
    dense = a.toarray() != 0
    fill = np.where(dense[j, k], 0.0, val[:, x] * val[:, y])
    out = {}
    for name, p in perms.items():
        q = np.empty(n, dtype=np.int64)
        q[p] = np.arange(n)
        early = q[col] < q[rows[:, None]]
        dropped = fill[early[:, x] & early[:, y]]
        out[name] = (
            float(np.clip(dropped, 0, None).sum() / rows.size),
            float(np.abs(dropped).sum() / rows.size),
        )
    return out


@pytest.mark.parametrize("a", FAMILIES)
@pytest.mark.parametrize("kind", ["grid", "rcm"])
def test_dropped_fill_and_choice_unchanged_on_the_families(a, kind):
    if kind == "grid" and round(np.sqrt(a.shape[0])) ** 2 != a.shape[0]:
        pytest.skip("not a square grid")
    cands = candidate_orderings(a, kind)
    for sample in (512, 40, None):
        name, scores = select_ordering(a, cands, sample=sample)
        old = _old_fill_scores(a, cands, sample=sample)
        for k in cands:  # the same numbers, summed in another order
            np.testing.assert_allclose(scores[k], old[k], rtol=1e-12, atol=1e-300)
        # the same choice by the same rule (the least positive part, then the least total)
        best = min(s[0] for s in old.values())
        close = [k for k, s in old.items() if s[0] <= best + 5e-4]
        totals = sorted(old[k][1] for k in close)
        if len(totals) == 1 or totals[1] > totals[0] * (1 + 1e-9):  # no tie to rounding
            assert name == min(close, key=lambda k: old[k][1])


def test_dropped_fill_of_a_hub_matches_the_dense_loop_without_rows_x_width_squared(
    dense_dropped_fill,
):
    a = _path_and_hub(200, hub_first=False)
    rng = np.random.default_rng(0)
    for p in (np.arange(a.shape[0]), rng.permutation(a.shape[0])):
        np.testing.assert_allclose(
            dropped_fill(a, p, sample=None), dense_dropped_fill(a, p), rtol=1e-12
        )
    # 201 rows padded to the hub's 200 neighbours: ~20,000 pairs per row, ~190 MB before
    tracemalloc.start()
    try:
        dropped_fill(a, sample=None)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20e6, peak


def test_capped_dense_rows_give_an_unbiased_estimate(monkeypatch, dense_dropped_fill):
    """Past the pair budget, a dense row counts the pairs of m random neighbours, scaled:
    the estimate's mean over seeds is the exact value, rows below the cap are exact."""
    a = _path_and_hub(60, hub_first=False)
    perm = np.random.default_rng(1).permutation(a.shape[0])
    exact = dense_dropped_fill(a, perm)
    monkeypatch.setattr(_ordering, "FILL_PAIR_BUDGET", 400, raising=False)
    monkeypatch.setattr(_ordering, "FILL_EXACT_NEIGHBOURS", 4, raising=False)
    est = np.array([dropped_fill(a, perm, sample=None, seed=s) for s in range(300)])
    assert np.unique(est[:, 1]).size > 100  # the hub's neighbours are sampled
    np.testing.assert_allclose(est.mean(0), exact, rtol=0.05)
    # without the hub every row has at most 3 neighbours: exact, whatever the seed
    b = sp.diags([-1.0, 2.5, -1.0], [-1, 0, 1], shape=(50, 50), format="csr")
    np.testing.assert_allclose(
        dropped_fill(b, perm[perm < 50], sample=None, seed=7),
        dense_dropped_fill(b, perm[perm < 50]),
        rtol=1e-12,
    )


def test_exact_ties_go_to_the_first_candidate():
    """A mirror-symmetric problem: natural and transposed drop the same fill; the first
    listed wins, not the one that rounding happened to make smaller."""
    a = anisotropic2d(24, epsilon=0.01, theta=np.pi / 4, seed=None)
    cands = grid_orderings(24)
    name, scores = select_ordering(a, cands, sample=None)
    assert scores["natural"][0] == scores["transposed"][0] == 0.0
    assert scores["natural"][1] == pytest.approx(scores["transposed"][1], rel=1e-12)
    assert name == "natural"
    rev = {k: cands[k] for k in ("transposed", "natural", "flipped", "flipped-transposed")}
    assert select_ordering(a, rev, sample=None)[0] == "transposed"


# ------------------------------------------------- 2. the previous symbolic IC(0) / MIC(0)


def _old_ic0_plan(pat):
    n = pat.n
    crow, col, row = pat.crow.numpy(), pat.col.numpy(), pat.row.numpy()
    nnz = col.size
    strict = col < row
    dmax = int(np.diff(crow).max())
    pos = np.arange(nnz) - crow[row]
    keys = row * n + col
    ta, tb, tt = [], [], []
    for off in range(1, dmax):
        e1 = np.arange(nnz - off)
        e2 = e1 + off
        ok = (row[e1] == row[e2]) & strict[e1] & strict[e2]
        e1, e2 = e1[ok], e2[ok]
        loc = np.minimum(np.searchsorted(keys, col[e2] * n + col[e1]), keys.size - 1)
        found = keys[loc] == col[e2] * n + col[e1]
        ta.append(e1[found])
        tb.append(loc[found])
        tt.append(e2[found])
    sidx = np.nonzero(strict)[0]
    ta.append(sidx)
    tb.append(sidx)
    tt.append(pat.diag.numpy()[row[sidx]])
    pa, pb, ptgt = np.concatenate(ta), np.concatenate(tb), np.concatenate(tt)
    lev = _incomplete._levels(pat)
    stage = lev[row] * (dmax + 1) + np.where(strict, pos, dmax)
    order = np.argsort(stage, kind="stable")
    st_sorted = stage[order]
    bounds = np.flatnonzero(np.diff(st_sorted)) + 1
    starts = np.concatenate([[0], bounds])
    pstage = stage[ptgt]
    porder = np.argsort(pstage, kind="stable")
    pa, pb, ptgt, pstage = pa[porder], pb[porder], ptgt[porder], pstage[porder]
    return {
        "order": order,
        "starts": starts,
        "ends": np.concatenate([bounds, [nnz]]),
        "is_diag": ~strict,
        "pa": pa,
        "pb": pb,
        "ptgt": ptgt,
        "pstarts": np.searchsorted(pstage, st_sorted[starts], side="left"),
        "pends": np.searchsorted(pstage, st_sorted[starts], side="right"),
        "diag": pat.diag.numpy(),
        "col": col,
    }


def _old_mic0(pat, vals, omega, robust=False):
    """The previous MIC(0): every pair of every column listed, kept or dropped."""
    n = pat.n
    row, col, diag = pat.row.numpy(), pat.col.numpy(), pat.diag.numpy()
    strict = np.flatnonzero(col < row)
    csc = strict[np.lexsort((row[strict], col[strict]))]
    ccol = col[csc]
    counts = np.diff(np.searchsorted(ccol, np.arange(n + 1)))
    keys = row * n + col
    kept, drop = [], []
    for off in range(int(counts.max()) if csc.size else 0):
        e1 = np.arange(csc.size - off)
        same = ccol[e1] == ccol[e1 + off]
        q, p = csc[e1[same]], csc[e1[same] + off]
        t = row[p] * n + row[q]
        loc = np.minimum(np.searchsorted(keys, t), keys.size - 1)
        found = keys[loc] == t
        kept.append((p[found], q[found], loc[found]))
        drop.append((p[~found], q[~found]))
    lev = _incomplete._levels(pat)
    v = np.asarray(vals, dtype=np.float64).copy()
    pa, pb, pt = (np.concatenate([k[i] for k in kept]) for i in range(3))
    fa, fb = (np.concatenate([d[i] for d in drop]) for i in range(2))
    ko, fo = np.argsort(lev[col[pb]], kind="stable"), np.argsort(lev[col[fb]], kind="stable")
    pa, pb, pt, fa, fb = pa[ko], pb[ko], pt[ko], fa[fo], fb[fo]
    for lv in range(int(lev.max()) + 1):
        d = diag[lev == lv]
        v[d] = np.sqrt(v[d])
        o = csc[lev[ccol] == lv]
        v[o] /= v[diag[col[o]]]
        s = lev[col[pb]] == lv
        np.subtract.at(v, pt[s], v[pa[s]] * v[pb[s]])
        s = lev[col[fb]] == lv
        f = omega * v[fa[s]] * v[fb[s]]
        f = -np.abs(f) if robust else f
        np.subtract.at(v, diag[row[fa[s]]], f)
        np.subtract.at(v, diag[row[fb[s]]], f)
    return v


def _dense_mic0(a, omega, robust=False):
    """Right-looking MIC(0) with plain loops, in extended precision; CSR order of tril."""
    ad = a.toarray()
    n = len(ad)
    keep = np.tril(ad != 0) | np.eye(n, dtype=bool)
    lo = np.tril(ad).astype(np.longdouble)
    for j in range(n):
        lo[j, j] = np.sqrt(lo[j, j])
        rows = [i for i in range(j + 1, n) if keep[i, j]]
        for i in rows:
            lo[i, j] /= lo[j, j]
        for u in range(len(rows)):
            for w in range(u, len(rows)):
                k, i = rows[u], rows[w]
                f = lo[i, j] * lo[k, j]
                if keep[i, k]:
                    lo[i, k] -= f
                else:
                    f = -abs(f) if robust else f
                    lo[i, i] -= omega * f
                    lo[k, k] -= omega * f
    return lo[keep].astype(np.float64)


MATRICES = FAMILIES + [
    _random_m_matrix(150, 0.05, 0),
    _random_spd(100, 0.06, 1),
    _path_and_hub(30, hub_first=True),
    _path_and_hub(30, hub_first=False),
]


@pytest.mark.parametrize("a", MATRICES)
def test_ic0_and_mic0_bit_identical_to_the_previous_code(a):
    """No column longer than MIC_LIST_MAX: the same operations in the same order."""
    pat, vals = lower_pattern(a)
    old = _incomplete._ic0_numeric(_old_ic0_plan(pat), vals)
    np.testing.assert_array_equal(ic0(a).values.numpy(), old)
    plan = _incomplete._mic_plan(pat)
    for omega in (1.0, 0.95, 0.3):
        for robust in (False, True):
            new = _incomplete._mic_numeric(plan, vals, omega, robust)
            np.testing.assert_array_equal(new, _old_mic0(pat, vals, omega, robust))


@pytest.mark.parametrize(
    "a",
    [
        _path_and_hub(60, hub_first=True),
        _random_m_matrix(70, 0.5, 2),
        _random_spd(60, 0.6, 3),
        diffusion2d(7, seed=5),
        graph_laplacian(7, degree=12.0, seed=6),
    ],
)
@pytest.mark.parametrize("list_max", [getattr(_incomplete, "MIC_LIST_MAX", 32), 0])
def test_mic0_matches_a_dense_loop_with_long_columns(a, list_max, monkeypatch):
    """Columns longer than MIC_LIST_MAX (a hub, dense random matrices; with 0, every
    column) compensate from column sums: the same factor up to rounding."""
    monkeypatch.setattr(_incomplete, "MIC_LIST_MAX", list_max, raising=False)
    pat, vals = lower_pattern(a)
    plan = _incomplete._mic_plan(pat)
    for omega, robust in ((0.95, False), (1.0, False), (0.95, True)):
        got = _incomplete._mic_numeric(plan, vals, omega, robust)
        ref = _dense_mic0(a, omega, robust)
        scale = np.abs(ref).max()
        assert np.abs(got - ref).max() <= 1e-13 * scale
        old = _old_mic0(pat, vals, omega, robust)
        assert np.abs(got - old).max() <= 1e-13 * scale
    m = mic0(a)
    assert m.variant == "mic"
    np.testing.assert_array_equal(m.values.numpy(), _incomplete._mic_numeric(plan, vals, 0.95))


@pytest.mark.parametrize("hub_first", [True, False])
def test_mic0_and_ic0_of_a_hub_need_memory_linear_in_nnz(hub_first):
    """Path + hub, 2001 nodes: the previous MIC(0) listed all 2 million pairs of the hub's
    column (~200 MB); IC(0) with the hub last looped 2000 times over all entries."""
    a = _path_and_hub(2000, hub_first=hub_first)
    tracemalloc.start()
    try:
        m = mic0(a)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 30e6, peak
    assert m.variant == "mic"
    pat, vals = lower_pattern(a)
    if not hub_first:  # no long column: the previous code is cheap here, and identical
        np.testing.assert_array_equal(m.values.numpy(), _old_mic0(pat, vals, 0.95))
    np.testing.assert_array_equal(
        ic0(a).values.numpy(), _incomplete._ic0_numeric(_old_ic0_plan(pat), vals)
    )
