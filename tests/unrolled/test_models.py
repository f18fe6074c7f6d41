"""Unrolled lasso models: classical initialisation, gradients, checkpoints, bad input."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from unrollsci import ConvergenceWarning, solvers
from unrollsci.operators import LinearOperator, MatrixOperator
from unrollsci.train import load_checkpoint, save_checkpoint
from unrollsci.unrolled import (
    ALISTA,
    LAMP,
    LISTA,
    LISTACP,
    ADMMNet,
    UnrolledFISTA,
    analytic_weight,
    support_selection_threshold,
)

M, N, K, LAM = 30, 60, 6, 0.05


def _problem(device, dtype=torch.float64, batch=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(M, N, generator=g, dtype=torch.float64)
    a = a / a.norm(dim=0)
    x = torch.randn(batch, N, generator=g, dtype=torch.float64)
    x = x * (torch.rand(batch, N, generator=g, dtype=torch.float64) < 0.1)
    a, x = a.to(device=device, dtype=dtype), x.to(device=device, dtype=dtype)
    return a, x, x @ a.T


def _classical(name, op, y, k):
    with pytest.warns(ConvergenceWarning):
        if name == "ista":
            return solvers.ista(op, y, LAM, max_iter=k, tol=0).x
        if name == "fista":
            return solvers.fista(op, y, LAM, max_iter=k, tol=0, restart=False).x
        if name == "admm":
            return solvers.admm(op, y, LAM, max_iter=k, tol=0, method="cholesky").x
        if name == "bg_amp":
            return solvers.bg_amp(op, y, 0.1, sigma_x=1.0, max_iter=k, tol=0).x
        return solvers.amp(op, y, LAM, max_iter=k, tol=0, decay=0.8).x


# (model class, options, classical solver it equals when untrained)
CASES = [
    (LISTA, {}, "ista"),
    (LISTA, {"tied": True}, "ista"),
    (LISTACP, {}, "ista"),
    (LISTACP, {"tied": True}, "ista"),
    (ALISTA, {"weight": "adjoint", "support_selection": False}, "ista"),
    (UnrolledFISTA, {}, "fista"),
    (ADMMNet, {}, "admm"),
    (LAMP, {}, "amp"),
    (LAMP, {"learn_matrix": False}, "amp"),
    (LAMP, {"tied": True}, "amp"),
    (LAMP, {"denoiser": "bg"}, "bg_amp"),
    (LAMP, {"denoiser": "bg", "learn_matrix": False}, "bg_amp"),
    (LAMP, {"denoiser": "bg", "tied": True}, "bg_amp"),
]
IDS = [
    f"{c.__name__}-{'-'.join(f'{k}={v}' for k, v in o.items()) or 'default'}" for c, o, _ in CASES
]


@pytest.mark.parametrize(("cls", "opts", "ref"), CASES, ids=IDS)
def test_untrained_equals_classical(device, cls, opts, ref):
    a, _, y = _problem(device)
    op = MatrixOperator(a)
    model = cls(op, K, lam=LAM, dtype=torch.float64, **opts).to(device)
    out, xs = model(y, return_all=True)
    assert len(xs) == K
    for k in (1, K // 2, K):
        expected = _classical(ref, op, y, k)
        torch.testing.assert_close(xs[k - 1], expected, atol=1e-6, rtol=0)
    assert torch.equal(out, xs[-1])


def test_lamp_bg_other_prior_equals_classical(device):
    """The prior options set the classical BG-AMP the untrained model equals."""
    a, _, y = _problem(device)
    op = MatrixOperator(a)
    model = LAMP(op, K, denoiser="bg", rho=0.25, sigma_x=0.7, dtype=torch.float64).to(device)
    with pytest.warns(ConvergenceWarning):
        ref = solvers.bg_amp(op, y, 0.25, sigma_x=0.7, max_iter=K, tol=0).x
    torch.testing.assert_close(model(y), ref, atol=1e-6, rtol=0)
    assert "denoiser='bg', rho=0.25, sigma_x=0.7" in repr(model)
    # classical() keeps the prior and resets the learned constants
    with torch.no_grad():
        model.rho_logit.add_(1.0)
        model.scale.add_(1.0)
    torch.testing.assert_close(model.classical().to(device)(y), ref, atol=1e-6, rtol=0)


def test_lamp_bg_copy_layer(device):
    a, _, _ = _problem(device, dtype=torch.float32)
    model = LAMP(MatrixOperator(a), 3, denoiser="bg").to(device)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    model.copy_layer(0, 2)
    for name in ("rho_logit", "sigma", "scale"):
        p = getattr(model, name)
        assert p[2] == p[0], name
    assert torch.equal(model.W[2], model.W[0])


def test_lamp_denoiser_options_are_checked():
    a, _, _ = _problem("cpu", dtype=torch.float32)
    op = MatrixOperator(a)
    with pytest.raises(ValueError, match="Expected denoiser 'soft' or 'bg'"):
        LAMP(op, 2, denoiser="hard")
    with pytest.raises(ValueError, match="options of denoiser='bg' only"):
        LAMP(op, 2, rho=0.1)
    with pytest.raises(ValueError, match="Expected 0 < rho < 1"):
        LAMP(op, 2, denoiser="bg", rho=1.0)
    with pytest.raises(ValueError, match="Expected 'sigma_x' > 0"):
        LAMP(op, 2, denoiser="bg", sigma_x=0.0)
    with pytest.raises(ValueError, match="Expected a finite scale_init > 0"):
        LAMP(op, 2, denoiser="bg", scale_init=0.0)


def test_lamp_soft_is_unchanged_by_the_bg_option(device):
    """The default LAMP has the same parameters (names and values) as before."""
    a, _, y = _problem(device, dtype=torch.float32)
    model = LAMP(MatrixOperator(a), 3, scale_init=0.95).to(device)
    names = sorted(n for n, _ in model.named_parameters())
    assert names == ["W.0", "W.1", "W.2", "scale"]
    assert model.get_config()["denoiser"] == "soft"


def test_alista_analytic_matches_reference_loop(device):
    """Untrained ALISTA (analytic W, no support selection) equals a numpy loop."""
    a, _, y = _problem(device)
    model = ALISTA(MatrixOperator(a), K, lam=LAM, support_selection=False, dtype=torch.float64).to(
        device
    )
    an, yn = a.cpu().numpy(), y.cpu().numpy()
    w = model.W.cpu().numpy()
    gamma = 1.0 / np.linalg.norm(w.T @ an, 2)
    x = np.zeros((yn.shape[0], N))
    for _ in range(K):
        v = x - gamma * (x @ an.T - yn) @ w
        x = np.sign(v) * np.maximum(np.abs(v) - gamma * LAM, 0)
    np.testing.assert_allclose(model(y).detach().cpu().numpy(), x, atol=1e-10)


def test_analytic_weight_is_optimal(device):
    """diag(W^T A) = 1 and no feasible perturbation lowers ||W^T A||_F (KKT check)."""
    a, _, _ = _problem(device)
    w = analytic_weight(a)
    wta = w.T @ a.to(torch.float64)
    torch.testing.assert_close(
        torch.diagonal(wta), torch.ones(N, dtype=torch.float64, device=device)
    )
    base = float(wta.pow(2).sum())
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        d = torch.randn(M, N, generator=g, dtype=torch.float64).to(device)
        # project each column onto {d_i : a_i^T d_i = 0} to stay feasible
        a64 = a.to(torch.float64)
        d = d - a64 * ((a64 * d).sum(0) / (a64 * a64).sum(0))
        assert float(((w + 1e-3 * d).T @ a64).pow(2).sum()) >= base


def test_support_selection_threshold(device):
    v = torch.tensor([[5.0, -4.0, 0.5, -2.0, 1.5, 0.1]], device=device)
    out = support_selection_threshold(v, 1.0, 2 / 6)  # top 2 kept unshrunk
    expected = torch.tensor([[5.0, -4.0, 0.0, -1.0, 0.5, 0.0]], device=device)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(
        support_selection_threshold(v, 1.0, 0.0), torch.sign(v) * torch.relu(v.abs() - 1.0)
    )


ALL = [
    (LISTA, {}),
    (LISTACP, {"support_selection": True}),
    (ALISTA, {}),
    (UnrolledFISTA, {}),
    (ADMMNet, {}),
    (LAMP, {"scale_init": 0.95}),
    (LAMP, {"denoiser": "bg", "rho": 0.2, "sigma_x": 0.8}),
]
ALL_IDS = [c.__name__ + ("-BG" if o.get("denoiser") == "bg" else "") for c, o in ALL]


@pytest.mark.parametrize(("cls", "opts"), ALL, ids=ALL_IDS)
def test_gradients_reach_every_parameter(device, cls, opts):
    a, x, y = _problem(device, dtype=torch.float32)
    model = cls(MatrixOperator(a), 3, lam=LAM, **opts).to(device)
    loss = (model(y) - x).pow(2).sum()
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize(
    ("cls", "opts"),
    [(ALISTA, {"support_selection": False}), (UnrolledFISTA, {}), (ADMMNet, {})],
    ids=["ALISTA", "UnrolledFISTA", "ADMMNet"],
)
def test_gradcheck_float64(device, cls, opts):
    a, _, y = _problem(device, batch=2)
    model = cls(MatrixOperator(a), 3, lam=LAM, dtype=torch.float64, **opts).to(device)
    params = [p for p in model.parameters()]

    def f(*ps):
        for p, v in zip(params, ps, strict=True):
            p.data = v.detach()
        return torch.func.functional_call(
            model, dict(zip([n for n, _ in model.named_parameters()], ps, strict=True)), (y,)
        )

    inputs = tuple(p.detach().clone().requires_grad_(True) for p in params)
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-5)


@pytest.mark.parametrize(("cls", "opts"), ALL, ids=ALL_IDS)
def test_checkpoint_roundtrip(device, cls, opts, tmp_path):
    a, _, y = _problem(device, dtype=torch.float32)
    model = cls(MatrixOperator(a), 3, lam=LAM, **opts).to(device)
    with torch.no_grad():  # move away from the initialisation
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    path = save_checkpoint(model, tmp_path / "m.pt")
    loaded = load_checkpoint(path, expected=cls).to(device)
    assert type(loaded) is cls
    assert torch.equal(loaded(y), model(y))


def test_checkpoint_of_another_class(tmp_path):
    a, _, _ = _problem("cpu", dtype=torch.float32)
    path = save_checkpoint(ALISTA(MatrixOperator(a), 2), tmp_path / "a.pt")
    with pytest.raises(ValueError, match="holds a ALISTA, expected LISTA"):
        load_checkpoint(path, expected=LISTA)


@pytest.mark.parametrize(("cls", "opts"), ALL, ids=ALL_IDS)
def test_bad_input(device, cls, opts):
    a, _, y = _problem(device, dtype=torch.float32)
    op = MatrixOperator(a)
    model = cls(op, 2, lam=LAM, **opts).to(device)
    with pytest.raises(ValueError, match=r"Expected 'y' of length 30 .*got shape \(4, 29\)"):
        model(y[:, :-1])
    bad = y.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="Expected 'y' to be finite"):
        model(bad)
    with pytest.raises(ValueError, match="Expected 'num_layers' >= 1"):
        cls(op, 0, lam=LAM, **opts)
    with pytest.raises(ValueError, match="Expected 'lam' > 0"):
        cls(op, 2, lam=-1.0, **opts)
    with pytest.raises(ValueError, match=r"1 <= 'active_layers' <= 2 \(got 3\)"):
        model.active_layers = 3


def test_unbatched_and_generic_operator(device):
    """A matrix-free operator (no MatrixOperator) and a single (m,) vector both work."""
    a, _, y = _problem(device)

    class Op(LinearOperator):
        def __init__(self):
            super().__init__()
            self.register_buffer("a", a)
            self.in_shape, self.out_shape = (N,), (M,)

        def _mv(self, x):
            return x @ self._cast("a", x).T

        def _rmv(self, r):
            return r @ self._cast("a", r)

    for cls in (LISTA, UnrolledFISTA, LAMP):
        model = cls(Op(), K, lam=LAM, dtype=torch.float64).to(device)
        ref = cls(MatrixOperator(a), K, lam=LAM, dtype=torch.float64).to(device)
        torch.testing.assert_close(model(y[0]), ref(y)[0])


def test_float64_input_on_float32_model(device):
    a, _, y = _problem(device)
    model = UnrolledFISTA(MatrixOperator(a), K, lam=LAM).to(device)
    assert model(y).dtype == torch.float64


def test_active_layers_truncates(device):
    a, _, y = _problem(device)
    model = LISTACP(MatrixOperator(a), K, lam=LAM, dtype=torch.float64).to(device)
    _, xs = model(y, return_all=True)
    model.active_layers = 2
    torch.testing.assert_close(model(y), xs[1])


def test_thresholds_stay_positive_under_any_raw_value(device):
    """Raw steps and thresholds far below zero: the forward uses their softplus (tiny but
    positive), as an independent numpy ISTA with those steps and thresholds shows."""
    a, _, y = _problem(device)
    model = ALISTA(
        MatrixOperator(a),
        K,
        lam=LAM,
        weight="adjoint",
        support_selection=False,
        dtype=torch.float64,
    ).to(device)
    with torch.no_grad():
        model.gamma.fill_(-50.0)
        model.theta.fill_(-52.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = model(y).detach().cpu().numpy()
    step, thresh = np.logaddexp(0.0, -50.0), np.logaddexp(0.0, -52.0)  # softplus, numpy
    assert 0 < thresh < step < 1e-20
    an, yn = a.cpu().numpy(), y.cpu().numpy()
    x = np.zeros((yn.shape[0], N))
    for _ in range(K):  # ISTA: x <- soft(x - step A^T (A x - y), thresh)
        v = x - step * (x @ an.T - yn) @ an
        x = np.sign(v) * np.maximum(np.abs(v) - thresh, 0.0)
    assert (x == 0).any() and (x != 0).any()  # the thresholds are active, not all-killing
    np.testing.assert_allclose(out, x, rtol=1e-9, atol=1e-12 * np.abs(x).max())
    # the default model (analytic weight, support selection) stays finite too
    model = ALISTA(MatrixOperator(a), K, lam=LAM, dtype=torch.float64).to(device)
    with torch.no_grad():
        model.theta.fill_(-50.0)
        model.gamma.fill_(-50.0)
    out = model(y).detach()
    assert torch.isfinite(out).all() and float(out.abs().max()) < 1e-18


@pytest.mark.parametrize(("cls", "opts"), ALL, ids=ALL_IDS)
def test_parameters_follow_the_operator_device(device, cls, opts):
    a, _, y = _problem(device, dtype=torch.float32)
    model = cls(MatrixOperator(a), 2, lam=LAM, **opts)  # no .to(device)
    assert all(p.device.type == device.type for p in model.parameters())
    assert model(y).device.type == device.type
