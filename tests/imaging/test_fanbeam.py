"""Fan-beam projector against closed-form ellipse projections, its exact adjoint, fan-beam
FBP against parallel-beam FBP, bad input."""

from __future__ import annotations

import math

import pytest
import torch

from unrollsci.imaging import (
    ellipse_image,
    ellipse_line_integrals,
    fanbeam_ellipse_sinogram,
    fanbeam_fbp,
    fbp,
    profiled_ellipse_image,
    shepp_logan,
)
from unrollsci.imaging._phantoms import _MODIFIED_SHEPP_LOGAN
from unrollsci.operators import FanBeam, Radon, check_adjoint
from unrollsci.operators import _radon_matfree as mf


def _geometry(n: int) -> dict:
    return {"source_distance": 2.0 * n, "detector_distance": 4.0 * n, "detector_spacing": 2.0}


def _shepp_params() -> torch.Tensor:
    p = torch.tensor(_MODIFIED_SHEPP_LOGAN, dtype=torch.float64)
    p[:, 5] = torch.deg2rad(p[:, 5])
    return p


def test_closed_form_line_integrals_of_a_disk():
    disk = torch.tensor([[2.0, 0.5, 0.5, 0.0, 0.0, 0.0]], dtype=torch.float64)
    pts = torch.tensor([[0.0, 0.0], [10.0, -100.0], [17.0, 0.0]], dtype=torch.float64)
    dirs = torch.tensor([[0.6, 0.8], [0.0, 1.0], [0.0, 1.0]], dtype=torch.float64)
    got = ellipse_line_integrals(disk, pts, dirs, 64)  # radius 16 pixels
    want = torch.tensor([2 * 32.0, 2 * 2 * math.sqrt(16**2 - 10**2), 0.0], dtype=torch.float64)
    torch.testing.assert_close(got, want)
    # (1 - r^2) profile: chord half-length L (normalized) -> (4/3) L^3 * radius
    prof = ellipse_line_integrals(disk, pts[:1], dirs[:1], 64, power=1)
    torch.testing.assert_close(prof, torch.tensor([2.0 * 4 / 3 * 16], dtype=torch.float64))
    img = profiled_ellipse_image(disk[None], 32, power=0, supersample=2)
    torch.testing.assert_close(img, ellipse_image(disk[None], 32, supersample=2))


@pytest.mark.parametrize("power", [1, 2])
def test_projection_matches_closed_form_256(power):
    n = 256
    op = FanBeam(n, 40, **_geometry(n))
    params = _shepp_params()
    ref = fanbeam_ellipse_sinogram(params, op, power=power)
    img = profiled_ellipse_image(params[None], n, power=power, supersample=4)
    rel = float((op(img)[0] - ref).norm() / ref.norm())
    assert rel <= 1e-3


def test_filled_ellipses_converge_at_first_order():
    # A filled (discontinuous) ellipse cannot be held to 1e-3 by any pixel image: the error
    # of its rasterization is O(pixel). Check that order (the projector's own error is
    # second order, test above).
    params = torch.tensor([[1.0, 0.6, 0.4, 0.1, -0.05, 0.5]], dtype=torch.float64)
    errs = []
    for n in (64, 128):
        op = FanBeam(n, 30, **_geometry(n))
        ref = fanbeam_ellipse_sinogram(params, op)
        img = ellipse_image(params[None], n, supersample=4)
        errs.append(float((op(img)[0] - ref).norm() / ref.norm()))
    assert errs[1] < 0.03 and 1.6 < errs[0] / errs[1] < 2.5


def test_adjoint_is_exact_float64(device):
    op = FanBeam(48, 37, **_geometry(48)).to(device)
    assert check_adjoint(op, dtype=torch.float64, device=device) <= 1e-12
    assert check_adjoint(op, dtype=torch.float32, device=device) <= 1e-5


def test_torch_fallback_equals_kernel():
    if not mf.kernel_available():
        pytest.skip("no C compiler here: the torch path is the only one")
    op = FanBeam(24, 11, **_geometry(24))
    x = torch.rand(3, 24, 24, dtype=torch.float64)
    y = torch.rand(3, op.n_angles * op.n_detectors, dtype=torch.float64)
    torch.testing.assert_close(
        mf.project(op._rays, x, backend="torch"), mf.project(op._rays, x), rtol=1e-13, atol=0
    )
    torch.testing.assert_close(
        mf.backproject(op._rays, y, backend="torch"),
        mf.backproject(op._rays, y),
        rtol=1e-12,
        atol=0,
    )


def _psnr(rec: torch.Tensor, ref: torch.Tensor) -> float:
    n = ref.shape[-1]
    c = torch.arange(n) - (n - 1) / 2
    mask = (c[:, None] ** 2 + c[None, :] ** 2) <= (n / 2 - 1) ** 2
    mse = float(((rec - ref)[mask] ** 2).mean())
    return 10 * math.log10(float(ref[mask].max()) ** 2 / mse)


def _fbp_psnrs(n: int, n_par: int) -> tuple[float, float]:
    x = shepp_logan(n, dtype=torch.float64)[None]
    par = Radon(n, n_par)
    fan = FanBeam(n, 2 * n_par, **_geometry(n))  # 360 degrees; 1-pixel rays at the centre
    return _psnr(fbp(par(x), par)[0], x[0]), _psnr(fanbeam_fbp(fan(x), fan)[0], x[0])


def test_fbp_within_1db_of_parallel_beam_64():
    p_par, p_fan = _fbp_psnrs(64, 128)
    assert p_par > 20
    assert abs(p_fan - p_par) <= 1.0


@pytest.mark.slow
def test_fbp_within_1db_of_parallel_beam_256():
    p_par, p_fan = _fbp_psnrs(256, 360)
    assert p_par > 25
    assert abs(p_fan - p_par) <= 1.0


def test_fbp_linear_differentiable_and_channel_axis():
    op = FanBeam(16, 24, **_geometry(16))
    y = torch.rand(2, 1, 24, op.n_detectors, dtype=torch.float64, requires_grad=True)
    out = fanbeam_fbp(y, op, filter="hann")
    assert out.shape == (2, 1, 16, 16)
    torch.testing.assert_close(out[:, 0], op.fbp(y[:, 0], filter="hann"))
    # Linear map: the gradient of <fbp(y), w> is exact along any direction v.
    w, v = torch.rand_like(out), torch.rand_like(y)
    (grad,) = torch.autograd.grad((out * w).sum(), y)
    directional = (fanbeam_fbp(v, op, filter="hann") * w).sum()
    torch.testing.assert_close((grad * v).sum(), directional, rtol=1e-12, atol=0)
    y2 = torch.rand_like(y)
    torch.testing.assert_close(
        fanbeam_fbp(2 * y + y2, op),
        2 * fanbeam_fbp(y, op) + fanbeam_fbp(y2, op),
        rtol=1e-12,
        atol=1e-12,
    )


def test_default_detector_sees_the_whole_image():
    n = 32
    op = FanBeam(n, 16, source_distance=50.0, detector_distance=90.0)
    x = torch.zeros(1, n, n, dtype=torch.float64)
    x[0, 0, 0] = x[0, -1, -1] = 1.0  # corners
    y = op(x)[0]
    assert bool((y.sum(1) > 0).all())  # every view sees them
    assert float(y[:, 0].abs().max()) == 0.0 and float(y[:, -1].abs().max()) == 0.0


def test_bad_input():
    g = _geometry(32)
    with pytest.raises(ValueError, match="source must stay outside"):
        FanBeam(32, 10, source_distance=10.0, detector_distance=60.0)
    with pytest.raises(ValueError, match="detector_distance > source_distance"):
        FanBeam(32, 10, source_distance=60.0, detector_distance=50.0)
    with pytest.raises(ValueError, match="'detector_spacing' > 0"):
        FanBeam(32, 10, **{**g, "detector_spacing": 0.0})
    with pytest.raises(TypeError, match="'step' to be a number"):
        FanBeam(32, 10, **g, step="fine")
    with pytest.raises(ValueError, match="'n_detectors' >= 1"):
        FanBeam(32, 10, **g, n_detectors=0)
    with pytest.raises(ValueError, match="at least one view"):
        FanBeam(32, 0, **g)
    op = FanBeam(32, 10, **g)
    with pytest.raises(ValueError, match=r"Expected 'x' of shape \(batch, 32, 32\)"):
        op(torch.zeros(1, 31, 31))
    with pytest.raises(ValueError, match="sinograms of shape"):
        fanbeam_fbp(torch.zeros(1, 10, op.n_detectors + 1), op)
    with pytest.raises(TypeError, match="FanBeam operator"):
        fanbeam_fbp(torch.zeros(1, 10, 32), Radon(32, 10))
    with pytest.raises(ValueError, match="filter in"):
        fanbeam_fbp(torch.zeros(1, 10, op.n_detectors), op, filter="box")
    with pytest.raises(ValueError, match=r"'params' of shape \(m, 6\)"):
        ellipse_line_integrals(torch.zeros(3, 5), torch.zeros(1, 2), torch.ones(1, 2), 8)
    with pytest.raises(ValueError, match=r"'power' >= 0 \(got -1\)"):
        profiled_ellipse_image(torch.zeros(1, 1, 6), 8, power=-1)
