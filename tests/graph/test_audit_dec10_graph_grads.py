"""Graph gradients, audit round "dec10": a signal whose error or gradient is exactly zero
(an all-zero ``y`` row) gave NaN gradients through ``torch.sqrt`` at 0 (``relative_error``,
the controller features' norms), and ``fit`` wrote them into the parameters silently. Each
test marked so fails on the code before the fix."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
import torch
from torch import nn

from unrollsci.graph import GraphInverseProblem, StepController, UnrolledGraphGD, graph_loss
from unrollsci.train import fit

N = 16
GRAPH = nx.grid_2d_graph(4, 4)
MASK = torch.rand(N, generator=torch.Generator().manual_seed(0)) < 0.6
LAM = 0.5


def _signals(rows: int, zero_row: int | None = None) -> torch.Tensor:
    y = torch.randn(rows, N, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    if zero_row is not None:
        y[zero_row] = 0
    return y


def _problem(y: torch.Tensor) -> GraphInverseProblem:
    return GraphInverseProblem.from_networkx(GRAPH, y, mask=MASK, lam=LAM)


def _model(mode: str, detach: bool = True) -> UnrolledGraphGD:
    torch.manual_seed(2)
    ctrl = StepController(hidden=6, hops=1, window=2)
    return UnrolledGraphGD(4, ctrl, mode=mode, detach_features=detach).double()


def _grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: q.grad.clone() for n, q in model.named_parameters() if q.grad is not None}


def _dense_h() -> np.ndarray:
    """``diag(mask) + lam L`` from networkx's Laplacian (numpy reference)."""
    lap = nx.laplacian_matrix(GRAPH, nodelist=list(GRAPH.nodes)).toarray().astype(float)
    return np.diag(MASK.double().numpy()) + LAM * lap


def _dense_loss(x: np.ndarray, y: np.ndarray) -> float:
    """``mean log(||x - x*||_H^2 / ||x*||_H^2 + 1e-30)`` in numpy."""
    h = _dense_h()
    xs = np.linalg.solve(h, (MASK.double().numpy() * y).T).T
    e = x - xs
    num = np.einsum("bi,ij,bj->b", e, h, e)
    den = np.maximum(np.einsum("bi,ij,bj->b", xs, h, xs), np.finfo(float).tiny)
    return float(np.mean(np.log(num / den + 1e-30)))


def _directional_fd(model: nn.Module, f, h: float = 1e-6) -> tuple[float, float]:
    """``grad f . d`` by autograd and by a float64 central difference along a random ``d``."""
    model.zero_grad()
    f().backward()
    params = [q for q in model.parameters() if q.grad is not None]  # the mode's heads only
    gen = torch.Generator().manual_seed(5)
    d = [torch.randn(q.shape, dtype=q.dtype, generator=gen) for q in params]
    auto = sum(float((q.grad * di).sum()) for q, di in zip(params, d, strict=True))
    with torch.no_grad():
        for q, di in zip(params, d, strict=True):
            q.add_(h * di)
        up = float(f())
        for q, di in zip(params, d, strict=True):
            q.sub_(2 * h * di)
        down = float(f())
        for q, di in zip(params, d, strict=True):
            q.add_(h * di)
    return auto, (up - down) / (2 * h)


# ------------------------------------------------------- 1. graph_loss(kind="energy")
@pytest.mark.parametrize("mode", ["scalar", "diagonal", "window"])
def test_energy_loss_with_a_zero_signal_has_the_gradient_of_the_other_signals(mode):
    """Fails before the fix: 11-13 of 17 parameters got NaN gradients (detach_features
    default). The zero signal's term is the constant log(1e-30): the batch's gradient is
    2/3 of the gradient on the other two signals alone."""
    model = _model(mode)
    y = _signals(3, zero_row=2)
    loss = graph_loss(model, _problem(y), "energy")
    model.zero_grad()
    loss.backward()
    with_zero = _grads(model)
    assert all(torch.isfinite(g).all() for g in with_zero.values())
    ref = graph_loss(model, _problem(y[:2]), "energy")
    model.zero_grad()
    ref.backward()
    alone = _grads(model)
    assert with_zero.keys() == alone.keys()
    for name, g in alone.items():
        torch.testing.assert_close(with_zero[name], g * (2 / 3), rtol=1e-9, atol=1e-14)
    assert loss.item() == pytest.approx((2 * ref.item() + np.log(1e-30)) / 3, rel=1e-12)


def test_energy_loss_matches_a_dense_reference_and_finite_differences():
    """The value against numpy (diag(mask) + lam L from networkx, np.linalg.solve) and the
    exact gradient (detach_features=False) against a float64 central difference, on a
    batch with a zero signal (before the fix: NaN) and on one without."""
    model = _model("scalar", detach=False)
    for y in (_signals(3), _signals(3, zero_row=1)):
        p = _problem(y)
        loss = graph_loss(model, p, "energy")
        with torch.no_grad():
            x = model(p).x.numpy()
        assert loss.item() == pytest.approx(_dense_loss(x, y.numpy()), rel=1e-10, abs=1e-10)
        auto, fd = _directional_fd(model, lambda p=p: graph_loss(model, p, "energy"))
        assert np.isfinite(auto)
        assert auto == pytest.approx(fd, rel=1e-5, abs=1e-8)


def test_relative_error_gradient_is_zero_at_the_exact_solution():
    """Fails before the fix (NaN in the row at x*). The other row against the numpy
    gradient of ||e||_H / ||x*||_H: H e / (||e||_H ||x*||_H)."""
    p = _problem(_signals(2))
    h = _dense_h()
    xs = np.linalg.solve(h, (MASK.double().numpy() * p.y.numpy()).T).T
    x = torch.tensor(xs)
    x[1] += torch.linspace(-0.2, 0.3, N, dtype=torch.float64)
    x.requires_grad_(True)
    err = p.relative_error(x, torch.tensor(xs))
    err.sum().backward()
    e = x.detach().numpy()[1] - xs[1]
    ne, ns = np.sqrt(e @ h @ e), np.sqrt(xs[1] @ h @ xs[1])
    assert err[0, 0].item() == 0.0 and err[1, 0].item() == pytest.approx(ne / ns, rel=1e-12)
    assert torch.equal(x.grad[0], torch.zeros(N, dtype=torch.float64))
    np.testing.assert_allclose(x.grad[1].numpy(), h @ e / (ne * ns), rtol=1e-10, atol=1e-15)


# ------------------------------------------------- 2. detach_features=False features
@pytest.mark.parametrize("mode", ["scalar", "diagonal", "window", "window_jacobi"])
def test_exact_features_with_a_zero_gradient_signal_have_finite_gradients(mode):
    """Fails before the fix: sqrt(0) in the rms and ||g|| features made every controller
    parameter's gradient NaN. The zero signal stays at x = x* = 0 and adds 0 to the loss:
    the gradient equals that of the other signal alone."""
    model = _model(mode, detach=False)
    y = _signals(2, zero_row=1)

    def loss_on(yy: torch.Tensor) -> torch.Tensor:
        p = _problem(yy)
        return (model(p).x - p.solve_exact()).pow(2).sum()

    model.zero_grad()
    loss_on(y).backward()
    with_zero = _grads(model)
    assert with_zero and all(torch.isfinite(g).all() for g in with_zero.values())
    model.zero_grad()
    loss_on(y[:1]).backward()
    for name, g in _grads(model).items():
        torch.testing.assert_close(with_zero[name], g, rtol=1e-9, atol=1e-14)


def test_exact_features_give_finite_gradients_with_respect_to_the_signals():
    """Fails before the fix: the initial gradient norm ||g_0|| (sqrt at 0 for a zero
    signal) and the features sent NaN into y.grad; the other row's gradient equals the one
    computed without the zero signal."""
    model = _model("scalar", detach=False)
    y = _signals(2, zero_row=1).requires_grad_(True)
    model(_problem(y)).x.sum().backward()
    assert torch.isfinite(y.grad).all()
    y1 = _signals(1).requires_grad_(True)
    model(_problem(y1)).x.sum().backward()
    torch.testing.assert_close(y.grad[0], y1.grad[0], rtol=1e-9, atol=1e-14)


# ------------------------------------------------------------- 3. fit's gradient check
class _TwoParams(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([1.0, 2.0]))
        self.v = nn.Parameter(torch.tensor([0.5]))


def _nan_grad_loss(m: _TwoParams, batch: torch.Tensor) -> torch.Tensor:
    # d/dw of sqrt(0 * w) is 0 * inf = NaN; the value stays finite even once w is NaN
    # (nan_to_num), as a model that reads NaN logits as 0 did
    return torch.nan_to_num(torch.sqrt(m.w * 0)).sum() + (m.v * batch).pow(2).mean()


@pytest.mark.parametrize("clip_grad", [None, 1.0])
def test_fit_refuses_a_nan_gradient_of_a_finite_loss(clip_grad):
    """Fails before the fix: fit returned normally and Adam had written NaN into ``w``."""
    model = _TwoParams()
    before = {n: q.detach().clone() for n, q in model.named_parameters()}
    data = torch.randn(8, 1, generator=torch.Generator().manual_seed(0))
    with pytest.raises(FloatingPointError, match=r"epoch 0, step 0.* 1 parameter\(s\): w\."):
        fit(model, _nan_grad_loss, data, epochs=2, batch_size=4, clip_grad=clip_grad,
            progress=False)  # fmt: skip
    for n, q in model.named_parameters():
        assert torch.equal(q.detach(), before[n])


def test_fit_names_the_parameters_of_the_graph_model():
    """fit on an UnrolledGraphGD whose gradients are NaN (a loss with sqrt at 0) names
    controller parameters; the model's own gradients on a zero signal are finite now."""
    model = _model("scalar")
    problems = [_problem(_signals(2, zero_row=1))]
    hist = fit(model, lambda m, p: graph_loss(m, p), problems, epochs=2, lr=1e-3,
               progress=False)  # fmt: skip
    assert len(hist.train_loss) == 2
    assert all(torch.isfinite(q).all() for q in model.parameters())

    def bad_loss(m: UnrolledGraphGD, p: GraphInverseProblem) -> torch.Tensor:
        return torch.sqrt(m(p).x.pow(2).sum(-1) * 0).mean() + graph_loss(m, p)

    with pytest.raises(FloatingPointError, match=r"parameter\(s\): controller\."):
        fit(model, bad_loss, problems, epochs=1, progress=False)


def test_fit_in_fp16_leaves_overflowing_gradients_to_the_scaler():
    """float16: the scaled gradient overflows (inf) and the GradScaler skips the step; fit
    must not refuse it (passes before and after the fix)."""
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    before = [q.detach().clone() for q in model.parameters()]
    data = torch.randn(8, 3, generator=torch.Generator().manual_seed(0))

    def loss(m: nn.Module, b: torch.Tensor) -> torch.Tensor:
        return (m(b) * 1e30).mean()  # finite in float32; scaled by 65536, inf in float16

    fit(model, loss, data, epochs=1, batch_size=4, mixed_precision="fp16", progress=False)
    assert all(torch.equal(q.detach(), b) for q, b in zip(model.parameters(), before, strict=True))
