"""The refiner's power-iteration buffers under huge or non-finite weights (an audit of the
'for any weights' promises, December 7)."""

from __future__ import annotations

import pytest
import torch

from unrollsci.imaging import ConvexRidgeCT, Radon, random_ellipses


def _model():
    op = Radon(32, 20)
    y = op(random_ellipses(2, 32, generator=torch.Generator().manual_seed(0)))
    return ConvexRidgeCT(op, n_layers=2, filters=4, refine={"channels": 4, "depth": 3}), y


def test_refiner_survives_one_training_step_at_huge_weights():
    """One training-mode forward at weights x1e20 (float32, a diverged step) wrote NaN into
    the power-iteration buffers: every later output was NaN, even after the weights were
    restored, while lipschitz_bound() reported a finite number."""
    model, y = _model()
    saved = [w.detach().clone() for w in model.refiner.weights]
    with torch.no_grad():
        for w in model.refiner.weights:
            w.mul_(1e20)
        model.train()
        model(y)
        assert all(torch.isfinite(b).all() for _, b in model.refiner.named_buffers())
        for w, s in zip(model.refiner.weights, saved, strict=True):
            w.copy_(s)
        model.eval()
        out = model(y)
    assert torch.isfinite(out).all()
    assert torch.isfinite(torch.tensor(model.lipschitz_bound()))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_refiner_bound_refuses_non_finite_weights(bad):
    """max(1.0, nan) is 1.0 in Python: a NaN weight's estimate was read as 1. The refusal is
    the CT models' ValueError naming the parameter (it was a FloatingPointError)."""
    model, _ = _model()
    with torch.no_grad():
        model.refiner.weights[0].view(-1)[0] = bad
    with pytest.raises(ValueError, match=r"weights\.0 \("):
        model.refiner.lipschitz_bound()
    with pytest.raises(ValueError, match="finite weights"):
        model.lipschitz_bound()
