"""Training learned preconditioners (fit_preconditioner, pcg_loss, make_batches),
checkpoints, restarts, load_matrices and the benchmarks/precond_timing.py script.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from unrollsci.precond import (
    LearnedPreconditioner,
    anisotropic2d,
    diffusion2d,
    fit_preconditioner,
    graph_laplacian,
    ic0,
    make_batches,
    pcg_loss,
    unrolled_pcg,
)
from unrollsci.train import load_checkpoint, save_checkpoint

KINDS = ["factor", "inverse", "block"]


def randomize(model: torch.nn.Module, seed: int, scale: float = 0.5) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=g))


# ---------------------------------------------------------------------- training
def test_training_reduces_loss_and_checkpoint_roundtrip(device, tmp_path):
    mats = [diffusion2d(12, seed=s) for s in range(4)]
    model = LearnedPreconditioner("factor", hidden=8, layers=2).to(device)
    data = make_batches(model, mats, n_rhs=2, seed=0)
    loss_fn = pcg_loss(steps=6)

    def mean_loss() -> float:
        with torch.no_grad():
            return float(np.mean([float(loss_fn(model, d)) for d in data]))

    before = mean_loss()
    fit_preconditioner(model, mats, steps=6, n_rhs=2, epochs=6, lr=1e-2)
    after = mean_loss()
    assert after < before
    path = save_checkpoint(model, tmp_path / "p.pt")
    again = load_checkpoint(path, expected=LearnedPreconditioner, map_location=device)
    a = diffusion2d(10, seed=99)
    np.testing.assert_allclose(
        again.build(a).values.cpu().numpy(), model.build(a).values.cpu().numpy()
    )


@pytest.mark.parametrize("loss", ["residual", "frobenius"])
@pytest.mark.parametrize("kind", KINDS)
def test_other_losses_run(device, kind, loss):
    model = LearnedPreconditioner(
        kind, hidden=4, layers=1, **({"block_size": 4} if kind == "block" else {})
    ).to(device)
    data = make_batches(model, [diffusion2d(6, seed=0)], n_rhs=2)
    val = pcg_loss(steps=3, loss=loss)(model, data[0])
    val.backward()
    assert torch.isfinite(val)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_training_never_worse_than_base_on_validation():
    mats = [anisotropic2d(10, seed=s) for s in range(3)]
    val = [anisotropic2d(10, seed=100 + s) for s in range(2)]
    model = LearnedPreconditioner("factor", hidden=4, layers=1, base="ic0")
    hist = fit_preconditioner(model, mats, steps=4, n_rhs=2, epochs=3, lr=5e-2, val_matrices=val)
    loss_fn = pcg_loss(steps=4)
    batches = make_batches(model, val, n_rhs=2, seed=1)  # the same systems fit validated on
    with torch.no_grad():
        final = float(np.mean([float(loss_fn(model, b)) for b in batches]))
    assert final <= hist.initial_val + 1e-9
    if hist.kept_initial:
        a = anisotropic2d(10, seed=7)
        np.testing.assert_allclose(
            model.build(a).factor().toarray(), ic0(a).factor().toarray(), rtol=1e-6, atol=1e-8
        )


def test_adaptive_unroll_length(device):
    model = LearnedPreconditioner("factor", base="ic0").to(device)
    mats = [diffusion2d(12, seed=0), anisotropic2d(12, epsilon=1e-3, theta=0.0, seed=0)]
    batches = make_batches(model, mats, n_rhs=2, adaptive_tol=1e-6)
    for bt in batches:
        m = model.build(bt.op.to_scipy())
        den = (bt.x * bt.b).sum(-1)

        def err(k, bt=bt, m=m, den=den):
            e = unrolled_pcg(bt.op, bt.b, m, k) - bt.x
            return float(((e * bt.op(e)).sum(-1) / den).max())

        assert err(bt.steps) <= 1e-6
        if bt.steps > 2:
            assert err(bt.steps - 1) > 1e-6
    # the near-1D anisotropic system is easier for IC(0): fewer steps
    assert batches[1].steps < batches[0].steps


def test_seeded_init_and_restarts_keep_best_validation():
    state = torch.random.get_rng_state()
    m1 = LearnedPreconditioner("factor", seed=11)
    assert torch.equal(state, torch.random.get_rng_state())  # the global generator is untouched
    m2 = LearnedPreconditioner("factor", seed=11)
    m3 = LearnedPreconditioner("factor", seed=12)
    s1, s2, s3 = m1.state_dict(), m2.state_dict(), m3.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert not all(torch.equal(s1[k], s3[k]) for k in s1)
    assert float(s1["off_head.1.weight"].abs().sum()) == 0.0  # still the base when untrained

    mats = [diffusion2d(10, seed=s) for s in range(3)]
    val = [diffusion2d(10, seed=100 + s) for s in range(2)]
    kw = dict(steps=4, n_rhs=2, epochs=3, lr=2e-2, val_matrices=val, keep_base_if_better=False)
    hist = fit_preconditioner(LearnedPreconditioner("factor", seed=0), mats, restarts=3, **kw)
    assert len(hist.restart_vals) == 3 and hist.restart == int(np.argmin(hist.restart_vals))
    assert hist.best_val == min(hist.restart_vals)
    # each restart r > 0 is the plain run from reset_parameters(seed + r)
    for r in (0, 1):
        single = fit_preconditioner(LearnedPreconditioner("factor", seed=r), mats, **kw)
        assert single.best_val == pytest.approx(hist.restart_vals[r], rel=1e-9)
    with pytest.raises(ValueError, match="val_matrices"):
        fit_preconditioner(LearnedPreconditioner("factor"), mats, restarts=2, steps=4)
    with pytest.raises(ValueError, match="'restarts' >= 1"):
        fit_preconditioner(LearnedPreconditioner("factor"), mats, restarts=0, val_matrices=val)


def test_load_matrices_order_formats_and_errors(tmp_path):
    import scipy.io

    from unrollsci.precond import load_matrices

    for s in (10, 2, 1):
        sp.save_npz(tmp_path / f"step_{s}.npz", graph_laplacian(4, seed=s))
    # 17 significant digits round-trip float64 exactly (scipy < 1.12 writes 16 by default)
    scipy.io.mmwrite(tmp_path / "step_3.mtx", diffusion2d(4, seed=3), precision=17)
    (tmp_path / "notes.txt").write_text("not a matrix")
    mats, files = load_matrices(tmp_path)  # a directory: every matrix file, natural order
    assert [f.rsplit("/", 1)[-1] for f in files] == [
        "step_1.npz",
        "step_2.npz",
        "step_3.mtx",
        "step_10.npz",
    ]
    assert (mats[0] != graph_laplacian(4, seed=1)).nnz == 0
    assert (mats[2] != diffusion2d(4, seed=3)).nnz == 0
    assert len(load_matrices(str(tmp_path / "step_1*.npz"))[0]) == 2  # a glob
    with pytest.raises(ValueError, match="No matrix files match"):
        load_matrices(str(tmp_path / "nothing_*.npz"))
    with pytest.raises(ValueError, match="ending in"):
        load_matrices(str(tmp_path / "notes.txt"))
    bad = sp.csr_matrix(np.array([[2.0, 1.0], [0.0, 2.0]]))
    sp.save_npz(tmp_path / "bad.npz", bad)
    with pytest.raises(ValueError, match="bad.npz"):
        load_matrices(str(tmp_path / "bad.npz"))


def test_learned_poly_gradcheck_training_and_checkpoint(device, tmp_path):
    mats = [graph_laplacian(6, seed=s) for s in range(3)]
    model = LearnedPreconditioner("poly", degree=3, hidden=4, seed=0).double().to(device)
    randomize(model, seed=1, scale=0.3)
    (batch,) = make_batches(model, mats[:1], n_rhs=2)
    loss = pcg_loss(steps=3)
    # the polynomial's weights, its interval and the GNN's scaling head, as plain inputs
    x0 = [model.poly_logits.detach().clone(), model.poly_ratio.detach().clone()]
    x0.append(model.diag_head[-1].bias.detach().clone())
    del model.poly_logits, model.poly_ratio
    head = model.diag_head[-1]
    del head.bias

    def f(logits, ratio, bias):
        model.poly_logits, model.poly_ratio, head.bias = logits, ratio, bias
        return loss(model, batch)

    inputs = tuple(x.requires_grad_(True) for x in x0)
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)
    trained = LearnedPreconditioner("poly", degree=4, ratio=0.05, seed=0).to(device)
    hist = fit_preconditioner(trained, mats, steps=4, epochs=4)
    assert hist.train_loss[-1] < hist.train_loss[0]
    path = save_checkpoint(trained, tmp_path / "poly.pt")
    again = load_checkpoint(path, expected=LearnedPreconditioner, map_location=device)
    assert (again.kind, again.degree, again.ratio) == ("poly", 4, 0.05)
    r = torch.randn(2, mats[0].shape[0], dtype=torch.float64, device=device)
    torch.testing.assert_close(again.build(mats[0])(r), trained.build(mats[0])(r))
    fresh = LearnedPreconditioner("poly", degree=3, seed=0).to(device)
    with pytest.raises(ValueError, match="frobenius"):
        pcg_loss(steps=3, loss="frobenius")(fresh, batch)
    with pytest.raises(ValueError, match="base"):
        LearnedPreconditioner("poly", base="mic")
    with pytest.raises(ValueError, match="degree"):
        LearnedPreconditioner("poly", degree=0)


def test_precond_timing_script_quick(tmp_path):
    """benchmarks/precond_timing.py end to end in its tiny configuration."""
    import importlib.util
    import json
    from pathlib import Path

    script = Path(__file__).parents[2] / "benchmarks" / "precond_timing.py"
    spec = importlib.util.spec_from_file_location("precond_timing", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    full = tmp_path / "precond_timing.json"  # a full run's results: --quick must keep them
    full.write_text('{"full": true}')
    assert mod.main(["--quick", "--out", str(tmp_path)]) == 0
    assert full.read_text() == '{"full": true}'
    rows = json.loads((tmp_path / "precond_timing_quick.json").read_text())["rows"]
    # the anisotropic family is a grid: the reordered MIC(0) and learned factor come too
    assert [r["method"] for r in rows] == [*mod.METHODS, "mic0-ord", "learned-factor-mic-ord"]
    ic = rows[0]
    assert ic["best_vs_ic0"] == 1.0 and ic["best_vs_ic0_per_system"] == "1.00/1.00"
    for r in rows:
        assert r["best_total_s"] <= r["median_total_s"] and r["iters"] > 0
    with pytest.raises(SystemExit) as exc:  # a usage error, before any work
        mod.main(["--repeats", "0"])
    assert exc.value.code == 2
