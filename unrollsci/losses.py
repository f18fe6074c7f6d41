"""Losses for unrolled sparse recovery: NMSE, supervised MSE and the unsupervised KKT loss."""

from __future__ import annotations

from typing import Any

import torch

from ._validation import (
    check_batch,
    check_finite,
    check_positive_param,
)
from .solvers import as_operator, lasso_kkt_residual
from .solvers._lasso_checks import nonzero_norm_sq

__all__ = ["nmse_db", "mse", "kkt_residual"]


def _check_pair(x: torch.Tensor, x_true: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Checked ``(x, x_true)``, a ``(n,)`` pair as a batch of one (one problem, as the
    solvers and :func:`kkt_residual` read it; it was read as ``n`` one-entry problems)."""
    for name, t in (("x", x), ("x_true", x_true)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"Expected '{name}' to be a torch.Tensor (got {type(t).__name__}).")
        if t.dim() == 0:
            raise ValueError(f"Expected '{name}' of shape (batch, ...) (got a scalar).")
        if not t.is_floating_point():
            raise TypeError(f"Expected a floating-point '{name}' (got {t.dtype}).")
    if x.shape != x_true.shape:
        raise ValueError(
            f"Expected 'x' and 'x_true' of the same shape (got {tuple(x.shape)} and "
            f"{tuple(x_true.shape)})."
        )
    check_batch("x", x)
    # the target is data: NaN or Inf there is an error (a NaN target read as a zero one
    # and scored -inf dB, "perfect"); a non-finite estimate gives NaN (a diverged model)
    check_finite("x_true", x_true)
    return (x[None], x_true[None]) if x.dim() == 1 else (x, x_true)


def _scaled_energy(v: torch.Tensor, keep: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(e, s)`` with ``||v||^2 = s^2 e`` per row (``keep``) or over the batch: ``s`` the
    largest magnitude (detached; 1 when ``v`` is 0), so ``e`` neither under- nor overflows."""
    big = v.detach().abs().amax(-1)
    if not keep:
        big = big.amax()
    big = torch.where(big > 0, big, torch.ones_like(big))
    e = (v / (big[:, None] if keep else big)).pow(2).sum(-1)
    e = e if keep else e.sum()
    # an Inf in v makes big = inf and v / big = inf / inf = NaN: the energy is +inf (a NaN
    # in v gives big = NaN, read as 1 above, so the energy stays NaN)
    return torch.where(big.isinf(), big, e), big


def nmse_db(x: torch.Tensor, x_true: torch.Tensor, *, reduction: str = "mean") -> torch.Tensor:
    """Normalized mean squared error in dB, ``10 log10(||x - x*||^2 / ||x*||^2)``.

    Args:
        x, x_true: ``(batch, ...)`` estimate and ground truth, or ``(n,)`` for one problem
            (a batch of one, as the solvers return for an unbatched ``y``).
        reduction: ``"mean"`` (ratio of the sums over the batch, the convention of
            the LISTA literature), or ``"none"`` (one value per batch entry: shape
            ``(1,)`` for a ``(n,)`` pair).

    Returns:
        The NMSE in dB; ``-inf`` where the error is 0 (``x == x*``, also for a zero
        ``x*``), ``+inf`` where ``x* = 0`` and the error is not 0 (no finite value then),
        NaN where the estimate holds NaN, ``+inf`` where it holds ``+-Inf`` (and no NaN).
        The gradient is 0 at a zero ``x*`` and where ``x == x*``.

    Raises:
        ValueError: NaN or Inf in ``x_true``; shapes that differ.

    Example:
        >>> import torch
        >>> round(float(nmse_db(torch.tensor([[2.0, 0.0]]), torch.tensor([[1.0, 0.0]]))), 6)
        0.0
    """
    x, x_true = _check_pair(x, x_true)
    if reduction not in ("mean", "none"):
        raise ValueError(f"Expected reduction 'mean' or 'none' (got {reduction!r}).")
    keep = reduction == "none"
    # each sum divided by the square of its largest entry (over the batch for "mean", per
    # entry for "none"), the scales' ratio taken in logs: no square under- or overflows
    # (data of size 1e-160 or 1e160, or an error 1e300 times the target, keep their digits)
    err, big_d = _scaled_energy((x - x_true).reshape(x.shape[0], -1), keep)
    ref, big_r = _scaled_energy(x_true.reshape(x.shape[0], -1), keep)
    some, exact = ref > 0, err == 0
    # logs of 1 in place of the zeros the outer where replaces: log10(0) = -inf there would
    # make the backward 0 * inf = NaN
    db = 10.0 * (
        torch.log10(torch.where(exact, 1.0, err)) - torch.log10(torch.where(some, ref, 1.0))
    )
    db = db + 20.0 * (torch.log10(big_d) - torch.log10(big_r))
    inf = torch.full_like(db, float("inf"))
    # a NaN error (NaN in the estimate) stays NaN, also where x* = 0 (it read -inf there)
    nan = torch.full_like(db, float("nan"))
    out = torch.where(some, db, torch.where(err > 0, inf, nan))
    return torch.where(exact, -inf, out)


def mse(x: torch.Tensor, x_true: torch.Tensor) -> torch.Tensor:
    """Supervised loss: mean over the batch of ``||x - x*||^2``; ``x, x_true``: ``(batch, ...)``,
    or ``(n,)`` for one problem (``||x - x*||^2``)."""
    x, x_true = _check_pair(x, x_true)
    return (x - x_true).reshape(x.shape[0], -1).pow(2).sum(-1).mean()


def kkt_residual(
    operator: Any,
    x: torch.Tensor,
    y: torch.Tensor,
    lam: float | torch.Tensor,
    *,
    step: float | None = None,
) -> torch.Tensor:
    """Unsupervised lasso optimality residual at ``x``, per batch entry.

    ``||x - soft(x - t A^T(Ax - y), t lam)|| / t`` (:func:`unrollsci.solvers.lasso_kkt_residual`),
    zero exactly at the minimizers of ``0.5 ||Ax - y||^2 + lam ||x||_1``. Training
    on ``kkt_residual(...).pow(2).mean()`` needs no ground truth and makes a model
    a fast lasso solver.

    Args:
        operator: ``A`` (``LinearOperator`` or matrix).
        x: ``(batch, n)`` network output; y: ``(batch, m)`` data (or ``(n,)`` and
            ``(m,)``, one problem).
        lam: lasso weight (scalar or ``(batch,)``).
        step: ``t``, default ``1 / ||A||^2``; a tensor that requires grad keeps its
            gradient.

    Returns:
        ``(batch,)`` residuals (``(1,)`` for one unbatched problem).
    """
    op = as_operator(operator, "operator")
    if step is None:
        step = 1.0 / nonzero_norm_sq(op)
    step = check_positive_param("step", step)
    for name, t in (("x", x), ("y", y)):
        if isinstance(t, torch.Tensor) and t.dim() >= 1:
            check_batch(name, t)
    # (A, y, lam) as the solvers check them, x of y's batch, dtype and device: the checks
    # of lasso_kkt_residual
    return lasso_kkt_residual(op, x, y, lam, step)
