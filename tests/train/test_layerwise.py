"""fit_layerwise: the staged schedule, the new-layer stage, the non-increasing curve."""

from __future__ import annotations

import math

import pytest
import torch

from unrollsci.operators import MatrixOperator
from unrollsci.train import fit_layerwise, layer_nmse_db
from unrollsci.unrolled import ALISTA, LISTACP

M, N = 20, 40


def _setup(seed=0):
    g0 = torch.Generator().manual_seed(seed)
    a = torch.randn(M, N, generator=g0)
    a = a / a.norm(dim=0)

    def draw(g, batch=32):
        x = torch.randn(batch, N, generator=g) * (torch.rand(batch, N, generator=g) < 0.1)
        return x @ a.T, x

    return a, draw, draw(torch.Generator().manual_seed(99), 256)


def test_layer_nmse_db_matches_direct_formula():
    a, _, (y, x) = _setup()
    model = ALISTA(MatrixOperator(a), 3)
    curve = layer_nmse_db(model, y, x, chunk=100)  # chunks sum like one pass
    with torch.no_grad():
        _, xs = model(y, return_all=True)
    direct = [10 * math.log10(float((xk - x).pow(2).sum() / x.pow(2).sum())) for xk in xs]
    assert curve == pytest.approx(direct, abs=1e-4)


def test_staged_training_improves_and_curve_is_non_increasing():
    a, draw, val = _setup()
    model = LISTACP(MatrixOperator(a), 4, lam=0.4, support_selection=True)
    before = layer_nmse_db(model, *val)
    hist = fit_layerwise(
        model, draw, val, lr=5e-4, vector_lr=20, max_steps=60, val_every=10, patience=30
    )
    assert hist.monotone
    assert all(hist.curve_db[j] <= hist.curve_db[j - 1] for j in range(1, 4))
    assert hist.curve_db == pytest.approx(layer_nmse_db(model, *val))
    assert hist.curve_db[-1] < before[-1] - 1.0
    # 4 layers x (new-layer stage + 2 decayed stages), at lr, 0.2 lr, 0.02 lr
    assert [s["layer"] for s in hist.stages] == [1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]
    assert [s["lr"] for s in hist.stages[:3]] == pytest.approx([5e-4, 1e-4, 1e-5])
    assert model.active_layers == 4


def test_layer_params_of_the_new_layer_stage():
    from unrollsci.train._layerwise import _layer_params

    a, _, _ = _setup()
    model = LISTACP(MatrixOperator(a), 3, lam=0.4)
    own, vectors = _layer_params(model, 1)
    assert len(own) == 1 and own[0] is model.W[1]
    assert len(vectors) == 1 and vectors[0] is model.theta
    tied = LISTACP(MatrixOperator(a), 3, lam=0.4, tied=True)
    assert _layer_params(tied, 0)[0] == [tied.W[0]]  # the shared matrix: with layer 1
    assert _layer_params(tied, 2)[0] == []


def test_only_new_stage_leaves_earlier_layers_unchanged():
    a, draw, val = _setup()
    model = LISTACP(MatrixOperator(a), 2, lam=0.4)
    w0, th0 = model.W[0].detach().clone(), model.theta.detach().clone()
    hist = fit_layerwise(
        model, draw, val, lr=1e-3, lr_decays=(), max_steps=20, val_every=5, warm_start=False
    )
    # stage for layer 2 trained W[1], theta[1] only; layer 1 changed only in its own stage
    assert [s["only_new"] for s in hist.stages] == [True, True]
    assert not torch.equal(model.W[1], w0)  # layer 2 moved
    # theta[0] after the whole run equals theta[0] after stage 1 (rerun stage 1 alone)
    model_b = LISTACP(MatrixOperator(a), 1, lam=0.4)
    with torch.no_grad():
        model_b.W[0].copy_(w0)
        model_b.theta.copy_(th0[:1])
    fit_layerwise(model_b, draw, val, lr=1e-3, lr_decays=(), max_steps=20, val_every=5)
    torch.testing.assert_close(model.W[0], model_b.W[0])
    torch.testing.assert_close(model.theta[:1], model_b.theta)


def test_time_budget_and_clock_limit_the_run():
    a, draw, val = _setup()
    ticks = iter(range(10**6))
    model = ALISTA(MatrixOperator(a), 3)
    hist = fit_layerwise(
        model,
        draw,
        val,
        lr=1e-2,
        max_steps=10_000,
        val_every=5,
        patience=10_000,
        time_budget=60.0,
        clock=lambda: float(next(ticks)),  # one "second" per reading
    )
    assert sum(hist.steps) < 10_000 * 9  # stopped by the budget, not by max_steps
    assert all(not s["by_patience"] for s in hist.stages)


def test_bad_arguments():
    a, draw, val = _setup()
    model = ALISTA(MatrixOperator(a), 2)
    with pytest.raises(TypeError, match="layered model"):
        fit_layerwise(torch.nn.Linear(2, 2), draw, val)
    with pytest.raises(TypeError, match="sampler to be callable"):
        fit_layerwise(model, None, val)
    with pytest.raises(TypeError, match="val_data to be a pair"):
        fit_layerwise(model, draw, val[0])
    with pytest.raises(ValueError, match="lr"):
        fit_layerwise(model, draw, val, lr=0.0)
    with pytest.raises(ValueError, match="patience"):
        fit_layerwise(model, draw, val, patience=0)


def test_start_layer_continues_a_trained_model_without_touching_it_first():
    """start_layer=K trains only the last layer's stages (all layers at once with
    new_layer_stage=False): the earlier layers' warm start is not redone, the result is
    never worse on validation than the model it continued, and the curve stays monotone."""
    a, draw, val = _setup()
    model = ALISTA(MatrixOperator(a), 3, lam=0.4)
    fit_layerwise(model, draw, val, lr=1e-2, max_steps=30, val_every=10, patience=20)
    before = layer_nmse_db(model, *val)
    theta0 = model.theta.detach().clone()
    hist = fit_layerwise(
        model,
        draw,
        val,
        lr=1e-3,
        new_layer_stage=False,
        lr_decays=(1.0,),
        start_layer=3,
        max_steps=40,
        val_every=10,
        patience=40,
    )
    assert [s["layer"] for s in hist.stages] == [3]
    assert not hist.stages[0]["only_new"]
    assert len(hist.steps) == 1
    assert hist.curve_db[-1] <= before[-1] + 1e-9  # the start state counts as a candidate
    assert hist.monotone
    assert not torch.equal(model.theta.detach()[:2], theta0[:2]) or hist.steps[0] == 0
    with pytest.raises(ValueError, match="start_layer in 1..3"):
        fit_layerwise(model, draw, val, start_layer=4)
    with pytest.raises(ValueError, match="start_layer"):
        fit_layerwise(model, draw, val, start_layer=0)


def test_freeze_below_keeps_the_first_layers():
    a, draw, val = _setup()
    model = LISTACP(MatrixOperator(a), 3, lam=0.4)
    fit_layerwise(model, draw, val, lr=5e-4, vector_lr=20, max_steps=20, val_every=10)
    w0 = [w.detach().clone() for w in model.W]
    th0 = model.theta.detach().clone()
    fit_layerwise(
        model,
        draw,
        val,
        lr=5e-3,
        new_layer_stage=False,
        lr_decays=(1.0,),
        start_layer=3,
        freeze_below=2,
        max_steps=20,
        val_every=5,
        patience=20,
    )
    assert torch.equal(model.W[0], w0[0]) and torch.equal(model.W[1], w0[1])
    assert torch.equal(model.theta.detach()[:2], th0[:2])
    assert not torch.equal(model.W[2], w0[2])  # the last layer trained
    with pytest.raises(ValueError, match="freeze_below < start_layer"):
        fit_layerwise(model, draw, val, start_layer=2, freeze_below=2)


def _one_step_moves(decay_rate):
    """One all-layer Adam step at the last layer (fixed batch = validation data, so the tiny
    step improves it and is kept): the change of every layer's constants."""
    a, draw, _ = _setup()
    batch = tuple(t.double() for t in draw(torch.Generator().manual_seed(7), 64))
    model = LISTACP(MatrixOperator(a.double()), 4, lam=0.4)  # float64: steps of 1e-9 resolved
    w0 = [w.detach().clone() for w in model.W]
    th0 = model.theta.detach().clone()
    lr = 1e-6
    hist = fit_layerwise(
        model,
        lambda g: batch,
        batch,
        lr=lr,
        vector_lr=10.0,
        decay_rate=decay_rate,
        new_layer_stage=False,
        lr_decays=(1.0,),
        start_layer=4,
        max_steps=1,
        val_every=1,
    )
    assert hist.stages[0]["steps"] == 1 and hist.monotone
    dw = [float((w.detach() - w_0).abs().max()) for w, w_0 in zip(model.W, w0, strict=True)]
    dth = (model.theta.detach() - th0).abs().reshape(4, -1).amax(dim=1).tolist()
    return lr, dw, dth


def test_decay_rate_scales_the_earlier_layers_rates():
    """Adam's first step moves a constant by about its rate (lr * g / |g|): with decay_rate
    d, layer j of 4 moves by d**(4 - j) times what layer 4 moves, matrices and thresholds."""
    d = 0.3
    lr, dw, dth = _one_step_moves(d)
    for j in range(4):
        assert dw[j] == pytest.approx(lr * d ** (3 - j), rel=1e-2)
        assert dth[j] == pytest.approx(10.0 * lr * d ** (3 - j), rel=1e-2)
    lr, dw1, dth1 = _one_step_moves(1.0)  # no decay: every layer moves by its rate
    assert dw1 == pytest.approx([lr] * 4, rel=1e-2)
    assert dth1 == pytest.approx([10.0 * lr] * 4, rel=1e-2)


def test_decay_rate_keeps_the_non_increasing_guarantee():
    a, draw, val = _setup()
    model = ALISTA(MatrixOperator(a), 4, lam=0.4)
    hist = fit_layerwise(
        model, draw, val, lr=1e-2, decay_rate=0.3, max_steps=40, val_every=10, patience=30
    )
    assert hist.monotone
    assert all(hist.curve_db[j] <= hist.curve_db[j - 1] for j in range(1, 4))
    assert hist.curve_db == pytest.approx(layer_nmse_db(model, *val))
    for bad in (0.0, 1.5, -0.3):
        with pytest.raises(ValueError, match="decay_rate in"):
            fit_layerwise(model, draw, val, decay_rate=bad)
    with pytest.raises(TypeError, match="decay_rate to be a number"):
        fit_layerwise(model, draw, val, decay_rate="0.3")


def test_stage_loss_matches_its_formula_in_float64():
    from unrollsci.train._layerwise import _stage_loss

    g = torch.Generator().manual_seed(3)
    x = torch.randn(5, 7, generator=g, dtype=torch.float64)
    xs = [x + s * torch.randn(5, 7, generator=g, dtype=torch.float64) for s in (1.0, 0.3, 0.1)]
    e = [float((xk - x).pow(2).sum() / x.pow(2).sum()) for xk in xs]
    assert float(_stage_loss(xs, x, 3)) == pytest.approx(e[2], rel=1e-12)
    assert float(_stage_loss(xs, x, 2, "log")) == pytest.approx(math.log(e[1]), rel=1e-12)
    want = math.log(e[2]) + 0.5 * sum(math.log(v) for v in e) / 3
    assert float(_stage_loss(xs, x, 3, "log", 0.5)) == pytest.approx(want, rel=1e-12)
    want = e[1] + 0.25 * (e[0] + e[1]) / 2  # layers 1..k only
    assert float(_stage_loss(xs, x, 2, "nmse", 0.25)) == pytest.approx(want, rel=1e-12)


def _adam_by_hand(a, draw, loss_kind, depth_weight, steps, lr):
    """What fit_layerwise's last-layer stage does for ALISTA (one group of vectors)."""
    from unrollsci.train._layerwise import _stage_loss

    model = ALISTA(MatrixOperator(a), 3, lam=0.4)
    opt = torch.optim.Adam([model.gamma, model.theta], lr=lr)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        y, x = draw(gen)
        _, xs = model(y, return_all=True)
        opt.zero_grad()
        _stage_loss(xs, x, 3, loss_kind, depth_weight).backward()
        opt.step()
    return model


@pytest.mark.parametrize(("loss", "depth_weight"), [("log", 0.0), ("log", 0.1), ("nmse", 0.3)])
def test_loss_and_depth_weight_are_the_trained_loss(loss, depth_weight):
    a, draw, val = _setup()
    model = ALISTA(MatrixOperator(a), 3, lam=0.4)
    before = layer_nmse_db(model, *val)
    hist = fit_layerwise(
        model, draw, val, lr=1e-2, lr_decays=(1.0,), new_layer_stage=False, start_layer=3,
        max_steps=3, val_every=3, loss=loss, depth_weight=depth_weight,
    )  # fmt: skip
    assert hist.curve_db[-1] < before[-1]  # the 3-step state was kept, not the start
    ref = _adam_by_hand(a, draw, loss, depth_weight, 3, 1e-2)
    assert torch.allclose(model.gamma, ref.gamma, atol=1e-6)
    assert torch.allclose(model.theta, ref.theta, atol=1e-6)
    other = _adam_by_hand(a, draw, "nmse" if loss == "log" else "log", 0.0, 3, 1e-2)
    assert not torch.allclose(model.theta, other.theta, atol=1e-6)  # the loss matters


def test_loss_options_are_checked():
    a, draw, val = _setup()
    model = ALISTA(MatrixOperator(a), 2)
    with pytest.raises(ValueError, match="loss"):
        fit_layerwise(model, draw, val, loss="l1", max_steps=1)
    with pytest.raises(ValueError, match="depth_weight"):
        fit_layerwise(model, draw, val, depth_weight=-0.1, max_steps=1)
    with pytest.raises(TypeError, match="depth_weight"):
        fit_layerwise(model, draw, val, depth_weight="0.1", max_steps=1)
