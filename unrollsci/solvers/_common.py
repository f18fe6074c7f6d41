"""Turning user inputs into operators and validated batched tensors."""

from __future__ import annotations

from typing import Any

import torch

from .._validation import (
    check_batch,
    check_count,
    check_finite,
    check_nonnegative,
    check_positive,
    check_same_device,
    check_tensor,
)
from ..operators import LinearOperator, MatrixOperator, SparseOperator
from ..operators._base import check_real

__all__ = [
    "as_operator",
    "prepare_lasso",
    "unbatch",
    "check_stopping",
    "check_signal",
    "pow2_above",
]


def check_stopping(tol: Any, max_iter: Any, *, tol_name: str = "tol") -> float:
    """Validate a solver's stopping rule: ``tol >= 0`` finite (0: run to ``max_iter``
    unless the residual vanishes) and ``max_iter`` a non-negative integer. Returns
    ``tol`` as a Python float."""
    tol_f = check_positive(tol_name, tol, allow_zero=True)
    check_count("max_iter", max_iter, 0)
    return tol_f


def check_signal(name: str, x: Any, *, ndim: tuple[int, ...] = (1, 2)) -> torch.Tensor:
    """A real floating tensor of the allowed dims, finite, with at least one problem."""
    check_tensor(name, x, ndim=ndim)
    check_real(name, x)
    check_batch(name, x)
    check_finite(name, x)
    return x


def as_operator(a: Any, name: str = "A") -> LinearOperator:
    """Wrap a dense/sparse torch tensor or a scipy sparse matrix as a LinearOperator."""
    if isinstance(a, LinearOperator):
        return a
    if isinstance(a, torch.Tensor):
        if a.layout != torch.strided:
            return SparseOperator(a)
        check_tensor(name, a, ndim=(2,))
        return MatrixOperator(a)
    try:
        import scipy.sparse as sp

        if sp.issparse(a):
            return SparseOperator(a)
    except ImportError:  # pragma: no cover
        pass
    raise TypeError(
        f"Expected '{name}' to be a LinearOperator, a torch tensor or a scipy sparse matrix "
        f"(got {type(a).__name__})."
    )


def prepare_lasso(
    op: Any, y: torch.Tensor, lam: Any
) -> tuple[LinearOperator, torch.Tensor, torch.Tensor, bool]:
    """Validate (op, y, lam) for a lasso solver.

    Returns the operator, ``y`` as ``(batch, m)``, ``lam`` as a ``(batch, 1)`` tensor
    and whether ``y`` was unbatched.
    """
    op = as_operator(op)
    if len(op.in_shape) != 1 or len(op.out_shape) != 1:
        raise ValueError(
            "Lasso solvers expect an operator on vectors, in_shape (n,) and out_shape (m,) "
            f"(got {op.in_shape} -> {op.out_shape}). Flatten signals first."
        )
    check_tensor("y", y, ndim=(1, 2))
    check_real("y", y)
    if y.dim() == 2:
        check_batch("y", y)
    unbatched = y.dim() == 1
    if unbatched:
        y = y[None]
    m = op.out_shape[0]
    if y.shape[1] != m:
        raise ValueError(
            f"Expected 'y' of length {m} to match the operator's output (got shape "
            f"{tuple(y.shape)})."
        )
    check_finite("y", y)
    if op.device is not None:
        check_same_device(operator=torch.empty(0, device=op.device), y=y)
    if isinstance(lam, torch.Tensor):  # kept as a tensor: gradients may flow to it
        check_real("lam", lam)
        check_nonnegative("lam", lam.detach())
    else:  # a Python float: no float32 cast, so lam up to 1.8e308 passes
        lam = check_positive("lam", lam, allow_zero=True)
    lam_t = torch.as_tensor(lam, dtype=y.dtype, device=y.device)
    if lam_t.dim() == 0:
        lam_t = lam_t.expand(y.shape[0])
    if lam_t.shape != (y.shape[0],):
        raise ValueError(
            f"Expected 'lam' to be a scalar or of shape (batch,)=({y.shape[0]},) "
            f"(got {tuple(lam_t.shape)})."
        )
    return op, y, lam_t[:, None], unbatched


def pow2_above(t: torch.Tensor) -> torch.Tensor:
    """``2^e`` elementwise with ``t / 2^e`` in ``[1/2, 1)`` for ``t > 0`` (1 where ``t`` is 0),
    detached: dividing by it scales exactly (the same bits at ordinary scales) and keeps
    squares and inner products of the scaled values in range."""
    t = t.detach()
    return torch.ldexp(torch.ones_like(t), torch.frexp(t).exponent)


def unbatch(x: torch.Tensor, unbatched: bool) -> torch.Tensor:
    return x[0] if unbatched else x


def unit_rows(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(big, v / big)`` with ``big`` each row's largest magnitude (``(..., 1)``; 1 for a
    zero row), detached: products and squares of the scaled rows neither underflow nor
    overflow, whatever the data's scale."""
    v = v.detach()
    big = v.abs().amax(dim=-1, keepdim=True)
    big = torch.where(big > 0, big, torch.ones_like(big))
    return big, v / big


def scaled_row_norm(v: torch.Tensor, keepdim: bool = False) -> torch.Tensor:
    """Row 2-norms of ``v`` with its gradient ``v / ||v||``, scale-free: each row divided
    by its largest magnitude (detached; 1 for a zero row) first, so no square under- or
    overflows (rows of size 1e-170 in float64 or 1e-25 in float32 keep their digits)."""
    top = v.detach().abs().amax(dim=-1, keepdim=True)
    top = torch.where(top > 0, top, torch.ones_like(top))
    norm = torch.linalg.vector_norm(v / top, dim=-1, keepdim=True)
    return top * norm if keepdim else (top * norm)[..., 0]


def row_norm(v: torch.Tensor) -> torch.Tensor:
    """Row norms of ``v`` (detached) without underflow or overflow of the squares: data of
    size 1e-160 (squares below the smallest normal) or 1e200 give the same relative
    residuals as data of size 1, so no stopping rule reads 0 or inf from scale alone."""
    return scaled_row_norm(v.detach())
