"""Bad input to the imaging entry points: dtype / device mismatches, empty batches, NaN."""

from __future__ import annotations

import pytest
import torch

from unrollsci.imaging import (
    Radon,
    UnrolledCT,
    conv_operator_norm,
    disk_mask,
    empirical_lipschitz,
    gaussian_noise,
    lipschitz_bound,
    poisson_noise,
    random_ellipses,
    self_ensemble,
    shepp_logan,
    tikhonov_reconstruction,
    tv_reconstruction,
)


@pytest.fixture(scope="module")
def setup():
    op = Radon(16, 10)
    x = shepp_logan(16, dtype=torch.float64)[None]
    return op, x, op(x)


def test_unrolled_ct_dtype_mismatch_is_a_clear_type_error(setup):
    op, _, y64 = setup
    torch.manual_seed(0)
    model = UnrolledCT(op, n_layers=2, channels=3)
    with pytest.raises(
        TypeError, match=r"dtype torch\.float32 \(got torch\.float64\).*model\.double\(\)"
    ):
        model(y64)
    with pytest.raises(TypeError, match=r"y\.float\(\)"):
        model(y64[:, None])  # with a channel axis too
    # the advertised fixes work and agree with each other
    out32 = model(y64.float())
    out64 = model.double()(y64)
    assert out64.dtype == torch.float64
    torch.testing.assert_close(out64.float(), out32, rtol=1e-4, atol=1e-5)


def test_empty_batches_are_value_errors(setup):
    op, _, y = setup
    empty = y[:0]
    model = UnrolledCT(op, n_layers=1, channels=2).double()
    calls = [
        lambda: model(empty),
        lambda: tv_reconstruction(empty, op, 0.1),
        lambda: tikhonov_reconstruction(empty, op, 0.1),
        lambda: gaussian_noise(empty, 0.1),
        lambda: poisson_noise(empty, 1e4),
        lambda: self_ensemble(model, empty),
        lambda: empirical_lipschitz(model, empty, steps=1),
    ]
    for call in calls:
        with pytest.raises(ValueError, match=r"at least one problem \(got a batch of size 0"):
            call()


@pytest.mark.parametrize(
    "call, match",
    [
        (
            lambda op, y: tv_reconstruction(y, op, float("nan")),
            r"Expected lam >= 0 and finite \(got nan\)",
        ),
        (
            lambda op, y: tv_reconstruction(y, op, float("inf")),
            r"Expected lam >= 0 and finite \(got inf\)",
        ),
        (lambda op, y: tv_reconstruction(y, op, 0.1, max_iter=0), r"'max_iter' >= 1 \(got 0\)"),
        (
            lambda op, y: tikhonov_reconstruction(y, op, 0.0),
            r"Expected lam > 0 and finite \(got 0.0\)",
        ),
        (lambda op, y: tikhonov_reconstruction(y, op, float("inf")), r"lam > 0 and finite"),
        (lambda op, y: gaussian_noise(y, float("inf")), r"sigma >= 0 and finite \(got inf\)"),
        (lambda op, y: poisson_noise(y, float("nan")), r"photons > 0 and finite \(got nan\)"),
        (
            lambda op, y: poisson_noise(y, 1e4, pixel_size=0.0),
            r"pixel_size > 0 and finite \(got 0.0\)",
        ),
        (lambda op, y: tv_reconstruction(y, op, 0.1, x0=torch.zeros(1, 8, 8)), r"'x0' of shape"),
    ],
)
def test_bad_hyper_parameters_are_value_errors(setup, call, match):
    op, _, y = setup
    with pytest.raises(ValueError, match=match):
        call(op, y)


def test_tv_warm_start_dtype_mismatch(setup):
    op, _, y = setup
    with pytest.raises(TypeError, match=r"'x0' with the dtype and device of 'y'.*x0\.to\(y\)"):
        tv_reconstruction(y, op, 0.1, x0=torch.zeros(1, 16, 16, dtype=torch.float32))


def test_certificate_and_attack_arguments(setup):
    op, _, y = setup
    model = UnrolledCT(op, n_layers=1, channels=2).double()
    with pytest.raises(ValueError, match=r"'margin' to be finite"):
        lipschitz_bound(model, margin=float("nan"))
    with pytest.raises(ValueError, match=r"'steps' >= 1 \(got 0\)"):
        empirical_lipschitz(model, y, steps=0)
    with pytest.raises(ValueError, match=r"conv weight of shape \(c_out, c_in, k, k\)"):
        conv_operator_norm(torch.zeros(3, 3), 8)
    with pytest.raises(TypeError, match="Expected a model with a 'radon' attribute"):
        self_ensemble(torch.nn.Identity(), y)


def test_phantom_arguments():
    with pytest.raises(ValueError, match=r"Expected 'size' >= 2 \(got 1\)"):
        shepp_logan(1)
    with pytest.raises(TypeError, match="floating-point torch dtype"):
        shepp_logan(8, dtype=torch.int64)
    with pytest.raises(ValueError, match=r"Expected 'n' >= 1 \(got 0\)"):
        random_ellipses(0, 8)
    # disk_mask agrees with a direct evaluation of the definition
    m = disk_mask(9)
    ref = torch.tensor([[(i - 4) ** 2 + (j - 4) ** 2 <= 16 for j in range(9)] for i in range(9)])
    assert torch.equal(m, ref)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize(
    "call",
    [
        lambda: shepp_logan(8, device="cuda"),
        lambda: disk_mask(8, device="cuda"),
        lambda: random_ellipses(1, 8, device="cuda"),
    ],
)
def test_cuda_device_without_cuda_is_a_value_error(call):
    with pytest.raises(ValueError, match="CUDA is not available"):
        call()
