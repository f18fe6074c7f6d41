"""Audit round dec15 ("dec15" names the round, not a date): batching and scale.

* ``gaussian_noise(relative=True)`` took each sinogram's RMS with a plain norm: float32
  sinograms of size 1e20 got Inf noise (NaN at ``sigma = 0``), of size 1e-25 no noise.
* ``mse`` / ``nmse_db`` read one unbatched problem ``(n,)`` (what the solvers return for an
  unbatched ``y``) as ``n`` one-entry problems: ``mse`` 1/n of ``||x - x*||^2``,
  ``nmse_db(reduction="none")`` one value per entry (``+inf`` at zero entries), while
  ``kkt_residual`` reads it as one problem.
* ``filter_sinogram`` let torch's MKL error out on an empty batch and an ``IndexError`` on a
  0-d tensor, and passed NaN on.
"""

from __future__ import annotations

import pytest
import torch

from unrollsci.imaging import filter_sinogram, gaussian_noise
from unrollsci.losses import kkt_residual, mse, nmse_db
from unrollsci.operators import MatrixOperator
from unrollsci.solvers import ista


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_relative_gaussian_noise_at_any_scale(dtype):
    g = torch.Generator().manual_seed(0)
    base = torch.rand(1, 10, 16, generator=g, dtype=dtype) + 0.5
    big = 1e20 if dtype == torch.float32 else 1e160
    small = 1e-25 if dtype == torch.float32 else 1e-170
    y = torch.cat([base, base * big, base * small])
    noisy = gaussian_noise(y, 0.1, seed=1)
    assert bool(torch.isfinite(noisy).all())
    # y + 0.1 rms_b n with n the seed's standard normal draw and rms_b each row's RMS
    # (formed here in float64 from the unscaled row; compared to the rounding of y + noise)
    n = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=dtype)
    rms = base.double().flatten(1).pow(2).mean(1).sqrt() * torch.tensor(
        [1.0, big, small], dtype=torch.float64
    )
    drawn = (noisy - y).double() / (0.1 * rms[:, None, None])
    torch.testing.assert_close(drawn, n.double(), rtol=0, atol=1e-3)
    assert torch.equal(gaussian_noise(y, 0.0), y)  # sigma = 0: unchanged (was NaN)


def test_losses_read_a_single_problem_as_a_batch_of_one():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(20, 40, generator=g, dtype=torch.float64) / 20**0.5
    x_true = torch.zeros(40, dtype=torch.float64)
    x_true[:4] = torch.randn(4, generator=g, dtype=torch.float64)
    op = MatrixOperator(a)
    y = a @ x_true
    x = ista(op, y, 0.05, max_iter=20000, tol=1e-10).x  # (n,), as documented for an unbatched y
    assert x.shape == (40,)
    err = (x - x_true).pow(2).sum()
    torch.testing.assert_close(mse(x, x_true), err)
    torch.testing.assert_close(mse(x, x_true), mse(x[None], x_true[None]))
    none = nmse_db(x, x_true, reduction="none")
    assert none.shape == (1,)
    torch.testing.assert_close(none, nmse_db(x[None], x_true[None], reduction="none"))
    torch.testing.assert_close(nmse_db(x, x_true), nmse_db(x[None], x_true[None]))
    assert kkt_residual(op, x, y, 0.05).shape == (1,)  # the same reading as kkt_residual


@pytest.mark.parametrize(
    ("y", "match"),
    [
        (torch.zeros(0, 10, 16), "at least one"),
        (torch.zeros(3, 0), "at least one"),
        (torch.tensor(1.0), r"\(\.\.\., n_det\)"),
        (torch.tensor([[1.0, float("nan"), 2.0]]), "NaN"),
    ],
)
def test_filter_sinogram_refuses_bad_input(y, match):
    with pytest.raises(ValueError, match=match):
        filter_sinogram(y)


def test_filter_sinogram_still_filters():
    y = torch.rand(2, 10, 16, dtype=torch.float64)
    out = filter_sinogram(y)
    assert out.shape == y.shape and bool(torch.isfinite(out).all())
