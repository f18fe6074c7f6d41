"""Audit round "dec10", process-wide state: what one call leaves behind for the next ones.

Caches first filled under ``torch.inference_mode()`` serve later autograd calls (graph
controller samples, PME filters, prepared matrix graphs); ``empirical_lipschitz`` leaves the
model's ``.grad`` and mode as they were; ``self_ensemble`` follows a changed geometry;
seeding a learned preconditioner touches no global generator; ``import unrollsci`` adds no
warnings filter; benchmark helpers leave the caller's random stream and matplotlib backend.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import unrollsci

PACKAGE = Path(unrollsci.__file__).parent


def _subprocess(code: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter importing this copy of unrollsci (not the cwd's)."""
    env = dict(os.environ, PYTHONPATH=str(PACKAGE.parent), OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, *args, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=env,
    )


# ------------------------------------------------------------- 1. inference-mode caches


def _graph_grads(model, p):
    from unrollsci.graph import graph_loss

    model.zero_grad(set_to_none=True)
    graph_loss(model, p).backward()
    return [q.grad.clone() for q in model.parameters() if q.grad is not None]


@pytest.mark.parametrize("mode", ["scalar", "diagonal"])
def test_graph_sample_cached_under_inference_mode_serves_autograd(mode):
    from unrollsci.graph import (
        StepController,
        UnrolledGraphGD,
        clear_graph_cache,
        inpainting_problem,
        sensor_graph,
    )

    adj, _ = sensor_graph(80, k=5, seed=1)

    def problem(seed):
        return inpainting_problem(adj, 2, noise=0.1, seed=seed)

    head = "local" if mode == "diagonal" else "mp"
    torch.manual_seed(0)
    model = UnrolledGraphGD(
        3, StepController(hidden=8, window=3, node_head=head), mode=mode, controller_sample=8
    ).double()
    clear_graph_cache()
    reference = _graph_grads(model, problem(1))  # no inference-mode history
    clear_graph_cache()
    with torch.inference_mode():
        model(problem(0))  # another problem on the same graph fills the shared cache
    p = problem(1)
    got = _graph_grads(model, p)
    assert len(got) == len(reference) > 0
    for a, b in zip(got, reference, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with torch.inference_mode():  # and the same problem, used again under inference mode
        model(p)
    for a, b in zip(_graph_grads(model, p), reference, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_pme_filters_cached_under_inference_mode_serve_forces(monkeypatch):
    from ase.build import bulk

    from unrollsci.chem import _pme_mesh, solve_charges

    params = {
        "Na": {"chi": 2.843, "eta": 12.0, "gamma": 0.7},
        "Cl": {"chi": 8.564, "eta": 10.0, "gamma": 0.6},
    }
    atoms = bulk("NaCl", "rocksalt", a=5.64, cubic=True)
    atoms.rattle(0.1, seed=0)
    kw = dict(
        cell=torch.tensor(atoms.cell.array),
        pbc=True,
        ewald=True,
        ewald_method="pme",
        params=params,
        cutoff=5.0,
        ewald_accuracy=1e-6,
        tol=1e-12,
    )

    def energy(pos):
        return solve_charges(pos, atoms.numbers, **kw).energy

    def forces():
        pos = torch.tensor(atoms.positions, requires_grad=True)
        return -torch.autograd.grad(energy(pos), pos)[0]

    monkeypatch.setattr(_pme_mesh, "_FILTERS", {})
    with torch.inference_mode():
        energy(torch.tensor(atoms.positions))
    f = forces()  # inference tensors in the cache: "cannot be saved for backward"
    # reference: central float64 differences of the energy (the same cell: cached filters)
    h = 1e-5
    for atom, axis in ((0, 0), (3, 2)):
        pos = torch.tensor(atoms.positions)
        pos[atom, axis] += h
        ep = float(energy(pos))
        pos[atom, axis] -= 2 * h
        em = float(energy(pos))
        assert float(f[atom, axis]) == pytest.approx(-(ep - em) / (2 * h), abs=1e-5)


@pytest.mark.parametrize("kind", ["factor", "amg", "poly"])
def test_prepared_matrix_graph_used_under_inference_mode_then_trained(kind):
    from unrollsci.precond import LearnedPreconditioner, diffusion2d

    a = diffusion2d(6, seed=0)
    model = LearnedPreconditioner(kind, seed=0).double()
    v = torch.ones(1, a.shape[0], dtype=torch.float64)

    def grads(g):
        model.zero_grad(set_to_none=True)
        model.from_graph(g)(v).sum().backward()
        return [q.grad.clone() for q in model.parameters() if q.grad is not None]

    reference = grads(model.prepare(a))  # a graph with no inference-mode history
    g = model.prepare(a)
    with torch.inference_mode():
        model.from_graph(g)
    got = grads(g)
    assert len(got) == len(reference) > 0
    for x, y in zip(got, reference, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


# ------------------------------------------------------------------ 2. empirical_lipschitz


def test_empirical_lipschitz_leaves_parameter_grads_and_mode():
    from unrollsci.imaging import Radon, UnrolledCT, empirical_lipschitz

    radon = Radon(16, 12)
    model = UnrolledCT(radon, n_layers=2, channels=4)
    y = radon(torch.rand(2, 16, 16))
    model.zero_grad(set_to_none=True)
    model(y).pow(2).mean().backward()  # a caller's gradient, before its optimizer step
    before = [q.grad.clone() for q in model.parameters()]
    model.train()
    got = empirical_lipschitz(model, y, steps=3)
    assert model.training
    for q, g in zip(model.parameters(), before, strict=True):
        assert torch.equal(q.grad, g)
    # a lower bound: at least the ratio at its own starting pair (computed here directly)
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(y.shape, generator=gen, dtype=y.dtype)
    noise = noise / noise.reshape(2, -1).norm(dim=1).reshape(-1, 1, 1)
    y2 = y + 1e-2 * y.reshape(2, -1).norm(dim=1).reshape(-1, 1, 1) * noise
    model.eval()
    with torch.no_grad():
        num = (model(y) - model(y2)).reshape(2, -1).norm(dim=1)
    start = float((num / (y - y2).reshape(2, -1).norm(dim=1)).max())
    assert got >= start * (1 - 1e-6)
    model.train()
    with pytest.raises(ValueError, match="Expected"):
        empirical_lipschitz(model, torch.rand(2, 12, 9), steps=2)
    assert model.training  # restored although the model raised


# ------------------------------------------------------------------- 3. self_ensemble


def test_self_ensemble_follows_a_changed_geometry():
    from unrollsci.imaging import Radon, fbp, radon_symmetries, self_ensemble, shepp_logan

    class FBPNet(torch.nn.Module):  # any module with a 'radon' attribute
        def __init__(self, radon):
            super().__init__()
            self.radon = radon
            self.mask = torch.ones(radon.image_size, radon.image_size, dtype=torch.bool)

        def forward(self, y, mask=None):
            return fbp(y, self.radon) * mask

    x = shepp_logan(16).double()[None]
    r1, r2 = Radon(16, 8), Radon(16, [0, 10, 20, 30, 40, 50, 60, 70])
    model = FBPNet(r1)
    self_ensemble(model, r1(x))
    model.radon = r2  # same image size and angle count, other angles
    y2 = r2(x)
    got = self_ensemble(model, y2)
    # reference: the average over r2's symmetries, written out here
    n = 16
    total = torch.zeros(1, n * n, dtype=y2.dtype)
    syms = radon_symmetries(r2)
    for s in syms:
        ys = y2.reshape(1, -1)[:, s.sinogram].reshape(y2.shape)
        total += (fbp(ys, r2)).reshape(1, -1)[:, s.inverse]
    torch.testing.assert_close(got, (total / len(syms)).reshape(1, n, n))


# ---------------------------------------------------------- 4. learned preconditioner seed


def test_learned_preconditioner_seed_touches_no_global_generator(monkeypatch):
    from unrollsci.precond import LearnedPreconditioner

    calls = []
    real = torch.cuda.manual_seed_all
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda s: (calls.append(s), real(s))[1])
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    calls.clear()
    model = LearnedPreconditioner("factor", seed=7)
    model.reset_parameters(seed=3)
    assert calls == []  # torch.manual_seed reseeded every CUDA generator for good
    assert torch.equal(torch.rand(3), expected_next)
    # the weights: torch's default initialization drawn after seeding the CPU generator
    ref = LearnedPreconditioner("factor", seed=11)
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(3)
        for mod in ref.modules():
            if isinstance(mod, torch.nn.Linear):
                mod.reset_parameters()
    ref._zero_heads()
    for (k, a), (_, b) in zip(model.state_dict().items(), ref.state_dict().items(), strict=True):
        assert torch.equal(a, b), k


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_learned_preconditioner_seed_gives_the_cpu_weights_on_cuda():
    from unrollsci.precond import LearnedPreconditioner

    cpu = LearnedPreconditioner("factor", seed=5)
    gpu = LearnedPreconditioner("factor").cuda()
    state = torch.cuda.get_rng_state()
    gpu.reset_parameters(seed=5)
    assert torch.equal(torch.cuda.get_rng_state(), state)
    for (k, a), (_, b) in zip(cpu.state_dict().items(), gpu.state_dict().items(), strict=True):
        assert torch.equal(a, b.cpu()), k


# ------------------------------------------------------------------ 5. warnings filters


def test_import_adds_no_process_wide_warnings_filter(tmp_path):
    code = (
        "import warnings; before = list(warnings.filters)\n"
        "import unrollsci\n"
        f"assert unrollsci.__file__.startswith({str(PACKAGE)!r}), unrollsci.__file__\n"
        "assert warnings.filters == before, warnings.filters\n"
        "import torch\n"
        "torch.sparse_csr_tensor(torch.tensor([0, 1]), torch.tensor([0]), torch.tensor([1.0]),"
        " size=(1, 1), check_invariants=True)\n"
    )
    out = _subprocess(code, tmp_path, "-W", "error::UserWarning")
    # the user's own CSR tensor: torch's beta notice reaches the user's filters (an error here)
    assert out.returncode != 0
    assert "Sparse CSR tensor support is in beta state" in out.stderr, out.stderr
    assert "AssertionError" not in out.stderr, out.stderr


# -------------------------------------------------------- 6./7. benchmark helpers


def test_bench_helpers_keep_the_callers_random_stream():
    from unrollsci.bench.distributed import build
    from unrollsci.bench.graph_forward import forward_models

    for call in (lambda: forward_models(8, trained=False), lambda: build("sparse")):
        torch.manual_seed(12345)
        expected = torch.rand(3)
        torch.manual_seed(12345)
        first = call()
        assert torch.equal(torch.rand(3), expected)
        torch.manual_seed(777)  # a different caller state: the same (seeded) result
        second = call()
        a = first if isinstance(first, dict) else {"m": first.model}
        b = second if isinstance(second, dict) else {"m": second.model}
        for name in a:
            for (k, x), (_, y) in zip(
                a[name].state_dict().items(), b[name].state_dict().items(), strict=True
            ):
                assert torch.equal(x, y), (name, k)


def _functions(tree):
    return [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)]


def test_every_bench_function_that_seeds_torch_keeps_the_callers_stream():
    bad = []
    for path in sorted((PACKAGE / "bench").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for fn in _functions(tree):
            seeds = any(
                isinstance(c, ast.Call) and ast.unparse(c.func) == "torch.manual_seed"
                for c in ast.walk(fn)
            )
            top = fn in tree.body
            kept = any(ast.unparse(d) == "keep_caller_rng" for d in fn.decorator_list)
            if seeds and top and not kept:
                bad.append(f"{path.relative_to(PACKAGE)}:{fn.lineno} {fn.name}")
    assert not bad, "torch.manual_seed without @keep_caller_rng:\n" + "\n".join(bad)


def test_bench_plots_leave_the_matplotlib_backend(tmp_path, monkeypatch):
    matplotlib = pytest.importorskip("matplotlib")
    uses = []
    for path in sorted((PACKAGE / "bench").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "matplotlib.use":
                uses.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] + [getattr(node, "module", "") or ""]
                if any("pyplot" in n for n in names):
                    uses.append(f"{path.relative_to(PACKAGE)}:{node.lineno} pyplot")
    assert not uses, uses
    from unrollsci.bench._common import loglog_figure
    from unrollsci.bench.demo.solvers import _plot

    switched = []
    monkeypatch.setattr(matplotlib, "use", lambda *a, **k: switched.append(a))
    rows = [{"n": 1, "t": 1.0}, {"n": 2, "t": 3.0}]
    loglog_figure(rows, "n", [("t", "time")], tmp_path / "a.png", xlabel="n", ylabel="t", title="")
    _plot({"cg": [1.0, 0.1, 0.01]}, tmp_path / "b.png")
    assert switched == []  # the process's backend (a notebook's, a GUI's) is left alone
    for name in ("a.png", "b.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
