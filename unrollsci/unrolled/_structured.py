"""Structured LISTA: per-layer learned diagonal and block-diagonal preconditioners.

Layer ``k`` is the ISTA step with ``t A^T`` replaced by ``W_k A^T`` for a learned SPD
``W_k`` that shares the signal's structure: ``x_{k+1} = prox(x_k - W_k A^T (A x_k - y),
theta_k)``. Only ``A`` and ``A^T`` are applied (matrix-free): the parameters are
``O(n)`` (diagonal) or ``O(n g)`` (blocks of size ``g``) per layer, never ``n x n``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from .._validation import check_count
from ..prox import check_groups
from ._base import UnrolledLasso, softplus_inverse

__all__ = ["PreconditionedLISTA", "BlockLISTA", "group_layout"]

_FLOOR = 1e-4  # smallest eigenvalue of a block, relative to the initial step 1 / ||A||^2


def group_layout(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded layout of groups of any sizes.

    Args:
        labels: ``(n,)`` integer group labels in ``0..G-1`` (each used at least once).

    Returns:
        ``(index, position)``: ``index: (G, s)`` (``s`` the largest group size) lists
        each group's entries in increasing order, padded with ``n`` (a zero slot);
        ``position: (n,)`` is where entry ``i`` sits in ``index.reshape(-1)``.
    """
    if isinstance(labels, torch.Tensor) and labels.dim() == 1 and labels.shape[0] == 0:
        raise ValueError("Expected at least one group label (got an empty tensor).")
    n = labels.shape[0] if isinstance(labels, torch.Tensor) and labels.dim() == 1 else -1
    labels = check_groups(labels, n)  # integer, 1-D, >= 0: clear errors before bincount
    dev = labels.device  # outputs on the labels' device
    count = int(labels.max()) + 1
    sizes = torch.bincount(labels, minlength=count)
    if bool((sizes == 0).any()):
        empty = int(torch.nonzero(sizes == 0)[0])
        raise ValueError(
            f"Expected group labels 0..{count - 1}, each used at least once (label {empty} "
            "has no entry)."
        )
    s = int(sizes.max())
    order = torch.argsort(labels, stable=True)
    starts = torch.cumsum(sizes, 0) - sizes
    slot = torch.arange(n, device=dev) - starts[labels[order]]  # rank inside its group
    index = torch.full((count, s), n, dtype=torch.int64, device=dev)
    index[labels[order], slot] = order
    position = torch.empty(n, dtype=torch.int64, device=dev)
    position[order] = labels[order] * s + slot
    return index, position


class PreconditionedLISTA(UnrolledLasso):
    """LISTA with per-layer learned diagonal preconditioners (matrix-free).

    ``x_{k+1} = prox(x_k - D_k A^T (A x_k - y), theta_k)`` from ``x_0 = 0``, with
    ``D_k = diag(softplus(d_k) + tiny)`` (positive by construction: softplus alone is 0
    below about -104 in float32) and a threshold
    ``theta_k > 0`` per layer. Initialised at ISTA: ``D_k = I / ||A||^2`` and
    ``theta_k = lam / ||A||^2``, so the untrained model equals ``num_layers`` ISTA
    iterations with the same prox (:func:`unrollsci.solvers.ista` with ``prox=``).
    Uses only ``A`` and ``A^T``: ``n + 1`` parameters per layer.

    Args:
        operator, num_layers, lam, dtype: as :class:`LISTA`.
        prox: thresholding step (:func:`unrollsci.prox.make_prox`; default soft).

    Example:
        >>> import torch
        >>> from unrollsci.operators import MatrixOperator
        >>> A = MatrixOperator(torch.randn(20, 40) / 20**0.5)
        >>> PreconditionedLISTA(A, 4, lam=0.1)(torch.randn(3, 20)).shape
        torch.Size([3, 40])
    """

    def __init__(
        self,
        operator: Any,
        num_layers: int,
        *,
        lam: float = 0.1,
        dtype: torch.dtype | None = None,
        prox: Any = None,
    ) -> None:
        super().__init__(operator, num_layers, lam=lam, dtype=dtype, prox=prox)
        lip = self._lipschitz()
        t = 1.0 / lip
        self._check_range(**{"||A||^2": lip, "1/||A||^2": t})
        self.diag = nn.Parameter(
            self._positive(t, num_layers * self.n).detach().reshape(num_layers, self.n)
        )
        self.theta = self._positive(t * self.lam, num_layers)

    def preconditioner(self, k: int) -> torch.Tensor:
        """The positive diagonal of ``D_k`` (layer ``k``, 0-based), shape ``(n,)``."""
        return self._pos(self.diag[k], self.diag)

    def _run(self, y: torch.Tensor, num_layers: int) -> list[torch.Tensor]:
        d = self._pos(self.diag, y)
        theta = self._pos(self.theta, y)
        prox, op = self.prox_fn, self.operator
        x = y.new_zeros(y.shape[0], self.n)
        xs = []
        for k in range(num_layers):
            x = prox(x - d[k] * op.rmv(op.mv(x) - y), theta[k])
            xs.append(x)
        return xs


class BlockLISTA(UnrolledLasso):
    """Block-LISTA for group-sparse signals: per-layer learned block-diagonal preconditioners.

    ``x_{k+1} = prox(x_k - W_k A^T (A x_k - y), theta_k)`` from ``x_0 = 0`` with
    ``W_k = blockdiag(P_{k,g})`` over the signal's groups and, by default, the group soft
    threshold over the same groups (:func:`unrollsci.prox.group_soft_threshold`) with a
    learned threshold ``theta_k > 0`` per layer. Each block is ``P = L L^T + f I`` with
    ``L`` lower triangular with a positive (softplus) diagonal and ``f = 10^-4 / ||A||^2``,
    so every ``P_{k,g}`` and every ``W_k`` is symmetric positive definite for any weights,
    with eigenvalues ``>= f`` (a floor that rounding cannot erase). Initialised at group-ISTA:
    ``P = I / ||A||^2``, ``theta = lam / ||A||^2``, so the untrained model equals
    ``num_layers`` iterations of :func:`unrollsci.solvers.ista` with the group prox, from
    ``x_0 = 0`` and step ``1 / ||A||^2``. Uses only ``A`` and ``A^T``; the parameters are
    ``K (sum_g s_g (s_g + 1) / 2 + 1)`` (for ``group_size = 1``: a diagonal preconditioner).

    Args:
        operator, num_layers, lam, dtype: as :class:`LISTA`.
        group_size: groups of ``group_size`` consecutive entries (must divide ``n``).
        groups: instead, one integer label per entry (``0..G-1``, each used): groups
            of any sizes, entries of a group need not be consecutive.
        prox: thresholding step; default: group soft threshold over these groups.

    Example:
        >>> import torch
        >>> from unrollsci.operators import MatrixOperator
        >>> A = MatrixOperator(torch.randn(20, 40) / 20**0.5)
        >>> BlockLISTA(A, 4, group_size=5, lam=0.1)(torch.randn(3, 20)).shape
        torch.Size([3, 40])
    """

    def __init__(
        self,
        operator: Any,
        num_layers: int,
        group_size: int | None = None,
        *,
        groups: torch.Tensor | None = None,
        lam: float = 0.1,
        dtype: torch.dtype | None = None,
        prox: Any = None,
    ) -> None:
        if (group_size is None) == (groups is None):
            raise ValueError(
                "BlockLISTA needs exactly one of 'group_size' (consecutive groups) and "
                "'groups' (one integer label per entry)."
            )
        self.group_size = check_count("group_size", group_size, optional=True)
        if groups is not None and not isinstance(groups, torch.Tensor):
            raise TypeError(
                f"Expected 'groups' to be an integer torch.Tensor (got {type(groups).__name__})."
            )
        # a copy: the caller's tensor may change after this
        self.groups = None if groups is None else groups.detach().cpu().clone()
        super().__init__(operator, num_layers, lam=lam, dtype=dtype, prox=prox)
        if self.group_size is not None:
            if self.group_size < 1 or self.n % self.group_size:
                raise ValueError(
                    f"Expected group_size >= 1 dividing the signal length {self.n} "
                    f"(got {self.group_size})."
                )
            labels = torch.arange(self.n) // self.group_size
        else:
            labels = check_groups(self.groups, self.n)
        index, position = group_layout(labels)
        self.register_buffer("index", index.to(self._device), persistent=False)
        self.register_buffer("position", position.to(self._device), persistent=False)
        count, s = index.shape
        lip = self._lipschitz()
        t = 1.0 / lip
        self._check_range(**{"||A||^2": lip, "1/||A||^2": t})
        # P = L L^T + floor I: eigenvalues >= floor for any weights (in floating point while
        # the rounding of L L^T, about eps ||L||^2, stays below floor: not for factors whose
        # products overflow, e.g. float32 entries near 1e19)
        self.floor = _FLOOR * t
        raw = torch.zeros(num_layers, count, s, s, dtype=torch.float64)
        raw[..., range(s), range(s)] = softplus_inverse(math.sqrt(t - self.floor))
        self.blocks = nn.Parameter(raw.to(device=self._device, dtype=self.param_dtype))
        self.theta = self._positive(t * self.lam, num_layers)

    def _default_prox(self) -> Any:
        if self.group_size is not None:
            return {"kind": "group", "group_size": self.group_size}
        return {"kind": "group", "groups": self.groups}

    def _options(self) -> dict[str, Any]:
        if self.group_size is not None:
            return {"group_size": self.group_size}
        return {"groups": self.groups.clone()}

    @property
    def num_groups(self) -> int:
        """Number of groups ``G``."""
        return int(self.index.shape[0])

    def block_factors(self) -> torch.Tensor:
        """The factors ``L: (K, G, s, s)``: lower triangular with a positive diagonal."""
        raw = self.blocks
        diag = F.softplus(torch.diagonal(raw, dim1=-2, dim2=-1))
        return torch.tril(raw, -1) + torch.diag_embed(diag)

    def preconditioner_blocks(self, k: int) -> torch.Tensor:
        """The SPD blocks ``P_{k,g} = L L^T + f I`` of layer ``k`` (0-based), ``(G, s, s)``; for a
        group smaller than ``s`` its leading ``size x size`` corner (the rest acts on
        padding and is never used)."""
        return self._blocks_spd(self.block_factors()[k])

    def _blocks_spd(self, lf: torch.Tensor) -> torch.Tensor:
        eye = torch.eye(lf.shape[-1], dtype=lf.dtype, device=lf.device)
        return lf @ lf.transpose(-1, -2) + self.floor * eye

    def apply_preconditioner(self, k: int, v: torch.Tensor) -> torch.Tensor:
        """``W_k v`` for ``v: (batch, n)`` (layer ``k``, 0-based)."""
        return self._apply_blocks(self.preconditioner_blocks(k), v)

    def _apply_blocks(self, p: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        b = v.shape[0]
        if self.group_size is not None:  # consecutive equal groups: a reshape, no gather
            g = self.n // self.group_size  # explicit: -1 is ambiguous for an empty batch
            vg = v.reshape(b, g, self.group_size).transpose(0, 1)  # (G, batch, s)
            return torch.bmm(vg, p).transpose(0, 1).reshape(b, self.n)  # P symmetric
        padded = torch.cat([v, v.new_zeros(b, 1)], dim=1)
        vg = padded.index_select(1, self.index.reshape(-1)).reshape(b, *self.index.shape)
        out = torch.bmm(vg.transpose(0, 1), p).transpose(0, 1).reshape(b, vg.shape[1] * vg.shape[2])
        return out.index_select(1, self.position)

    def _run(self, y: torch.Tensor, num_layers: int) -> list[torch.Tensor]:
        p = self._blocks_spd(self.block_factors())
        theta = self._pos(self.theta, y)
        prox, op = self.prox_fn, self.operator
        x = y.new_zeros(y.shape[0], self.n)
        xs = []
        for k in range(num_layers):
            x = prox(x - self._apply_blocks(p[k], op.rmv(op.mv(x) - y)), theta[k])
            xs.append(x)
        return xs
