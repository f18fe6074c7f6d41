"""The sparse-recovery family of unrolled networks (LASSO / compressed sensing).

This subpackage holds exactly: LISTA, LISTA-CP, ALISTA, unrolled FISTA, ADMM-Net,
LAMP and the structured (preconditioned and block) LISTA, their common base
:class:`UnrolledLasso`, and the diagnostics
:func:`error_decomposition`; and, for images, :class:`UnrolledAnalysisFISTA` (FISTA
with learned convolutional steps and analysis shrinkage, matrix-free; its classical prox
is :func:`haar_shrink`). The other unrolled models live with their problem:
:class:`unrollsci.graph.UnrolledGraphGD`, :class:`unrollsci.imaging.UnrolledCT`,
:class:`unrollsci.precond.LearnedPreconditioner`.

Each model is ``Model(operator, num_layers, lam=..., **options)``, maps
``y: (batch, m)`` to ``x: (batch, n)`` and, untrained, equals ``num_layers``
iterations of the classical algorithm it unrolls.

Example:
    >>> import torch
    >>> from unrollsci.operators import MatrixOperator
    >>> from unrollsci.unrolled import LISTA
    >>> A = MatrixOperator(torch.randn(20, 50) / 20**0.5)
    >>> model = LISTA(A, num_layers=5, lam=0.1)
    >>> model(torch.randn(4, 20)).shape
    torch.Size([4, 50])
"""

from ._base import UnrolledLasso, softplus_inverse, support_selection_threshold
from ._deblur import UnrolledAnalysisFISTA, haar_shrink
from ._diagnostics import error_decomposition
from ._lista import ALISTA, LISTA, LISTACP, analytic_weight
from ._models import LAMP, ADMMNet, UnrolledFISTA
from ._structured import BlockLISTA, PreconditionedLISTA, group_layout

__all__ = [
    "ADMMNet",
    "ALISTA",
    "BlockLISTA",
    "LAMP",
    "LISTA",
    "LISTACP",
    "PreconditionedLISTA",
    "UnrolledAnalysisFISTA",
    "UnrolledFISTA",
    "UnrolledLasso",
    "analytic_weight",
    "error_decomposition",
    "haar_shrink",
    "group_layout",
    "softplus_inverse",
    "support_selection_threshold",
]
