"""LAMP with one ``B`` shared by all layers (``tied=True``, the default of Chen et al.'s
reimplementation): shapes, one tensor, the same network as an untied one whose ``B_k`` are
all equal (forward and the gradient, which is the sum of the untied layers' gradients),
finite differences in float64, checkpoints and the layer-wise parameter split."""

from __future__ import annotations

import pytest
import torch

from unrollsci.operators import MatrixOperator
from unrollsci.train import load_checkpoint, save_checkpoint
from unrollsci.train._layerwise import _layer_params
from unrollsci.unrolled import LAMP

M, N, K = 30, 60, 5


def _tied_and_untied(a, seed=1, **opts):
    """A tied model with a perturbed B and thresholds, and an untied copy with every
    B_k equal to that B."""
    g = torch.Generator().manual_seed(seed)
    tied = LAMP(MatrixOperator(a), K, tied=True, dtype=torch.float64, **opts)
    untied = LAMP(MatrixOperator(a), K, dtype=torch.float64, **opts)
    with torch.no_grad():
        tied.W[0].add_(0.02 * torch.randn(M, N, generator=g, dtype=torch.float64))
        tied.scale.add_(0.05 * torch.randn(K, generator=g, dtype=torch.float64))
        for w in untied.W:
            w.copy_(tied.W[0])
        untied.scale.copy_(tied.scale)
    return tied, untied


def test_shapes_and_one_shared_tensor(sparse_problem):
    a, _, y = sparse_problem(M, N, batch=7)
    model = LAMP(MatrixOperator(a), K, threshold="residual", scale_init=1.1, tied=True)
    out, xs = model(y, return_all=True)
    assert out.shape == (y.shape[0], N) and len(xs) == K
    assert len(model.W) == 1 and model.W[0].shape == (M, N)
    # one m x n matrix and K thresholds, against K matrices untied
    count = sum(p.numel() for p in model.parameters())
    assert count == M * N + K
    untied = LAMP(MatrixOperator(a), K, threshold="residual", scale_init=1.1)
    assert sum(p.numel() for p in untied.parameters()) == K * M * N + K
    assert "tied=True" in repr(model)


@pytest.mark.parametrize("opts", [{"threshold": "residual", "scale_init": 1.1}, {"lam": 0.1}])
def test_tied_is_untied_with_equal_matrices(opts, sparse_problem):
    """Forward: the same outputs at every layer. Backward: dL/dB (tied) is the sum over
    layers of dL/dB_k (untied), the chain rule of a shared parameter."""
    a, x, y = sparse_problem(M, N, batch=7)
    tied, untied = _tied_and_untied(a, **opts)
    out_t, xs_t = tied(y, return_all=True)
    out_u, xs_u = untied(y, return_all=True)
    for xt, xu in zip(xs_t, xs_u, strict=True):
        torch.testing.assert_close(xt, xu, atol=1e-12, rtol=0)
    (out_t - x).pow(2).sum().backward()
    (out_u - x).pow(2).sum().backward()
    grad_sum = sum(w.grad for w in untied.W)
    assert tied.W[0].grad.abs().max() > 0
    torch.testing.assert_close(tied.W[0].grad, grad_sum, atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(tied.scale.grad, untied.scale.grad, atol=1e-10, rtol=1e-8)
    # every layer uses the shared B: the untied layers' gradients are all nonzero
    assert all(float(w.grad.abs().max()) > 0 for w in untied.W)


def test_gradient_of_the_shared_matrix_matches_finite_differences(sparse_problem):
    """Directional derivative of the loss in the tied B, central differences in float64
    (the soft threshold and the nonzero count are piecewise smooth; a step of 1e-6 keeps
    every entry on its side of the threshold here)."""
    a, x, y = sparse_problem(M, N, seed=2, batch=7)
    model, _ = _tied_and_untied(a, threshold="residual", scale_init=1.1)

    def loss():
        return (model(y) - x).pow(2).sum()

    loss().backward()
    g = torch.Generator().manual_seed(5)
    d = torch.randn(M, N, generator=g, dtype=torch.float64)
    analytic = float((model.W[0].grad * d).sum())
    h = 1e-6
    with torch.no_grad():
        model.W[0].add_(h * d)
        up = float(loss())
        model.W[0].sub_(2 * h * d)
        down = float(loss())
        model.W[0].add_(h * d)
    assert analytic != 0
    assert (up - down) / (2 * h) == pytest.approx(analytic, rel=1e-6)


def test_checkpoint_round_trip(tmp_path, sparse_problem):
    a, _, y = sparse_problem(M, N, batch=7)
    model, _ = _tied_and_untied(a, threshold="residual", scale_init=1.1)
    save_checkpoint(model, tmp_path / "tied.pt")
    back = load_checkpoint(tmp_path / "tied.pt", expected=LAMP)
    assert back.tied and len(back.W) == 1 and back.threshold == "residual"
    torch.testing.assert_close(back(y), model(y), atol=0, rtol=0)
    # the untied default writes no new key (older checkpoints and readers unchanged)
    assert "tied" not in LAMP(MatrixOperator(a), 2).get_config()
    assert LAMP(MatrixOperator(a), 2, tied=True).get_config()["tied"] is True
    assert model.classical().tied  # the untrained copy keeps its shape of parameters


def test_bad_tied_option(sparse_problem):
    a, _, _ = sparse_problem(M, N, batch=7)
    op = MatrixOperator(a)
    with pytest.raises(TypeError, match="Expected tied a bool"):
        LAMP(op, 2, tied="yes")
    with pytest.raises(ValueError, match="needs learn_matrix=True"):
        LAMP(op, 2, tied=True, learn_matrix=False)


def test_layerwise_trains_the_shared_matrix_with_layer_one(sparse_problem):
    """fit_layerwise's split: the tied B is layer 1's own (and trained in every all-layer
    stage); a later layer's new-layer stage trains only its threshold."""
    a, _, _ = sparse_problem(M, N, batch=7)
    model = LAMP(MatrixOperator(a), K, threshold="residual", scale_init=1.1, tied=True)
    own, vectors = _layer_params(model, 0)
    assert len(own) == 1 and own[0] is model.W[0]
    assert vectors == [model.scale]
    own, vectors = _layer_params(model, 3)
    assert own == [] and vectors == [model.scale]
