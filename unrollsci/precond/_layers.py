"""Layers of the learned preconditioner's GNN.

:class:`MatrixConv` is the message-passing layer, defined at module level so that a model
holding it can be pickled and copied; ``_mlp`` / ``_mlp_t`` are the small MLP heads.
"""

from __future__ import annotations

import torch
from torch import nn

from .._compat import message_passing

__all__ = ["MatrixConv"]

# torch_geometric is a core dependency; imported here with its import-time deprecations
# silenced (see unrollsci._compat).
MessagePassing = message_passing()


def _mlp(i: int, h: int, o: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(i, h), nn.SiLU(), nn.Linear(h, o))


def _mlp_t(mlp: nn.Sequential, xt: torch.Tensor) -> torch.Tensor:
    """``_mlp`` (Linear, SiLU, Linear) applied to feature-major input ``xt: (in, N)``."""
    first, act, last = mlp
    y = act(torch.addmm(first.bias[:, None], first.weight, xt))
    return torch.addmm(last.bias[:, None], last.weight, y)


class MatrixConv(MessagePassing):
    """Edge-conditioned message passing over the matrix graph; edge states are updated.

    ``m_ij = silu(W_s h_j + W_t h_i + W_e e_ij)``, ``h_i += silu(U [h_i, mean_j m_ij])``,
    ``e_ij += m_ij``. The per-edge work is two gathers and one ``h x h`` product, so a
    forward pass costs O(nnz(A) h^2) and stays cheap next to an IC(0) setup.

    Args:
        h: width of the node and edge states.
    """

    def __init__(self, h: int) -> None:
        super().__init__(aggr="mean")
        self.src = nn.Linear(h, h)
        self.dst = nn.Linear(h, h, bias=False)
        self.edge = nn.Linear(h, h, bias=False)
        self.upd = nn.Linear(2 * h, h)

    def forward(
        self, x: torch.Tensor, edge_index: torch.Tensor, e: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        m = nn.functional.silu(
            self.src(x)[edge_index[0]] + self.dst(x)[edge_index[1]] + self.edge(e)
        )
        agg = self.propagate(edge_index, m=m, size=(x.shape[0], x.shape[0]))
        return x + nn.functional.silu(self.upd(torch.cat([x, agg], dim=-1))), e + m

    def message(self, m: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return m


def _make_layer(hidden: int) -> MatrixConv:
    """One :class:`MatrixConv` of width ``hidden``."""
    return MatrixConv(hidden)
