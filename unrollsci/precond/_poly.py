"""Chebyshev polynomial preconditioner: only sparse mat-vecs, SPD by construction."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .._validation import check_count, check_device
from ..operators._matrix import _SCIPY_DTYPES, _ScipyMatmul, _ScipyPair, _spmm
from ._base import Preconditioner
from ._sparse import check_spd_input

__all__ = [
    "ChebyshevPreconditioner",
    "SymmetricMatvec",
    "abs_entries",
    "chebyshev",
    "gershgorin_scaled",
]


class SymmetricMatvec:
    """``x -> x A`` (rows of ``x``) for a symmetric scipy CSR ``A``, differentiable in ``x``.

    scipy's CSR kernels on the CPU, torch CSR elsewhere, on the caller's scipy matrix:
    no torch copy and no validation as in :class:`SparseOperator`, so it is cheaper to
    build, which matters because a polynomial preconditioner is rebuilt at every setup.
    """

    def __init__(self, a: Any) -> None:
        self.a = a
        self._copies: dict[Any, Any] = {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        key = (x.device, x.dtype)
        m = self._copies.get(key)
        if x.device.type == "cpu" and x.dtype in _SCIPY_DTYPES:
            if m is None:
                a = self.a.astype(_SCIPY_DTYPES[x.dtype])
                m = self._copies[key] = _ScipyPair(a, a)  # symmetric: A^T = A
            return _ScipyMatmul.apply(x.contiguous(), m, False)
        if m is None:
            from ..operators import to_torch_sparse

            m = self._copies[key] = to_torch_sparse(self.a, dtype=x.dtype).to(x.device)
        return _spmm(m, x)


class ChebyshevPreconditioner(Preconditioner):
    """``z = D p(S) D r`` with ``S = D A D``, ``D = diag(A)^{-1/2}`` (or any positive
    scaling) and ``p`` the Chebyshev approximate inverse of degree ``degree`` on
    ``[lo, hi]``, or a positive combination of those of degrees ``0..degree``.

    ``y_m`` = ``m`` steps of the Chebyshev iteration for ``S y = D r`` from ``y = 0`` (one
    mat-vec with ``A`` each) is ``p_m(S) D r`` with
    ``p_m(x) = (1 - T_{m+1}((θ - x)/δ) / T_{m+1}(θ/δ)) / x`` (``θ ± δ = hi, lo``).
    ``|T_{m+1}| <= 1`` on ``[lo, hi]`` and ``0 < T_{m+1}((θ - x)/δ) < T_{m+1}(θ/δ)`` for
    ``0 < x < lo``, so ``p_m > 0`` on ``(0, hi]``; with ``hi`` at least the largest
    eigenvalue of ``S`` (a Gershgorin bound), ``p_m(S)``, any combination
    ``sum_m w_m p_m(S)`` with ``w_m >= 0`` (not all zero) and ``M`` are SPD for every SPD
    ``A`` and every ``0 < lo < hi``. The only stored entries beyond ``A`` are the ``n``
    scales (``nnz``).

    Args:
        a: the matrix ``A`` (scipy CSR) or its :class:`SymmetricMatvec`.
        scale: ``(n,)`` positive ``D`` (may carry gradients).
        degree: mat-vecs per application.
        lo, hi: the interval (floats or 0-d tensors, which may carry gradients).
        weights: ``(degree + 1,)`` nonnegative weights of ``y_0..y_degree``; None takes
            ``y_degree`` alone (the classical Chebyshev preconditioner).
    """

    def __init__(
        self,
        a: Any,
        scale: torch.Tensor,
        degree: int,
        lo: float | torch.Tensor,
        hi: float | torch.Tensor,
        weights: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.op = a if isinstance(a, SymmetricMatvec) else SymmetricMatvec(a)
        self.scale, self.weights = scale, weights
        self.degree, self.lo, self.hi = int(degree), lo, hi
        if weights is not None and weights.shape != (self.degree + 1,):
            raise ValueError(
                f"Expected weights of shape ({self.degree + 1},) (got {tuple(weights.shape)})."
            )
        self.in_shape = self.out_shape = (scale.numel(),)
        self.cacheable_norm = False

    @property
    def nnz(self) -> int:
        return int(self.scale.numel())

    def _mv(self, r: torch.Tensor) -> torch.Tensor:
        d = self.scale.to(r)
        theta, delta = 0.5 * (self.hi + self.lo), 0.5 * (self.hi - self.lo)
        sigma = theta / delta
        rhs = r * d
        y = rhs / theta
        w = None if self.weights is None else self.weights.to(r)
        z = None if w is None else w[0] * y
        dy, res, rho_old = y, rhs, 1.0 / sigma
        for m in range(1, self.degree + 1):
            res = res - d * self.op(d * dy)
            rho = 1.0 / (2.0 * sigma - rho_old)
            dy = (rho * rho_old) * dy + (2.0 * rho / delta) * res
            y = y + dy
            rho_old = rho
            if w is not None:
                z = z + w[m] * y
        return (y if z is None else z) * d

    _rmv = _mv


def abs_entries(a: Any, device: torch.device | str | None = None) -> tuple[torch.Tensor, ...]:
    """``(row, col, |a_ij|)`` of a scipy sparse matrix as torch tensors (float64)."""
    import scipy.sparse as sp

    device = check_device(device)
    coo = sp.coo_matrix(a)
    return (
        torch.from_numpy(coo.row.astype(np.int64)).to(device),
        torch.from_numpy(coo.col.astype(np.int64)).to(device),
        torch.from_numpy(np.abs(coo.data).astype(np.float64)).to(device),
    )


def gershgorin_scaled(entries: tuple[torch.Tensor, ...], scale: torch.Tensor) -> torch.Tensor:
    """``max_i sum_j |a_ij| s_i s_j`` for ``entries = abs_entries(A)``: an upper bound of the
    eigenvalues of ``S A S`` (``S = diag(scale)``), differentiable in ``scale``."""
    row, col, val = entries
    rows = torch.zeros_like(scale).index_add(0, row, val.to(scale) * scale[col])
    return (scale * rows).max()


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
    device = check_device(device)
    degree = check_count("degree", degree, 0)
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"Expected 0 < ratio < 1 (got {ratio!r}).")
    a = check_spd_input(A)
    d = torch.from_numpy(1.0 / np.sqrt(a.diagonal()))
    hi = float(gershgorin_scaled(abs_entries(a), d))
    scale = d.to(dtype=dtype, device=device)
    if scale.is_floating_point():
        _check_range(a, scale, dtype)
    return ChebyshevPreconditioner(a, scale, degree, ratio * hi, hi)


def _check_range(a: Any, scale: torch.Tensor, dtype: torch.dtype) -> None:
    """Refuse (ValueError) a matrix that ``dtype`` cannot hold: an entry of ``A`` that
    overflows in the cast, a diagonal entry that underflows to zero, or a Jacobi scale
    ``a_ii^{-1/2}`` that is not finite and positive (every output would be NaN)."""
    fix = f"build it in torch.float64 or rescale A (max |a_ij| = {np.abs(a.data).max():.3e})"
    if not bool(torch.isfinite(torch.as_tensor(np.abs(a.data).max(), dtype=dtype))):
        raise ValueError(
            f"Expected the entries of A to be finite in {dtype} (got an entry beyond "
            f"{dtype}'s range): {fix}."
        )
    diag = torch.as_tensor(a.diagonal(), dtype=dtype)
    bad = ~((diag > 0) & (scale.cpu() > 0) & torch.isfinite(scale.cpu()))
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"Expected a positive diagonal and a finite, positive Jacobi scale a_ii^(-1/2) "
            f"in {dtype} (got A[{i}, {i}] = {float(diag[i]):.3e}, scale "
            f"{float(scale[i]):.3e}): the preconditioner must be positive definite; {fix}."
        )
