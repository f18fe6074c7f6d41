"""Fixtures shared by the imaging tests."""

from __future__ import annotations

import pytest
import torch

from unrollsci.imaging import Radon, poisson_noise, random_ellipses


@pytest.fixture(scope="module")
def ridge_small():
    """``(radon, images, supports, sinograms)``: four 16 x 16 float64 phantoms, 10 angles,
    Poisson noise at 1e4 photons (the ConvexRidgeCT and LipschitzRefiner tests)."""
    op = Radon(16, 10)
    x, m = random_ellipses(4, 16, seed=3, return_support=True, dtype=torch.float64)
    y = poisson_noise(op(x), 1e4, seed=4)
    return op, x, m, y
