"""Operators that apply a preconditioner given by a sparse lower-triangular factor.

:class:`FactorPreconditioner` (``M^{-1} = L L^T``, two triangular solves; IC(0), MIC(0) and
the learned ``kind="factor"``), :class:`InverseFactorPreconditioner` (``M = G G^T``, two
mat-vecs) and :class:`BlockPreconditioner` (block-diagonal ``L_b L_b^T``).
"""

from __future__ import annotations

from typing import Any

import torch

from ..operators._checks import tensor_key
from ._base import Preconditioner
from ._sparse import LowerPattern, lower_matvec, tri_solve

__all__ = ["FactorPreconditioner", "InverseFactorPreconditioner", "BlockPreconditioner"]


def _like(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return t if (t.dtype == x.dtype and t.device == x.device) else t.to(x.device, x.dtype)


class _LowerFactorOperator(Preconditioner):
    """Shared state of the preconditioners built from one sparse lower-triangular factor."""

    def __init__(self, pattern: LowerPattern, values: torch.Tensor) -> None:
        super().__init__()
        self.pattern = pattern.to(values.device)
        self.values = values
        self.in_shape = self.out_shape = (pattern.n,)
        self.cacheable_norm = False

    @property
    def nnz(self) -> int:
        """Stored entries of the factor."""
        return self.pattern.nnz


class FactorPreconditioner(_LowerFactorOperator):
    """``M^{-1} = L L^T`` approximates ``A``; applies ``z = L^{-T} L^{-1} r`` by two sparse
    triangular solves (differentiable in ``values`` and ``r``).

    Args:
        pattern: lower-triangular CSR pattern of ``L`` (diagonal included).
        values: ``(nnz,)`` values of ``L`` in CSR order; the diagonal must be > 0.
    """

    def factor(self) -> Any:
        """``L`` as a scipy CSR matrix."""
        return self.pattern.scipy(self.values)

    def _mv(self, r: torch.Tensor) -> torch.Tensor:
        v = _like(self.values, r)
        y = tri_solve(self.pattern, v, r)
        return tri_solve(self.pattern, v, y, transpose=True)

    _rmv = _mv

    def approx(self, x: torch.Tensor) -> torch.Tensor:
        """``L L^T x``: the matrix this preconditioner approximates ``A`` by."""
        v = _like(self.values, x)
        return lower_matvec(self.pattern, v, lower_matvec(self.pattern, v, x, transpose=True))


class InverseFactorPreconditioner(_LowerFactorOperator):
    """Factorized sparse approximate inverse ``M = G G^T`` (``G`` sparse lower-triangular):
    ``z = G (G^T r)``, two sparse mat-vecs and no triangular solve."""

    def _mv(self, r: torch.Tensor) -> torch.Tensor:
        v = _like(self.values, r)
        return lower_matvec(self.pattern, v, lower_matvec(self.pattern, v, r, transpose=True))

    _rmv = _mv


class BlockPreconditioner(Preconditioner):
    """Block-diagonal ``M^{-1} = blockdiag(L_b L_b^T)``, ``L_b`` lower-triangular with positive
    diagonal. The block inverses ``L_b^{-1}`` are formed by batched triangular solves and,
    without a graph to ``values``, kept until ``values`` change, so each application is two
    batched dense mat-vecs.

    Args:
        pattern: lower pattern whose off-diagonal entries all lie inside blocks of
            ``block_size`` consecutive unknowns.
        values: ``(nnz,)`` factor values (diagonal > 0).
        block_size: size of the diagonal blocks (the last block may be shorter).
    """

    def __init__(self, pattern: LowerPattern, values: torch.Tensor, block_size: int) -> None:
        super().__init__()
        n = pattern.n
        self.pattern = pattern.to(values.device)
        self.values = values  # an nn.Parameter is registered (trained in place)
        self._inv: dict[tuple[torch.dtype, torch.device, bool], tuple[Any, torch.Tensor]] = {}
        self.block_size = int(block_size)
        self.n_blocks = -(-n // self.block_size)
        self.in_shape = self.out_shape = (n,)
        self.cacheable_norm = False
        bs = self.block_size
        row, col = self.pattern.row, self.pattern.col
        if bool(((row // bs) != (col // bs)).any()):
            raise ValueError("BlockPreconditioner: the pattern has entries outside the blocks.")
        self._flat = (row // bs) * bs * bs + (row % bs) * bs + (col % bs)
        pad = self.n_blocks * bs - n
        self._pad = pad

    @property
    def nnz(self) -> int:
        """Stored entries of the block factors' sparse pattern."""
        return self.pattern.nnz

    def blocks(self, like: torch.Tensor) -> torch.Tensor:
        """The dense factors ``(n_blocks, bs, bs)`` (padding rows get a unit diagonal)."""
        bs, nb = self.block_size, self.n_blocks
        v = _like(self.values, like)
        flat = v.new_zeros(nb * bs * bs).index_add(0, self._flat.to(v.device), v)
        blk = flat.view(nb, bs, bs)
        if self._pad:
            eye = torch.zeros(nb, bs, bs, dtype=v.dtype, device=v.device)
            idx = torch.arange(bs - self._pad, bs, device=v.device)
            eye[-1, idx, idx] = 1.0
            blk = blk + eye
        return blk

    def inverse_blocks(self, like: torch.Tensor) -> torch.Tensor:
        """``L_b^{-1}`` for every block (batched triangular solves).

        The inverses are cached per dtype, device and grad mode, and formed again once
        ``values`` is replaced or modified in place (an optimizer step, ``mul_``). Where
        ``values`` is a leaf that requires grad (trained in place) they are formed on every
        call under autograd: a cached graph would be freed by the first ``backward`` while
        the leaf lives on. Values computed by a network (``LearnedPreconditioner("block")``
        builds a new preconditioner per forward) keep their inverses for that forward.
        """
        v = self.values
        graph = torch.is_grad_enabled() and v.requires_grad
        if graph and v.grad_fn is None:
            return self._invert(like)
        key = (like.dtype, like.device, graph)
        src = tensor_key(v)
        hit = self._inv.get(key)
        if hit is None or hit[0] != src:
            hit = (src, self._invert(like))
            self._inv[key] = hit
        return hit[1]

    def _invert(self, like: torch.Tensor) -> torch.Tensor:
        blk = self.blocks(like)
        eye = torch.eye(self.block_size, dtype=blk.dtype, device=blk.device)
        return torch.linalg.solve_triangular(blk, eye.expand_as(blk), upper=False)

    def _mv(self, r: torch.Tensor) -> torch.Tensor:
        bs, nb = self.block_size, self.n_blocks
        inv = self.inverse_blocks(r)
        batch, n = r.shape
        rp = torch.nn.functional.pad(r, (0, self._pad)).view(batch, nb, bs).permute(1, 2, 0)
        y = inv @ rp  # L_b^{-1} r_b: dense small blocks, two batched mat-vecs per apply
        z = inv.transpose(-1, -2) @ y
        return z.permute(2, 0, 1).reshape(batch, nb * bs)[:, :n]

    _rmv = _mv
