"""A reload keeps the dtype the weights were saved in (no silent rounding to float32)."""

from __future__ import annotations

import torch

from unrollsci.graph import StepController, UnrolledGraphGD
from unrollsci.train import load_checkpoint, save_checkpoint
from unrollsci.unrolled import LISTA


def _perturb(model: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1e-3 * torch.randn(p.shape, generator=g, dtype=p.dtype))


def test_float64_model_without_dtype_argument_reloads_bit_for_bit(tmp_path):
    # UnrolledGraphGD's constructor takes no dtype: it is rebuilt in float32 first
    model = UnrolledGraphGD(4, StepController(hidden=8, window=3), mode="window").double()
    _perturb(model)
    save_checkpoint(model, tmp_path / "g.pt")
    back = load_checkpoint(tmp_path / "g.pt")
    for (k, a), b in zip(model.state_dict().items(), back.state_dict().values(), strict=True):
        assert b.dtype == a.dtype, k
        assert torch.equal(a, b), k


def test_float32_model_stays_float32(tmp_path):
    model = UnrolledGraphGD(3, StepController(hidden=8, window=3), mode="scalar")
    save_checkpoint(model, tmp_path / "g.pt")
    back = load_checkpoint(tmp_path / "g.pt")
    assert {p.dtype for p in back.parameters()} == {torch.float32}


def test_model_with_dtype_argument_keeps_it(tmp_path):
    a = torch.randn(6, 10, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    model = LISTA(a, 3)
    _perturb(model)
    save_checkpoint(model, tmp_path / "l.pt")
    back = load_checkpoint(tmp_path / "l.pt")
    for x, y in zip(model.parameters(), back.parameters(), strict=True):
        assert y.dtype == torch.float64 and torch.equal(x, y)


def test_float64_model_with_float64_buffers_reloads_bit_for_bit(tmp_path):
    # ConvexRidgeCT keeps float64 norm buffers in every dtype: the parameters must decide
    # (a float64 model used to come back in float32, its weights rounded without a word)
    from unrollsci.imaging import ConvexRidgeCT, Radon

    model = ConvexRidgeCT(
        Radon(16, 10), n_layers=2, filters=2, refine={"channels": 4, "depth": 2}
    ).double()
    _perturb(model)
    save_checkpoint(model, tmp_path / "r.pt")
    back = load_checkpoint(tmp_path / "r.pt")
    assert {p.dtype for p in back.parameters()} == {torch.float64}
    for (k, a), b in zip(model.state_dict().items(), back.state_dict().values(), strict=True):
        assert b.dtype == a.dtype, k
        assert torch.equal(a, b), k
