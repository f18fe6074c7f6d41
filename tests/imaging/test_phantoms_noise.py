"""Phantoms against scikit-image, noise statistics, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unrollsci.imaging import (
    disk_mask,
    gaussian_noise,
    poisson_noise,
    random_ellipses,
    shepp_logan,
)


def test_shepp_logan_matches_skimage_orientation(device):
    from skimage.data import shepp_logan_phantom

    ref = shepp_logan_phantom()  # 400 x 400 rendering of the same ellipses
    mine = shepp_logan(400, dtype=torch.float64, device=device, supersample=1).cpu().numpy()
    assert mine.shape == (400, 400) and mine.min() >= 0 and mine.max() <= 1

    def differing(a):
        return float((np.abs(a - ref) > 0.05).mean())

    # Only edge pixels differ (sub-pixel boundary convention); flips are far worse.
    assert differing(mine) < 0.01
    assert differing(mine) < 0.5 * min(differing(mine[::-1]), differing(mine[:, ::-1]))


def test_random_ellipses_seeded_and_supported(device):
    x1, m1 = random_ellipses(6, 32, seed=5, return_support=True, device=device)
    x2 = random_ellipses(6, 32, seed=5, device=device)
    x3 = random_ellipses(6, 32, seed=6, device=device)
    assert x1.shape == (6, 32, 32) and m1.dtype == torch.bool and x1.device.type == device.type
    torch.testing.assert_close(x1, x2)
    assert not torch.equal(x1, x3)
    assert float(x1.min()) >= 0 and float(x1.max()) <= 1
    assert bool((x1[~m1] == 0).all())  # exactly zero outside the body
    assert not bool((m1 & ~disk_mask(32, device=device)).any())  # body in the scan circle
    assert float(x1.abs().sum()) > 0


def test_gaussian_noise_level(device):
    y = torch.full((4, 30, 40), 3.0, dtype=torch.float64, device=device)
    n = gaussian_noise(y, 0.1, seed=1) - y
    assert float(n.std()) == pytest.approx(0.3, rel=0.05)
    n_abs = gaussian_noise(y, 0.1, relative=False, seed=1) - y
    assert float(n_abs.std()) == pytest.approx(0.1, rel=0.05)


def test_poisson_noise_matches_delta_method(device):
    # -log(k / I0) / mu with k ~ Poisson(I0 e^{-mu y}) has variance ~ 1 / (I0 e^{-mu y} mu^2).
    y = torch.full((8, 50, 50), 20.0, dtype=torch.float64, device=device)
    photons, mu = 1e5, 1 / 50
    noisy = poisson_noise(y, photons, seed=3)
    var = 1.0 / (photons * np.exp(-mu * 20.0) * mu**2)
    assert float(noisy.var()) == pytest.approx(var, rel=0.05)
    assert float(noisy.mean()) == pytest.approx(20.0, abs=0.05)
    torch.testing.assert_close(noisy, poisson_noise(y, photons, seed=3))


def test_poisson_noise_photon_starvation_stays_finite():
    y = torch.full((1, 4, 8), 1e4)
    out = poisson_noise(y, 10.0)
    assert bool(torch.isfinite(out).all())


def test_noise_bad_input():
    y = torch.zeros(1, 4, 8)
    y[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="'y' to be finite"):
        poisson_noise(y, 1e4)
    with pytest.raises(ValueError, match="photons > 0"):
        poisson_noise(torch.zeros(1, 4, 8), 0.0)
    with pytest.raises(ValueError, match="sigma >= 0"):
        gaussian_noise(torch.zeros(1, 4, 8), -1.0)
    with pytest.raises(ValueError, match="Expected 'n' >= 1"):
        random_ellipses(0, 32)
