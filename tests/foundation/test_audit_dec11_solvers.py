"""Round dec11 of the audits ("dec11" names the round, not a date): solver loose ends."""

from __future__ import annotations

import pytest
import torch

from unrollsci.operators import LinearOperator
from unrollsci.solvers import cg


class _InfAt(LinearOperator):
    """diag(1..6), with one Inf entry in the product of call ``at`` (system 1)."""

    in_shape = (6,)
    out_shape = (6,)

    def __init__(self, at: int) -> None:
        super().__init__()
        self.calls, self.at = 0, at
        self.register_buffer("d", torch.arange(1.0, 7.0, dtype=torch.float64))

    def _mv(self, v):
        self.calls += 1
        out = v * self.d
        if self.calls == self.at:
            out = out.clone()
            out[1, 0] = float("inf")
        return out

    def _rmv(self, v):
        return v * self.d


@pytest.mark.parametrize("k", [1, 2, 3])
def test_cg_inf_curvature_at_the_last_iteration_raises(k):
    """With several systems an Inf p^T A p at iteration max_iter has no later check to turn
    it into a NaN residual: it raised nothing and returned a NaN residual history."""
    b = torch.stack([torch.ones(6), torch.arange(1.0, 7.0)]).double()
    with pytest.raises(ValueError, match=r"p\^T A p = inf is not finite"):
        cg(_InfAt(k), b, max_iter=k, check=False)


def test_cg_inf_before_the_last_iteration_still_raises():
    b = torch.stack([torch.ones(6), torch.arange(1.0, 7.0)]).double()
    with pytest.raises(ValueError, match="not finite"):
        cg(_InfAt(2), b, max_iter=5, check=False)
