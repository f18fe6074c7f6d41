"""ConvexRidgeCT with non-finite weights (an audit, December 8): its certificate was ``inf``
for a NaN filter weight or step logit and a finite number for a NaN bias or clip
parameter, while every output was NaN. It now refuses them with a ``ValueError`` naming the
parameters, as :class:`UnrolledCT` does."""

from __future__ import annotations

import math

import pytest
import torch

from unrollsci.imaging import ConvexRidgeCT, Radon, lipschitz_bound

NAN, INF = float("nan"), float("inf")
PARAMETERS = ("weight", "bias", "clip_centre", "clip_logwidth", "clip_logits", "step_logits")


def _model(**kw) -> ConvexRidgeCT:  # type: ignore[no-untyped-def]
    return ConvexRidgeCT(Radon(16, 10), n_layers=2, filters=3, kernel_size=3, **kw)


def _sino() -> torch.Tensor:
    return torch.rand(2, 10, 16, generator=torch.Generator().manual_seed(1))


def _poison(model: torch.nn.Module, name: str, value: float, count: int = 1) -> None:
    with torch.no_grad():
        dict(model.named_parameters())[name].view(-1)[:count] = value


@pytest.mark.parametrize("name", PARAMETERS)
def test_bound_refuses_a_nan_parameter(name):
    model = _model()
    assert math.isfinite(model.lipschitz_bound())
    _poison(model, name, NAN)
    with torch.no_grad():
        assert torch.isnan(model(_sino())).any()  # what the bound used to certify
    with pytest.raises(ValueError, match=rf"{name} \(1 NaN and 0 Inf of \d+ entries\)"):
        model.lipschitz_bound()
    with pytest.raises(ValueError, match=name):  # the library function: the same check
        lipschitz_bound(model)
    with pytest.raises(ValueError, match=name):
        model.lipschitz_bound(details=True)


@pytest.mark.parametrize("name", ["weight", "bias", "clip_centre", "step_logits"])
def test_bound_refuses_an_infinite_parameter(name):
    model = _model()
    _poison(model, name, INF, count=2)
    with pytest.raises(ValueError, match=rf"{name} \(0 NaN and 2 Inf of \d+ entries\)"):
        model.lipschitz_bound()


def test_check_names_every_non_finite_parameter_and_buffer():
    model = _model(refine={"channels": 2, "depth": 2})
    model.check_finite_weights()  # finite: nothing to say
    _poison(model, "weight", NAN, count=3)
    _poison(model, "clip_logits", INF)
    _poison(model, "refiner.weights.0", NAN)
    with torch.no_grad():
        model.init_norm.fill_(NAN)  # the norm of the start map enters the bound
    with pytest.raises(ValueError) as err:
        model.lipschitz_bound()
    msg = str(err.value)
    assert "ConvexRidgeCT" in msg
    for part in (
        "weight (3 NaN and 0 Inf",
        "clip_logits (0 NaN and 1 Inf",
        "refiner.weights.0 (1 NaN",
        "init_norm (1 NaN",
    ):
        assert part in msg
    assert "bias" not in msg and "radon_norm" not in msg


def test_repaired_weights_are_certified_again():
    model = _model()
    before = model.lipschitz_bound()
    saved = model.bias.detach().clone()
    _poison(model, "bias", NAN)
    with pytest.raises(ValueError):
        model.lipschitz_bound()
    with torch.no_grad():
        model.bias.copy_(saved)
    assert model.lipschitz_bound() == before


def test_forward_does_not_check_the_weights(monkeypatch):
    """The check is the certificate's: no host sync is added to every forward."""

    def fail(self):  # type: ignore[no-untyped-def]
        raise AssertionError("forward checked the weights")

    monkeypatch.setattr(ConvexRidgeCT, "check_finite_weights", fail, raising=False)
    model = _model()
    for mode in (True, False):
        model.train(mode)
        assert torch.isfinite(model(_sino())).all()
