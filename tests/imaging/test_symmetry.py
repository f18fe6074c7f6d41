"""Exact symmetries of the parallel-beam geometry; self-ensemble; bfloat16 CNNs."""

from __future__ import annotations

import pytest
import torch

from unrollsci.imaging import (
    Radon,
    UnrolledCT,
    empirical_lipschitz,
    lipschitz_bound,
    poisson_noise,
    radon_symmetries,
    random_ellipses,
    self_ensemble,
)


def _apply_image(x: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1)[:, perm].reshape(x.shape)


@pytest.mark.parametrize("size", [48, 49])
def test_symmetries_map_projections_exactly(size):
    """radon(g x) = P radon(x) on held-out phantoms (not the search's random images);
    the phantoms lie within radius 0.9 N/2 <= N/2 - 2 for these sizes."""
    radon = Radon(size, 8)
    syms = radon_symmetries(radon)
    assert len(syms) == 8 and syms[0].name == "identity"
    assert torch.equal(syms[0].image, torch.arange(size * size))
    x = random_ellipses(3, size, seed=5, dtype=torch.float64)
    r64 = Radon(size, 8)
    y = r64(x)
    for s in syms:
        lhs = r64(_apply_image(x, s.image))
        rhs = y.reshape(3, -1)[:, s.sinogram].reshape(y.shape)
        torch.testing.assert_close(lhs, rhs, rtol=0, atol=1e-10 * float(y.abs().max()))
        assert torch.equal(_apply_image(_apply_image(x, s.image), s.inverse), x)
    # the eight image maps are distinct
    assert len({tuple(s.image.tolist()) for s in syms}) == 8


def test_symmetries_depend_on_the_angles():
    assert len(radon_symmetries(Radon(16, 7))) == 4  # odd count: no quarter turns
    two = radon_symmetries(Radon(16, torch.tensor([0.0, 10.0, 50.0])))
    assert [s.name for s in two] == ["identity", "flip_rows flip_cols"]  # the half turn
    with pytest.raises(TypeError, match="Radon"):
        radon_symmetries("radon")


@pytest.fixture(scope="module")
def trained():
    op = Radon(16, 8)
    x, m = random_ellipses(6, 16, seed=3, return_support=True, dtype=torch.float64)
    y = poisson_noise(op(x), 1e4, seed=4)
    model = UnrolledCT(op, n_layers=2, channels=4, memory=2)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=gen))
    return model.double().eval(), x, m, y


def test_self_ensemble_support_average_and_certificate(trained):
    model, x, m, y = trained
    with torch.no_grad():
        out = self_ensemble(model, y, mask=m)
        assert out.shape == x.shape and bool((out[~m] == 0).all())
        assert torch.equal(self_ensemble(model, y, mask=m, symmetries=1), model(y, mask=m))
        # the average of the branches, computed by hand for two symmetries
        syms = radon_symmetries(model.radon)[:2]
        branches = []
        for s in syms:
            ys = y.reshape(6, -1)[:, s.sinogram].reshape(y.shape)
            ms = _apply_image(m, s.image)
            branches.append(_apply_image(model(ys, mask=ms), s.inverse))
        torch.testing.assert_close(self_ensemble(model, y, mask=m, symmetries=2), sum(branches) / 2)

    # permutations are isometries: the model's certificate bounds the ensemble too
    class Ensemble(torch.nn.Module):
        def forward(self, t):
            return self_ensemble(model, t)

    ratio = empirical_lipschitz(Ensemble(), y[:3], steps=20)
    assert 0 < ratio <= lipschitz_bound(model)
    with pytest.raises(ValueError, match="symmetries <= 8"):
        self_ensemble(model, y, symmetries=9)


def test_bfloat16_cnns_close_to_float32_and_checkpointed(tmp_path, trained):
    from unrollsci.train import load_checkpoint, save_checkpoint

    model, x, m, y = trained
    model = UnrolledCT(**{**model.get_config(), "precision": "float32"}).float().eval()
    model.load_state_dict(trained[0].float().state_dict())
    trained[0].double()
    y32 = y.float()
    with torch.no_grad():
        ref = model(y32, mask=m)
        model.precision = "bfloat16"
        low = model(y32, mask=m)
    assert low.dtype == torch.float32 and bool((low[~m] == 0).all())
    rel = float((low - ref).norm() / ref.norm())
    assert 0 < rel < 2e-2  # bfloat16 rounding, not a different network
    again = load_checkpoint(save_checkpoint(model, tmp_path / "bf.pt"), expected=UnrolledCT)
    assert again.precision == "bfloat16"
    with pytest.raises(ValueError, match="precision"):
        model.precision = "float16"
    with pytest.raises(ValueError, match="precision"):
        UnrolledCT(Radon(16, 8), n_layers=1, channels=2, precision="half")
