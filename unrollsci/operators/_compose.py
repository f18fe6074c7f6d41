"""Operators built from others: ``A @ B``, ``A + B``, ``c * A`` and ``A.T``."""

from __future__ import annotations

import math
from typing import Any

import torch

from ._linear import LinearOperator


def _common_dtypes(*ops: LinearOperator) -> tuple[torch.dtype, ...] | None:
    """The dtypes every one of ``ops`` supports (None: no restriction)."""
    out: tuple[torch.dtype, ...] | None = None
    for op in ops:
        if op.supported_dtypes is not None:
            out = (
                op.supported_dtypes
                if out is None
                else tuple(d for d in out if d in op.supported_dtypes)
            )
    return out


def _check_operator(name: str, op: Any) -> None:
    """Raise ``TypeError`` unless ``op`` is a :class:`LinearOperator`."""
    if not isinstance(op, LinearOperator):
        raise TypeError(
            f"Expected '{name}' to be a LinearOperator (got {type(op).__name__}); wrap a "
            "matrix as MatrixOperator(matrix)."
        )


def _first_device(*ops: LinearOperator) -> torch.device | None:
    for op in ops:
        if op.device is not None:
            return op.device
    return None


class ComposedOperator(LinearOperator):
    """``outer @ inner``: apply ``inner`` first."""

    def __init__(self, outer: LinearOperator, inner: LinearOperator) -> None:
        super().__init__()
        _check_operator("outer", outer)
        _check_operator("inner", inner)
        if tuple(outer.in_shape) != tuple(inner.out_shape):
            raise ValueError(
                f"Cannot compose: outer operator expects input {outer.in_shape} but inner "
                f"operator produces {inner.out_shape}."
            )
        self.outer, self.inner = outer, inner
        self.in_shape, self.out_shape = inner.in_shape, outer.out_shape
        self.cacheable_norm = outer.cacheable_norm and inner.cacheable_norm
        self.supported_dtypes = _common_dtypes(outer, inner)

    def _mv(self, x: torch.Tensor) -> torch.Tensor:
        return self.outer.mv(self.inner.mv(x))

    def _rmv(self, y: torch.Tensor) -> torch.Tensor:
        return self.inner.rmv(self.outer.rmv(y))


class SumOperator(LinearOperator):
    """``A + B`` for operators of equal shapes."""

    def __init__(self, a: LinearOperator, b: LinearOperator) -> None:
        super().__init__()
        _check_operator("a", a)
        _check_operator("b", b)
        if tuple(a.in_shape) != tuple(b.in_shape) or tuple(a.out_shape) != tuple(b.out_shape):
            raise ValueError(
                f"Cannot add operators of different shapes: {a.in_shape}->{a.out_shape} and "
                f"{b.in_shape}->{b.out_shape}."
            )
        self.a, self.b = a, b
        self.in_shape, self.out_shape = a.in_shape, a.out_shape
        self.cacheable_norm = a.cacheable_norm and b.cacheable_norm
        self.supported_dtypes = _common_dtypes(a, b)

    def _mv(self, x: torch.Tensor) -> torch.Tensor:
        return self.a.mv(x) + self.b.mv(x)

    def _rmv(self, y: torch.Tensor) -> torch.Tensor:
        return self.a.rmv(y) + self.b.rmv(y)


class ScaledOperator(LinearOperator):
    """``c * A`` for a real scalar ``c``."""

    def __init__(self, op: LinearOperator, scale: float) -> None:
        super().__init__()
        _check_operator("op", op)
        if not math.isfinite(float(scale)):
            raise ValueError(f"Expected a finite scale for an operator (got {scale}).")
        self.op, self.scale = op, float(scale)
        self.in_shape, self.out_shape = op.in_shape, op.out_shape
        self.cacheable_norm = op.cacheable_norm
        self.supported_dtypes = op.supported_dtypes

    def _mv(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * self.op.mv(x)

    def _rmv(self, y: torch.Tensor) -> torch.Tensor:
        return self.scale * self.op.rmv(y)

    def _norm_state(self) -> Any:
        return (self.scale,)


class AdjointOperator(LinearOperator):
    """``A^T`` as an operator in its own right."""

    def __init__(self, op: LinearOperator) -> None:
        super().__init__()
        _check_operator("op", op)
        self.op = op
        self.in_shape, self.out_shape = op.out_shape, op.in_shape
        self.cacheable_norm = op.cacheable_norm
        self.supported_dtypes = op.supported_dtypes

    def _mv(self, x: torch.Tensor) -> torch.Tensor:
        return self.op.rmv(x)

    def _rmv(self, y: torch.Tensor) -> torch.Tensor:
        return self.op.mv(y)

    @property
    def T(self) -> LinearOperator:  # noqa: N802
        return self.op
