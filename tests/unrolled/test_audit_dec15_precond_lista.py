"""Audit round dec15 ("dec15" names the round, not a date): ``PreconditionedLISTA``'s
diagonal preconditioner ``D_k`` is positive for every weight, as its docstring says
(``softplus`` alone is exactly 0 below about -104 in float32, a zero step: the layer then
only thresholds)."""

from __future__ import annotations

import pytest
import torch

from unrollsci.operators import MatrixOperator
from unrollsci.unrolled import PreconditionedLISTA


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_preconditioner_positive_for_very_negative_weights(dtype):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(20, 40, generator=g, dtype=dtype) / 20**0.5
    model = PreconditionedLISTA(MatrixOperator(a), 3, lam=0.1, dtype=dtype)
    with torch.no_grad():
        model.diag.fill_(-1000.0)
    for k in range(3):
        assert bool((model.preconditioner(k) > 0).all())
    # the forward pass uses the same D_k: a step is taken, so x depends on y beyond the
    # threshold's zero (a tiny step from x = 0 gives tiny, nonzero entries before the prox)
    with torch.no_grad():
        model.theta.fill_(-1000.0)  # threshold ~tiny: the prox keeps the step
    y = torch.randn(2, 20, generator=g, dtype=dtype)
    x = model(y)
    assert bool(torch.isfinite(x).all())
    assert bool((x != 0).any())


def test_ordinary_weights_unchanged():
    """``softplus(raw) + tiny`` has the bits of ``softplus(raw)`` at ordinary values."""
    g = torch.Generator().manual_seed(1)
    a = torch.randn(20, 40, generator=g) / 20**0.5
    model = PreconditionedLISTA(MatrixOperator(a), 2, lam=0.1)
    assert torch.equal(model.preconditioner(1), torch.nn.functional.softplus(model.diag[1]))
