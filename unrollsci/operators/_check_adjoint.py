"""The adjoint test ``<Ax, y> = <x, A^T y>`` for any :class:`LinearOperator`."""

from __future__ import annotations

import torch

from .._validation import check_count, check_device, check_finite
from ._checks import check_dtype_supported
from ._linear import LinearOperator


def check_adjoint(
    op: LinearOperator,
    *,
    batch: int = 3,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
    seed: int = 0,
) -> float:
    """Relative error of the adjoint identity ``<Ax, y> = <x, A^T y>``.

    Returns ``max_b |<Ax_b, y_b> - <x_b, A^T y_b>| / (||Ax_b|| ||y_b|| + ||x_b|| ||A^T y_b||)``
    over a batch of random ``x``, ``y``. A correct adjoint gives roughly machine
    precision for ``dtype``. A non-finite ``A x`` or ``A^T y`` raises ``ValueError``.

    Example:
        >>> import torch
        >>> from unrollsci.operators import MatrixOperator, check_adjoint
        >>> check_adjoint(MatrixOperator(torch.randn(4, 6, dtype=torch.float64))) < 1e-12
        True
    """
    if not isinstance(op, LinearOperator):
        raise TypeError(
            f"check_adjoint expects a LinearOperator (got {type(op).__name__}). Wrap a "
            "matrix as MatrixOperator(matrix)."
        )
    batch = check_count("batch", batch)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"Expected 'dtype' to be a real floating-point dtype (got {dtype!r}).")
    check_dtype_supported(type(op).__name__, dtype, op.supported_dtypes)
    device = check_device(device)
    if device is None:
        device = op.device or torch.device("cpu")
    gen = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn((batch, *op.in_shape), generator=gen, dtype=dtype).to(device)
    y = torch.randn((batch, *op.out_shape), generator=gen, dtype=dtype).to(device)
    with torch.no_grad():
        ax = op(x)
        aty = op.adjoint(y)
    check_finite("A(x)", ax)
    check_finite("A^T(y)", aty)  # else a NaN error, and "err > tol" is False
    lhs = (ax * y).reshape(batch, -1).sum(1)
    rhs = (x * aty).reshape(batch, -1).sum(1)
    scale = ax.reshape(batch, -1).norm(dim=1) * y.reshape(batch, -1).norm(dim=1) + x.reshape(
        batch, -1
    ).norm(dim=1) * aty.reshape(batch, -1).norm(dim=1)
    scale = torch.clamp(scale, min=torch.finfo(dtype).tiny)
    return float(((lhs - rhs).abs() / scale).max())
