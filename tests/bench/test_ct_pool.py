"""The CT benchmark's training pool: D4 symmetries of ellipse phantoms, pool batches."""

from __future__ import annotations

import math

import pytest
import torch

from unrollsci.bench.ct import PhantomPool, dihedral
from unrollsci.imaging import Radon, ellipse_image


def _params() -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    p = torch.rand(3, 4, 6, generator=gen, dtype=torch.float64)
    p[..., 0] = p[..., 0] - 0.3  # intensities of both signs
    p[..., 1:3] = 0.1 + 0.5 * p[..., 1:3]
    p[..., 3:5] = 0.6 * (p[..., 3:5] - 0.5)
    p[..., 5] = math.pi * p[..., 5]
    return p


def test_flip_and_transpose_are_renderings_of_mapped_parameters():
    """The geometry behind PhantomPool's claim: a flip or a transpose of a rendered
    ellipse image is the rendering of the mapped parameters (to rounding of the sums)."""
    p = _params()
    img = ellipse_image(p, 32)
    flip = p.clone()  # x -> -x: (x0, phi) -> (-x0, pi - phi)
    flip[..., 3], flip[..., 5] = -p[..., 3], math.pi - p[..., 5]
    torch.testing.assert_close(ellipse_image(flip, 32), torch.flip(img, (-1,)), rtol=0, atol=1e-12)
    tr = p.clone()  # array transpose = reflection (x, y) -> (-y, -x)
    tr[..., 1], tr[..., 2] = p[..., 2], p[..., 1]
    tr[..., 3], tr[..., 4] = -p[..., 4], -p[..., 3]
    tr[..., 5] = math.pi - p[..., 5]
    torch.testing.assert_close(ellipse_image(tr, 32), img.transpose(-2, -1), rtol=0, atol=1e-12)


def test_dihedral_gives_the_eight_symmetries():
    img = torch.arange(16.0).reshape(1, 4, 4).repeat(8, 1, 1)
    out = dihedral(img, torch.arange(8))
    assert len({tuple(o.flatten().tolist()) for o in out}) == 8
    assert torch.equal(out[0], img[0])
    assert torch.equal(out[1], torch.rot90(img[0], 1, (-2, -1)))
    assert torch.equal(out[4], img[0].T)
    # a group: applying k then its inverse gives back the image
    inv = torch.tensor([0, 3, 2, 1, 4, 5, 6, 7])
    back = torch.stack([dihedral(out[k : k + 1], inv[k : k + 1])[0] for k in range(8)])
    assert torch.equal(back, img)


def test_pool_batches_refresh_and_are_reproducible():
    radon = Radon(16, 6)
    pool = PhantomPool(radon, 1e4, batch=4, size=8, refresh=2)
    gen = torch.Generator().manual_seed(1)
    y, x, m = pool(gen)
    assert y.shape == (4, 6, 16) and x.shape == m.shape == (4, 16, 16)
    assert m.dtype == torch.bool and bool((x[~m] == 0).all())
    before = pool.x.clone()
    pool(gen)
    changed = (pool.x != before).flatten(1).any(1)
    assert 1 <= int(changed.sum()) <= 2  # `refresh` entries replaced
    again = PhantomPool(radon, 1e4, batch=4, size=8, refresh=2)
    y2, x2, m2 = again(torch.Generator().manual_seed(1))
    assert torch.equal(y2, y) and torch.equal(x2, x) and torch.equal(m2, m)
    with pytest.raises(ValueError, match="pool size >= batch"):
        PhantomPool(radon, 1e4, batch=4, size=2)
