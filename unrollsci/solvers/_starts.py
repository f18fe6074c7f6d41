"""Inputs and starting points of the solvers: the checks of the lasso solvers
(:mod:`._lasso`: step, prox, damping, warm start, ADMM's dtypes), AMP's start from a warm
start and the scaling of :func:`unrollsci.solvers.cg` (:mod:`._cg`) from one."""

from __future__ import annotations

import math
from typing import Any

import torch

from .._validation import (
    check_finite,
    check_like,
    check_positive,
    check_positive_param,
    check_tensor,
)
from ..operators import LinearOperator
from ..operators._base import check_real
from ..prox import make_prox, soft_threshold
from ._common import pow2_above
from ._lasso_checks import nonzero_norm_sq


def _step(op: LinearOperator, step: float | torch.Tensor | None) -> float | torch.Tensor:
    """The step: ``1 / ||A||^2`` by default; a given one checked (a tensor that requires
    grad is kept, so that its gradient flows, as :func:`admm`'s ``rho``)."""
    if step is None:
        return 1.0 / nonzero_norm_sq(op)
    return check_positive_param("step", step)


def _prox(spec: Any, op: LinearOperator) -> Any:
    """The prox of ``spec`` (:func:`unrollsci.prox.make_prox`), checked against ``n``; the
    plain soft threshold itself by default (same bits as before ``prox=`` existed)."""
    p = make_prox(spec, op.in_shape[0])
    return soft_threshold if p.kind == "soft" else p


def _check_damping(damping: Any) -> float:
    d = check_positive("damping", damping, allow_zero=True)
    if not d < 1.0:
        raise ValueError(f"Expected 0 <= damping < 1 (got {damping!r}).")
    return d


def _x0(x0: torch.Tensor | None, y: torch.Tensor, n: int, unbatched: bool) -> torch.Tensor:
    if x0 is None:
        return y.new_zeros(y.shape[0], n)
    check_tensor("x0", x0, ndim=(1, 2))
    check_real("x0", x0)
    check_like("x0", x0, "y", y)
    check_finite("x0", x0)
    x0 = x0[None] if unbatched and x0.dim() == 1 else x0
    if x0.shape != (y.shape[0], n):
        raise ValueError(f"Expected 'x0' of shape {(y.shape[0], n)} (got {tuple(x0.shape)}).")
    return x0


def check_admm_dtype(y: torch.Tensor) -> None:
    """ADMM's x-update (a Cholesky factor or CG on ``A^T A + rho I``) computes in float32 or
    float64 only: torch has no half-precision Cholesky on the CPU, and float16's rounding
    stops CG's inner solves short of any tolerance, so float16/bfloat16 data is refused
    here rather than deep inside torch or after a stream of inner-solve warnings."""
    if y.dtype not in (torch.float32, torch.float64):
        raise TypeError(
            f"admm computes in float32 or float64: expected 'y' of dtype torch.float32 or "
            f"torch.float64 (got {y.dtype}). Convert the data with y.float() (or .double()), "
            "and x0 with it; ista, fista and amp run in half precision."
        )


def amp_start(
    op: LinearOperator, x: torch.Tensor, y: torch.Tensor, given: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """AMP's ``(z, b, theta_cont)`` at the start ``x`` (``(batch, n)``).

    Cold (``given`` False, ``x = 0``): ``z = 0``, ``b = 0`` and the continuation from
    ``||A^T y||_inf``. From a warm start ``x0``: ``b = ||x0||_0 / m``, the residual of the
    fixed point ``z = (y - A x0) / (1 - b)`` (so that the first iteration is the calibrated
    map at ``x0``: a lasso solution is kept as it is) and the continuation from
    ``||A^T z||_inf``, the threshold that ``x0`` itself calls for: ``lam / (1 - b)``
    (no continuation) at a solution, ``||A^T y||_inf`` (the cold continuation) at
    ``x0 = 0``. The continuation threshold used to restart from ``||A^T y||_inf`` whatever
    ``x0``, which thresholded a warm start away (``x = 0`` after one iteration from the
    solution) and took as many iterations as a cold start."""
    m = op.out_shape[0]
    b = (x != 0).sum(-1, keepdim=True).to(y.dtype) / m
    if not given:
        return torch.zeros_like(y), b, op.adjoint(y).abs().amax(-1, keepdim=True)
    z = (y - op.mv(x)) / torch.clamp(1.0 - b, min=1e-3)  # the clamp of the calibration
    return z, b, op.rmv(z).abs().amax(-1, keepdim=True)


def scale_for_cg(
    bnorm: torch.Tensor, r0n: torch.Tensor, tol: float, atol: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """cg's scale of each column ``s`` (``(batch, 1)``), the threshold of the scaled
    system (float64), its floor ``reach`` and the number of extra restarts, from the norms
    of ``b`` and of the start's residual ``r0``.

    ``s = ||b||`` (``||r0||`` for ``b = 0``; 1 for both 0): unit-size vectors keep
    ``r^T z`` and ``p^T A p`` clear of underflow and overflow. A warm start whose residual
    is larger than ``b`` (``x0 ~ 1`` for ``||b|| ~ 1e-19`` in float32) is scaled by the power
    of two above ``||r0||`` instead (``r0 / ||b||`` overflowed ``p^T A p``, reported as a
    breakdown of A). The threshold ``max(tol, atol / ||b||) ||b|| / s`` is formed in float64
    (``tol ||b||`` in b's dtype underflowed to 0: float16 at ``tol=1e-10``, float32 for
    ``||b|| ~ 1e-36``). Such a warm start cannot reach it in one run (its rounding is about
    ``eps ||r0||``): it runs to ``reach = eps`` and restarts from the true residual,
    rescaled, ``extra ~ log(||r0|| / ||b||) / log(1 / eps)`` times more than the two
    restarts of every solve. Elsewhere ``reach = 0``, ``extra = 0`` and ``s``, the
    threshold and the iterates are as before warm starts were scaled."""
    fi = torch.finfo(bnorm.dtype)
    s = torch.where(bnorm > 0, bnorm, r0n)
    s = torch.where(r0n > s, pow2_above(r0n), s)
    s = torch.where(s > 0, s, torch.ones_like(s))[:, None]
    b64, s64 = bnorm.double(), s[:, 0].double()
    thresh = torch.where(bnorm > 0, (atol / b64).clamp(min=tol) * (b64 / s64), atol / s64)
    warm = (s64 > b64) & (bnorm > 0)
    reach = torch.where(warm, fi.eps, 0.0)
    ratio = float((s64 / b64.clamp(min=fi.tiny)).max()) if bool(warm.any()) else 1.0
    extra = math.ceil(math.log(ratio) / -math.log(fi.eps)) if ratio > 1 else 0
    return s, thresh, reach, extra
