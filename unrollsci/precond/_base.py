"""The base class of every preconditioner: a :class:`LinearOperator` that scipy accepts.

A preconditioner follows the vector it is applied to (its values are cast to that vector's
dtype and device), so it reports no dtype of its own (``dtype`` is None). That is also what
lets :func:`scipy.sparse.linalg.aslinearoperator` take it as is: scipy reads ``shape``,
``matvec`` and ``dtype``, and a torch dtype is not one numpy understands. So
``scipy.sparse.linalg.cg(A, b, M=M)`` works with every preconditioner of this package
(scipy then sees float64), as does ``M.to_scipy()``.
"""

from __future__ import annotations

import torch

from ..operators import LinearOperator

__all__ = ["Preconditioner"]


class Preconditioner(LinearOperator):
    """A symmetric operator ``r -> z ~ A^{-1} r`` for :func:`unrollsci.solvers.cg` (``M=``),
    scipy's and PyAMG's Krylov solvers (``M=M`` or ``M=M.to_scipy()``).

    Example:
        >>> import numpy as np, scipy.sparse.linalg as sla
        >>> from unrollsci.precond import diffusion2d, ic0
        >>> A = diffusion2d(8, seed=0)
        >>> x, info = sla.cg(A, np.ones(64), M=ic0(A), rtol=1e-10)
        >>> info, bool(np.linalg.norm(A @ x - 1) <= 1e-10 * 8)
        (0, True)
    """

    @property
    def dtype(self) -> torch.dtype | None:
        """None: a preconditioner computes in the dtype of the vector it is applied to."""
        return None
