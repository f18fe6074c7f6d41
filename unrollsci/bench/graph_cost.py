"""Wall-time cost of the certified graph solver against scipy's CG on 10^5-node graphs.

``python benchmarks/graph.py --cost [--quick]`` (issue 23). On a sensor (kNN), a road-like
(Delaunay-based) and a random geometric graph of ``--big`` nodes, at 30% and 80% observed,
one signal (lam 1), all in one run:

* the certified bounds ``lipschitz()``, ``lambda_min_bound()``, ``jacobi_interval()``, the
  window mode's two and all three on one fresh problem (and the largest of what one mode
  reads: ``solver bounds (max over modes)``), against one scipy ``cg`` solve to
  rtol 1e-6 (the faster of BLAS on 1 and on 2 threads): on a graph whose certificates an
  earlier problem computed (another mask), and on a new graph (``(new graph)``: every
  per-graph cache cleared before the problem is built, and the build timed with the bounds,
  so the graph's one-time costs, its Laplacian, components and certificates, are included);
* the 10-layer forward of each mode (bounds cached, the full controller) against 10 scipy
  ``cg`` iterations (scalar and diagonal also with ``controller_every=5``; the cheap
  controller's: :mod:`.graph_forward`);
* a batch of 64 signals sharing one mask on the sensor graph: per-signal time of the learned
  window modes (problem build + bounds + forward, divided by 64) against scipy ``cg`` to
  rtol 1e-6 per signal and against 10 ``cg`` iterations per signal (the learned solver's
  10 products); the controllers as the trained models run them (sampled,
  :data:`~.graph_forward.FORWARD_SAMPLE` nodes), the committed trained models and, for
  reference, the full controller; on a graph whose certificates are known and on a new graph
  (every per-graph cache cleared before the build) (``batch_only``: this alone, in
  ``graph_cost_batch.*``).

Controllers are untrained (the cost does not depend on the weights). Times are medians of
``--repeats`` runs; the machine may be shared, so only ratios from one run are compared.
Writes ``graph_cost.json`` and ``graph_cost.md`` (``--quick``: 5000 nodes, ``*_quick``).
"""

from __future__ import annotations

import contextlib
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..graph import (
    MODES,
    GraphInverseProblem,
    StepController,
    UnrolledGraphGD,
    _graphcert,
    inpainting_problem,
    random_graph,
    road_graph,
    sensor_graph,
)
from ._common import Timer, keep_caller_rng, markdown_table, results_name, write_results, write_text

__all__ = ["run_cost", "timing_big"]


def _median(fn: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(statistics.median(times))


def _sensor(n: int) -> Any:
    """The benchmarks' ``n``-node sensor graph (the first of :func:`_graphs`)."""
    return sensor_graph(n, seed=888)[0]


def _graphs(n: int) -> list[tuple[str, Any]]:
    import networkx as nx
    import scipy.sparse as sp

    rgg = random_graph("geometric", n, seed=31)
    adj = sp.csr_matrix(nx.to_scipy_sparse_array(rgg, format="csr"), dtype=np.float64)
    return [
        (f"sensor {n}", _sensor(n)),
        (f"road {n}", road_graph(n, seed=889)[0]),
        (f"geometric {n}", adj),
    ]


def run_config(n: int, repeats: int, **extra: Any) -> dict[str, Any]:
    """The ``config`` of a cost benchmark's JSON: sizes, threads, the load before it ran."""
    import os

    out = {"nodes": n, "repeats": repeats, "threads": torch.get_num_threads(), **extra}
    out["load average before"] = os.getloadavg()[0]
    return out


def _fresh(p: GraphInverseProblem) -> GraphInverseProblem:
    return GraphInverseProblem.from_scipy(p.adjacency, p.y, mask=p.mask, lam=p.lam)


def cg_iterations(h: Any, b: np.ndarray, **kw: Any) -> int:
    """Iterations of one scipy ``cg(h, b, **kw)`` solve."""
    from scipy.sparse.linalg import cg

    it = [0]
    cg(h, b, callback=lambda _x: it.__setitem__(0, it[0] + 1), **kw)
    return it[0]


def _cg_time(h: Any, b: np.ndarray, repeats: int, **kw: Any) -> tuple[float, int]:
    """Median time of scipy's ``cg``: the faster of numpy's BLAS on 1 thread and on the
    default threads (threaded BLAS stalls on short vector reductions when the cores are
    shared; the faster baseline makes every ratio against it stricter)."""
    t, its, _ = _cg_time_blas(h, b, repeats, **kw)
    return t, its


def _cg_time_blas(h: Any, b: np.ndarray, repeats: int, **kw: Any) -> tuple[float, int, Any]:
    """:func:`_cg_time` and the BLAS setting that gave it (a context factory: 1 thread,
    or the default threads), so that later CG runs can use the same, faster one."""
    from scipy.sparse.linalg import cg

    its = cg_iterations(h, b, **kw)
    t = _median(lambda: cg(h, b, **kw), repeats)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # not installed: the default threads only
        return t, its, contextlib.nullcontext
    with threadpool_limits(1, user_api="blas"):
        t1 = _median(lambda: cg(h, b, **kw), repeats)
    if t1 < t:
        return t1, its, lambda: threadpool_limits(1, user_api="blas")
    return t, its, contextlib.nullcontext


def _one(name: str, adj: Any, observed: float, models: dict, repeats: int) -> dict[str, Any]:
    p = inpainting_problem(adj, 1, observed=observed, noise=0.1, seed=1003)
    h = p.hessian_scipy(0)
    b = p.rhs().cpu().numpy()[0]
    n = p.num_nodes
    row: dict[str, Any] = {"graph": name, "observed": observed, "n": n}
    t_cg, it, blas = _cg_time_blas(h, b, repeats, rtol=1e-6, maxiter=20 * n)
    t_cg10, _ = _cg_time(h, b, repeats, rtol=0.0, atol=0.0, maxiter=10)
    row.update({"cg 1e-6 [s]": t_cg, "cg 1e-6 iters": it, "cg 10 it [s]": t_cg10})
    row["build [s]"] = _median(lambda: _fresh(p), repeats)

    from scipy.sparse.linalg import cg

    def timed(fn: Any, cold: bool) -> tuple[float, float]:
        """Median time of ``fn`` on a fresh problem and the median of its ratios to a CG
        solve (rtol 1e-6) timed right before it, so that both see the same load."""

        def one() -> tuple[float, float]:
            if cold:  # a new graph: every per-graph cache cleared, the build timed below
                _graphcert.clear_cache()
                q = None
            else:  # the graph's certificates from an earlier problem on it
                q = _fresh(p)
                _fresh(p).jacobi_interval()
                _fresh(p).lipschitz()
            with blas():  # the BLAS setting of the faster baseline (`cg 1e-6 [s]`)
                t0 = time.perf_counter()
                cg(h, b, rtol=1e-6, maxiter=20 * n)
                t1 = time.perf_counter()
                fn(_fresh(p) if q is None else q)  # on a new graph: with the problem's build
                t2 = time.perf_counter()
            return t2 - t1, (t2 - t1) / (t1 - t0)

        pairs = [one() for _ in range(repeats)]
        return (
            float(statistics.median(t for t, _ in pairs)),
            float(statistics.median(r for _, r in pairs)),
        )

    for what, fn in (
        ("lipschitz", lambda q: q.lipschitz()),
        ("lambda_min", lambda q: q.lambda_min_bound()),
        ("jacobi", lambda q: q.jacobi_interval()),
        ("window bounds", lambda q: (q.lipschitz(), q.lambda_min_bound())),
        ("all bounds", lambda q: (q.lipschitz(), q.lambda_min_bound(), q.jacobi_interval())),
    ):
        for cold in (False, True):
            tag = " (new graph)" if cold else ""
            row[f"{what}{tag} [s]"], row[f"{what}{tag} / cg"] = timed(fn, cold)
    # what a user pays on a known graph before the solve: building the problem (it hashes
    # the graph, the key of the certificate cache, and reads the components from it) and
    # all three bounds
    # what a solver pays: the bounds its mode reads (scalar / diagonal: Lip; window: Lip
    # and lo; window_jacobi: the Jacobi interval); only the PyG CertifiedBounds transform,
    # a training-data precompute that also solves exactly, computes all three
    modes = ("lipschitz / cg", "window bounds / cg", "jacobi / cg")
    row["solver bounds (max over modes) / cg"] = max(row[c] for c in modes)
    row["build / cg"] = row["build [s]"] / t_cg
    row["build + all bounds / cg"] = (row["build [s]"] + row["all bounds [s]"]) / t_cg
    # bounds used by the forward passes, cached on p
    lip, lo = p.lipschitz(), p.lambda_min_bound()
    jlo, jhi = p.jacobi_interval()
    row["Lip"], row["lo"] = float(lip[0, 0]), float(lo[0, 0])
    row["jac lo"], row["jac hi"] = float(jlo[0, 0]), float(jhi[0, 0])
    row["quality: lo / lambda_min"], row["quality: jac lo / lambda_min(S)"] = _quality(h, lo, jlo)
    with torch.no_grad():
        for mode, model in models.items():
            model(p)  # warm (mean adjacency cached on p)
            t = _median(lambda model=model: model(p), repeats)
            row[f"{mode} K=10 / cg10"] = t / t_cg10
    return row


def _quality(h: Any, lo: Any, jlo: Any) -> tuple[float, float]:
    """The certified lower bounds over the true smallest eigenvalues of ``H`` and of
    ``D^{-1/2} H D^{-1/2}`` (shift-invert ARPACK: a reference, not timed)."""
    import scipy.sparse as sp
    from scipy.sparse.linalg import eigsh

    d = 1.0 / np.sqrt(h.diagonal())
    s = sp.csc_matrix(sp.diags(d) @ h @ sp.diags(d))
    out = []
    for m, val in ((sp.csc_matrix(h), lo), (s, jlo)):
        ev = eigsh(m, k=1, sigma=0, which="LM", return_eigenvectors=False)[0]
        out.append(float(val[0, 0]) / float(ev))
    return out[0], out[1]


#: the modes of the batch (the per-layer controller modes scale badly with the batch)
_BATCH_MODES = ("window", "window_jacobi")


def batch_problem(adj: Any, signals: int = 64) -> GraphInverseProblem:
    """The batch benchmark's problem: ``signals`` random signals sharing one 30% mask."""
    one = inpainting_problem(adj, 1, observed=0.3, noise=0.1, seed=1004)
    rng = np.random.default_rng(5)
    y = torch.as_tensor(rng.standard_normal((signals, one.num_nodes))) * one.mask
    return GraphInverseProblem.from_scipy(adj, y, mask=one.mask[0], lam=1.0)


def _batch64(adj: Any, models: dict, repeats: int) -> dict[str, Any]:
    """64 signals sharing one mask: bounds once for the batch, then one forward."""
    p = batch_problem(adj)
    h = p.hessian_scipy(0)
    rhs = p.rhs().cpu().numpy()
    k = min(8, 64)  # CG per signal: median over k signals, the faster BLAS setting each
    kw = {"rtol": 1e-6, "maxiter": 20 * p.num_nodes}
    t_cg = statistics.median(_cg_time(h, rhs[i], 1, **kw)[0] for i in range(k))
    kw10 = {"rtol": 0.0, "atol": 0.0, "maxiter": 10}  # the learned solver's 10 products
    t_cg10 = statistics.median(_cg_time(h, rhs[i], 1, **kw10)[0] for i in range(k))
    out: dict[str, Any] = {"signals": 64, "n": p.num_nodes, "cg 1e-6 per signal [s]": t_cg}
    out["cg 10 iterations per signal [s]"] = t_cg10
    from .graph_forward import TRAINED, forward_models

    cheap = forward_models(trained=True)
    runs = [(f"{m} (full controller)", models[m], False) for m in models if m in _BATCH_MODES]
    runs += [(m, cheap[m], False) for m in _BATCH_MODES]  # the trained models' controller
    runs += [(f"{m} (new graph)", cheap[m], True) for m in _BATCH_MODES]
    trained = [m for m in TRAINED if m in cheap]  # the committed models themselves
    runs += [(m, cheap[m], False) for m in trained]
    with torch.no_grad():
        for m in trained:  # where a backup controller ran (its cost depends on it)
            r = cheap[m](_fresh(p))
            if r.backup:
                out[f"{m}: backup windows"] = float(torch.stack(r.backup).double().mean())
            out[f"{m}: learned windows"] = float(torch.stack(r.certified).double().mean())
        for name, model, cold in runs:

            def solve(model: Any = model, cold: bool = cold) -> None:
                if cold:  # a new graph: every per-graph cache cleared before the build
                    _graphcert.clear_cache()
                q = _fresh(p)  # bounds and mean adjacency recomputed every time
                model(q)

            t = _median(solve, max(1, repeats - 1))
            out[f"{name} per signal [s]"] = t / 64
            out[f"{name} per signal / cg"] = t / 64 / t_cg
            out[f"{name} per signal / cg 10 iterations"] = t / 64 / t_cg10
    return out


@keep_caller_rng
def run_cost(
    outdir: str | Path,
    *,
    quick: bool,
    big: int | None,
    repeats: int,
    bounds_only: bool = False,
    batch_only: bool = False,
) -> int:
    """``bounds_only``: skip the forward passes and the batch of 64 (the forward with the
    cheap controller is :func:`run_forward`); writes ``graph_cost_bounds.*``.
    ``batch_only``: only the batch of 64; writes ``graph_cost_batch.*``."""
    if bounds_only and batch_only:
        raise ValueError("Expected at most one of bounds_only and batch_only.")
    n = big or (5000 if quick else 100_000)
    torch.manual_seed(0)
    models = {
        m: UnrolledGraphGD(10, StepController(hidden=32, window=10), mode=m).double().eval()
        for m in MODES
    }
    for m in ("scalar", "diagonal"):  # the controller every 5th layer, steps reused between
        models[f"{m} every5"] = (
            UnrolledGraphGD(10, StepController(hidden=32, window=10), mode=m, controller_every=5)
            .double()
            .eval()
        )
    result = "graph_cost_bounds" if bounds_only else "graph_cost"
    result = "graph_cost_batch" if batch_only else result
    if bounds_only:
        models = {}
    t0 = time.perf_counter()
    rows = []
    graphs = _graphs(n)
    import os

    pairing = "median over repeats of (bound time / a CG solve timed just before it)"
    config = run_config(n, repeats, **{"bounds / cg": pairing})
    for name, adj in [] if batch_only else graphs:
        for observed in (0.3, 0.8):
            rows.append(_one(name, adj, observed, models, repeats))
            print(rows[-1], flush=True)
            # after every row, so that an interrupted run keeps what it measured
            partial = {"config": config, "rows": rows, "complete": False}
            write_results(result, partial, outdir, quick=quick)
    batch = {} if bounds_only else _batch64(graphs[0][1], models, repeats)
    config["load average after"] = os.getloadavg()[0]
    cols = ["graph", "observed", "cg 1e-6 [s]", "cg 1e-6 iters", "lipschitz / cg"]
    cols += ["lambda_min / cg", "jacobi / cg", "window bounds / cg"]
    cols += ["solver bounds (max over modes) / cg", "all bounds / cg"]
    cols += ["all bounds (new graph) / cg", "build / cg", "build + all bounds / cg"]
    cols += ["quality: lo / lambda_min", "quality: jac lo / lambda_min(S)"]
    cols += [f"{m} K=10 / cg10" for m in models]
    table = markdown_table(rows, cols)
    btable = markdown_table([{"what": a, "value": v} for a, v in batch.items()])
    path = write_results(
        result,
        {
            "config": config,
            "complete": True,
            "rows": rows,
            "batch64_shared_mask": batch,
            "table": table,
            "seconds": time.perf_counter() - t0,
        },
        outdir,
        quick=quick,
    )
    md = Path(outdir) / f"{results_name(result, quick)}.md"
    extra = "" if bounds_only else "\n\nBatch of 64 signals, one mask (sensor graph):\n\n" + btable
    head = "# graph: per-signal cost of a batch of 64 signals (`benchmarks/graph.py --cost`)\n"
    write_text(md, (head if batch_only else table) + extra + "\n")
    if not batch_only:
        print(table)
    if batch:
        print(btable)
    print(f"wrote {path} and {md}")
    return 0


def timing_big(
    p: GraphInverseProblem, models: dict[str, UnrolledGraphGD], k: int
) -> dict[str, Any]:
    """Wall time per solve (one signal) on the big graph."""
    from scipy.sparse.linalg import cg as sp_cg
    from scipy.sparse.linalg import spsolve

    one = GraphInverseProblem.from_scipy(p.adjacency, p.y[:1], mask=p.mask[:1], lam=p.lam)
    h = one.hessian_scipy(0).tocsc()
    b = one.rhs().cpu().numpy()[0]
    out: dict[str, Any] = {"n": one.num_nodes, "repeats": "min of 3"}

    def best(fn: Any) -> float:
        times = []
        for _ in range(3):
            with Timer() as t:
                fn()
            times.append(t.seconds)
        return min(times)

    x_direct = spsolve(h, b)
    out["scipy spsolve [s]"] = best(lambda: spsolve(h, b))
    for tol in (1e-6, 1e-2):
        its = cg_iterations(h, b, rtol=tol, maxiter=10 * one.num_nodes)
        out[f"scipy cg rtol={tol:g} [s]"] = best(
            lambda tol=tol: sp_cg(h, b, rtol=tol, maxiter=10 * one.num_nodes)
        )
        out[f"scipy cg rtol={tol:g} iterations"] = its
    out[f"scipy cg {k} iterations [s]"] = best(lambda: sp_cg(h, b, rtol=0.0, atol=0.0, maxiter=k))
    with Timer() as t:
        one.lipschitz("gershgorin")
    out["bounds: Lipschitz, Gershgorin [s]"] = t.seconds
    with Timer() as t:
        one.lipschitz()
    out["bounds: lipschitz() (used) [s]"] = t.seconds
    with Timer() as t:
        one.lambda_min_bound()
    out["bounds: lambda_min_bound() (window mode only) [s]"] = t.seconds
    one._cache["exact-direct"] = torch.as_tensor(x_direct)[None]
    with torch.no_grad():
        for mode, model in models.items():
            res = model(one)
            out[f"learned {mode} K={k} [s] (bounds cached)"] = best(lambda model=model: model(one))
            out[f"learned {mode} K={k} err"] = float(one.relative_error(res.x)[0, 0])
    return out
