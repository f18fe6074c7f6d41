"""Losses for unrolled sparse recovery: NMSE, supervised MSE and the unsupervised KKT loss."""

from __future__ import annotations

from typing import Any

import torch

from ._validation import check_batch, check_finite, check_positive, check_tensor
from .solvers import as_operator, lasso_kkt_residual
from .solvers._common import prepare_lasso

__all__ = ["nmse_db", "mse", "kkt_residual"]


def _check_pair(x: torch.Tensor, x_true: torch.Tensor) -> None:
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


def nmse_db(x: torch.Tensor, x_true: torch.Tensor, *, reduction: str = "mean") -> torch.Tensor:
    """Normalized mean squared error in dB, ``10 log10(||x - x*||^2 / ||x*||^2)``.

    Args:
        x, x_true: ``(batch, ...)`` estimate and ground truth.
        reduction: ``"mean"`` (ratio of the sums over the batch, the convention of
            the LISTA literature), or ``"none"`` (one value per batch entry).

    Example:
        >>> import torch
        >>> round(float(nmse_db(torch.tensor([[2.0, 0.0]]), torch.tensor([[1.0, 0.0]]))), 6)
        0.0
    """
    _check_pair(x, x_true)
    if reduction not in ("mean", "none"):
        raise ValueError(f"Expected reduction 'mean' or 'none' (got {reduction!r}).")
    d = (x - x_true).reshape(x.shape[0], -1)
    r = x_true.reshape(x.shape[0], -1)
    # both divided by one scale (their largest entry, over the batch for "mean", per entry
    # for "none"): the ratio is that of the raw sums, with no squares under- or overflowing
    # (data of size 1e-160 or 1e160 give the digits of data of size 1)
    keep = reduction == "none"
    big = torch.maximum(d.detach().abs().amax(-1), r.detach().abs().amax(-1))
    if not keep:
        big = big.amax()
    big = torch.where(big > 0, big, torch.ones_like(big))
    big = big[:, None] if keep else big
    err = (d / big).pow(2).sum(-1)
    ref = (r / big).pow(2).sum(-1)
    if not keep:
        err, ref = err.sum(), ref.sum()
    return 10.0 * torch.log10(err / ref.clamp_min(torch.finfo(ref.dtype).tiny))


def mse(x: torch.Tensor, x_true: torch.Tensor) -> torch.Tensor:
    """Supervised loss: mean over the batch of ``||x - x*||^2``."""
    _check_pair(x, x_true)
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
        step: ``t``, default ``1 / ||A||^2``.

    Returns:
        ``(batch,)`` residuals (``(1,)`` for one unbatched problem).
    """
    op = as_operator(operator, "operator")
    if step is None:
        step = 1.0 / op.norm() ** 2
    step = check_positive("step", step)
    for name, t in (("x", x), ("y", y)):
        if isinstance(t, torch.Tensor) and t.dim() >= 1:
            check_batch(name, t)
    # the solvers' checks of (A, y, lam): shapes, finite, lam >= 0 and of shape (batch,)
    _, y2, _, _ = prepare_lasso(op, y, lam)
    check_tensor("x", x, ndim=(1, 2))
    if not x.is_floating_point():
        raise TypeError(f"Expected a floating-point 'x' (got {x.dtype}).")
    check_finite("x", x)
    n = op.in_shape[0]
    # x is batched exactly when y is: (batch, n) for y (batch, m), (n,) for y (m,)
    want = (y2.shape[0], n) if y.dim() == 2 else (n,)
    if tuple(x.shape) != want:
        raise ValueError(
            f"Expected 'x' of shape {want} for 'y' of shape {tuple(y.shape)} and an operator "
            f"with {n} inputs (got {tuple(x.shape)})."
        )
    return lasso_kkt_residual(op, x, y, lam, step)
