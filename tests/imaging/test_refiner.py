"""LipschitzRefiner and ConvexRidgeCT with a refinement: the certificates hold for any
weights (two attacks), MaxMin is 1-Lipschitz,
checkpoints, dtype, bad input."""

from __future__ import annotations

import math

import pytest
import torch

from unrollsci import DtypeMismatchError
from unrollsci.imaging import (
    ConvexRidgeCT,
    LipschitzRefiner,
    empirical_lipschitz,
    lipschitz_bound,
)
from unrollsci.imaging._refine import maxmin
from unrollsci.train import load_checkpoint, save_checkpoint

REFINE = {"channels": 4, "depth": 3, "kernel_size": 3, "lipschitz": 3.0}


def _randomize(module: torch.nn.Module, seed: int, scale: float = 2.0) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            r = torch.randn(p.shape, generator=gen, dtype=p.dtype)
            if name == "clip_centre":
                r = 0.1 * r
            elif name == "clip_logwidth":
                r = math.log(0.1) + r
            elif "bias" in name:  # offsets that keep the output inside the box
                r = 0.05 * r
            else:
                r = scale * r
            p.copy_(r)
    return module


def _attack(f, x, steps=150, lr=1e-2, seed=0):
    """Largest ``||f(a) - f(b)|| / ||a - b||`` found by Adam from ``a = x``, ``b`` near it."""
    gen = torch.Generator().manual_seed(seed)
    a = x.clone().requires_grad_(True)
    b = (x + 1e-2 * torch.randn(x.shape, generator=gen, dtype=x.dtype)).requires_grad_(True)
    opt = torch.optim.Adam([a, b], lr=lr)
    best = 0.0
    for _ in range(steps):
        q = (f(a) - f(b)).flatten(1).norm(dim=1) / (a - b).flatten(1).norm(dim=1)
        best = max(best, float(q.detach().max()))
        opt.zero_grad()
        (-q.log().sum()).backward()
        opt.step()
    return best


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_refiner_bound_holds_for_random_weights(seed):
    ref = _randomize(LipschitzRefiner(12, channels=6, depth=4, lipschitz=5.0), seed).double()
    ref.train()
    x = torch.rand(3, 12, 12, dtype=torch.float64)
    for _ in range(3):  # a few power-iteration updates, then frozen
        ref(x)
    ref.eval().requires_grad_(False)
    bound = ref.lipschitz_bound()
    assert 1.0 < bound <= 1.0 + 5.0 * 1.5  # estimates within 1.5x of the norms
    emp = _attack(ref, x, seed=seed)
    assert 0 < emp <= bound
    # the residual alone: Lip(R) <= bound - 1
    emp_r = _attack(ref.residual, x, seed=seed)
    assert emp_r <= bound - 1.0


def test_refiner_bound_is_not_vacuous_when_estimates_converge():
    """With converged norm estimates above 1 every normalised convolution has norm 1 and the
    bound is 1 + g."""
    ref = _randomize(LipschitzRefiner(8, channels=2, depth=2, lipschitz=2.0), 0, 10.0)
    ref = ref.double().train()
    x = torch.rand(1, 8, 8, dtype=torch.float64)
    for _ in range(300):
        ref(x)
    ref.eval()
    with torch.no_grad():
        assert min(float(ref._norm_estimate(i)) for i in range(2)) > 1.0
    g = float(ref.gain().detach())
    assert ref.lipschitz_bound() == pytest.approx(1.0 + g, rel=1e-6)


def test_maxmin_is_one_lipschitz_and_norm_preserving():
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randn(5, 8, 3, 3, generator=gen) for _ in range(2))
    assert (maxmin(a) - maxmin(b)).norm() <= (a - b).norm() * (1 + 1e-6)
    assert maxmin(a).norm() == pytest.approx(float(a.norm()))


@pytest.mark.parametrize("seed", [0, pytest.param(1, marks=pytest.mark.slow)])
def test_refined_ridge_bound_holds_for_random_weights(ridge_small, seed):
    op, _, m, y = ridge_small
    model = ConvexRidgeCT(op, n_layers=3, filters=3, kernel_size=3, n_clips=2, refine=REFINE)
    model = _randomize(model, seed).double().requires_grad_(False).eval()
    bound = model.lipschitz_bound()
    cert = model.lipschitz_bound(details=True)
    assert cert.layers[-1]["refiner"] == pytest.approx(model.refiner.lipschitz_bound())
    assert bound == pytest.approx(cert.layers[-2]["bound"] * cert.layers[-1]["refiner"])
    assert lipschitz_bound(model) == pytest.approx(bound)
    emp = empirical_lipschitz(model, y, steps=40, lr=5e-2, seed=seed, mask=m)
    assert 0 < emp <= bound


def test_refined_output_in_box_and_support(ridge_small):
    op, _, m, y = ridge_small
    model = ConvexRidgeCT(op, n_layers=2, filters=2, refine=REFINE)
    model = _randomize(model, 5).double().eval()
    with torch.no_grad():
        out = model(y, mask=m)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert torch.all(out[~m] == 0)


def test_refiner_training_reduces_loss(ridge_small):
    op, x, m, y = ridge_small
    model = ConvexRidgeCT(op, n_layers=2, filters=2, refine=REFINE).double()
    opt = torch.optim.Adam(model.refiner.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = torch.mean((model(y, mask=m) - x) ** 2)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_checkpoint_round_trip_with_refiner(ridge_small, tmp_path):
    op, _, m, y = ridge_small
    model = ConvexRidgeCT(op, n_layers=2, filters=2, refine=REFINE)
    model = _randomize(model, 1).eval()
    model.refiner.train()
    model.refiner(torch.rand(1, 16, 16))  # move the norm estimates
    model.refiner.eval()
    save_checkpoint(model, tmp_path / "r.pt")
    back = load_checkpoint(tmp_path / "r.pt", expected=(ConvexRidgeCT,)).eval()
    assert back.refine == REFINE
    with torch.no_grad():
        assert torch.equal(back(y.float(), mask=m), model(y.float(), mask=m))
    assert back.lipschitz_bound() == pytest.approx(model.lipschitz_bound())


def test_dtype_rule(ridge_small):
    op, _, m, y = ridge_small
    model = ConvexRidgeCT(op, n_layers=2, filters=2, refine=REFINE)
    with pytest.raises(DtypeMismatchError):
        model(y, mask=m)
    out = model.double()(y, mask=m)
    assert out.dtype == torch.float64


def test_bad_input(ridge_small):
    op = ridge_small[0]
    with pytest.raises(TypeError, match="refine"):
        ConvexRidgeCT(op, refine=[4, 3])
    with pytest.raises(ValueError, match="channels"):
        LipschitzRefiner(16, channels=3)
    with pytest.raises(ValueError, match="depth"):
        LipschitzRefiner(16, depth=1)
    with pytest.raises(ValueError, match="lipschitz"):
        LipschitzRefiner(16, lipschitz=0.0)
    with pytest.raises(ValueError, match="lipschitz"):
        LipschitzRefiner(16, lipschitz=math.inf)
    with pytest.raises(ValueError, match=r"\(batch, 16, 16\)"):
        LipschitzRefiner(16)(torch.rand(2, 8, 8))
