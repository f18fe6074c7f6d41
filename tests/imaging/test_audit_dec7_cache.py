"""Stale caches after a change of state: the eval-mode spectral-norm cap of UnrolledCT, the
angles and scalars of the CT projectors, Convolution.boundary and Mask's mask."""

from __future__ import annotations

import warnings

import pytest
import torch

from unrollsci.imaging import UnrolledCT, fanbeam_fbp
from unrollsci.imaging._certify import conv_operator_norm
from unrollsci.operators import Convolution, FanBeam, Mask, Radon

F64 = torch.float64


def _capped_model() -> UnrolledCT:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = UnrolledCT(Radon(16, 8), n_layers=1, channels=2, depth=2, cnn_lipschitz=1.0)
    with torch.no_grad():
        model.blocks[0].convs[0].conv.weight.normal_()
    return model


def _norm(conv) -> float:  # type: ignore[no-untyped-def]
    return conv_operator_norm(conv.weight(), conv.size)


def test_eval_cap_holds_after_an_edit_through_data():
    """EMA / weight averaging writes through ``w.data`` (no version bump): eval() must
    still cap the operator norm."""
    model = _capped_model().eval()
    conv = model.blocks[0].convs[0]
    assert _norm(conv) <= conv.cap * (1 + 1e-5)
    conv.conv.weight.data.mul_(5.0)
    model.eval()
    assert _norm(conv) <= conv.cap * (1 + 1e-5)


def test_eval_cap_holds_after_a_training_forward_and_is_unchanged_otherwise():
    model = _capped_model().eval()
    conv = model.blocks[0].convs[0]
    sigma = conv.sigma.clone()
    model.eval()  # nothing changed: the same sigma, bit for bit
    assert torch.equal(conv.sigma, sigma)
    model.train()
    model(torch.rand(1, 8, 16))  # power iteration rewrites sigma (an estimate below the bound)
    model.eval()
    assert torch.equal(conv.sigma, sigma)


def test_radon_refuses_a_state_dict_with_other_angles():
    a1 = torch.tensor([0.0, 30.0, 60.0, 90.0], dtype=F64)
    for method in ("matrix", "matfree"):
        op = Radon(16, a1, method=method)
        with pytest.raises(ValueError, match="angles are fixed"):
            op.load_state_dict(Radon(16, a1 + 10, method=method).state_dict())
        assert torch.equal(op.angles, a1)
        x = torch.rand(1, 16, 16, dtype=F64)
        before = op(x)
        op.load_state_dict(Radon(16, a1.clone(), method=method).state_dict())  # same angles
        assert torch.equal(op(x), before)


def test_projectors_refuse_angles_edited_in_place():
    x = torch.rand(1, 16, 16, dtype=F64)
    ops = [
        Radon(16, 4, method="matrix"),
        Radon(16, 4, method="matfree"),
        FanBeam(16, 8, source_distance=40.0, detector_distance=80.0),
    ]
    for op in ops:
        op(x)
        with torch.no_grad():
            op.angles.add_(45.0)
        with pytest.raises(ValueError, match="angles are fixed"):
            op(x)
        with pytest.raises(ValueError, match="angles are fixed"):
            op.mv(x)
    with pytest.raises(ValueError, match="angles are fixed"):
        fanbeam_fbp(torch.zeros(1, *ops[2].out_shape, dtype=F64), ops[2])


def test_fanbeam_refuses_a_state_dict_with_other_angles():
    fb = FanBeam(16, 8, source_distance=40.0, detector_distance=80.0)
    other = FanBeam(
        16,
        torch.arange(8.0, dtype=F64) * 10,
        source_distance=40.0,
        detector_distance=80.0,
        n_detectors=fb.n_detectors,
    )
    with pytest.raises(ValueError, match="angles are fixed"):
        fb.load_state_dict(other.state_dict())


@pytest.mark.parametrize(
    "name", ["source_distance", "detector_distance", "detector_spacing", "step"]
)
def test_fanbeam_geometry_scalars_are_read_only(name):
    fb = FanBeam(16, 8, source_distance=40.0, detector_distance=80.0)
    before = getattr(fb, name)
    with pytest.raises(AttributeError, match="build a new FanBeam"):
        setattr(fb, name, 60.0)
    assert getattr(fb, name) == before


def test_convolution_norm_follows_the_boundary():
    c = Convolution(torch.ones(3, dtype=F64), in_shape=(8,))
    c.norm()
    c.boundary = "circular"
    fresh = Convolution(torch.ones(3, dtype=F64), in_shape=(8,), boundary="circular")
    assert c.norm() == pytest.approx(fresh.norm(), rel=1e-6)


def test_mask_copies_the_callers_mask():
    m = torch.tensor([True, False, True, True])
    full, sub = Mask(m), Mask(m, subsample=True)
    m[0] = False
    x = torch.arange(1.0, 5.0)[None]
    assert full(x).tolist() == [[1.0, 0.0, 3.0, 4.0]]
    assert sub(x).tolist() == [[1.0, 3.0, 4.0]]
    assert sub.adjoint(sub(x)).tolist() == full(x).tolist()
