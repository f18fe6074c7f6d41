"""``bench lista --floors``: the error split, the support fixed point, the steps on the true
support and the lasso path, each against an independent computation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from unrollsci import cli
from unrollsci.bench._lista_floors import (
    error_split,
    lasso_path,
    least_squares_on,
    support_fixed_point,
    support_steps_db,
    tune_support_steps,
)
from unrollsci.bench._lista_setup import make_problem, sample
from unrollsci.unrolled._lista import analytic_weight


def _problem(seed: int = 0, batch: int = 6, snr: float = 30.0):
    a = make_problem(20, 40, seed, dtype=torch.float64)
    y, x = sample(a, batch, 0.15, snr, torch.Generator().manual_seed(seed + 1))
    return a, y, x


def test_support_fixed_point_is_the_limit_of_the_iteration():
    a, y, x = _problem()
    w = analytic_weight(a)
    fp = support_fixed_point(w, a, y, x != 0)
    for i in range(x.shape[0]):
        s = x[i] != 0
        ws, as_ = w[:, s], a[:, s]
        gamma = 1.0 / float(torch.linalg.matrix_norm(ws.T @ as_, ord=2))
        z = torch.zeros(int(s.sum()), dtype=torch.float64)
        for _ in range(3000):  # the ALISTA step on the support, no threshold
            z = z + gamma * ws.T @ (y[i] - as_ @ z)
        assert torch.allclose(fp[i, s], z, atol=1e-10)
        assert bool((fp[i, ~s] == 0).all())
    # with W = A the fixed point is least squares on the support (the oracle), which is
    # numpy's lstsq
    ls = least_squares_on(a, y, x != 0)
    assert torch.allclose(support_fixed_point(a, a, y, x != 0), ls, atol=1e-12)
    for i in range(x.shape[0]):
        s = (x[i] != 0).numpy()
        ref = np.linalg.lstsq(a.numpy()[:, s], y[i].numpy(), rcond=None)[0]
        assert np.allclose(ls[i].numpy()[s], ref, atol=1e-12)
    # both are linear unbiased estimators on the support; least squares is the best one
    # (Gauss-Markov), so the oblique projection's error is larger in expectation (and here)
    err = lambda z: float((z - x).pow(2).sum())  # noqa: E731
    assert err(ls) < err(fp)


def test_support_steps_against_a_loop_per_vector():
    a, y, x = _problem(1)
    w = analytic_weight(a)
    gammas = [0.7, 1.1, 0.9, 1.3]
    err, ref = 0.0, 0.0
    for i in range(x.shape[0]):
        s = x[i] != 0
        z = torch.zeros(int(s.sum()), dtype=torch.float64)
        for g in gammas:
            z = z + g * w[:, s].T @ (y[i] - a[:, s] @ z)
        err += float((z - x[i, s]).pow(2).sum())
        ref += float(x[i].pow(2).sum())
    assert support_steps_db(w, a, y, x, gammas) == pytest.approx(10 * math.log10(err / ref))
    steps, best = tune_support_steps(w, a, y, x, [gammas])
    assert len(steps) == len(gammas)
    assert best <= support_steps_db(w, a, y, x, gammas) + 1e-9  # never worse than its start
    assert best == pytest.approx(support_steps_db(w, a, y, x, steps), abs=1e-9)


def test_error_split_parts_add_up():
    x = torch.tensor([[1.0, 0.0, -2.0, 0.0], [0.0, 3.0, 0.0, 0.5]])
    xh = torch.tensor([[0.9, 0.2, 0.0, 0.0], [0.0, 3.1, -0.1, 0.0]])
    out = error_split(xh, x)
    ref = float(x.pow(2).sum())
    assert out["kept_db"] == pytest.approx(10 * math.log10((0.01 + 0.01) / ref))
    assert out["missed_db"] == pytest.approx(10 * math.log10((4.0 + 0.25) / ref))
    assert out["false_db"] == pytest.approx(10 * math.log10((0.04 + 0.01) / ref))
    total = sum(10 ** (out[k] / 10) for k in ("kept_db", "missed_db", "false_db"))
    assert 10 * math.log10(total) == pytest.approx(out["nmse_db"])
    assert out["missed per vector"] == 1.0 and out["false per vector"] == 1.0


def test_lasso_path_solves_the_lasso():
    """The solutions behind each row satisfy the lasso's optimality conditions (checked
    here, not by scikit-learn): |A^T r| <= lam everywhere, = lam sign(x) on the support."""
    from sklearn.linear_model import Lasso

    a, y, x = _problem(2, batch=4)
    lams = (0.01, 0.05)
    rows = lasso_path(a, y, x, lams)
    assert [r["lam"] for r in rows] == list(lams)
    an, yn = a.numpy(), y.numpy()
    for lam, row in zip(lams, rows, strict=True):
        coef = Lasso(alpha=lam / 20, fit_intercept=False, tol=1e-12, max_iter=200_000)
        c = coef.fit(an, yn.T).coef_
        g = (yn - c @ an.T) @ an  # A^T r per vector
        assert np.all(np.abs(g) <= lam * (1 + 1e-6))
        on = c != 0
        assert np.allclose(g[on], lam * np.sign(c[on]), atol=1e-6 * lam)
        ref = float(x.pow(2).sum())
        assert row["lasso_db"] == pytest.approx(
            10 * math.log10(float(((torch.from_numpy(c) - x) ** 2).sum()) / ref)
        )
        assert row["nonzeros per vector"] == pytest.approx(on.sum(1).mean())
    # a larger lam keeps fewer entries
    assert rows[1]["nonzeros per vector"] <= rows[0]["nonzeros per vector"]


def test_cli_floors_quick(tmp_path):
    from unrollsci.bench._lista_setup import _quick_config
    from unrollsci.operators import MatrixOperator
    from unrollsci.train import save_checkpoint
    from unrollsci.unrolled import ALISTA, LISTACP

    cfg = _quick_config()
    a = make_problem(cfg["m"], cfg["n"], cfg["seed"])
    torch.manual_seed(0)
    paths = []
    for name, model in (
        ("ALISTA", ALISTA(MatrixOperator(a), cfg["K"], lam=0.1)),
        ("LISTA-CPSS", LISTACP(MatrixOperator(a), cfg["K"], lam=0.1, support_selection=True)),
    ):
        paths.append(str(save_checkpoint(model, tmp_path / f"{name}_snr40_quick.pt")))
    args = ["bench", "lista", "--quick", "--out", str(tmp_path), "--floors", *paths]
    assert cli.main(args) == 0
    data = json.loads((tmp_path / "lista_floors_quick.json").read_text())
    rows = {r["model"]: r for r in data["rows"]}
    assert set(rows) == {"ALISTA_snr40_quick", "LISTA-CPSS_snr40_quick"}
    y, x = sample(a, cfg["n_test"], cfg["p"], 40.0, torch.Generator().manual_seed(cfg["seed"] + 1))
    ref = float(x.double().pow(2).sum())
    alista = rows["ALISTA_snr40_quick"]
    fp = support_fixed_point(analytic_weight(a), a, y, x != 0)
    want = 10 * math.log10(float((fp - x.double()).pow(2).sum()) / ref)
    assert alista["fixed point on true support_db"] == pytest.approx(want, abs=1e-6)
    assert alista["true support, tuned steps_db"] <= alista["true support, own steps_db"] + 1e-9
    assert "true support, own steps_db" not in rows["LISTA-CPSS_snr40_quick"]
    assert [r["lam"] for r in data["lasso"]["40"]]  # the lasso path of the SNR
    assert "The lasso at SNR 40 dB" in (tmp_path / "lista_floors_quick.md").read_text()
    with pytest.raises(SystemExit):  # one report per run
        cli.main([*args, "--tails", paths[0]])


def test_committed_alista_floor_at_40db():
    """The docs' claim (docs/lista_accuracy.md, "What the gaps are made of"), recomputed from
    the committed checkpoint: with the true support given, ALISTA's fixed point and its own
    16 steps are 2.5-2.6 dB above least squares on the true support (the oracle), as in
    benchmarks/results/lista_floors.json."""
    from pathlib import Path

    from unrollsci.bench._lista_setup import _full_config
    from unrollsci.train import load_checkpoint

    root = Path(__file__).resolve().parents[2]
    model = load_checkpoint(root / "benchmarks/checkpoints/ALISTA_snr40.pt")
    cfg = _full_config()
    a = make_problem(cfg["m"], cfg["n"], cfg["seed"])
    y, x = sample(a, cfg["n_test"], cfg["p"], 40.0, torch.Generator().manual_seed(cfg["seed"] + 1))
    ref = float(x.double().pow(2).sum())
    fp = support_fixed_point(model.W, a, y, x != 0)
    floor = 10 * math.log10(float((fp - x.double()).pow(2).sum()) / ref)
    own = support_steps_db(model.W, a, y, x, model._pos(model.gamma, y).detach().reshape(-1))
    ls = support_fixed_point(a, a, y, x != 0)  # W = A: least squares on the true support
    oracle = 10 * math.log10(float((ls - x.double()).pow(2).sum()) / ref)
    assert 2.5 < floor - oracle < 2.6
    assert own == pytest.approx(floor, abs=0.01)  # 16 own steps reach the fixed point
    rows = json.loads((root / "benchmarks/results/lista_floors.json").read_text())["rows"]
    row = next(r for r in rows if r["model"] == "ALISTA_snr40")
    assert row["fixed point on true support_db"] == pytest.approx(floor, abs=1e-6)
    assert row["oracle_db"] == pytest.approx(oracle, abs=1e-6)  # the report used lstsq
    with torch.no_grad():
        nmse = 10 * math.log10(float((model(y) - x).double().pow(2).sum()) / ref)
    assert row["nmse_db"] == pytest.approx(nmse, abs=0.01)
    assert nmse > floor  # the trained model is above its floor
