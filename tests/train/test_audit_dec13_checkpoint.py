"""Checkpoint audit (dec 13): a model's ``active_layers`` (the depth its ``forward`` runs,
not a constructor argument) survives save_checkpoint / load_checkpoint, also for the
final checkpoint of a layer-wise ``fit`` its callback stopped within a stage; a file
without it loads as before; a bad stored depth is refused."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from unrollsci.imaging import Radon, UnrolledCT
from unrollsci.operators import MatrixOperator
from unrollsci.train import fit, load_checkpoint, register_checkpoint_class, save_checkpoint
from unrollsci.unrolled import LISTA


def _matrix() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(10, 16, generator=g, dtype=torch.float64) / 4


def _lista(layers: int = 4) -> LISTA:
    model = LISTA(MatrixOperator(_matrix()), layers, dtype=torch.float64)
    with torch.no_grad():  # layers that differ, so a depth change shows in the output
        for i, p in enumerate(model.parameters()):
            p.add_(0.01 * (i + 1))
    return model


def _y(batch: int = 3) -> torch.Tensor:
    return torch.randn(batch, 10, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def test_lista_reloads_at_its_saved_depth(tmp_path):
    model = _lista()
    model.active_layers = 2
    y = _y()
    with torch.no_grad():
        ref = model(y)
        full = _lista()(y)  # all four layers
    assert not torch.equal(ref, full)
    again = load_checkpoint(save_checkpoint(model, tmp_path / "m.pt"))
    assert again.active_layers == 2
    with torch.no_grad():
        assert torch.equal(again(y), ref)


def test_unrolled_ct_reloads_at_its_saved_depth(tmp_path):
    torch.manual_seed(0)
    model = UnrolledCT(Radon(16, 12), n_layers=3, channels=4, cnn_lipschitz=2.0).eval()
    model.active_layers = 1
    y = torch.rand(2, 12, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = model(y)
    again = load_checkpoint(save_checkpoint(model, tmp_path / "ct.pt")).eval()
    assert again.active_layers == 1
    with torch.no_grad():
        assert torch.equal(again(y), ref)


def test_layerwise_fit_halted_in_a_stage_checkpoints_its_depth(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 16, generator=g, dtype=torch.float64)
    x = x * (torch.rand(32, 16, generator=g) < 0.2)
    model = _lista()
    y = x @ _matrix().T
    path = tmp_path / "fit.pt"
    fit(
        model,
        lambda m, b: ((m(b[0]) - b[1]) ** 2).mean(),
        (y, x),
        epochs=1,
        batch_size=16,
        schedule="layerwise",
        checkpoint=path,
        progress=False,
        callback=lambda e, tl, vl: e >= 1,  # stop in stage 2 of 4
    )
    assert model.active_layers == 2
    again = load_checkpoint(path)
    assert again.active_layers == 2
    with torch.no_grad():
        assert torch.equal(again(y), model(y))


def test_file_without_active_layers_loads_all_layers(tmp_path):
    model = _lista()
    model.active_layers = 2
    path = save_checkpoint(model, tmp_path / "old.pt")
    payload = torch.load(path, weights_only=True)
    assert payload["active_layers"] == 2
    del payload["active_layers"]  # as written before the field existed
    torch.save(payload, path)
    again = load_checkpoint(path)
    assert again.active_layers == again.num_layers == 4
    full = _lista()
    full.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(again(_y()), full(_y()))


@pytest.mark.parametrize("bad", [0, 5, -1, True, 2.0, "2", None])
def test_bad_stored_active_layers_is_refused(tmp_path, bad):
    path = save_checkpoint(_lista(), tmp_path / "bad.pt")
    payload = torch.load(path, weights_only=True)
    payload["active_layers"] = bad
    torch.save(payload, path)
    with pytest.raises(ValueError, match=r"expected its active_layers to be an int in 1\.\.4"):
        load_checkpoint(path)


@register_checkpoint_class
class _AuditNoDepth(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(2))

    def get_config(self) -> dict:
        return {}


def test_stored_depth_for_a_model_without_active_layers_is_refused(tmp_path):
    path = save_checkpoint(_AuditNoDepth(), tmp_path / "n.pt")
    payload = torch.load(path, weights_only=True)
    assert "active_layers" not in payload  # nothing written for a model without it
    payload["active_layers"] = 1
    torch.save(payload, path)
    with pytest.raises(ValueError, match="expected the rebuilt _AuditNoDepth to have"):
        load_checkpoint(path)


def test_end_to_end_resume_continues_at_the_depth_it_trained_at(tmp_path):
    """``fit(resume=)`` of an end-to-end run of a truncated model (``active_layers = 2`` of
    4) into a fresh model continued at depth 4 (the weights came back, the depth did not):
    it now equals the uninterrupted run."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(24, 16, generator=g, dtype=torch.float64)
    x = x * (torch.rand(24, 16, generator=g) < 0.2)
    y = x @ _matrix().T

    def loss(m, b):
        return ((m(b[0]) - b[1]) ** 2).mean()

    kw = dict(batch_size=8, seed=0, progress=False)
    straight = _lista()
    straight.active_layers = 2
    fit(straight, loss, (y, x), epochs=2, **kw)

    first = _lista()
    first.active_layers = 2
    path = tmp_path / "run.pt"
    fit(first, loss, (y, x), epochs=1, checkpoint=path, **kw)
    resumed = _lista()  # a fresh model: all four layers
    fit(resumed, loss, (y, x), epochs=2, resume=path, **kw)
    assert resumed.active_layers == 2
    for a, b in zip(resumed.parameters(), straight.parameters(), strict=True):
        assert torch.equal(a, b)
