"""The operator core, importable from here: :class:`LinearOperator` and its helpers.

Split by topic: :mod:`._linear` (the :class:`LinearOperator` base), :mod:`._compose`
(``ComposedOperator``, ``SumOperator``, ``ScaledOperator``, ``AdjointOperator``),
:mod:`._check_adjoint` (:func:`check_adjoint`) and :mod:`._checks` (``check_real``,
``check_dtype_supported``, ``tensor_key``). Every name stays importable from this module.
"""

from __future__ import annotations

from ._check_adjoint import check_adjoint
from ._checks import check_dtype_supported, check_real, tensor_key  # noqa: F401  (re-exported)
from ._compose import (  # noqa: F401  (private helpers: re-exported)
    AdjointOperator,
    ComposedOperator,
    ScaledOperator,
    SumOperator,
    _common_dtypes,
    _first_device,
)
from ._linear import LinearOperator

__all__ = [
    "LinearOperator",
    "ComposedOperator",
    "SumOperator",
    "ScaledOperator",
    "AdjointOperator",
    "check_adjoint",
]
