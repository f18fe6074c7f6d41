"""Learned preconditioners trained through unrolled preconditioned CG.

``LearnedPreconditioner(kind="factor"|"inverse"|"block")`` predicts the values of a
sparse factor from a GNN over the matrix graph (``kind="poly"``: a learned polynomial in
``A``); ``M = model.build(A)`` is SPD by
construction and plugs into :func:`unrollsci.solvers.cg`. Classical baselines:
:func:`jacobi`, :func:`ic0`, :func:`mic0`, :func:`amg` (PyAMG), :func:`chebyshev`
(polynomial, mat-vecs only); ``ordering=`` on :func:`ic0`, :func:`mic0` and
``LearnedPreconditioner`` picks among candidate orderings (:func:`grid_orderings`, RCM) the
one whose incomplete factor drops the least positive fill (:func:`select_ordering`).
Every preconditioner is a :class:`Preconditioner`, which scipy's and PyAMG's Krylov solvers
take as it is (``scipy.sparse.linalg.cg(A, b, M=ic0(A))``) or as ``M.to_scipy()``.
Families of systems:
:func:`diffusion2d`, :func:`anisotropic2d`, :func:`graph_laplacian`, :func:`matrix_family`,
:func:`load_matrices` (a user's own family, from files).
"""

import importlib
from typing import TYPE_CHECKING, Any

from ._base import Preconditioner
from ._classical import AMGPreconditioner, DiagonalPreconditioner, amg, jacobi
from ._factors import BlockPreconditioner, FactorPreconditioner, InverseFactorPreconditioner
from ._families import (
    FAMILIES,
    anisotropic2d,
    diffusion2d,
    graph_laplacian,
    load_matrices,
    matrix_family,
)
from ._graph import MatrixGraph, SystemBatch
from ._incomplete import ICBreakdownError, ic0, mic0
from ._ordering import (
    PermutedPreconditioner,
    candidate_orderings,
    dropped_fill,
    grid_orderings,
    reorder,
    select_ordering,
)
from ._pcg import pcg_loss, unrolled_pcg
from ._poly import ChebyshevPreconditioner, chebyshev
from ._sparse import LowerPattern, lower_pattern, tri_solve

if TYPE_CHECKING:
    from ._learned import LearnedPreconditioner
    from ._training import fit_preconditioner, make_batches

# The learned model's GNN layer subclasses torch_geometric's MessagePassing, whose import is
# slow: these names load it on first use, so the classical preconditioners do not pay for it.
_LAZY = {
    "LearnedPreconditioner": "._learned",
    "fit_preconditioner": "._training",
    "make_batches": "._training",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "AMGPreconditioner",
    "BlockPreconditioner",
    "ChebyshevPreconditioner",
    "DiagonalPreconditioner",
    "FAMILIES",
    "FactorPreconditioner",
    "ICBreakdownError",
    "InverseFactorPreconditioner",
    "LearnedPreconditioner",
    "LowerPattern",
    "MatrixGraph",
    "PermutedPreconditioner",
    "Preconditioner",
    "SystemBatch",
    "amg",
    "anisotropic2d",
    "candidate_orderings",
    "chebyshev",
    "diffusion2d",
    "dropped_fill",
    "fit_preconditioner",
    "graph_laplacian",
    "grid_orderings",
    "ic0",
    "jacobi",
    "load_matrices",
    "lower_pattern",
    "make_batches",
    "matrix_family",
    "mic0",
    "pcg_loss",
    "reorder",
    "select_ordering",
    "tri_solve",
    "unrolled_pcg",
]
