"""What :class:`~unrollsci.chem.QEqCalculator` feeds a solve besides the settings: the
warm-start charges kept from earlier calls, and the positions moved near the origin (each
atom into a fully periodic cell) before they are cast to a narrower dtype than float64."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["dipole_moment", "kept_pairs", "origin_shift", "warm_start_charges"]


def warm_start_charges(
    q_prev: torch.Tensor | None,
    history: list[torch.Tensor],
    n_atoms: int,
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor | None:
    """The start of the charge solve: None without last charges for ``n_atoms`` atoms; the
    quadratic extrapolation ``3 q_n - 3 q_{n-1} + q_{n-2}`` when the ``history`` (newest
    last) holds three charge vectors of the last call's shape, dtype and device; else the
    last charges ``q_prev``. Returned on ``device`` in ``dtype`` (these may have changed
    since the kept charges were computed)."""
    if q_prev is None or q_prev.shape[0] != n_atoms:
        return None
    like = (q_prev.shape, q_prev.dtype, q_prev.device)
    h = [x for x in history if (x.shape, x.dtype, x.device) == like]
    q0 = 3.0 * h[2] - 3.0 * h[1] + h[0] if len(h) == 3 else q_prev
    return q0.to(device=device, dtype=dtype)


#: keys of what :func:`origin_shift` and :func:`kept_pairs` keep in a kept list's ``cache``
_OFFSETS, _SHIFTS = "lattice-offsets", "wrapped-shifts"


def origin_shift(
    positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, dtype: torch.dtype, kept: Any = None
) -> np.ndarray | None:
    """What to subtract from the positions (float64) before a cast to ``dtype``: a
    translation ``t`` (3,), per-atom lattice vectors (N, 3), or None (float64: no cast, the
    positions are used as given).

    The results depend only on the positions relative to each other (and, periodic in
    all three directions, on each atom's position modulo the lattice), but a float32 cast
    of coordinates far from the origin (an unwrapped MD trajectory) rounds away the
    digits that pair vectors are formed from. In a fully periodic cell each atom ``i``
    moves by its own lattice vector ``n_i @ cell``, ``n_i = floor(frac_i)``: into the cell.
    ``kept``: the calculator's kept pair list (:class:`._verlet.VerletPairs`), whose pairs
    :func:`kept_pairs` then adapts; its ``n`` are taken at its build (from the positions
    then) and kept while it is, so the wrapped positions move as the atoms do (less than
    the skin) and its cached per-pair values stay valid. Not fully periodic: every atom
    moves by the centroid."""
    if dtype == torch.float64 or positions.shape[0] == 0:
        return None
    if not bool(np.all(pbc)):
        return positions.mean(axis=0)
    n = None if kept is None else kept.cache.get(_OFFSETS)
    if n is None:  # (a kept list was built for these atoms: its key holds the numbers)
        try:
            n = np.floor(np.linalg.solve(cell.T, positions.T).T)
        except np.linalg.LinAlgError:  # a degenerate cell: the solve refuses it later
            return None
        if not np.isfinite(n).all():
            return None
        if kept is not None:
            kept.cache[_OFFSETS] = n
    return n @ cell if n.any() else None


def kept_pairs(kept: Any, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """The kept list's pairs ``(i, j, shifts)`` for the positions moved by
    :func:`origin_shift`'s lattice vectors ``n_i @ cell``: the shifts ``S + n_j - n_i``
    (made once per list), so that every pair vector ``R_j - R_i + S @ cell`` is the same."""
    n = kept.cache.get(_OFFSETS)
    if n is None or not n.any():
        return kept.i, kept.j, kept.shifts
    shifts = kept.cache.get(_SHIFTS)
    if shifts is None:
        nt = torch.from_numpy(n.astype(np.int64)).to(kept.i.device)  # exact differences
        shifts = (nt.index_select(0, kept.j) - nt.index_select(0, kept.i)).to(dtype)
        if kept.shifts is not None:
            shifts += kept.shifts
        kept.cache[_SHIFTS] = shifts
    return kept.i, kept.j, shifts


def dipole_moment(
    charges: np.ndarray, positions: np.ndarray, shift: np.ndarray | None, total_charge: float
) -> np.ndarray:
    """``sum_i q_i r_i`` (float64) about the origin of the given ``positions``: with a
    :func:`origin_shift` ``t``, as ``sum_i q_i (r_i - t) + Q t`` (``Q`` the total charge the
    solve enforces), so that the rounding of ``sum(q)`` is not multiplied by ``|t|``."""
    if shift is None:
        return charges @ positions
    return charges @ (positions - shift) + float(total_charge) * shift
