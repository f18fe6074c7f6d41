"""Classical iterative solvers as plain functions returning a :class:`Solution`."""

from ._bg_amp import bg_amp
from ._cg import cg, check_symmetric
from ._chebyshev import chebyshev_roots
from ._common import as_operator
from ._gd import gradient_descent
from ._lasso import admm, amp, fista, ista
from ._solution import Solution
from ._steps import (
    admm_step,
    amp_step,
    bg_amp_step,
    bg_denoise,
    fista_momentum,
    ista_step,
    lasso_kkt_residual,
    lasso_objective,
)

__all__ = [
    "Solution",
    "admm",
    "admm_step",
    "amp",
    "amp_step",
    "as_operator",
    "bg_amp",
    "bg_amp_step",
    "bg_denoise",
    "cg",
    "chebyshev_roots",
    "check_symmetric",
    "fista",
    "fista_momentum",
    "gradient_descent",
    "ista",
    "ista_step",
    "lasso_kkt_residual",
    "lasso_objective",
]
