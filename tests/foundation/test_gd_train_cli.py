"""gradient_descent, the shared training loop, checkpoints and the command line."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from unrollsci import __version__
from unrollsci.cli import main as cli_main
from unrollsci.solvers import gradient_descent
from unrollsci.train import fit, load_checkpoint, save_checkpoint

F64 = torch.float64


@pytest.mark.parametrize("momentum", [None, "nesterov"])
def test_gradient_descent_solves_least_squares(momentum, device):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(30, 10, generator=g, dtype=F64).to(device)
    y = torch.randn(3, 30, generator=g, dtype=F64).to(device)
    lip = torch.linalg.matrix_norm(a, 2).item() ** 2
    sol = gradient_descent(
        lambda x: (x @ a.T - y) @ a,
        torch.zeros(3, 10, dtype=F64, device=device),
        1.0 / lip,
        momentum=momentum,
        tol=1e-12,
    )
    ref = torch.linalg.lstsq(a, y.T).solution.T
    assert sol.converged
    torch.testing.assert_close(sol.x, ref, atol=1e-9, rtol=0)


def test_gradient_descent_errors():
    with pytest.raises(ValueError, match="'step' > 0"):
        gradient_descent(lambda x: x, torch.ones(1, 2), 0.0)
    with pytest.raises(ValueError, match="momentum"):
        gradient_descent(lambda x: x, torch.ones(1, 2), 0.1, momentum="heavy")
    with pytest.raises(ValueError, match="diverged"):
        gradient_descent(
            lambda x: x * torch.tensor(float("inf")), torch.ones(1, 2), 0.1, max_iter=5
        )


class Scale(nn.Module):
    """A toy layered model: y = prod_k w_k * x, with active_layers for layer-wise training."""

    def __init__(self, num_layers: int = 3, init: float = 0.5) -> None:
        super().__init__()
        self.num_layers = num_layers
        self.init = init
        self.active_layers = num_layers
        self.w = nn.Parameter(torch.full((num_layers,), init))

    def forward(self, x):
        return x * torch.prod(self.w[: self.active_layers])

    def get_config(self):
        return {"num_layers": self.num_layers, "init": self.init}


def _loss(model, batch):
    x, y = batch
    return (model(x) - y).pow(2).mean()


def test_fit_end_to_end_learns_and_restores_best(tmp_path):
    x = torch.randn(64, 4)
    data = (x, 2.0 * x)
    model = Scale()
    hist = fit(
        model,
        _loss,
        data,
        val_data=data,
        epochs=300,
        lr=0.05,
        batch_size=16,
        progress=False,
        checkpoint=tmp_path / "m.pt",
    )
    assert hist.val_loss[-1] < 1e-4 and hist.best_epoch >= 0
    assert torch.prod(model.w).item() == pytest.approx(2.0, rel=1e-2)
    again = load_checkpoint(tmp_path / "m.pt", expected=Scale)
    torch.testing.assert_close(again(x), model(x))


def test_fit_layerwise_and_sampler():
    model = Scale(num_layers=3)
    seen = []

    def sampler(gen):
        x = torch.randn(8, 4, generator=gen)
        return x, 1.5 * x

    hist = fit(
        model,
        _loss,
        sampler,
        epochs=40,
        steps_per_epoch=5,
        lr=0.05,
        schedule="layerwise",
        progress=False,
        callback=lambda e, tr, va: seen.append(model.active_layers),
    )
    assert sorted(set(hist.stage)) == [1, 2, 3] and seen[0] == 1 and seen[-1] == 3
    assert hist.train_loss[-1] < 1e-3


def test_fit_is_reproducible():
    x = torch.randn(32, 4)
    res = []
    for _ in range(2):
        model = Scale()
        fit(model, _loss, (x, 3 * x), epochs=5, lr=0.01, batch_size=8, progress=False, seed=3)
        res.append(model.w.detach().clone())
    torch.testing.assert_close(res[0], res[1], rtol=0, atol=0)


def test_fit_errors(tmp_path):
    with pytest.raises(ValueError, match="schedule"):
        fit(Scale(), _loss, torch.ones(2, 4), schedule="greedy")
    with pytest.raises(ValueError, match="no trainable parameters"):
        fit(nn.Identity(), _loss, torch.ones(2, 4))
    with pytest.raises(ValueError, match="'num_layers' and a settable 'active_layers'"):
        fit(nn.Linear(2, 2), _loss, torch.ones(2, 2), schedule="layerwise")
    with pytest.raises(ValueError, match="equal first dimension"):
        fit(Scale(), _loss, (torch.ones(3, 4), torch.ones(2, 4)), progress=False)
    with pytest.raises(FloatingPointError, match="Training loss became nan"):
        fit(Scale(), lambda m, b: m(b[0]).sum() * float("nan"), (torch.ones(2, 4),), progress=False)
    with pytest.raises(TypeError, match="get_config"):
        save_checkpoint(nn.Linear(2, 2), tmp_path / "x.pt")
    save_checkpoint(Scale(), tmp_path / "s.pt")
    # Scale is not registered and nn.Linear is not it: nothing is built
    with pytest.raises(ValueError, match="Scale', which is not a registered checkpoint class"):
        load_checkpoint(tmp_path / "s.pt", expected=nn.Linear)
    torch.save({"a": 1}, tmp_path / "junk.pt")
    with pytest.raises(ValueError, match="not an unrollsci checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")


def test_cli_version(capsys):
    with pytest.raises(SystemExit):
        cli_main(["--version"])
    assert __version__ in capsys.readouterr().out


def test_console_script_entry_point():
    out = subprocess.run(
        [sys.executable, "-m", "unrollsci.cli", "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == f"unrollsci {__version__}"


def test_gradient_descent_gradcheck(device):
    g = torch.Generator().manual_seed(1)
    a = torch.randn(6, 4, generator=g, dtype=F64).to(device)
    y = torch.randn(2, 6, generator=g, dtype=F64).to(device).requires_grad_()

    def f(yy):
        import warnings

        from unrollsci import ConvergenceWarning

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            return gradient_descent(
                lambda x: (x @ a.T - yy) @ a,
                torch.zeros(2, 4, dtype=F64, device=device),
                0.05,
                momentum="nesterov",
                max_iter=20,
                tol=0.0,
            ).x

    assert torch.autograd.gradcheck(f, (y,))


class _Linear(nn.Module):
    """loss = sum(w[:active_layers]): a constant gradient, so each Adam step moves w by ~lr."""

    def __init__(self) -> None:
        super().__init__()
        self.num_layers = self.active_layers = 2
        self.w = nn.Parameter(torch.zeros(2, dtype=F64))


def test_fit_lr_factor_sets_the_applied_learning_rate():
    model = _Linear()
    seen_w, calls = [], []
    factors = [1.0, 0.5, 0.0, 2.0, 0.25, 1.0, 3.0, 1.0, 0.1, 0.0, 1.0, 0.5]

    def lr_factor(step):
        calls.append(step)
        return factors[step]

    def loss_fn(mdl, batch):
        seen_w.append(mdl.w.detach().clone())
        return mdl.w[: mdl.active_layers].sum()

    lr, decay = 0.1, 0.5
    fit(
        model,
        loss_fn,
        lambda gen: None,
        epochs=2,
        steps_per_epoch=3,
        lr=lr,
        lr_decay=decay,
        lr_factor=lr_factor,
        schedule="layerwise",
        progress=False,
    )
    assert calls == list(range(12))  # one call per optimizer step, counted across stages
    seen_w.append(model.w.detach().clone())
    moved = torch.stack([a[0] - b[0] for a, b in zip(seen_w[:-1], seen_w[1:], strict=True)])
    epoch_in_stage = [(t % 6) // 3 for t in range(12)]
    expected = torch.tensor(
        [lr * decay**e * f for e, f in zip(epoch_in_stage, factors, strict=True)], dtype=F64
    )
    torch.testing.assert_close(moved, expected, rtol=1e-6, atol=1e-12)


def test_fit_without_lr_factor_keeps_the_decayed_rate():
    model = _Linear()
    seen_w = []

    def loss_fn(mdl, batch):
        seen_w.append(mdl.w.detach().clone())
        return mdl.w.sum()

    fit(
        model,
        loss_fn,
        lambda g: None,
        epochs=3,
        steps_per_epoch=2,
        lr=0.1,
        lr_decay=0.5,
        progress=False,
    )
    seen_w.append(model.w.detach().clone())
    moved = torch.stack([a[1] - b[1] for a, b in zip(seen_w[:-1], seen_w[1:], strict=True)])
    expected = torch.tensor([0.1, 0.1, 0.05, 0.05, 0.025, 0.025], dtype=F64)
    torch.testing.assert_close(moved, expected, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -0.1, "fast", None])
def test_fit_rejects_bad_lr_factor(bad):
    with pytest.raises(ValueError, match=r"lr_factor\(0\)"):
        fit(
            _Linear(),
            lambda m, b: m.w.sum(),
            lambda g: None,
            epochs=1,
            steps_per_epoch=2,
            lr_factor=lambda step: bad,
            progress=False,
        )
    with pytest.raises(TypeError, match="lr_factor to be callable"):
        fit(_Linear(), lambda m, b: m.w.sum(), lambda g: None, lr_factor=0.5, progress=False)
