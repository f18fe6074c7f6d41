"""UnrolledCT and self_ensemble inputs found by an audit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unrollsci.imaging import UnrolledCT, self_ensemble
from unrollsci.operators import Radon

R = Radon(12, 7)


@pytest.mark.parametrize("name", ["lipschitz_target", "cnn_lipschitz"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), 0.0, -1.0])
def test_non_finite_or_non_positive_caps_are_refused(name, value):
    """lipschitz_target=nan gave a model whose output was all NaN."""
    with pytest.raises(ValueError, match=name):
        UnrolledCT(R, n_layers=2, channels=2, **{name: value})


def test_the_default_mask_must_be_one_image():
    """A (3, N, N) default mask gave three reconstructions for one sinogram."""
    with pytest.raises(ValueError, match="default 'mask'"):
        UnrolledCT(R, n_layers=1, channels=2, mask=torch.ones(3, 12, 12, dtype=torch.bool))
    with pytest.raises(ValueError, match="0/1"):
        UnrolledCT(R, n_layers=1, channels=2, mask=torch.full((12, 12), 2))


@pytest.mark.parametrize(
    ("kw", "what"),
    [
        ({"channels": 2.0}, "channels"),
        ({"kernel_size": 3.0}, "kernel_size"),
        ({"n_layers": 2.5}, "n_layers"),
        ({"n_layers": True}, "n_layers"),
        ({"tied": "no"}, "tied"),
    ],
)
def test_argument_types(kw, what):
    with pytest.raises(TypeError, match=what):
        UnrolledCT(R, **{"n_layers": 1, "channels": 2, **kw})


def test_self_ensemble_checks_its_mask_as_the_model_does():
    m = UnrolledCT(R, n_layers=1, channels=2)
    y = torch.randn(2, 7, 12)
    out = self_ensemble(m, y, mask=torch.ones(1, 12, 12, dtype=torch.bool), symmetries=2)
    assert out.shape == (2, 12, 12)
    for bad in (np.ones((12, 12), bool), torch.ones(11, 11, dtype=torch.bool)):
        with pytest.raises(ValueError, match="mask"):
            self_ensemble(m, y, mask=bad)
