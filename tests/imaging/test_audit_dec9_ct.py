"""The capped convolutions of UnrolledCT when their weights change in eval mode (an audit of
the CT package, December 9): the cap, and so the certified Lipschitz bound, follows the
weights the forward pass uses. Each test fails on the code before it."""

from __future__ import annotations

import torch

from unrollsci.imaging import Radon, UnrolledCT, lipschitz_bound
from unrollsci.imaging._certify import conv_operator_norm
from unrollsci.imaging._unrolled import _Conv


def _scramble(model, gen):
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 4:
                p.copy_(torch.randn(p.shape, generator=gen) * 3)


def _caps_hold(model, size):
    convs = [m for m in model.modules() if isinstance(m, _Conv) and m.cap is not None]
    assert convs
    return all(conv_operator_norm(c.weight(), size) <= c.cap * (1 + 1e-5) for c in convs)


def test_weights_changed_in_eval_mode_stay_capped():
    """An EMA-style in-place copy into an eval-mode model kept the old weights' scale: one
    conv ran at many times its cap while lipschitz_bound() (which calls eval() again)
    certified the refreshed model, not the one that had just run."""
    torch.manual_seed(0)
    op = Radon(16, 12)
    y = torch.rand(2, 12, 16) * 5
    model = UnrolledCT(op, n_layers=2, channels=4, lipschitz_target=3.0).eval()
    _scramble(model, torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model(y)
    assert _caps_hold(model, 16)
    lipschitz_bound(model)  # no side effect on what the model computes
    with torch.no_grad():
        torch.testing.assert_close(model(y), out, rtol=0, atol=0)


def test_load_state_dict_into_an_eval_model_uses_the_loaded_weights_scale():
    torch.manual_seed(0)
    op = Radon(16, 12)
    y = torch.rand(2, 12, 16) * 5
    src = UnrolledCT(op, n_layers=2, channels=4, lipschitz_target=3.0)
    _scramble(src, torch.Generator().manual_seed(2))
    src.train()
    src(y)  # a training forward: sigma holds the power-iteration estimate
    dst = UnrolledCT(op, n_layers=2, channels=4, lipschitz_target=3.0).eval()
    dst.load_state_dict(src.state_dict())
    src.eval()
    assert _caps_hold(dst, 16)
    with torch.no_grad():
        torch.testing.assert_close(dst(y), src(y), rtol=0, atol=0)


def test_refiner_checks_its_input_as_the_ct_models_do():
    """A float64 image reached conv2d (an opaque error); NaN images and an empty batch
    were accepted."""
    import pytest

    from unrollsci import DtypeMismatchError
    from unrollsci.imaging._refine import LipschitzRefiner

    ref = LipschitzRefiner(16, channels=4, depth=2)
    with pytest.raises(DtypeMismatchError):
        ref(torch.rand(2, 16, 16, dtype=torch.float64))
    with pytest.raises(ValueError, match="finite"):
        ref(torch.full((1, 16, 16), float("nan")))
    with pytest.raises(ValueError, match="at least one"):
        ref(torch.zeros(0, 16, 16))
    assert ref(torch.rand(2, 16, 16)).shape == (2, 16, 16)
