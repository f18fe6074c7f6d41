"""fit's behaviours an audit found wrong: a NaN validation loss read as a normal early stop,
resuming into another configuration or dtype, a checkpoint config refused only after
training, seeds outside the documented range, callbacks and models of the wrong type."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from unrollsci.operators import MatrixOperator
from unrollsci.train import (
    fit,
    fit_layerwise,
    register_checkpoint_class,
    registered_checkpoint_classes,
)
from unrollsci.unrolled import LISTA


def _lista(layers=2, dtype=torch.float64):
    torch.manual_seed(0)
    return LISTA(MatrixOperator(torch.randn(6, 10, dtype=dtype)), layers, lam=0.05)


def _loss(model, batch):
    y, x = batch
    return (model(y) - x).pow(2).mean()


def _data(n=12, dtype=torch.float64):
    g = torch.Generator().manual_seed(1)
    y = torch.randn(n, 6, generator=g, dtype=torch.float64)
    x = torch.randn(n, 10, generator=g, dtype=torch.float64)
    return y.to(dtype), x.to(dtype)


def test_nan_validation_loss_is_an_error():
    yv, xv = _data(7)
    xv = xv.clone()
    xv[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="Validation loss became nan"):
        fit(_lista(), _loss, _data(), val_data=(yv, xv), epochs=5, patience=2, progress=False)


def test_layerwise_refuses_a_nan_validation_set():
    model = _lista()
    yv, xv = _data(7)
    xv = xv.clone()
    xv[1, 2] = float("inf")

    def sampler(batch, gen):
        return _data(batch)

    with pytest.raises(ValueError, match="finite val_data"):
        fit_layerwise(model, sampler, (yv, xv), lr=1e-3, time_budget=1.0)
    with pytest.raises(TypeError, match="lr_decays"):
        fit_layerwise(model, sampler, _data(7), lr=1e-3, lr_decays=0.2, time_budget=1.0)


def test_resume_into_another_configuration_or_dtype_names_the_file(tmp_path):
    path = tmp_path / "fit.pt"
    fit(_lista(3), _loss, _data(), epochs=1, checkpoint=path, progress=False)
    with pytest.raises(ValueError, match="do not fit this LISTA"):
        fit(_lista(4), _loss, _data(), epochs=2, resume=path, progress=False)
    with pytest.raises(ValueError, match="would round them"):
        model32 = _lista(3).float()
        fit(model32, _loss, _data(dtype=torch.float32), epochs=2, resume=path, progress=False)


def test_unstorable_checkpoint_config_is_refused_before_training(tmp_path):
    def my_prox(x, t):
        return x

    model = LISTA(MatrixOperator(torch.randn(6, 10, dtype=torch.float64)), 2, prox=my_prox)
    steps = []
    with pytest.raises(TypeError, match="Cannot store"):
        fit(model, _loss, _data(), epochs=2, checkpoint=tmp_path / "c.pt", progress=False,
            callback=lambda *a: steps.append(a))  # fmt: skip
    assert steps == [] and not (tmp_path / "c.pt").exists()


@pytest.mark.parametrize("seed", [-1, 2**63, 2**64 - 1])
def test_seed_range(seed):
    with pytest.raises(ValueError, match="seed"):
        fit(_lista(), _loss, _data(), epochs=1, seed=seed, progress=False)


def test_types_checked_before_training():
    with pytest.raises(TypeError, match="nn.Module"):
        fit(lambda y: y, _loss, _data(), epochs=1, progress=False)
    with pytest.raises(TypeError, match="callback"):
        fit(_lista(), _loss, _data(), epochs=1, callback=3, progress=False)


def test_register_checkpoint_class_as_a_decorator_with_a_name():
    @register_checkpoint_class(name="audit:MyNet")
    class MyNet(nn.Module):
        def get_config(self):
            return {}

    assert isinstance(MyNet, type)
    assert "audit:MyNet" in registered_checkpoint_classes()
