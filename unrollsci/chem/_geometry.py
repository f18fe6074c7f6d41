"""Neighbour pairs, interaction kernels and the Ewald reciprocal-space basis."""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Any

import numpy as np
import torch

from .._validation import UnrollsciWarning

__all__ = [
    "KERNELS",
    "check_cell_vectors",
    "check_ewald_accuracy",
    "csr_pattern",
    "half_pairs",
    "taper",
    "pair_kernel",
    "ewald_alpha",
    "ewald_kvectors",
]

KERNELS = ("shielded", "point", "gaussian")

#: the largest extent (cell width, or span of a molecule) in cutoffs the cell-list search
#: is given; vesin 0.6 crashes (SIGFPE) between 7e4 and 1e5 cutoffs along one axis
_MAX_SPAN = 1e4

_VESIN: dict[str, Any] = {}  # the imported vesin module (or None), after the first call


def _vesin() -> Any:
    """The vesin module, or None (with one UnrollsciWarning per process) when it cannot be
    imported; vesin is a dependency, so this is a broken or partial install."""
    if "module" not in _VESIN:
        try:
            import vesin
        except ImportError as exc:
            vesin = None
            warnings.warn(
                f"vesin could not be imported ({exc}); QEq falls back to ASE's neighbour "
                "list, which is much slower for large systems. vesin is a dependency of "
                "unrollsci: reinstall it with `pip install vesin`.",
                UnrollsciWarning,
                stacklevel=4,
            )
        _VESIN["module"] = vesin
    return _VESIN["module"]


def _vesin_threads(vesin: Any) -> dict[str, int]:
    """``n_threads``: torch's thread count, where vesin takes it (0.6 on). Left alone,
    vesin's search starts an OpenMP thread per core whatever ``torch.set_num_threads``
    says (a one-thread run used two cores)."""
    if "threads" not in _VESIN:
        import inspect

        params = inspect.signature(vesin.NeighborList.__init__).parameters
        _VESIN["threads"] = "n_threads" in params
    return {"n_threads": torch.get_num_threads()} if _VESIN["threads"] else {}


def _stable_order(keys: np.ndarray, n: int) -> np.ndarray:
    """The permutation that sorts integer ``keys`` in ``[0, n)`` stably: a linear-time
    counting sort (scipy's CSR-to-CSC conversion of one entry per row)."""
    import scipy.sparse as sp

    p = keys.size
    idx = np.int32 if max(p, n) < 2**31 - 1 else np.int64
    rows = sp.csr_matrix(
        (np.arange(p, dtype=np.int64), keys.astype(idx), np.arange(p + 1, dtype=idx)),
        shape=(p, n),
    )
    return rows.tocsc().data


def _as_int64(x: np.ndarray) -> np.ndarray:
    """``x`` as int64: a view of 8-byte integers (vesin's uint64 indices, all < 2^63),
    a converted copy of any other integer width."""
    x = np.ascontiguousarray(x)
    if x.dtype.kind in "iu" and x.dtype.itemsize == 8:
        return x.view(np.int64)
    return x.astype(np.int64)


#: the smallest periodic cell vector (Angstrom) and the smallest sine of the angle between
#: two periodic vectors of a partially periodic cell; a fully periodic cell needs |det| at
#: least ``_MIN_VOLUME`` (Angstrom^3)
_MIN_VECTOR, _MIN_SINE, _MIN_VOLUME = 1e-6, 1e-6, 1e-6

#: pairs closer than this (Angstrom) are rejected as overlapping atoms; so is a lattice
#: with a shorter vector (every atom would overlap its own image)
MIN_DISTANCE = 0.1


def _shortest_lattice_vector(cell: np.ndarray, pbc: np.ndarray) -> np.ndarray | None:
    """The shortest non-zero vector of the lattice of the periodic rows of ``cell`` (2 or 3
    independent ones): the shortest of the combinations with coefficients -1, 0, 1 of its
    Minkowski-reduced basis (ASE's); None if the reduction fails."""
    import itertools

    from ase.geometry.minkowski_reduction import minkowski_reduce

    try:
        basis = np.asarray(minkowski_reduce(cell, pbc)[0])[pbc]
    except RuntimeError:  # not met in practice (ASE); the overlap check stays
        return None
    coef = np.array(list(itertools.product((-1, 0, 1), repeat=len(basis))))
    vectors = coef[np.any(coef != 0, axis=1)] @ basis
    return vectors[int(np.argmin(np.linalg.norm(vectors, axis=1)))]


def _check_lattice_spacing(cell: np.ndarray, pbc: np.ndarray, widths: np.ndarray) -> None:
    """Refuse a lattice of the periodic rows of ``cell`` with a vector shorter than
    :data:`MIN_DISTANCE`: the pair search would list ``~ cutoff^d / volume`` images per
    atom (without end for a nearly singular cell) before the overlap check could raise.
    ``widths``: the spacings of the lattice planes (lines) along each periodic vector;
    the smallest is a lower bound of every non-zero lattice vector's length, so the
    lattice is reduced only when it is below the minimum."""
    if float(widths.min()) >= MIN_DISTANCE:
        return
    v = cell[pbc][0] if int(pbc.sum()) == 1 else _shortest_lattice_vector(cell, pbc)
    length = None if v is None else float(np.linalg.norm(v))
    if length is not None and length < MIN_DISTANCE:
        raise ValueError(
            f"Expected periodic cell vectors whose lattice has no vector shorter than "
            f"{MIN_DISTANCE} Angstrom, the minimum interatomic distance (got the lattice "
            f"vector {np.round(v, 12).tolist()} of length {length:.3g} Angstrom, with "
            f"pbc={pbc.tolist()}: every atom would overlap its own periodic image)."
        )


def check_cell_vectors(cell: np.ndarray, pbc: np.ndarray) -> None:
    """Refuse periodic cell vectors that span no lattice, or a lattice that holds a vector
    shorter than :data:`MIN_DISTANCE`: the check every path makes before its pair search.

    Only the periodic rows of ``cell`` enter the pair vectors (the shifts along a
    non-periodic direction are 0), so a partially periodic cell may have any (also zero)
    non-periodic vectors, as in ASE; its periodic vectors must be non-zero and linearly
    independent (the rank of ``cell[pbc]``, to a relative tolerance: the sine of the angle
    between two of them at least ``_MIN_SINE``). A fully periodic cell needs a non-zero
    volume, ``|det(cell)| >= _MIN_VOLUME``. A nearly singular cell (``[[5, 0, 0], [0, 5,
    0], [5, 0, 1e-4]]`` holds ``(0, 0, 1e-4)``) passes these but not the last check.
    """
    pbc = np.asarray(pbc, dtype=bool)
    if not pbc.any():
        return
    cell = np.asarray(cell, dtype=np.float64)
    if pbc.all():
        det = float(np.linalg.det(cell))
        if not abs(det) >= _MIN_VOLUME:
            raise ValueError(
                f"Expected a periodic cell with non-zero volume (got det(cell) = {det:.3e})."
            )
        faces = np.linalg.norm(np.cross(cell[[1, 2, 0]], cell[[2, 0, 1]]), axis=1)
        _check_lattice_spacing(cell, pbc, abs(det) / faces)
        return
    axes = np.flatnonzero(pbc)
    norms = np.linalg.norm(cell[axes], axis=1)
    for d, length in zip(axes.tolist(), norms.tolist(), strict=True):
        if not length >= _MIN_VECTOR:
            raise ValueError(
                f"Expected a non-zero cell vector cell[{d}] along the periodic direction {d} "
                f"(got {cell[d].tolist()}, length {length:.3e}, with pbc={pbc.tolist()})."
            )
    if axes.size == 2:
        sine = float(np.linalg.norm(np.cross(cell[axes[0]], cell[axes[1]]))) / norms.prod()
        if not sine >= _MIN_SINE:
            raise ValueError(
                f"Expected linearly independent periodic cell vectors (got cell[{axes[0]}] = "
                f"{cell[axes[0]].tolist()} and cell[{axes[1]}] = {cell[axes[1]].tolist()} "
                f"parallel: sine of their angle {sine:.3e}, with pbc={pbc.tolist()})."
            )
        area = sine * norms.prod()
        _check_lattice_spacing(cell, pbc, area / norms[::-1])
    else:
        _check_lattice_spacing(cell, pbc, norms)


def half_pairs(
    positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Half neighbour list: each unordered pair (and each +-image of an atom with itself) once.

    Returns ``i, j`` (P,) int64, grouped by ``i`` (nondecreasing), and integer cell shifts
    ``S`` (P, 3): the pair vector is ``R[j] - R[i] + S @ cell``. Uses vesin (O(N), cell
    lists; a dependency), else (vesin not importable, warned once; or a cell periodic in
    some directions only) ASE's ``primitive_neighbor_list``; ``cutoff=None`` (non-periodic
    only) gives all pairs.
    """
    n = len(positions)
    if cutoff is None:
        i, j = np.triu_indices(n, k=1)
        return i.astype(np.int64), j.astype(np.int64), np.zeros((len(i), 3), dtype=np.int64)
    if not (math.isfinite(cutoff) and cutoff > 0):
        raise ValueError(f"Expected a finite cutoff > 0 or None (got {cutoff!r}).")
    if not np.all(np.isfinite(positions)):
        raise ValueError("Expected finite positions (got NaN or Inf).")
    if np.any(pbc) and not np.all(np.isfinite(cell)):
        raise ValueError("Expected a finite 'cell' (got NaN or Inf).")
    check_cell_vectors(cell, pbc)
    if np.all(pbc):
        vol = abs(float(np.linalg.det(cell)))
        widths = vol / np.linalg.norm(np.cross(cell[[1, 2, 0]], cell[[2, 0, 1]]), axis=1)
        if float(widths.max()) > _MAX_SPAN * cutoff:
            raise ValueError(
                f"The cell is {float(widths.max()):.3g} Angstrom wide, more than {_MAX_SPAN:g} "
                f"cutoffs ({cutoff}): the cell-list pair search cannot grid it. Use a "
                "smaller cell or a larger cutoff."
            )
    elif n and not np.any(pbc) and float(np.ptp(positions, axis=0).max()) > _MAX_SPAN * cutoff:
        # a molecule with atoms far apart (a stray atom): a cell-list grid that large
        # crashes vesin's search (SIGFPE); a k-d tree finds the same pairs at any extent.
        # Not for a partly periodic cell (no images here): ASE's search below takes those
        from scipy.spatial import cKDTree

        pairs = cKDTree(positions).query_pairs(float(cutoff), output_type="ndarray")
        pairs = pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))].astype(np.int64)
        return pairs[:, 0].copy(), pairs[:, 1].copy(), np.zeros((len(pairs), 3), np.int64)
    box = cell if np.any(pbc) else np.zeros((3, 3))
    vesin = _vesin() if (np.all(pbc) or not np.any(pbc)) else None
    if vesin is not None:
        # unsorted: vesin's sort by (i, j) costs as much as the search; grouping by i (a
        # stable counting sort, skipped when already grouped) is all the CSR products need
        nl = vesin.NeighborList(
            cutoff=float(cutoff), full_list=False, sorted=False, **_vesin_threads(vesin)
        )
        i, j, s = nl.compute(positions, box, bool(np.all(pbc)), "ijS")
        i, j = (_as_int64(x) for x in (i, j))
        if i.size and not bool(np.all(i[1:] >= i[:-1])):
            order = _stable_order(i, n)
            i, j, s = i[order], j[order], s[order]
        return i, j, s
    from ase.neighborlist import primitive_neighbor_list

    if not abs(np.linalg.det(cell)) > _MIN_SINE * np.linalg.norm(cell, axis=1).prod():
        # a zero or degenerate non-periodic vector: it enters no pair vector (its shift is
        # 0), and ASE completes zero rows with orthogonal ones (a degenerate row that is
        # not zero made its search fail: singular matrix)
        cell = np.where(pbc[:, None], cell, 0.0)
    i, j, s = primitive_neighbor_list(
        "ijS", pbc, cell, positions, float(cutoff), self_interaction=False
    )
    # keep one of (i, j, S) / (j, i, -S): i < j, or i == j with the first nonzero shift > 0
    first = np.where(s[:, 0] != 0, s[:, 0], np.where(s[:, 1] != 0, s[:, 1], s[:, 2]))
    keep = (i < j) | ((i == j) & (first > 0))
    order = np.lexsort((j[keep], i[keep]))
    return (
        i[keep][order].astype(np.int64),
        j[keep][order].astype(np.int64),
        s[keep][order].astype(np.int64),
    )


def csr_pattern(i: torch.Tensor, j: torch.Tensor, n: int) -> tuple[torch.Tensor, ...]:
    """Index arrays of ``A_pairs = U + U^T`` as two CSR matrices for the half list ``(i, j)``
    grouped by ``i`` (nondecreasing): ``(crow_u, col_u, crow_l, col_l, order)``; the values
    of ``U`` are ``w``, those of ``U^T`` are ``w[order]`` (``order`` sorts the pairs by ``j``,
    stably). On CPU ``order`` comes from scipy's CSR-to-CSC conversion, a linear-time
    counting sort (several times faster than a comparison sort of the pairs)."""
    idx = torch.int32 if n < 2**31 - 1 and i.numel() < 2**31 - 1 else torch.int64
    crow_u = torch.zeros(n + 1, dtype=torch.int64, device=i.device)
    crow_u[1:] = torch.cumsum(torch.bincount(i, minlength=n), 0)
    if i.device.type == "cpu":
        import scipy.sparse as sp

        npi = np.int32 if idx == torch.int32 else np.int64
        perm = np.arange(i.numel(), dtype=np.int64)
        upper = sp.csr_matrix(
            (perm, j.numpy().astype(npi), crow_u.numpy().astype(npi)), shape=(n, n)
        )
        lower = upper.tocsc()  # does not merge repeated (i, j): order is a permutation
        order = torch.from_numpy(lower.data.astype(np.int64, copy=False))
        crow_l = torch.from_numpy(lower.indptr.astype(np.int64, copy=False))
        col_l = torch.from_numpy(lower.indices).to(idx)
    else:
        order = torch.argsort(j, stable=True)
        crow_l = torch.zeros(n + 1, dtype=torch.int64, device=i.device)
        crow_l[1:] = torch.cumsum(torch.bincount(j, minlength=n), 0)
        col_l = i[order].to(idx)
    return crow_u.to(idx), j.to(idx), crow_l.to(idx), col_l, order


def taper(r: torch.Tensor, cutoff: float) -> torch.Tensor:
    """7th-order taper of LAMMPS fix qeq (inner radius 0): 1 at r = 0, 0 with 3 zero
    derivatives at r = cutoff. Tap(x) = 20x^7 - 70x^6 + 84x^5 - 35x^4 + 1, x = r / cutoff."""
    x = r / cutoff
    x4 = x**4
    return 1.0 + x4 * (-35.0 + x * (84.0 + x * (-70.0 + 20.0 * x)))


def _bare(kind: str, r: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Untapered kernel J(r) in 1/Angstrom; ``a, b`` are the per-pair gamma or sigma."""
    if kind == "point":
        return 1.0 / r
    if kind == "shielded":
        return (r**3 + (a * b) ** -1.5) ** (-1.0 / 3.0)
    return torch.erf(r / torch.sqrt(a * a + b * b)) / r


def pair_kernel(
    kind: str,
    r: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    cutoff: float | None,
    alpha: float | None = None,
) -> torch.Tensor:
    """Interaction J(r) per pair (1/Angstrom, multiply by k_e for eV).

    * no Ewald: ``J(r) * Tap(r)`` (or ``J(r)`` when ``cutoff`` is None);
    * Ewald (``alpha`` given): real-space part ``erfc(alpha r)/r`` plus the short-range
      correction ``(J(r) - 1/r) * Tap(r)``; the reciprocal part is added elsewhere.
    """
    if alpha is None:
        j = _bare(kind, r, a, b)
        return j if cutoff is None else j * taper(r, cutoff)
    real = torch.erfc(alpha * r) / r
    if kind == "point":
        return real
    return real + (_bare(kind, r, a, b) - 1.0 / r) * taper(r, cutoff)


def shielded_w_dw(
    r: torch.Tensor, c: torch.Tensor, cutoff: float, k_e: float, need_dw: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``w = k_e Tap(r) / (r^3 + c)^(1/3)`` (0 at ``r >= cutoff``) and ``dw/dr`` per pair
    (None unless ``need_dw``), no graph, in place where possible (fewer temporaries)."""
    inside = r < cutoff
    scale = inside.to(r.dtype).mul_(k_e)
    x = r * (1.0 / cutoff)
    tap = x * 20.0
    tap.sub_(70.0).mul_(x).add_(84.0).mul_(x).sub_(35.0)
    x3 = x * x
    x3.mul_(x)
    tap.mul_(x3).mul_(x).add_(1.0)  # Tap = 1 + x^4 (-35 + x (84 + x (-70 + 20 x)))
    jr = r * r
    jr.mul_(r).add_(c).log_().mul_(-1.0 / 3.0).exp_()  # J = (r^3 + c)^(-1/3) (pow: slower)
    if not need_dw:
        return jr.mul_(tap).mul_(scale), None
    xm = x.sub_(1.0)
    dtap = xm * xm  # dTap/dr = 140 x^3 (x - 1)^3 / cutoff
    dtap.mul_(xm).mul_(x3).mul_(140.0 / cutoff)
    j4 = jr * jr
    j4.mul_(j4)
    dw = r * r  # dJ/dr = -r^2 J^4
    dw.mul_(j4).mul_(tap).neg_().addcmul_(jr, dtap)
    w = jr.mul_(tap)
    w.mul_(scale)
    dw.mul_(scale)
    return w, dw


class _ShieldedTapered(torch.autograd.Function):
    """``w = k_e Tap(r) / (r^3 + c)^(1/3)`` for ``r < cutoff`` (0 beyond), ``c = (g_i g_j)^-1.5``
    given per pair (not differentiated), with the analytic ``dw/dr``: the same values and
    derivative as ``k_e * pair_kernel("shielded", ...)`` masked at the cutoff, without the
    autograd graph of its pow and taper operations (the per-step cost in MD)."""

    @staticmethod
    def forward(ctx: Any, r: torch.Tensor, c: torch.Tensor, cutoff: float, k_e: float):
        w, dw = shielded_w_dw(r.detach(), c, cutoff, k_e)
        ctx.save_for_backward(r, c, dw)
        ctx.cutoff, ctx.k_e = cutoff, k_e
        return w

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor):
        r, c, dw = ctx.saved_tensors
        if torch.is_grad_enabled():
            # create_graph (Hessians, elastic constants, force losses in positions): dw/dr
            # as a function of r with its graph, so that d^2w/dr^2 is not dropped
            dw = _shielded_dw(r, c, ctx.cutoff, ctx.k_e)
        return g * dw, None, None, None


def _shielded_dw(r: torch.Tensor, c: torch.Tensor, cutoff: float, k_e: float) -> torch.Tensor:
    """``dw/dr`` of :func:`shielded_w_dw` with plain (differentiable) operations:
    ``k_e (Tap' J - Tap r^2 J^4)`` inside the cutoff, 0 beyond."""
    x = r / cutoff
    tap = taper(r, cutoff)
    dtap = 140.0 * x**3 * (x - 1.0) ** 3 / cutoff
    jr = (r**3 + c) ** (-1.0 / 3.0)
    dw = k_e * (dtap * jr - tap * r * r * jr**4)
    return torch.where(r < cutoff, dw, torch.zeros((), dtype=dw.dtype, device=dw.device))


def shielded_pair_constant(
    gamma: torch.Tensor, i: torch.Tensor, j: torch.Tensor, cache: dict | None = None
) -> torch.Tensor:
    """Per-pair ``c = (gamma_i gamma_j)^-1.5`` of the shielded kernel for the half list
    ``(i, j)``, kept in ``cache`` (a dict that lives as long as the pair list; one key per
    dtype) and made again when absent or of another length. ``gamma`` must need no gradient
    (a fixed parameter table)."""
    key = f"shielded-c-{gamma.dtype}"
    c = None if cache is None else cache.get(key)
    if c is None or c.shape != i.shape:
        c = (gamma.index_select(0, i) * gamma.index_select(0, j)) ** -1.5
        if cache is not None:
            cache[key] = c
    return c


def shielded_tapered(r: torch.Tensor, c: torch.Tensor, cutoff: float, k_e: float) -> torch.Tensor:
    """``k_e`` times the tapered shielded kernel, zero at ``r >= cutoff``, for per-pair
    ``c = (gamma_i gamma_j)^-1.5`` that need no gradient (see :class:`_ShieldedTapered`)."""
    if not (r.requires_grad and torch.is_grad_enabled()):  # no graph: no derivative
        return shielded_w_dw(r, c, float(cutoff), float(k_e), need_dw=False)[0]
    return _ShieldedTapered.apply(r, c, float(cutoff), float(k_e))


def check_ewald_accuracy(value: Any) -> float:
    """``ewald_accuracy`` as a float in (0, 1): a real number (Python or numpy scalar, or
    a tensor of one element); another type raises ``TypeError``, a value outside (0, 1)
    (NaN too) ``ValueError``."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    elif isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        got = repr(value)
        got = got if len(got) <= 60 else got[:57] + "..."
        raise TypeError(
            f"Expected 'ewald_accuracy' to be a real number in (0, 1) "
            f"(got {type(value).__name__} {got})."
        )
    if not 0.0 < float(value) < 1.0:
        raise ValueError(f"Expected 0 < ewald_accuracy < 1 (got {value!r}).")
    return float(value)


def ewald_alpha(cutoff: float, accuracy: float) -> tuple[float, float]:
    """Splitting parameter alpha (1/A) and reciprocal cutoff kmax (1/A) for a target
    relative accuracy: erfc(alpha rc) ~ accuracy and exp(-kmax^2 / 4 alpha^2) ~ accuracy."""
    s = math.sqrt(-math.log(accuracy))
    alpha = s / cutoff
    return alpha, 2.0 * alpha * s


#: the largest k-index grid :func:`ewald_kvectors` builds (int64 indices: 768 MiB)
MAX_KGRID = 2**25


def ewald_kvectors(cell: np.ndarray, kmax: float) -> np.ndarray:
    """Integer reciprocal-lattice indices m (K, 3) of a half space with 0 < |m @ B| <= kmax,
    where ``B = 2 pi inv(cell)^T``; each +-k pair appears once."""
    recip = 2.0 * np.pi * np.linalg.inv(cell).T
    # k . a_i = 2 pi m_i, so |m_i| <= kmax |a_i| / (2 pi)
    mmax = [int(np.ceil(kmax * a / (2.0 * np.pi))) for a in np.linalg.norm(cell, axis=1)]
    count = float(np.prod([2.0 * m + 1 for m in mmax]))
    if count > MAX_KGRID:
        raise ValueError(
            f"The Ewald k-space grid would have {count:.3g} points (the largest built is "
            f"{MAX_KGRID:.3g}): ewald_accuracy is too small or the cutoff too short for this "
            "cell; raise one of them, or use ewald_method='pme'."
        )
    grids = np.meshgrid(*[np.arange(-m, m + 1) for m in mmax], indexing="ij")
    m = np.stack([g.ravel() for g in grids], axis=1)
    first = np.where(m[:, 0] != 0, m[:, 0], np.where(m[:, 1] != 0, m[:, 1], m[:, 2]))
    m = m[first > 0]
    k = np.linalg.norm(m @ recip, axis=1)
    return m[k <= kmax].astype(np.float64)
