"""UnrolledCT with non-finite weights (an audit, December 8): the certificate was NaN (or
finite for a NaN bias) and eval() accepted them silently; the training power iteration
stored a NaN step for good. Also deepcopy of a model on a matrix Radon."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

from unrollsci.imaging import Radon, UnrolledCT, lipschitz_bound

NAN, INF = float("nan"), float("inf")


def _model(**kw) -> UnrolledCT:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = UnrolledCT(Radon(16, 12, method="matrix"), n_layers=2, channels=4, **kw)
    with torch.no_grad():  # a trained-looking last conv (it starts at zero)
        for block in model.blocks:
            block.convs[-1].conv.weight.normal_(std=0.1)
    return model


def _sino() -> torch.Tensor:
    return torch.rand(2, 12, 16, generator=torch.Generator().manual_seed(1))


# parameter -> the entry made non-finite: a conv weight, a step logit, a bias
POISON = {
    "blocks.0.convs.0.conv.weight": (0, 0, 0, 0),
    "step_logits": (1,),
    "blocks.1.convs.1.conv.bias": (0,),
}


def _poison(model: UnrolledCT, name: str, value: float) -> None:
    with torch.no_grad():
        dict(model.named_parameters())[name][POISON[name]] = value


@pytest.mark.parametrize("cap", [{}, {"cnn_lipschitz": 2.0}, {"lipschitz_target": 5.0}])
@pytest.mark.parametrize("value", [NAN, INF])
@pytest.mark.parametrize("name", list(POISON))
def test_bound_refuses_non_finite_weights(name, value, cap):
    """The bound was NaN for a NaN conv weight or step, and finite for a NaN bias (whose
    outputs are all NaN)."""
    model = _model(**cap)
    _poison(model, name, value)
    kind = "1 NaN and 0 Inf" if value != INF else "0 NaN and 1 Inf"
    with pytest.raises(ValueError, match=rf"finite weights.*{name} \({kind}"):
        lipschitz_bound(model)
    with pytest.raises(ValueError, match=name):
        lipschitz_bound(model, details=True)
    assert model.training  # refused before switching modes


def test_bound_names_every_non_finite_parameter():
    model = _model(cnn_lipschitz=2.0)
    for name in POISON:
        _poison(model, name, NAN)
    with pytest.raises(ValueError) as err:
        lipschitz_bound(model)
    assert all(name in str(err.value) for name in POISON)


def test_bound_of_finite_weights_is_finite_and_certified():
    model = _model(lipschitz_target=5.0)
    cert = lipschitz_bound(model, details=True)
    assert 0.0 < cert.bound <= 5.0
    assert all(0.0 < layer["bound"] <= cert.bound for layer in cert.layers)


@pytest.mark.parametrize("value", [NAN, INF])
def test_eval_refuses_a_capped_conv_with_non_finite_weights(value):
    """eval() computes each capped conv's bound into a host float anyway: a NaN weight made
    it NaN and every evaluated output NaN, silently."""
    model = _model(cnn_lipschitz=2.0)
    _poison(model, "blocks.0.convs.0.conv.weight", value)
    with pytest.raises(ValueError, match=r"blocks\.0\.convs\.0\.conv\.weight"):
        model.eval()
    with torch.no_grad():  # repaired: eval() and the outputs are fine again
        model.blocks[0].convs[0].conv.weight[0, 0, 0, 0] = 0.1
    model.eval()
    assert torch.isfinite(model(_sino())).all()


def test_eval_of_uncapped_model_does_not_check():
    """No cap: eval() computes no bound (no host sync to add); the certificate refuses."""
    model = _model()
    _poison(model, "blocks.0.convs.0.conv.weight", NAN)
    model.eval()
    with pytest.raises(ValueError, match="finite weights"):
        lipschitz_bound(model)


def test_training_power_iteration_never_stores_a_non_finite_step():
    """One training forward at a NaN weight wrote NaN into the conv's power-iteration vector:
    every later training output was NaN, even after the weight was repaired."""
    model = _model(cnn_lipschitz=2.0)
    y = _sino()
    conv = model.blocks[0].convs[0]
    saved = conv.conv.weight.detach().clone()
    u0 = conv.u.clone()
    model.train()
    with torch.no_grad():
        conv.conv.weight[0, 0, 0, 0] = NAN
        model(y)
        assert torch.isfinite(conv.u).all() and torch.equal(conv.u, u0)
        conv.conv.weight.copy_(saved)
        out = model(y)
    assert torch.isfinite(out).all()
    assert not torch.equal(conv.u, u0)  # normal steps still update the vector


def test_training_power_iteration_survives_overflowing_weights():
    model = _model(cnn_lipschitz=2.0)
    conv = model.blocks[0].convs[0]
    saved = conv.conv.weight.detach().clone()
    model.train()
    with torch.no_grad():
        conv.conv.weight.mul_(1e30)  # float32: the squares overflow
        model(_sino())
        assert torch.isfinite(conv.u).all()
        conv.conv.weight.copy_(saved)
        assert torch.isfinite(model(_sino())).all()


def test_deepcopy_of_a_model_on_a_matrix_radon():
    """copy.deepcopy failed: torch cannot deep-copy the projector's sparse CSR buffers."""
    model = _model(cnn_lipschitz=2.0).eval()
    y = _sino()
    twin = copy.deepcopy(model)
    assert torch.equal(twin(y), model(y))
    assert twin.radon is not model.radon
    assert twin.radon.matrix.values().data_ptr() != model.radon.matrix.values().data_ptr()
    assert lipschitz_bound(twin) == lipschitz_bound(model)
