"""UnrolledCT: hard support constraint, shapes, training, checkpoints; Lipschitz certificate."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unrollsci.imaging import (
    Radon,
    UnrolledCT,
    conv_operator_norm,
    empirical_lipschitz,
    lipschitz_bound,
    poisson_noise,
    random_ellipses,
)
from unrollsci.train import fit, load_checkpoint, save_checkpoint


def _randomize(model: UnrolledCT, scale: float = 0.3, seed: int = 0) -> UnrolledCT:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model


@pytest.fixture(scope="module")
def small():
    op = Radon(16, 8)
    x, m = random_ellipses(6, 16, seed=3, return_support=True, dtype=torch.float64)
    y = poisson_noise(op(x), 1e4, seed=4)
    return op, x, m, y


@pytest.mark.parametrize("memory", [0, 3], ids=["nomem", "mem3"])
@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_output_exactly_zero_outside_mask(device, small, tied, memory):
    op, x, m, y = small
    model = UnrolledCT(op, n_layers=3, channels=4, tied=tied, memory=memory)
    model = _randomize(model, scale=1.0)
    model = model.double().to(device).requires_grad_(False)
    out = model(y.to(device))  # default mask: the scan disk
    assert bool((out[:, ~model.mask] == 0).all())
    out = model(y.to(device), mask=m.to(device))  # per-sample patient boundaries
    assert bool((out[~m.to(device)] == 0).all())
    assert float(out[m.to(device)].abs().sum()) > 0
    custom = torch.zeros(16, 16, dtype=torch.bool, device=device)
    custom[2:9, 5:13] = True
    out = model(y.to(device), mask=custom)
    assert bool((out[:, ~custom] == 0).all())


def test_tied_and_untied_parameters():
    op = Radon(16, 8)
    untied = UnrolledCT(op, n_layers=4, channels=4)
    tied = UnrolledCT(op, n_layers=4, channels=4, tied=True)
    n_untied = sum(p.numel() for p in untied.parameters())
    n_tied = sum(p.numel() for p in tied.parameters())
    assert n_untied == 4 * n_tied
    assert len(tied.blocks) == 1 and len(untied.blocks) == 4


def test_untrained_network_is_projected_gradient_descent(device, small):
    """With zero CNN output and s = 1, each layer is x - A^T(Ax - y)/||A||^2 then P_M."""
    op, x, m, y = small
    model = UnrolledCT(op, n_layers=2, channels=3, init="zero").double().to(device)
    yd, md = y.to(device), model.mask
    a = op.norm()
    ref = torch.zeros_like(x).to(device)
    opd = op.to(device)
    for _ in range(2):
        ref = ref - opd.adjoint(opd(ref) - yd) / a**2
        ref = torch.where(md, ref, torch.zeros_like(ref))
    torch.testing.assert_close(model(yd), ref)


def test_steps_stay_in_stable_range():
    model = UnrolledCT(Radon(16, 8), n_layers=3, channels=2)
    with torch.no_grad():
        model.step_logits.copy_(torch.tensor([-100.0, 0.0, 100.0]))
    s = model.step_sizes()
    assert bool((s >= 0).all()) and bool((s <= 2).all())


def test_gradcheck_wrt_sinogram(device):
    op = Radon(8, 4)
    model = _randomize(UnrolledCT(op, n_layers=1, channels=2, depth=2), 0.5).double().to(device)
    y = torch.rand(1, 4, 8, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(model, (y,))


def test_channel_axis(device, small):
    op, _, _, y = small
    model = UnrolledCT(op, n_layers=1, channels=2).double().to(device)
    out = model(y[:, None].to(device))
    assert out.shape == (6, 1, 16, 16)


def test_training_with_fit_reduces_error_and_checkpoint_roundtrip(tmp_path, small):
    op, x, m, y = small
    x, y, m = x.float(), y.float(), m
    model = UnrolledCT(op, n_layers=2, channels=4)

    def loss_fn(mdl, batch):
        yb, xb, mb = batch
        return torch.mean((mdl(yb, mask=mb) - xb) ** 2)

    with torch.no_grad():
        before = float(loss_fn(model, (y, x, m)))
    hist = fit(model, loss_fn, (y, x, m), epochs=30, lr=3e-3, batch_size=6, progress=False)
    with torch.no_grad():
        after = float(loss_fn(model, (y, x, m)))
    assert after < before and hist.train_loss[-1] < hist.train_loss[0]
    path = save_checkpoint(model, tmp_path / "ct.pt")
    again = load_checkpoint(path, expected=UnrolledCT)
    with torch.no_grad():
        torch.testing.assert_close(again(y, mask=m), model(y, mask=m))


def _reference_forward(model: UnrolledCT, y: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """The network as written before memory channels existed (x_{k+1} from [x_k, g_k])."""
    a = model.radon_norm.to(y.dtype)
    x = torch.where(m, model.initial(y), torch.zeros(()))
    for k in range(model.active_layers):
        block, s = model.layer(k)
        g = model.radon._rmv(model.radon._mv(x) / a - y / a) / a
        x = x - s * g + block(torch.stack([x, g], 1))[:, 0]
        x = torch.where(m, x, torch.zeros(()))
    return x


def test_memory_zero_is_the_memoryless_network(small):
    op, x, m, y = small
    torch.manual_seed(5)
    old = _randomize(UnrolledCT(op, n_layers=3, channels=4), 0.5).double()
    torch.manual_seed(5)
    new = _randomize(UnrolledCT(op, n_layers=3, channels=4, memory=0), 0.5).double()
    assert new.get_config()["memory"] == 0
    assert [(k, v.shape) for k, v in old.state_dict().items()] == [
        (k, v.shape) for k, v in new.state_dict().items()
    ]
    with torch.no_grad():
        out = new(y, mask=m)
        assert torch.equal(out, old(y, mask=m))
        assert torch.equal(out, _reference_forward(new, y, m))


def test_checkpoint_without_memory_key_still_loads(tmp_path, small):
    """Checkpoints written before ``memory`` existed have no such config key."""
    op, _, m, y = small
    model = _randomize(UnrolledCT(op, n_layers=2, channels=3), 0.5)
    path = save_checkpoint(model, tmp_path / "old.pt")
    payload = torch.load(path, weights_only=False)
    del payload["config"]["memory"]
    torch.save(payload, path)
    again = load_checkpoint(path, expected=UnrolledCT)
    assert again.memory == 0
    with torch.no_grad():
        assert torch.equal(again(y.float(), mask=m), model(y.float(), mask=m))


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_memory_channels_shapes_checkpoint_and_gradients(tmp_path, small, tied):
    op, x, m, y = small
    mem = 3
    model = _randomize(UnrolledCT(op, n_layers=3, channels=4, tied=tied, memory=mem), 0.3)
    model = model.double()
    first, last = model.blocks[0].convs[0].conv, model.blocks[0].convs[-1].conv
    assert first.in_channels == 2 + mem and last.out_channels == 1 + mem
    assert model(y).shape == (6, 16, 16) and model(y[:, None]).shape == (6, 1, 16, 16)
    # memory changes the result: a model with the memory inputs cut off differs
    cut = UnrolledCT(op, n_layers=3, channels=4, tied=tied, memory=mem).double()
    cut.load_state_dict(model.state_dict())
    with torch.no_grad():
        for block in cut.blocks:
            block.convs[0].conv.weight[:, 2:] = 0
        assert not torch.allclose(cut(y, mask=m), model(y, mask=m))
    # gradients reach every parameter tensor, the memory inputs of later layers included
    model.zero_grad()
    torch.mean((model(y, mask=m) - x) ** 2).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, name
    later = model.blocks[0 if tied else 1].convs[0].conv.weight.grad[:, 2:]
    assert float(later.abs().sum()) > 0
    # checkpoint round trip
    path = save_checkpoint(model, tmp_path / "mem.pt")
    again = load_checkpoint(path, expected=UnrolledCT).double()
    assert again.memory == mem and again.get_config()["memory"] == mem
    with torch.no_grad():
        assert torch.equal(again(y, mask=m), model(y, mask=m))


def test_memory_bad_value():
    op = Radon(16, 8)
    with pytest.raises(ValueError, match="'memory' >= 0"):
        UnrolledCT(op, n_layers=1, channels=2, memory=-1)
    for bad in (1.5, True):
        with pytest.raises(TypeError, match="'memory' to be an integer"):
            UnrolledCT(op, n_layers=1, channels=2, memory=bad)


def test_bad_input(small):
    op, _, _, y = small
    model = UnrolledCT(op, n_layers=1, channels=2).double()
    with pytest.raises(ValueError, match=r"sinograms of shape \(batch, 8, 16\)"):
        model(torch.zeros(2, 8, 15, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"'mask' of shape \(16, 16\)"):
        model(y, mask=torch.ones(15, 15, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"'mask' of shape \(16, 16\)"):
        model(y, mask=torch.ones(4, 16, 16, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"'mask' of shape"):
        UnrolledCT(op, mask=torch.ones(3, 3))
    bad = y.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="'y' to be finite"):
        model(bad)
    with pytest.raises(ValueError, match="init in"):
        UnrolledCT(op, init="random")
    with pytest.raises(TypeError, match="Radon operator"):
        UnrolledCT(torch.eye(3))


# ------------------------------------------------------------------ certificate
def test_conv_norm_bounds_dense_operator_norm(device):
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(3, 2, 3, 3, generator=gen, dtype=torch.float64).to(device)
    n = 6
    eye = torch.eye(2 * n * n, dtype=torch.float64, device=device).reshape(-1, 2, n, n)
    dense = torch.nn.functional.conv2d(eye, w, padding=1).reshape(2 * n * n, -1)
    exact = float(torch.linalg.matrix_norm(dense, ord=2))
    fft = conv_operator_norm(w, n)
    power = conv_operator_norm(w, n, method="power", n_iter=500)
    assert fft >= exact * (1 - 1e-12)
    assert fft <= 1.5 * exact  # and not vacuous
    assert power == pytest.approx(exact, rel=1e-6)


@pytest.mark.parametrize(
    "init,cap,memory",
    [("fbp", None, 0), ("adjoint", None, 0), ("fbp", 1.0, 0), ("fbp", None, 3), ("fbp", 1.0, 3)],
)
def test_certificate_bounds_adversarial_ratio(device, small, init, cap, memory):
    op, x, m, y = small
    model = UnrolledCT(op, n_layers=2, channels=4, init=init, cnn_lipschitz=cap, memory=memory)

    def loss_fn(mdl, batch):
        yb, xb, mb = batch
        return torch.mean((mdl(yb, mask=mb) - xb) ** 2)

    # Train briefly (weights leave their initialization), then certify on held-out inputs.
    fit(model.double(), loss_fn, (y[:4], x[:4], m[:4]), epochs=10, lr=1e-2, progress=False)
    model = model.to(device)
    bound = lipschitz_bound(model)
    held = y[4:].to(device)
    emp = empirical_lipschitz(model, held, steps=40, lr=0.05)
    emp_masked = empirical_lipschitz(model, held, steps=20, mask=m[4:].to(device))
    assert 0 < emp <= bound
    assert emp_masked <= bound
    cert = lipschitz_bound(model, details=True)
    assert cert.bound == pytest.approx(bound) and len(cert.layers) == 2


def test_spectral_normalization_caps_cnn_lipschitz():
    op = Radon(16, 8)
    model = _randomize(UnrolledCT(op, n_layers=1, channels=4, cnn_lipschitz=0.5), scale=1.0)
    model.train()
    y = torch.rand(2, 8, 16)
    for _ in range(60):  # power iterations run in training forwards
        model(y)
    cert = lipschitz_bound(model, details=True)
    # In eval mode each conv is scaled by its FFT upper bound: the cap holds exactly.
    assert cert.layers[0]["cnn"] <= 0.5 * (1 + 1e-9)
    free = _randomize(UnrolledCT(op, n_layers=1, channels=4), scale=1.0)
    assert lipschitz_bound(free) > lipschitz_bound(model)


@pytest.mark.parametrize("dual", [False, True], ids=["primal", "dual"])
@pytest.mark.parametrize("memory", [0, 2])
def test_lipschitz_target_is_enforced(small, memory, dual):
    op, x, m, y = small
    model = UnrolledCT(op, n_layers=3, channels=4, lipschitz_target=2.0, memory=memory, dual=dual)
    model = _randomize(model, 1.0)
    model = model.double()
    model.train()
    for _ in range(5):
        model(y)
    with torch.no_grad():
        model.step_logits.fill_(50.0)  # steps at their largest (2)
    bound = lipschitz_bound(model)
    assert bound <= 2.0 * (1 + 1e-6)
    assert empirical_lipschitz(model, y[:2], steps=20) <= bound


def test_lipschitz_target_bad_input():
    op = Radon(16, 8)
    with pytest.raises(ValueError, match="lipschitz_target >"):
        UnrolledCT(op, n_layers=2, channels=2, lipschitz_target=0.01)
    with pytest.raises(ValueError, match="either cnn_lipschitz or lipschitz_target"):
        UnrolledCT(op, n_layers=2, channels=2, lipschitz_target=5.0, cnn_lipschitz=1.0)


def test_certificate_of_linear_network_is_tight(small):
    """Untrained (zero CNN output): the network is affine in y; bound ~ its exact norm."""
    op, _, _, y = small
    model = UnrolledCT(op, n_layers=1, channels=2, init="zero").double()
    jac = torch.autograd.functional.jacobian(lambda t: model(t[None])[0], y[0])
    exact = float(torch.linalg.matrix_norm(jac.reshape(16 * 16, -1), ord=2))
    bound = lipschitz_bound(model)
    assert exact <= bound <= 1.05 * exact
    assert np.isfinite(bound)


@pytest.mark.parametrize("memory", [0, 2])
def test_certificate_bounds_jacobian_of_linear_network(small, memory):
    """negative_slope=1 makes every CNN linear: the network is affine in y and its
    Jacobian norm is the exact Lipschitz constant, which the certificate must bound."""
    op, _, _, y = small
    model = UnrolledCT(op, n_layers=3, channels=3, negative_slope=1.0, memory=memory)
    model = _randomize(model, 0.15, seed=2).double().eval()
    jac = torch.autograd.functional.jacobian(lambda t: model(t[None])[0], y[0])
    exact = float(torch.linalg.matrix_norm(jac.reshape(16 * 16, -1), ord=2))
    bound = lipschitz_bound(model)
    assert 0 < exact <= bound


# ---------------------------------------------------------------- learned primal-dual
@pytest.mark.parametrize("memory", [0, 2], ids=["nomem", "mem2"])
@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_dual_untrained_is_the_primal_network_and_trains(tmp_path, small, tied, memory):
    """dual=True adds a sinogram CNN whose last layer starts at zero: with the primal
    weights of a dual-free model the outputs agree exactly; after its weights move,
    they differ, gradients reach every dual parameter, and a checkpoint round-trips."""
    op, x, m, y = small
    kw = dict(n_layers=3, channels=4, tied=tied, memory=memory)
    primal = _randomize(UnrolledCT(op, **kw), 0.3).double()
    dual = UnrolledCT(op, dual=True, **kw).double()
    missing, unexpected = dual.load_state_dict(primal.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("dual_blocks.") for k in missing)
    assert len(dual.dual_blocks) == (1 if tied else 3)
    first = dual.dual_blocks[0].convs[0].conv
    assert first.in_channels == 2 + memory  # [residual, data, memory]
    with torch.no_grad():
        assert torch.equal(dual(y, mask=m), primal(y, mask=m))
        gen = torch.Generator().manual_seed(1)
        for block in dual.dual_blocks:  # float32 values: the checkpoint keeps them exactly
            for conv in block.convs:
                w = conv.conv.weight
                w.copy_((0.3 * torch.randn(w.shape, generator=gen)).to(w.dtype))
        out = dual(y, mask=m)
        assert not torch.allclose(out, primal(y, mask=m))
        assert bool((out[~m] == 0).all())
    dual.zero_grad()
    torch.mean((dual(y, mask=m) - x) ** 2).backward()
    for name, p in dual.named_parameters():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, name
    again = load_checkpoint(save_checkpoint(dual, tmp_path / "lpd.pt"), expected=UnrolledCT)
    assert again.dual and again.get_config()["dual"] is True
    with torch.no_grad():
        assert torch.equal(again.double()(y, mask=m), dual(y, mask=m))


@pytest.mark.parametrize("memory", [0, 2])
def test_dual_certificate_bounds_jacobian_of_linear_network(small, memory):
    """With linear CNNs (slope 1) the dual network is affine in y: its Jacobian norm is
    the exact Lipschitz constant, and the certificate (with the dual term) bounds it."""
    op, _, _, y = small
    model = UnrolledCT(op, n_layers=3, channels=3, negative_slope=1.0, memory=memory, dual=True)
    model = _randomize(model, 0.15, seed=4).double().eval()
    jac = torch.autograd.functional.jacobian(lambda t: model(t[None])[0], y[0])
    exact = float(torch.linalg.matrix_norm(jac.reshape(16 * 16, -1), ord=2))
    cert = lipschitz_bound(model, details=True)
    assert all(layer["dual_cnn"] > 0 for layer in cert.layers)
    assert 0 < exact <= cert.bound
    # without the dual term the recursion would not be a certificate of this network
    assert lipschitz_bound(model) > lipschitz_bound(_without_dual(model))


def _without_dual(model: UnrolledCT) -> UnrolledCT:
    cfg = {**model.get_config(), "dual": False}
    plain = UnrolledCT(**cfg).double()
    plain.load_state_dict(model.state_dict(), strict=False)
    return plain.eval()


@pytest.mark.parametrize("memory", [0, 2])
def test_dual_certificate_bounds_adversarial_ratio(device, small, memory):
    op, x, m, y = small
    model = UnrolledCT(op, n_layers=2, channels=4, memory=memory, dual=True)

    def loss_fn(mdl, batch):
        yb, xb, mb = batch
        return torch.mean((mdl(yb, mask=mb) - xb) ** 2)

    fit(model.double(), loss_fn, (y[:4], x[:4], m[:4]), epochs=10, lr=1e-2, progress=False)
    model = model.to(device)
    emp = empirical_lipschitz(model, y[4:].to(device), steps=40, lr=0.05)
    assert 0 < emp <= lipschitz_bound(model)


def test_dual_bad_value():
    op = Radon(16, 8)
    with pytest.raises(TypeError, match="'dual' to be a bool"):
        UnrolledCT(op, n_layers=1, channels=2, dual="yes")
