"""Orderings for incomplete factorizations: candidates, a selection rule, and the wrapper
that applies a factor of ``P A P^T`` to vectors in ``A``'s own ordering.

IC(0) and MIC(0) keep ``tril(A)``'s nonzeros in *any* symmetric ordering, but how good
they are depends strongly on it. On rotated anisotropic diffusion (the
``anisotropic2d`` family, 128 x 128, ``eps = 0.01``) MIC(0) in the natural grid ordering
needs 7 to over 150,000 PCG iterations depending on the angle, while one of the four
lexicographic orderings of the grid (:func:`grid_orderings`) needs 7-13 at every angle.

What decides it is the fill the factorization drops. Eliminating unknown ``i`` creates
fill ``-s_ij s_ik`` (scaled) between two earlier neighbours ``j, k``; where that pair is
not an entry of ``A``, IC(0) drops it and MIC(0) moves it onto the two diagonals. With
``f = s_ij s_ik > 0`` (a negative fill entry, as always in an M-matrix) that lowers the
pivots; on a matrix that is not an M-matrix nothing bounds them from below, and the factor
becomes nearly singular (the thousands of iterations). With ``f < 0`` the pivots grow.
:func:`dropped_fill` estimates, to first order and per row, the positive part of the
dropped ``f`` and its total size, and :func:`select_ordering` picks the candidate with the
least positive part (then the least total). On an M-matrix every ``f`` is positive and
the rule just prefers the ordering that drops the least fill. On the anisotropic family it
picks, at every angle tried, an ordering within one or two iterations of the best of the
four (``tests/precond/test_ordering.py``), for IC(0) as well as MIC(0).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from .._validation import check_count
from ..operators import LinearOperator
from ._base import Preconditioner

__all__ = [
    "PermutedPreconditioner",
    "candidate_orderings",
    "dropped_fill",
    "grid_orderings",
    "reorder",
    "select_ordering",
]


#: Rows :func:`dropped_fill` visits by default (a seeded random subset).
SAMPLE_ROWS = 512

#: Neighbour pairs :func:`dropped_fill` enumerates in all before it caps the rows with the
#: most neighbours (a dense row, a hub, would otherwise cost its squared degree).
FILL_PAIR_BUDGET = 2**20

#: A row with at most this many off-diagonal entries always counts exactly.
FILL_EXACT_NEIGHBOURS = 64


def grid_orderings(nx: int, ny: int | None = None) -> dict[str, np.ndarray]:
    """The four lexicographic orderings of an ``nx x ny`` grid numbered with x fastest.

    Returns ``{name: perm}`` with ``perm[k]`` the original index of the unknown placed
    ``k``-th: ``"natural"`` (the identity), ``"transposed"`` (y fastest),
    ``"flipped"`` (x reversed) and ``"flipped-transposed"``. Together they cover every
    direction of strong coupling up to a half turn (a reflection of the grid maps a
    rotation angle ``theta`` to ``-theta`` or ``pi/2 - theta``).

    Example:
        >>> grid_orderings(3)["transposed"].tolist()
        [0, 3, 6, 1, 4, 7, 2, 5, 8]
    """
    nx = check_count("nx", nx)
    ny = nx if ny is None else check_count("ny", ny)
    idx = np.arange(nx * ny, dtype=np.int64).reshape(ny, nx)
    flip = idx[:, ::-1]
    return {
        "natural": idx.ravel().copy(),
        "transposed": idx.T.ravel().copy(),
        "flipped": flip.ravel().copy(),
        "flipped-transposed": flip.T.ravel().copy(),
    }


OrderingsArg = str | Mapping[str, Any] | Sequence[Any] | Callable[[Any], Mapping[str, Any]] | None


def _check_perm(p: Any, n: int, name: str) -> np.ndarray:
    p = np.asarray(p)
    if p.ndim != 1 or p.shape[0] != n or not np.issubdtype(p.dtype, np.integer):
        raise ValueError(
            f"Expected ordering {name!r} to be an integer array of length {n} "
            f"(got shape {p.shape}, dtype {p.dtype})."
        )
    p = p.astype(np.int64)
    if not np.array_equal(np.sort(p), np.arange(n)):
        raise ValueError(f"Ordering {name!r} is not a permutation of 0..{n - 1}.")
    return p


def _check_matrix(a: Any, name: str = "a") -> None:
    """Cheap checks for the ordering functions (which expect a validated matrix, e.g. from
    :func:`~unrollsci.precond._sparse.check_spd_input`): scipy sparse, square, non-empty,
    finite, positive diagonal."""
    import scipy.sparse as sp

    if not sp.issparse(a):
        raise TypeError(f"Expected '{name}' to be a scipy sparse matrix (got {type(a).__name__}).")
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] == 0:
        raise ValueError(
            f"Expected '{name}' to be a non-empty square matrix (got shape {tuple(a.shape)})."
        )
    data = np.asarray(sp.csr_matrix(a).data)
    if not np.all(np.isfinite(data)):
        raise ValueError(
            f"Expected '{name}' to be finite (got {int(np.isnan(data).sum())} NaN and "
            f"{int(np.isinf(data).sum())} Inf entries)."
        )
    diag = a.diagonal()
    if np.any(diag <= 0):
        raise ValueError(
            f"Expected '{name}' to have a strictly positive diagonal, as every SPD matrix has "
            f"(got {int((diag <= 0).sum())} entries <= 0)."
        )


def _canonical_csr(a: Any) -> Any:
    """``a`` as canonical scipy CSR (sorted, unique column indices): ``a`` itself when it is
    one, otherwise a copy (the caller's matrix is never modified)."""
    import scipy.sparse as sp

    if a.format == "csr" and a.has_canonical_format:
        return a
    out = sp.csr_matrix(a, copy=True)
    out.sum_duplicates()
    return out


def candidate_orderings(a: Any, orderings: OrderingsArg) -> dict[str, np.ndarray]:
    """The candidate orderings of a validated scipy sparse matrix ``a`` (any format; a
    callable gets it as canonical CSR).

    ``orderings``:

    * ``"grid"``: :func:`grid_orderings` of a square grid (``n`` must be a square, the
      unknowns numbered lexicographically, as in :func:`diffusion2d` / :func:`anisotropic2d`);
    * ``"rcm"``: the given ordering and reverse Cuthill-McKee (any sparsity pattern);
    * a mapping ``{name: perm}`` or a sequence of permutations;
    * a callable ``A -> {name: perm}`` (e.g. ``lambda A: grid_orderings(nx, ny)``).
    """
    _check_matrix(a)
    a = _canonical_csr(a)
    n = a.shape[0]
    if callable(orderings) and not isinstance(orderings, str):
        orderings = orderings(a)
    if isinstance(orderings, str):
        if orderings == "grid":
            m = math.isqrt(n)
            if m * m != n:
                raise ValueError(
                    f"orderings='grid' needs a square grid, n = m^2 (got n={n}); pass "
                    "orderings=lambda A: grid_orderings(nx, ny) for a rectangular one."
                )
            return grid_orderings(m)
        if orderings == "rcm":
            from scipy.sparse.csgraph import reverse_cuthill_mckee

            rcm = reverse_cuthill_mckee(a, symmetric_mode=True).astype(np.int64)
            return {"natural": np.arange(n, dtype=np.int64), "rcm": rcm}
        raise ValueError(
            f"Expected orderings 'grid', 'rcm', a mapping, a sequence or a callable "
            f"(got {orderings!r})."
        )
    if isinstance(orderings, Mapping):
        items = list(orderings.items())
    elif isinstance(orderings, Sequence):
        items = [(str(k), p) for k, p in enumerate(orderings)]
    else:
        raise TypeError(
            f"Expected orderings as a string, mapping, sequence or callable "
            f"(got {type(orderings).__name__})."
        )
    if not items:
        raise ValueError("Expected at least one candidate ordering (got none).")
    return {str(k): _check_perm(p, n, str(k)) for k, p in items}


def _segments(indptr: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CSR entry positions of the given rows (in the order given), and the row of each."""
    starts, lengths = indptr[rows], indptr[rows + 1] - indptr[rows]
    total = int(lengths.sum())
    offs = np.repeat(starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    return offs + np.arange(total), np.repeat(rows, lengths)


def _cap_neighbours(counts: np.ndarray, budget: int) -> int:
    """The largest neighbour count ``m`` such that rows capped at ``m`` neighbours have at
    most ``budget`` pairs in all (``counts.max()`` when no row needs a cap)."""

    def pairs(m: int) -> int:
        c = np.minimum(counts, m)
        return int((c * (c - 1) // 2).sum())

    hi = int(counts.max()) if counts.size else 0
    if pairs(hi) <= budget:
        return hi
    lo = 2  # a row's pairs need two neighbours; below that nothing is enumerated
    while lo < hi - 1:  # invariant: pairs(lo) <= budget < pairs(hi), or lo == 2
        mid = (lo + hi) // 2
        if pairs(mid) <= budget:
            lo = mid
        else:
            hi = mid
    return lo


class _FillData:
    """What :func:`dropped_fill` shares between the candidates of one matrix: every pair of
    off-diagonal neighbours of the sampled rows (built per row with offsets, so the cost
    is the sum of the rows' squared degrees, with dense rows capped), its scaled
    first-order fill and whether it is an entry of ``A``."""

    def __init__(self, a: Any, sample: int | None, seed: int) -> None:
        import scipy.sparse as sp

        if not sp.issparse(a) or a.format != "csr" or not a.has_canonical_format:
            a = sp.csr_matrix(a, copy=True)
            a.sum_duplicates()  # sorted, unique column indices: the lookup below needs them
        sample = check_count("sample", sample, optional=True)
        n = a.shape[0]
        self.a, self.n = a, n
        rng = np.random.default_rng(seed)
        if sample is not None and sample < n:
            rows = np.sort(rng.choice(n, size=int(sample), replace=False))
        else:
            rows = np.arange(n)
        self.count = rows.size
        pos, r = _segments(a.indptr, rows)
        c = a.indices[pos].astype(np.int64)
        off = r != c
        pos, r, c = pos[off], r[off], c[off]
        ri = np.repeat(np.arange(rows.size), np.diff(a.indptr)[rows])[off]  # sampled-row index
        counts = np.bincount(ri, minlength=rows.size)
        weight = np.ones(rows.size)
        m = max(_cap_neighbours(counts, FILL_PAIR_BUDGET), FILL_EXACT_NEIGHBOURS)
        if counts.size and m < counts.max():
            # rows over the cap keep a seeded random subset of m neighbours (rank of a
            # random key within the row < m); their pairs' fill is scaled by the inverse of
            # the probability that a pair survives, d(d-1) / (m(m-1))
            key = rng.random(ri.size)
            o = np.lexsort((key, ri))
            rank = np.empty(ri.size, dtype=np.int64)
            rank[o] = np.arange(ri.size) - np.repeat(np.cumsum(counts) - counts, counts)
            keep = rank < m
            big = counts > m
            weight[big] = counts[big] * (counts[big] - 1) / (m * (m - 1))
            pos, r, c, ri = pos[keep], r[keep], c[keep], ri[keep]
            counts = np.minimum(counts, m)
        d = np.sqrt(a.diagonal())
        self.row, self.col = r, c
        val = a.data[pos] / (d[r] * d[c])
        # every pair (x, y), x < y, of neighbours of one row, in row-major triangular order:
        # entry x pairs with the following (count - 1 - slot) entries of its row
        slot = np.arange(ri.size) - np.repeat(np.cumsum(counts) - counts, counts)
        reps = counts[ri] - 1 - slot
        x = np.repeat(np.arange(ri.size), reps)
        y = x + 1 + np.arange(x.size) - np.repeat(np.cumsum(reps) - reps, reps)
        self.x, self.y = x, y
        j, k = c[x], c[y]
        f = val[x] * val[y] * weight[ri[x]]
        # a pair that is an entry of A is not dropped, in any ordering
        used = np.zeros(n, dtype=bool)
        used[j] = True
        pos, rj = _segments(a.indptr, np.flatnonzero(used))
        keys = rj * n + a.indices[pos]
        want = j * n + k
        hit = np.searchsorted(keys, want).clip(max=max(keys.size - 1, 0))
        in_a = keys[hit] == want if keys.size else np.zeros(want.shape, dtype=bool)
        self.fill = np.where(in_a, 0.0, f)

    def __call__(self, perm: np.ndarray | None) -> tuple[float, float]:
        n = self.n
        if perm is None:
            q = np.arange(n)
        else:
            q = np.empty(n, dtype=np.int64)
            q[perm] = np.arange(n)
        # a pair's fill appears when both neighbours come before the row
        early = q[self.col] < q[self.row]
        dropped = self.fill[early[self.x] & early[self.y]]
        return (
            float(np.clip(dropped, 0, None).sum() / self.count),
            float(np.abs(dropped).sum() / self.count),
        )


def dropped_fill(
    a: Any, perm: np.ndarray | None = None, *, sample: int | None = SAMPLE_ROWS, seed: int = 0
) -> tuple[float, float]:
    """First-order estimate of the fill IC(0) drops when ``a`` is factored in ``perm``'s
    order, per row of the Jacobi-scaled matrix ``S = D^{-1/2} A D^{-1/2}``.

    Eliminating row ``i`` creates fill ``s_ij s_ik`` at every pair ``(j, k)`` of its
    earlier neighbours; the pairs that are not entries of ``A`` are dropped. Returns the
    sums of the positive dropped values and of their absolute values (each unordered
    pair once), divided by the number of rows visited. Computed in ``A``'s own
    numbering (no permuted copy).

    The cost is the number of neighbour pairs of the visited rows. When they have more
    than ``FILL_PAIR_BUDGET`` pairs in all, each row with more than ``m`` off-diagonal
    entries counts only the pairs among a seeded random subset of ``m`` of its ``d``
    neighbours, their fill scaled by ``d(d-1) / (m(m-1))``: ``m`` is the largest count
    whose capped rows fit the budget, but at least ``FILL_EXACT_NEIGHBOURS`` (64), so
    there are at most ``max(FILL_PAIR_BUDGET, 64 * 63 / 2 * rows visited)`` pairs. The
    capped rows' part is then an unbiased estimate, with the same subset for every
    ``perm``; rows with at most ``m`` neighbours, and every row of a matrix within the
    budget, count exactly.

    Args:
        a: canonical scipy CSR matrix with a positive diagonal.
        perm: ``perm[k]`` is the unknown placed ``k``-th (None: the given order).
        sample: visit at most this many rows (a seeded random subset, the same for every
            ``perm``); None visits all. The per-row mean is what the selection compares.
        seed: seed of the row subset (and of the neighbour subsets of capped rows).

    Returns:
        ``(positive, total_abs)``.
    """
    _check_matrix(a)
    if perm is not None:
        perm = _check_perm(perm, a.shape[0], "perm")
    return _FillData(a, sample, seed)(perm)


def select_ordering(
    a: Any, candidates: Mapping[str, np.ndarray], *, sample: int | None = SAMPLE_ROWS, seed: int = 0
) -> tuple[str, dict[str, tuple[float, float]]]:
    """The candidate whose IC(0) drops the least positive fill (:func:`dropped_fill`);
    among candidates within 5e-4 of that least value, the one that drops the least fill
    in absolute value (totals within a relative ``1e-12`` of the least count as equal:
    then the first of them in ``candidates``' order).

    Args:
        a: scipy sparse matrix with a positive diagonal.
        candidates: ``{name: perm}``, e.g. from :func:`candidate_orderings` (which turns
            ``"grid"``, ``"rcm"`` and the other forms into one).

    Returns:
        the chosen name and every candidate's ``(positive, total_abs)``.
    """
    if not isinstance(candidates, Mapping):
        raise TypeError(
            "Expected 'candidates' to be a mapping {name: perm} (got "
            f"{type(candidates).__name__}); candidate_orderings(a, {candidates!r:.40}) "
            "turns a name such as 'grid' or 'rcm' into one."
        )
    if not candidates:
        raise ValueError("Expected at least one candidate ordering (got none).")
    _check_matrix(a)
    candidates = {k: _check_perm(p, a.shape[0], str(k)) for k, p in candidates.items()}
    data = _FillData(a, sample, seed)
    scores = {k: data(p) for k, p in candidates.items()}
    best_pos = min(s[0] for s in scores.values())
    close = [k for k, s in scores.items() if s[0] <= best_pos + 5e-4]
    best_tot = min(scores[k][1] for k in close)
    # totals equal up to rounding (e.g. symmetric orderings of a symmetric problem, the
    # same fill summed in another order) tie, and the first candidate listed wins
    return next(k for k in close if scores[k][1] <= best_tot * (1 + 1e-12)), scores


class PermutedPreconditioner(Preconditioner):
    """``M = P^T M_inner P``: a preconditioner built for ``P A P^T``, applied to vectors in
    ``A``'s ordering (``(P r)_k = r_{perm[k]}``). SPD whenever ``M_inner`` is.

    Attributes:
        inner: the preconditioner of the permuted matrix.
        perm: ``(n,)`` long tensor, ``perm[k]`` the unknown placed ``k``-th.
        ordering: the name of the ordering (when chosen by :func:`select_ordering`).
    """

    def __init__(
        self,
        inner: LinearOperator,
        perm: Any,
        ordering: str | None = None,
        *,
        inverse: torch.Tensor | None = None,
    ) -> None:
        """``inverse``: ``argsort(perm)`` when the caller already has it (then ``perm`` is
        trusted to be a permutation); otherwise it is computed and ``perm`` checked."""
        super().__init__()
        n = int(inner.in_shape[0])
        p = torch.as_tensor(np.asarray(perm) if not torch.is_tensor(perm) else perm)
        p = p.to(torch.long, copy=True)  # never the caller's tensor: iperm is computed once
        if p.shape != (n,):
            raise ValueError(f"Expected a permutation of length {n} (got shape {tuple(p.shape)}).")
        ip = None if inverse is None else inverse.to(torch.long, copy=True)
        if ip is None:
            ip = torch.argsort(p)
            if not torch.equal(p[ip], torch.arange(n, device=p.device)):
                raise ValueError(
                    f"Expected a permutation of 0..{n - 1} (got one that is not a permutation)."
                )
        self.inner = inner
        self.register_buffer("perm", p)
        self.register_buffer("iperm", ip)
        self.ordering = ordering
        self.in_shape = self.out_shape = (n,)
        self.cacheable_norm = False

    @property
    def nnz(self) -> int:
        return int(self.inner.nnz)

    def _mv(self, r: torch.Tensor) -> torch.Tensor:
        z = self.inner(r.index_select(-1, self.perm.to(r.device)))
        return z.index_select(-1, self.iperm.to(r.device))

    _rmv = _mv

    def extra_repr(self) -> str:
        return f"n={self.in_shape[0]}, ordering={self.ordering!r}"


def permute_matrix(a: Any, perm: np.ndarray) -> Any:
    """``P A P^T`` of a canonical scipy CSR matrix (``(P A P^T)_{kl} = A_{perm[k] perm[l]}``)
    as canonical CSR, gathered directly (no fancy-indexing copies)."""
    import scipy.sparse as sp

    n = a.shape[0]
    q = np.empty(n, dtype=np.int64)
    q[perm] = np.arange(n)
    pos, _ = _segments(a.indptr, np.asarray(perm, dtype=np.int64))
    lengths = np.diff(a.indptr)[perm]
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    out = sp.csr_matrix((a.data[pos], q[a.indices[pos]], indptr), shape=a.shape)
    out.sort_indices()
    return out


def reorder(a: Any, ordering: Any) -> tuple[Any, np.ndarray | None, str | None]:
    """``(P A P^T, perm, name)`` for the candidate ordering :func:`select_ordering` picks
    from ``candidate_orderings(a, ordering)``; ``(a, None, name)`` when that is the given
    order and ``(a, None, None)`` without an ordering. Any scipy sparse format is taken
    (turned into canonical CSR, a copy where it is not one already)."""
    if ordering is None:
        return a, None, None
    _check_matrix(a)
    a = _canonical_csr(a)
    cands = candidate_orderings(a, ordering)
    name, _ = select_ordering(a, cands)
    perm = cands[name]
    if np.array_equal(perm, np.arange(a.shape[0])):
        return a, None, name
    return permute_matrix(a, perm), perm, name
