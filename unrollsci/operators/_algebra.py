"""Identity, reshape and normal operators: the operator algebra's neutral elements.

``gram(A, shift=c)`` is ``A^T A + c I`` as a :class:`LinearOperator`: the normal
equations of least squares, ridge regression and the x-update of ADMM, in one place.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .._validation import check_device, check_finite
from ._base import LinearOperator, check_real
from ._checks import as_shape

__all__ = ["IdentityOperator", "ReshapeOperator", "GramOperator", "gram"]


class ReshapeOperator(LinearOperator):
    """``x: (batch, *in_shape) -> x.reshape(batch, *out_shape)``: an orthogonal map.

    Its adjoint reshapes back and its norm is 1. Composing with it turns an operator on
    images into one on flat vectors (what :func:`unrollsci.solvers.cg` expects), e.g.
    ``radon @ ReshapeOperator((n * n,), (n, n))``.

    Example:
        >>> import torch
        >>> ReshapeOperator((6,), (2, 3))(torch.arange(6.0)[None]).shape
        torch.Size([1, 2, 3])
    """

    def __init__(self, in_shape: Any, out_shape: Any) -> None:
        super().__init__()
        self.in_shape = as_shape("in_shape", in_shape)
        self.out_shape = as_shape("out_shape", out_shape)
        if math.prod(self.in_shape) != math.prod(self.out_shape):
            raise ValueError(
                f"Cannot reshape {self.in_shape} ({math.prod(self.in_shape)} entries) to "
                f"{self.out_shape} ({math.prod(self.out_shape)} entries)."
            )

    def _mv(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], *self.out_shape)

    def _rmv(self, y: torch.Tensor) -> torch.Tensor:
        return y.reshape(y.shape[0], *self.in_shape)

    def norm(self, **kwargs: Any) -> float:  # noqa: ARG002 - same signature as the base
        """Exactly 1 (0 for an operator on empty signals): a reshape is orthogonal."""
        return 1.0 if math.prod(self.in_shape) else 0.0


class IdentityOperator(ReshapeOperator):
    """The identity ``I`` on signals of shape ``shape`` (an int ``n`` means ``(n,)``).

    ``I(x)`` returns ``x`` itself (no copy, as ``nn.Identity``); ``norm()`` is 1.

    Example:
        >>> import torch
        >>> from unrollsci.operators import MatrixOperator
        >>> A = MatrixOperator(torch.eye(2))
        >>> (A + 2.0 * IdentityOperator(2))(torch.ones(1, 2))
        tensor([[3., 3.]])
    """

    def __init__(self, shape: Any) -> None:
        super().__init__(shape, shape)

    def _mv(self, x: torch.Tensor) -> torch.Tensor:
        return x

    _rmv = _mv


class GramOperator(LinearOperator):
    """``A^T A + shift I``: symmetric, positive (semi-)definite for ``shift >= 0``.

    Built by :func:`gram`. ``shift`` is a real scalar: a Python number or a one-element
    tensor (kept as given, so gradients flow to a learned shift). Applying it costs one
    product with ``A`` and one with ``A^T`` (unchecked, through :meth:`LinearOperator.mv`:
    the Gram operator's own call validates). ``norm()`` is ``||A||^2 + shift`` for
    ``shift >= 0`` (exact: the top eigenvalue of ``A^T A`` is ``||A||^2``); Lanczos on the
    operator itself otherwise. ``to_dense()`` forms ``D^T D + shift I`` from ``D =
    A.to_dense()``, differentiably.
    """

    def __init__(self, op: LinearOperator, shift: float | torch.Tensor = 0.0) -> None:
        super().__init__()
        if not isinstance(op, LinearOperator):
            raise TypeError(
                f"Expected a LinearOperator (got {type(op).__name__}). Wrap a matrix as "
                "MatrixOperator(matrix)."
            )
        if isinstance(shift, torch.Tensor):
            check_real("shift", shift)
            if shift.numel() != 1:
                raise ValueError(
                    f"Expected 'shift' to be a scalar (got shape {tuple(shift.shape)})."
                )
            check_finite("shift", shift.detach())
        elif isinstance(shift, bool) or not isinstance(shift, (int, float)):
            raise TypeError(f"Expected 'shift' to be a real number (got {type(shift).__name__}).")
        elif not math.isfinite(shift):
            raise ValueError(f"Expected 'shift' to be finite (got {shift!r}).")
        else:
            shift = float(shift)
        self.op, self.shift = op, shift
        self.in_shape = self.out_shape = tuple(op.in_shape)
        learned = isinstance(shift, torch.Tensor) and shift.requires_grad
        self.cacheable_norm = op.cacheable_norm and not learned
        self.supported_dtypes = op.supported_dtypes

    def _shift_value(self) -> float:
        s = self.shift
        return float(s.detach()) if isinstance(s, torch.Tensor) else s

    def _mv(self, x: torch.Tensor) -> torch.Tensor:
        out = self.op.rmv(self.op.mv(x))
        if isinstance(self.shift, torch.Tensor) or self.shift != 0.0:
            out = out + self.shift * x
        return out

    _rmv = _mv

    def _norm_state(self) -> Any:
        return (self._shift_value(),)

    def norm(self, **kwargs: Any) -> float:
        """``||A^T A + shift I||_2``: ``||A||^2 + shift`` when ``shift >= 0`` (keywords go
        to ``A.norm``), else restarted Lanczos on this operator (see
        :meth:`LinearOperator.norm`)."""
        c = self._shift_value()
        if c >= 0:
            return self.op.norm(**kwargs) ** 2 + c
        return super().norm(**kwargs)

    def to_dense(
        self, *, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None
    ) -> torch.Tensor:
        d = self.op.to_dense(dtype=dtype, device=check_device(device))
        # c = A^T as a contiguous (n, m) matrix: the product below is then the one
        # ADMM's Cholesky path has always formed (same bits).
        c = d.T.contiguous()
        out = c @ c.T
        if isinstance(self.shift, torch.Tensor) or self.shift != 0.0:
            out = out + self.shift * torch.eye(c.shape[0], dtype=dtype, device=c.device)
        return out

    def extra_repr(self) -> str:
        return f"in_shape={self.in_shape}, shift={self.shift}"


def gram(op: LinearOperator, shift: float | torch.Tensor = 0.0) -> GramOperator:
    """The normal operator ``A^T A + shift I`` of ``op`` as a :class:`LinearOperator`.

    ``gram(A)(x)`` equals ``A.gram(x)``; with ``shift = c`` it is the matrix of ridge
    regression and of ADMM's x-update, symmetric and (for ``c > 0``) positive definite,
    so it can go straight to :func:`unrollsci.solvers.cg`.

    Example:
        >>> import torch
        >>> from unrollsci.operators import MatrixOperator
        >>> A = MatrixOperator(torch.tensor([[1.0, 2.0], [0.0, 1.0]], dtype=torch.float64))
        >>> gram(A, shift=1.0).to_dense()
        tensor([[2., 2.],
                [2., 6.]], dtype=torch.float64)
    """
    return GramOperator(op, shift)
