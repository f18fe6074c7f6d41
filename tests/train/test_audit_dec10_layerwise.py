"""``fit_layerwise`` refuses a NaN/Inf gradient of a finite loss (as ``fit`` does) instead of
letting Adam write NaN into the constants (the layer-wise trainer checked only the loss)."""

from __future__ import annotations

import pytest
import torch

from unrollsci.operators import MatrixOperator
from unrollsci.train import fit_layerwise
from unrollsci.unrolled import ALISTA


def test_fit_layerwise_refuses_a_nan_gradient_of_a_finite_loss():
    g0 = torch.Generator().manual_seed(0)
    A = torch.randn(20, 40, generator=g0) / 20**0.5

    def draw(g, n=16):
        x = torch.randn(n, 40, generator=g) * (torch.rand(n, 40, generator=g) < 0.1)
        return x @ A.T, x

    model = ALISTA(MatrixOperator(A), 2, lam=0.1)
    model.gamma.register_hook(lambda g: g * float("nan"))  # the loss stays finite
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(FloatingPointError, match=r"layer 1, step 0.*gamma"):
        fit_layerwise(model, draw, draw(g0), max_steps=3, val_every=1)
    for n, p in model.named_parameters():
        assert torch.isfinite(p).all(), n
        assert torch.equal(p.detach(), before[n]), n
