"""Losses, training schedules and the error decomposition on small problems."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from unrollsci import solvers
from unrollsci.bench.lista import make_problem, oracle_nmse_db, sample
from unrollsci.losses import kkt_residual, mse, nmse_db
from unrollsci.operators import MatrixOperator
from unrollsci.train import fit, load_checkpoint
from unrollsci.unrolled import ALISTA, LISTA, LISTACP, UnrolledFISTA, error_decomposition

M, N, LAM = 30, 60, 0.05


def _data(device, batch, seed, dtype=torch.float32, snr=math.inf):
    a = make_problem(M, N, 0, dtype)
    y, x = sample(a, batch, 0.1, snr, torch.Generator().manual_seed(seed))
    return a.to(device), y.to(device), x.to(device)


def test_nmse_db_against_numpy(device):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 7, generator=g, dtype=torch.float64)
    xt = torch.randn(5, 7, generator=g, dtype=torch.float64)
    xn, xtn = x.numpy(), xt.numpy()
    ref = 10 * np.log10(((xn - xtn) ** 2).sum() / (xtn**2).sum())
    assert float(nmse_db(x.to(device), xt.to(device))) == pytest.approx(ref, rel=1e-12)
    per = 10 * np.log10(((xn - xtn) ** 2).sum(1) / (xtn**2).sum(1))
    np.testing.assert_allclose(
        nmse_db(x.to(device), xt.to(device), reduction="none").cpu(), per, rtol=1e-12
    )
    assert float(mse(x, xt)) == pytest.approx(((xn - xtn) ** 2).sum(1).mean())
    with pytest.raises(ValueError, match="same shape"):
        nmse_db(x, xt[:, :3])
    with pytest.raises(ValueError, match="reduction"):
        nmse_db(x, xt, reduction="sum")


def test_kkt_residual_zero_at_lasso_minimizer(device):
    a, y, _ = _data(device, 3, 1, dtype=torch.float64)
    op = MatrixOperator(a)
    sol = solvers.fista(op, y, LAM, max_iter=20_000, tol=1e-13)
    assert sol.converged
    assert float(kkt_residual(op, sol.x, y, LAM).max()) < 1e-9
    # independent numpy formula at a non-optimal point
    x = torch.zeros_like(sol.x)
    an, yn = a.cpu().numpy(), y.cpu().numpy()
    t = 1.0 / np.linalg.norm(an, 2) ** 2
    v = t * yn @ an
    prox = np.sign(v) * np.maximum(np.abs(v) - t * LAM, 0)
    ref = np.linalg.norm(prox, axis=1) / t
    np.testing.assert_allclose(kkt_residual(op, x, y, LAM).cpu().numpy(), ref, rtol=1e-8)


def test_oracle_floor_noiseless_is_exact():
    a = make_problem(M, N, 0, torch.float64)
    y, x = sample(a, 20, 0.1, math.inf, torch.Generator().manual_seed(3))
    assert oracle_nmse_db(a, y, x) < -200


def _nmse(model, y, x):
    with torch.no_grad():
        return float(nmse_db(model(y), x))


def _loss(model, batch):
    y, x = batch
    return mse(model(y), x)


def test_layerwise_training_improves_alista(device):
    a, y, x = _data(device, 256, 1)
    yv, xv = _data(device, 128, 2)[1:]
    model = ALISTA(MatrixOperator(a), 4, lam=LAM).to(device)
    before = _nmse(model, yv, xv)
    hist = fit(
        model,
        _loss,
        (y, x),
        val_data=(yv, xv),
        schedule="layerwise",
        epochs=8,
        batch_size=64,
        lr=2e-2,
        lr_decay=0.9,
        progress=False,
        seed=0,
    )
    after = _nmse(model, yv, xv)
    assert model.active_layers == 4
    assert set(hist.stage) == {1, 2, 3, 4}
    assert after < before - 2.0, (before, after)


def test_end_to_end_training_with_checkpoint(device, tmp_path):
    """Matrix-weight models train on fresh synthetic batches (a fixed small set overfits)."""
    a = make_problem(M, N, 0)
    yv, xv = _data(device, 128, 2)[1:]

    def sampler(gen):
        y, x = sample(a, 64, 0.1, math.inf, gen)
        return y.to(device), x.to(device)

    model = LISTACP(MatrixOperator(a), 3, lam=LAM, support_selection=True).to(device)
    before = _nmse(model, yv, xv)
    fit(
        model,
        _loss,
        sampler,
        val_data=(yv, xv),
        epochs=15,
        steps_per_epoch=10,
        lr=3e-3,
        progress=False,
        checkpoint=tmp_path / "cp.pt",
        seed=0,
    )
    after = _nmse(model, yv, xv)
    assert after < before - 1.0, (before, after)
    loaded = load_checkpoint(tmp_path / "cp.pt", expected=LISTACP).to(device)
    with torch.no_grad():
        assert torch.equal(loaded(yv), model(yv))


def test_kkt_training_lowers_kkt_residual_without_ground_truth(device):
    a, y, _ = _data(device, 256, 1)
    op = MatrixOperator(a)
    model = LISTA(op, 3, lam=LAM).to(device)
    step = 1.0 / op.norm() ** 2

    def kkt_loss(mdl, batch):
        return kkt_residual(op, mdl(batch), batch, LAM, step=step).pow(2).mean()

    with torch.no_grad():
        before = float(kkt_loss(model, y))
    fit(model, kkt_loss, y, epochs=20, batch_size=64, lr=1e-3, progress=False, seed=0)
    with torch.no_grad():
        assert float(kkt_loss(model, y)) < 0.5 * before


def test_sampler_training_is_seeded(device):
    a = make_problem(M, N, 0).to(device)

    def sampler(gen):
        y, x = sample(a.cpu(), 32, 0.1, math.inf, gen)
        return y.to(device), x.to(device)

    outs = []
    for _ in range(2):
        model = UnrolledFISTA(MatrixOperator(a), 3, lam=LAM).to(device)
        fit(model, _loss, sampler, epochs=2, steps_per_epoch=5, lr=1e-2, progress=False, seed=7)
        outs.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(outs[0], outs[1])


def test_fit_rejects_bad_lr_decay():
    model = UnrolledFISTA(MatrixOperator(make_problem(M, N, 0)), 2, lam=LAM)
    with pytest.raises(ValueError, match="lr_decay"):
        fit(model, _loss, (torch.zeros(4, M), torch.zeros(4, N)), lr_decay=0.0, progress=False)


def test_error_decomposition(device):
    a, y, x = _data(device, 64, 1, dtype=torch.float64)
    model = ALISTA(MatrixOperator(a), 4, lam=LAM, dtype=torch.float64, support_selection=False).to(
        device
    )
    rows = error_decomposition(model, y, x)
    assert [r["layer"] for r in rows] == [1, 2, 3, 4]
    for r in rows:  # untrained: no learned deviation
        assert r["deviation"] == pytest.approx(0.0, abs=1e-12)
        assert r["model"] == pytest.approx(r["classical"], rel=1e-12)
    with torch.no_grad():
        model.theta.sub_(1.0)
    rows = error_decomposition(model, y, x)
    _, xs = model(y, return_all=True)
    for r, xk in zip(rows, xs, strict=True):
        assert r["model"] <= r["classical"] + r["deviation"] + 1e-12
        assert r["model_db"] == pytest.approx(float(nmse_db(xk.detach(), x)), abs=1e-9)
    with pytest.raises(ValueError, match="x_ref"):
        error_decomposition(model, y, x[:, :5])


def test_copy_layer_and_stage_hook(device):
    a, y, x = _data(device, 64, 1)
    model = LISTA(MatrixOperator(a), 3, lam=LAM).to(device)
    with torch.no_grad():
        model.theta[0] = 5.0
        model.S[0].add_(1.0)
        model.W_e[1].add_(2.0)
    model.copy_layer(1, 2)
    assert float(model.theta[2].detach()) == float(model.theta[1].detach())
    assert torch.equal(model.S[1], model.S[0])
    assert torch.equal(model.W_e[2], model.W_e[1])
    with pytest.raises(ValueError, match="Expected layers"):
        model.copy_layer(0, 3)
    seen = []
    fit(
        model,
        _loss,
        (y, x),
        schedule="layerwise",
        epochs=1,
        progress=False,
        stage_hook=lambda m, k: seen.append((k, m.active_layers)),
    )
    assert seen == [(1, 1), (2, 2), (3, 3)]


def test_kkt_stage_lam_continuation():
    from unrollsci.bench.lista import kkt_stage_lam

    # constant without a start value
    assert [kkt_stage_lam(k, 4, 0.1, None) for k in (1, 2, 4)] == [0.1, 0.1, 0.1]
    # geometric from lam_start at stage 1 to lam at the last stage
    lams = [kkt_stage_lam(k, 5, 0.05, 0.8) for k in range(1, 6)]
    assert lams[0] == pytest.approx(0.8) and lams[-1] == pytest.approx(0.05)
    ratios = [lams[i + 1] / lams[i] for i in range(4)]
    np.testing.assert_allclose(ratios, (0.05 / 0.8) ** 0.25, rtol=1e-12)
    assert kkt_stage_lam(1, 1, 0.05, 0.8) == 0.05
    with pytest.raises(ValueError, match="lam_start"):
        kkt_stage_lam(1, 3, 0.05, -1.0)
