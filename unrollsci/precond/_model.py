"""Learned preconditioners: the names of the former single module, re-exported.

The code lives in :mod:`._graph` (:class:`MatrixGraph`, features, :class:`SystemBatch`),
:mod:`._layers` (the message-passing layer), :mod:`._learned`
(:class:`LearnedPreconditioner`), :mod:`._pcg` (:func:`unrolled_pcg`, :func:`pcg_loss`) and
:mod:`._training` (:func:`make_batches`, :func:`fit_preconditioner`). Every name that was
importable from this module before the split still is (benchmarks, tests and checkpoints
written against it keep working).
"""

from __future__ import annotations

# The private and helper names below are re-exported for code that imported them from here.
# ruff: noqa: F401
from ..operators import LinearOperator, SparseOperator
from ._factors import BlockPreconditioner, FactorPreconditioner, InverseFactorPreconditioner
from ._graph import _EDGE_FLIP, MatrixGraph, SystemBatch, _build_graph, _split_edges
from ._incomplete import ic0_from_pattern, mic0_from_pattern
from ._layers import MatrixConv, _make_layer, _mlp, _mlp_t
from ._learned import _BASES, _KINDS, LearnedPreconditioner
from ._ordering import PermutedPreconditioner, reorder
from ._pcg import _steps_to_tol, pcg_loss, unrolled_pcg
from ._poly import ChebyshevPreconditioner, SymmetricMatvec, abs_entries, gershgorin_scaled
from ._sparse import LowerPattern, check_spd_input, lower_matvec, lower_pattern
from ._training import fit_preconditioner, make_batches

__all__ = [
    "LearnedPreconditioner",
    "MatrixGraph",
    "SystemBatch",
    "unrolled_pcg",
    "pcg_loss",
    "make_batches",
    "fit_preconditioner",
]
