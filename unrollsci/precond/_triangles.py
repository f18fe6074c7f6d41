"""Entry pairs of the symbolic incomplete Cholesky phases, built with offsets.

An update ``a_ik -= L_ij L_kj`` (``j < k < i``) that a zero fill-in factorization keeps
needs the three entries ``(i, j)``, ``(k, j)`` and ``(i, k)`` of the lower pattern: a
triangle of the pattern's graph. :func:`lower_triangles` lists them all, each from the
vertex of least degree, so a dense row or column (a hub) costs no more than its
triangles; :func:`column_pairs` lists every pair of entries in a set of columns.
"""

from __future__ import annotations

import numpy as np

__all__ = ["column_pairs", "group_pairs", "lower_triangles"]


def group_pairs(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every pair ``(x, y)``, ``x < y``, of positions inside consecutive groups of the
    given sizes (positions counted over all groups), ordered by group, then ``x``, then
    ``y``. Costs the number of pairs."""
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    slot = np.arange(total) - starts
    reps = np.repeat(counts, counts) - 1 - slot  # partners after each position
    x = np.repeat(np.arange(total), reps)
    y = x + 1 + np.arange(x.size) - np.repeat(np.cumsum(reps) - reps, reps)
    return x, y


def _lookup(keys: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    loc = np.minimum(np.searchsorted(keys, targets), max(keys.size - 1, 0))
    if keys.size == 0:
        return loc, np.zeros(targets.shape, dtype=bool)
    return loc, keys[loc] == targets


def lower_triangles(
    n: int, row: np.ndarray, col: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every triangle ``j < k < i`` of a lower pattern (CSR order, columns sorted, ``row``
    and ``col`` of every entry): the positions of its entries ``(i, j)``, ``(k, j)`` and
    ``(i, k)``, in no particular order.

    Each triangle is found once, at its vertex of least ``(degree, index)``, by pairing
    that vertex's neighbours of higher rank: the cost is the sum over vertices of those
    neighbours' count squared (at most ``O(nnz^1.5)``, and linear in ``nnz`` for a
    pattern of bounded degree plus any number of dense rows / columns)."""
    keys = row * n + col  # sorted (CSR order)
    strict = col < row
    r, c = row[strict], col[strict]
    deg = np.bincount(r, minlength=n) + np.bincount(c, minlength=n)
    rank = np.empty(n, dtype=np.int64)
    rank[np.lexsort((np.arange(n), deg))] = np.arange(n)
    low = rank[r] < rank[c]
    src, dst = np.where(low, r, c), np.where(low, c, r)
    o = np.argsort(src, kind="stable")
    src, dst = src[o], dst[o]
    x, y = group_pairs(np.bincount(src, minlength=n))
    v, a, b = src[x], dst[x], dst[y]
    _, found = _lookup(keys, np.maximum(a, b) * n + np.minimum(a, b))
    tri = np.sort(np.stack([v[found], a[found], b[found]]), axis=0)
    j, k, i = tri[0], tri[1], tri[2]
    return (
        np.searchsorted(keys, i * n + j),
        np.searchsorted(keys, k * n + j),
        np.searchsorted(keys, i * n + k),
    )


def column_pairs(
    n: int, row: np.ndarray, col: np.ndarray, csc: np.ndarray, counts: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every pair of strict-lower entries of the columns whose ``counts`` are given
    (``csc``: those entries' CSR positions grouped by column, rows ascending): the
    indices ``x < y`` into ``csc``, the position of target ``(row[csc[y]], row[csc[x]])``
    and whether it is in the pattern. Costs the number of pairs."""
    x, y = group_pairs(counts)
    keys = row * n + col
    loc, found = _lookup(keys, row[csc[y]] * n + row[csc[x]])
    return x, y, loc, found
