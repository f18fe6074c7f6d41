"""Linear forward operators with exact adjoints, batched and device-agnostic."""

from ._base import (
    AdjointOperator,
    ComposedOperator,
    LinearOperator,
    ScaledOperator,
    SumOperator,
    check_adjoint,
)
from ._conv import Convolution, Mask
from ._matrix import MatrixOperator, SparseOperator, to_torch_sparse

__all__ = [
    "AdjointOperator",
    "ComposedOperator",
    "Convolution",
    "LinearOperator",
    "Mask",
    "MatrixOperator",
    "ScaledOperator",
    "SparseOperator",
    "SumOperator",
    "check_adjoint",
    "to_torch_sparse",
]
