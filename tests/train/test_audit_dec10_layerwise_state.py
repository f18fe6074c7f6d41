"""``layer_nmse_db`` and ``fit_layerwise`` give the model back as it came when they raise:
its train/eval mode, its depth (``active_layers``) and no parameter left frozen
(``requires_grad=False``, which a later optimizer would silently skip). Audit round
"dec10" (global state); each test fails on the code before the fix."""

from __future__ import annotations

import pytest
import torch

from unrollsci.operators import MatrixOperator
from unrollsci.train import fit_layerwise, layer_nmse_db
from unrollsci.unrolled import LISTA

g0 = torch.Generator().manual_seed(0)
A = torch.randn(20, 40, generator=g0, dtype=torch.float64) / 20**0.5


def draw(g):
    x = torch.randn(16, 40, generator=g, dtype=torch.float64)
    x = x * (torch.rand(16, 40, generator=g, dtype=torch.float64) < 0.1)
    return x @ A.T, x


def test_layer_nmse_db_restores_train_mode_when_the_model_raises():
    model = LISTA(MatrixOperator(A), 3)
    model.train()
    y, x = draw(torch.Generator().manual_seed(1))
    with pytest.raises((TypeError, ValueError, RuntimeError)):
        layer_nmse_db(model, y.float(), x.float())  # float32 data, float64 model
    assert model.training


class _FailsAtLayer2Validation(LISTA):
    def forward(self, y, **kw):
        if not torch.is_grad_enabled() and self.active_layers == 2:
            raise MemoryError("simulated: out of memory in layer 2's validation pass")
        return super().forward(y, **kw)


def test_fit_layerwise_leaves_no_parameter_frozen_and_the_depth_as_it_came():
    model = _FailsAtLayer2Validation(MatrixOperator(A), 3)
    model.train()
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    depth = model.active_layers
    with pytest.raises(MemoryError):
        fit_layerwise(
            model,
            draw,
            draw(torch.Generator().manual_seed(2)),
            lr=1e-2,
            max_steps=5,
            val_every=5,
            lr_decays=(0.2,),
        )
    assert {n: p.requires_grad for n, p in model.named_parameters()} == before
    assert model.active_layers == depth
    assert model.training
