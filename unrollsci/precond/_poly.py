"""Chebyshev polynomial preconditioner: only sparse mat-vecs, SPD by construction."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..operators import LinearOperator, SparseOperator
from ._sparse import check_spd_input

__all__ = ["ChebyshevPreconditioner", "chebyshev"]


class ChebyshevPreconditioner(LinearOperator):
    """``z = D p(S) D r`` with ``S = D A D``, ``D = diag(A)^{-1/2}`` and ``p`` the
    Chebyshev approximate inverse of degree ``degree`` on ``[lo, hi]``.

    ``z`` is ``degree`` steps of the Chebyshev iteration for ``S y = D r`` from ``y = 0``
    (one mat-vec with ``A`` each), so ``p(x) = (1 - T_{m+1}((θ - x)/δ) / T_{m+1}(θ/δ)) / x``
    (``m = degree``, ``θ ± δ = hi, lo``). ``|T_{m+1}| <= 1`` on ``[lo, hi]`` and
    ``0 < T_{m+1}((θ - x)/δ) < T_{m+1}(θ/δ)`` for ``0 < x < lo``, so ``p > 0`` on
    ``(0, hi]``; with ``hi`` a Gershgorin bound of ``S``, ``p(S)`` and ``M`` are SPD for
    every SPD ``A``, whatever ``lo``. The only stored entries beyond ``A`` are the ``n``
    scales (``nnz``).
    """

    def __init__(self, a: Any, scale: torch.Tensor, degree: int, lo: float, hi: float) -> None:
        super().__init__()
        self.op = SparseOperator(a).to(scale.device)
        self.register_buffer("scale", scale)
        self.degree, self.lo, self.hi = int(degree), float(lo), float(hi)
        self.in_shape = self.out_shape = (scale.numel(),)
        self.cacheable_norm = False

    @property
    def nnz(self) -> int:
        return int(self.scale.numel())

    def _mv(self, r: torch.Tensor) -> torch.Tensor:
        d = self._cast("scale", r)
        theta, delta = 0.5 * (self.hi + self.lo), 0.5 * (self.hi - self.lo)
        sigma = theta / delta
        rhs = r * d
        y = rhs / theta
        dy, res, rho_old = y, rhs, 1.0 / sigma
        for _ in range(self.degree):
            res = res - d * self.op(d * dy).to(r.dtype)
            rho = 1.0 / (2.0 * sigma - rho_old)
            dy = (rho * rho_old) * dy + (2.0 * rho / delta) * res
            y = y + dy
            rho_old = rho
        return y * d

    _rmv = _mv


def chebyshev(
    A: Any,  # noqa: N803
    degree: int = 8,
    ratio: float = 0.01,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float64,
) -> ChebyshevPreconditioner:
    """Jacobi-scaled Chebyshev polynomial preconditioner (``degree`` mat-vecs per use).

    The interval is ``[ratio * hi, hi]`` with ``hi = max_i sum_j |a_ij| / sqrt(a_ii a_jj)``
    (Gershgorin: at least the largest eigenvalue of ``D A D``), so it needs no eigenvalue
    estimate and is SPD for any SPD ``A`` and any ``0 < ratio < 1`` (see
    :class:`ChebyshevPreconditioner`). ``ratio`` should be near
    ``lambda_min / lambda_max`` of ``D A D``; too small costs little.

    Args:
        A: SPD scipy / torch sparse matrix.
        degree: polynomial degree, i.e. mat-vecs with ``A`` per application (``>= 0``;
            0 is Jacobi scaled by ``2 / (hi + lo)``).
        ratio: lower end of the interval relative to ``hi``, in ``(0, 1)``.

    Raises:
        ValueError: bad ``A`` (see :func:`ic0`), ``degree < 0`` or ``ratio`` outside ``(0, 1)``.
    """
    import scipy.sparse as sp

    if int(degree) != degree or degree < 0:
        raise ValueError(f"Expected an integer degree >= 0 (got {degree!r}).")
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"Expected 0 < ratio < 1 (got {ratio!r}).")
    a = check_spd_input(A)
    d = 1.0 / np.sqrt(a.diagonal())
    hi = float(abs(sp.diags(d) @ a @ sp.diags(d)).sum(axis=1).max())
    scale = torch.as_tensor(d, dtype=dtype, device=device)
    return ChebyshevPreconditioner(a.astype(np.float64), scale, int(degree), ratio * hi, hi)
