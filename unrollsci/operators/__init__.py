"""Linear forward operators with exact adjoints, batched and device-agnostic.

Example:
    >>> import torch
    >>> from unrollsci.operators import MatrixOperator, check_adjoint
    >>> op = MatrixOperator(torch.randn(5, 3, dtype=torch.float64))
    >>> op(torch.ones(2, 3, dtype=torch.float64)).shape
    torch.Size([2, 5])
"""

from typing import Any

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
from ._fanbeam import FanBeam
from ._matrix import MatrixOperator, SparseOperator, to_torch_sparse
from ._radon import Radon, clear_radon_cache


def __getattr__(name: str) -> Any:
    # ``fbp`` is a reconstruction algorithm: its home is ``unrollsci.imaging`` (imaging/_fbp.py).
    # Kept here as an alias for old code. Lazy, because imaging imports operators.
    if name == "fbp":
        from ..imaging._fbp import fbp

        return fbp
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AdjointOperator",
    "ComposedOperator",
    "Convolution",
    "FanBeam",
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
    "clear_radon_cache",
    "fbp",
    "gram",
    "to_torch_sparse",
]
