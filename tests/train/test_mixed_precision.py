"""fit(mixed_precision=...): bfloat16 / float16 autocast confined to the CNN and GNN layers.

The guarantees of the models are checked with autocast on (float32 models, the layers
under bf16 autocast): the CT output is exactly zero outside the support and its Lipschitz
certificate holds after bf16 training; a learned preconditioner is SPD for any weights; every
layer of the graph solver takes a step in its certified range and decreases the objective.
Each check also confirms that the low precision was really in use (the outputs differ from
float32 ones).
"""

from __future__ import annotations

import math

import networkx as nx
import numpy as np
import pytest
import torch

from unrollsci.graph import GraphInverseProblem, StepController, UnrolledGraphGD, graph_loss
from unrollsci.imaging import UnrolledCT, lipschitz_bound, poisson_noise, random_ellipses
from unrollsci.operators import MatrixOperator, Radon
from unrollsci.precond import LearnedPreconditioner, diffusion2d, graph_laplacian
from unrollsci.train import fit
from unrollsci.train._precision import mixed_precision
from unrollsci.unrolled import LISTA

BF16 = torch.bfloat16


def _randomize(model: torch.nn.Module, seed: int, scale: float) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for prm in model.parameters():
            prm.copy_(scale * torch.randn(prm.shape, generator=gen, dtype=prm.dtype))


@pytest.fixture
def ct():
    op = Radon(16, 8)
    x, m = random_ellipses(6, 16, seed=3, return_support=True)
    y = poisson_noise(op(x), 1e4, seed=4).float()
    return op, x.float(), m, y


def _ct_loss(model, batch):
    y, x, m = batch
    return (model(y, mask=m) - x).pow(2).mean()


def test_ct_output_zero_outside_support_with_autocast(ct):
    op, x, m, y = ct
    model = UnrolledCT(op, n_layers=3, channels=4, memory=2)
    _randomize(model, 1, 0.3)
    model.requires_grad_(False)
    plain = model(y, mask=m)
    with mixed_precision(model, BF16):
        assert model.precision == "bfloat16"
        low = model(y, mask=m)
    assert model.precision == "float32"  # restored
    assert low.dtype == torch.float32
    assert bool((low[~m] == 0).all()) and bool((low[:, ~model.mask] == 0).all())
    assert not torch.equal(low, plain)  # bf16 was in use
    assert float((low - plain).abs().max()) < 0.05 * float(plain.abs().max())


def test_ct_bf16_training_keeps_the_certificate(ct):
    op, x, m, y = ct
    torch.manual_seed(0)
    model = UnrolledCT(op, n_layers=2, channels=4, lipschitz_target=2.0)
    hist = fit(model, _ct_loss, (y, x, m), epochs=6, batch_size=3, lr=3e-3, progress=False,
               mixed_precision="bf16")  # fmt: skip
    assert hist.train_loss[-1] < hist.train_loss[0]
    assert model.precision == "float32"
    model.eval()
    assert lipschitz_bound(model) <= 2.0
    out = model(y, mask=m)
    assert bool((out[~m] == 0).all())


@pytest.mark.parametrize("kind", ["factor", "inverse", "block"])
def test_learned_preconditioner_spd_with_autocast(kind):
    changed = False
    for trial, a in enumerate([diffusion2d(7, seed=1), graph_laplacian(30, seed=2)]):
        model = LearnedPreconditioner(
            kind, hidden=8, layers=2, **({"block_size": 5} if kind == "block" else {})
        )
        _randomize(model, trial, 1.0 + trial)
        eye = torch.eye(a.shape[0], dtype=torch.float64)
        with torch.no_grad():
            plain = model.build(a)(eye).numpy().T
            with mixed_precision(model, BF16):
                dense = model.build(a)(eye).numpy().T
        changed |= not np.array_equal(dense, plain)
        assert np.abs(dense - dense.T).max() <= 1e-10 * np.abs(dense).max()
        assert np.linalg.eigvalsh(0.5 * (dense + dense.T)).min() > 0
    assert changed  # bf16 was in use


def _graph_problem(seed: int) -> GraphInverseProblem:
    rng = np.random.default_rng(seed)
    g = nx.connected_watts_strogatz_graph(24, 4, 0.3, seed=seed)
    mask = rng.random((2, 24)) < 0.6
    mask[:, 0] = True
    y = torch.as_tensor(rng.standard_normal((2, 24)) * mask, dtype=torch.float32)
    return GraphInverseProblem.from_networkx(g, y, mask=mask)


@pytest.mark.parametrize("mode", ["scalar", "diagonal", "window"])
def test_graph_layers_certified_and_decreasing_with_autocast(mode):
    p = _graph_problem(3)
    model = UnrolledGraphGD(6, StepController(hidden=8, window=3), mode=mode)
    _randomize(model, 5, 0.3)  # (at larger weights the steps saturate at their bounds)
    with torch.no_grad():
        plain = model(p)
        with mixed_precision(model, BF16):
            out = model(p)
    assert not all(torch.equal(a, b) for a, b in zip(out.steps, plain.steps, strict=True))
    lip, rows = p.lipschitz(), p.gershgorin_rows()
    for k in range(6):
        s = out.steps[k]
        if mode == "diagonal":
            assert bool(((s > 0) & (s < 2 / rows)).all())
        elif mode == "scalar":
            assert bool(((s > 0) & (s < 2 / lip)).all())
        f, f_next = p.objective(out.iterates[k])[:, 0], p.objective(out.iterates[k + 1])[:, 0]
        if mode != "window":  # (a window decreases over the window, by its certificate)
            assert bool((f_next <= f + 1e-5 * f.abs()).all())
    if mode == "window":
        assert all(bool((q < 1).all()) for q in out.certificates)
        f0, fk = p.objective(out.iterates[0]), p.objective(out.iterates[-1])
        assert bool((fk < f0).all())


def test_graph_training_in_bf16_and_fp16():
    problems = [_graph_problem(s) for s in range(3)]
    for precision in ("bf16", "fp16"):
        torch.manual_seed(0)
        model = UnrolledGraphGD(4, StepController(hidden=8, window=4), mode="window")
        with torch.no_grad():
            before = float(np.mean([float(graph_loss(model, p)) for p in problems]))
        fit(model, graph_loss, problems, epochs=6, lr=5e-3, progress=False,
            mixed_precision=precision)  # fmt: skip
        with torch.no_grad():
            after = float(np.mean([float(graph_loss(model, p)) for p in problems]))
        assert after < before, precision
        assert not model.controller.lin_in._forward_pre_hooks  # hooks removed


def test_linear_layers_run_in_bf16_inside_and_float32_outside():
    lin = torch.nn.Linear(16, 16)
    x = torch.randn(4, 16)
    with mixed_precision(torch.nn.Sequential(lin), BF16):
        low = lin(x)
    ref = (x.to(BF16) @ lin.weight.to(BF16).T + lin.bias.to(BF16)).float()
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, ref, rtol=1e-2, atol=1e-2)
    assert not torch.equal(low, lin(x))
    assert torch.equal(lin(x), x @ lin.weight.T + lin.bias) or torch.allclose(
        lin(x), x @ lin.weight.T + lin.bias
    )


def test_fp16_uses_a_gradient_scaler_and_trains():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    x = torch.randn(64, 8)
    y = x[:, :1].sin()
    loss = lambda m, b: (m(b[0]) - b[1]).pow(2).mean()  # noqa: E731
    hist = fit(model, loss, (x, y), epochs=20, batch_size=16, lr=1e-2, progress=False,
               mixed_precision="fp16", clip_grad=1.0)  # fmt: skip
    assert hist.train_loss[-1] < 0.5 * hist.train_loss[0]
    assert all(math.isfinite(v) for v in hist.train_loss)


def test_mixed_precision_bad_input(ct):
    op, x, m, y = ct
    with pytest.raises(ValueError, match=r"mixed_precision None, 'bf16' or 'fp16' \(got 'int8'\)"):
        fit(torch.nn.Linear(2, 1), lambda mdl, b: mdl(b).mean(), torch.ones(4, 2),
            mixed_precision="int8", progress=False)  # fmt: skip
    with pytest.raises(ValueError, match="computes in float64"):
        fit(torch.nn.Linear(2, 1).double(), lambda mdl, b: mdl(b).mean(),
            torch.ones(4, 2, dtype=torch.float64), mixed_precision="bf16", progress=False)  # fmt: skip
    lista = LISTA(MatrixOperator(torch.randn(5, 8)), 2)
    with pytest.raises(ValueError, match="found no layer of LISTA"):
        with mixed_precision(lista, BF16):
            pass
    with pytest.raises(ValueError, match="does not offer float16"):
        with mixed_precision(UnrolledCT(op, n_layers=1, channels=2), torch.float16):
            pass
