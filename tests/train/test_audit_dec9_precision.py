"""Mixed-precision training and the Haar shrinkage, an audit (December 9): each test fails
on the code before it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from unrollsci.imaging import UnrolledCT, poisson_noise, random_ellipses
from unrollsci.operators import Radon
from unrollsci.train import fit, load_checkpoint
from unrollsci.train._precision import mixed_precision
from unrollsci.unrolled._deblur import haar_shrink


def test_checkpoints_written_during_mixed_precision_keep_the_models_own_precision(tmp_path):
    """fit(mixed_precision="bf16") switches UnrolledCT's own precision while it trains; the
    checkpoints written mid-run stored "bfloat16", so an interrupted run left a file that
    loads as a model inferring in bfloat16."""
    op = Radon(16, 8)
    x, m = random_ellipses(6, 16, seed=3, return_support=True)
    y = poisson_noise(op(x), 1e4, seed=4).float()
    x = x.float()

    def loss(model, b):
        return (model(b[0], mask=b[2]) - b[1]).pow(2).mean()

    torch.manual_seed(0)
    model = UnrolledCT(op, n_layers=2, channels=4)
    path = tmp_path / "ct.pt"
    seen = []

    def callback(epoch, train_loss, val_loss):
        if path.exists():  # written at the end of the previous epoch, mid-run
            seen.append(load_checkpoint(path).precision)

    fit(model, loss, (y, x, m), epochs=3, batch_size=3, lr=1e-3, progress=False,
        mixed_precision="bf16", checkpoint=path, callback=callback)  # fmt: skip
    assert seen == ["float32", "float32"]
    assert model.precision == "float32" and load_checkpoint(path).precision == "float32"


def test_mixed_precision_casts_back_a_layer_called_by_keyword():
    """The hooks read positional inputs only: layer(input=x) returned bfloat16."""
    lin = nn.Linear(4, 4)
    x = torch.randn(2, 4)
    with mixed_precision(lin, torch.bfloat16):
        assert lin(x).dtype == torch.float32
        assert lin(input=x).dtype == torch.float32


def test_haar_shrink_with_an_infinite_or_nan_threshold():
    """threshold=inf gave all NaN (0 * inf in the low-pass band); NaN was accepted."""
    x = torch.randn(2, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    out = haar_shrink(x, float("inf"))
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, haar_shrink(x, 1e300))
    with pytest.raises(ValueError, match="threshold"):
        haar_shrink(x, float("nan"))
