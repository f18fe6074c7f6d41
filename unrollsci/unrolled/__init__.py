"""Unrolled sparse recovery: LISTA family, unrolled FISTA, ADMM-Net, LAMP.

Each model is ``Model(operator, num_layers, lam=..., **options)``, maps
``y: (batch, m)`` to ``x: (batch, n)`` and, untrained, equals ``num_layers``
iterations of the classical algorithm it unrolls.
"""

from ._base import UnrolledLasso, softplus_inverse, support_selection_threshold
from ._diagnostics import error_decomposition
from ._lista import ALISTA, LISTA, LISTACP, analytic_weight
from ._steps import LAMP, ADMMNet, UnrolledFISTA

__all__ = [
    "ADMMNet",
    "ALISTA",
    "LAMP",
    "LISTA",
    "LISTACP",
    "UnrolledFISTA",
    "UnrolledLasso",
    "analytic_weight",
    "error_decomposition",
    "softplus_inverse",
    "support_selection_threshold",
]
