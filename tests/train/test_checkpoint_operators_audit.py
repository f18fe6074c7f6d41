"""The matrix-free recipe of docs/unrolled.md (reshape, convolution, reshape) and the gram
operators checkpoint like every other operator (audit: save_checkpoint raised TypeError)."""

from __future__ import annotations

import torch

from unrollsci.operators import Convolution, IdentityOperator, MatrixOperator, ReshapeOperator, gram
from unrollsci.train import load_checkpoint, save_checkpoint
from unrollsci.unrolled import UnrolledFISTA


def _roundtrip(model, tmp_path, y):
    back = load_checkpoint(save_checkpoint(model, tmp_path / "m.pt"))
    back = back.to(next(model.parameters()).dtype)
    torch.testing.assert_close(back(y), model(y), rtol=0, atol=0)


def test_reshape_convolution_reshape(tmp_path):
    h = w = 6
    kernel = torch.tensor([[0.0, 1, 0], [1, 4, 1], [0, 1, 0]], dtype=torch.float64) / 8
    op = (
        ReshapeOperator((h, w), (h * w,))
        @ Convolution(kernel, (h, w))
        @ ReshapeOperator((h * w,), (h, w))
    )
    model = UnrolledFISTA(op, 3, lam=0.01)
    _roundtrip(model, tmp_path, torch.rand(2, h * w, dtype=torch.float64))


def test_identity_and_gram(tmp_path):
    a = MatrixOperator(torch.randn(5, 5, dtype=torch.float64))
    op = gram(a, 0.5) @ IdentityOperator(5)
    model = UnrolledFISTA(op, 2, lam=0.01)
    _roundtrip(model, tmp_path, torch.rand(3, 5, dtype=torch.float64))
