"""Audit (Dec 13, gradients against finite differences): a capped ``UnrolledCT`` in
training mode could not run backward once a capped convolution ran twice before it (a
tied network: every training step; two forwards summed): the power iteration's in-place
update of ``u`` invalidated the tensor saved for the weight's gradient."""

from __future__ import annotations

import copy

import torch

from unrollsci.imaging import UnrolledCT
from unrollsci.operators import Radon


def _model(tied: bool) -> UnrolledCT:
    torch.manual_seed(0)
    return UnrolledCT(Radon(16, 8), n_layers=3, channels=4, depth=2, tied=tied, cnn_lipschitz=0.5)


def _sino() -> torch.Tensor:
    return torch.randn(2, 8, 16, generator=torch.Generator().manual_seed(1))


def test_tied_capped_model_trains():
    model = _model(tied=True).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    loss = model(_sino()).pow(2).mean()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    opt.step()


def test_two_forwards_one_backward_equal_two_backwards():
    """The gradient of ``f(y1) + f(y2)`` equals the sum of the two gradients taken one
    forward at a time (the power iteration advances the same way in both)."""
    a = _model(tied=False).train()
    b = copy.deepcopy(a)
    y = _sino()
    (a(y[:1]).pow(2).sum() + a(y[1:]).pow(2).sum()).backward()
    b(y[:1]).pow(2).sum().backward()
    b(y[1:]).pow(2).sum().backward()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        if pa.grad is None:
            assert pb.grad is None, name
            continue
        torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-5, atol=1e-7, msg=name)
