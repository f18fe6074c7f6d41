"""Linear forward operators with exact adjoints, batched and device-agnostic."""

from ._algebra import GramOperator, IdentityOperator, ReshapeOperator, gram
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
from ._radon import Radon, fbp

__all__ = [
    "AdjointOperator",
    "ComposedOperator",
    "Convolution",
    "GramOperator",
    "IdentityOperator",
    "LinearOperator",
    "Mask",
    "MatrixOperator",
    "Radon",
    "ReshapeOperator",
    "ScaledOperator",
    "SparseOperator",
    "SumOperator",
    "check_adjoint",
    "fbp",
    "gram",
    "to_torch_sparse",
]
