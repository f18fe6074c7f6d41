"""What :class:`~unrollsci.chem.QEqCalculator` feeds a solve besides the settings: the
warm-start charges kept from earlier calls, and the positions moved near the origin before
they are cast to a narrower dtype than float64."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["dipole_moment", "origin_shift", "warm_start_charges"]


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


def origin_shift(
    positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, dtype: torch.dtype
) -> np.ndarray | None:
    """A translation ``t`` (float64, shape (3,)) to subtract from every position before a
    cast to ``dtype``, or None (float64: no cast, the positions are used as given).

    The results depend only on the positions relative to each other (and, periodic in
    all three directions, on them modulo the lattice), but a float32 cast of coordinates
    far from the origin (an unwrapped MD trajectory) rounds away the digits that pair
    vectors are formed from. ``t`` moves the centroid near the origin: a whole lattice
    vector ``n @ cell`` (integer ``n``) when the cell is periodic in all three directions, so
    that a particle mesh sees the same structure; else the centroid itself. Every atom
    moves by the same ``t``: the pair list, its image shifts and its caches stay valid."""
    if dtype == torch.float64 or positions.shape[0] == 0:
        return None
    centroid = positions.mean(axis=0)
    if not bool(np.all(pbc)):
        return centroid
    try:
        frac = np.linalg.solve(cell.T, centroid)
    except np.linalg.LinAlgError:  # a degenerate cell: the solve refuses it later
        return None
    if not np.isfinite(frac).all():
        return None
    return np.rint(frac) @ cell


def dipole_moment(
    charges: np.ndarray, positions: np.ndarray, shift: np.ndarray | None, total_charge: float
) -> np.ndarray:
    """``sum_i q_i r_i`` (float64) about the origin of the given ``positions``: with a
    :func:`origin_shift` ``t``, as ``sum_i q_i (r_i - t) + Q t`` (``Q`` the total charge the
    solve enforces), so that the rounding of ``sum(q)`` is not multiplied by ``|t|``."""
    if shift is None:
        return charges @ positions
    return charges @ (positions - shift) + float(total_charge) * shift
