"""One problem, end to end: what a user solving a single graph inverse problem pays.

``python benchmarks/graph.py --end-to-end [--quick]`` (issue 23). On the sensor, road-like
and random geometric graphs of ``--big`` nodes (10^5), at 30% and 80% observed, one signal
(lam 1), all in one process, medians of ``--repeats`` (each learned solve paired with a
CG solve to 1e-6 timed right before it, the ratio the median of the pairs' ratios):

* the learned solver from the adjacency: building the problem, its certified bounds and the
  10-layer forward (``window`` and ``window_jacobi``, the controller as the trained models
  run it, :data:`~unrollsci.bench.graph_forward.FORWARD_SAMPLE` sampled nodes), on a graph an
  earlier problem was built on (another mask: the per-graph Laplacian, components,
  certificates and node sample are reused) and on a new graph (every graph cache cleared);
* against scipy's ``cg`` on ``H`` to rtol 1e-6 and ten ``cg`` iterations (the learned
  solver's ten products), the faster of BLAS on 1 and on the default threads; forming ``H``
  for scipy (the same sparse sum) is counted as scipy's set-up.

Controllers are untrained (the cost does not depend on the weights). Writes
``graph_e2e.json`` and ``graph_e2e.md`` (``--quick``: 5000 nodes, ``*_quick``).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import torch

from ..graph import GraphInverseProblem, _graphcert, inpainting_problem
from ._common import markdown_table, results_name, write_results, write_text
from .graph_cost import _cg_time, _graphs, run_config
from .graph_forward import forward_models

__all__ = ["run_end_to_end"]

_MODES = ("window", "window_jacobi")


def _row(name: str, adj: Any, observed: float, models: dict, repeats: int) -> dict[str, Any]:
    import scipy.sparse as sp

    p = inpainting_problem(adj, 1, observed=observed, noise=0.1, seed=1003)
    mask = p.mask[0].numpy()
    b = p.rhs().numpy()[0]

    def scipy_h() -> Any:  # the user's set-up for scipy: H = diag(mask) + lam L
        return sp.csr_matrix(sp.diags(mask) + p.lam * p.lap_scipy)

    h = scipy_h()
    n = p.num_nodes
    t_cg, its = _cg_time(h, b, repeats, rtol=1e-6, maxiter=20 * n)
    t_cg10, _ = _cg_time(h, b, repeats, rtol=0.0, atol=0.0, maxiter=10)
    t_h = statistics.median(_seconds(scipy_h) for _ in range(repeats))
    row: dict[str, Any] = {"graph": name, "observed": observed, "n": n, "cg 1e-6 iters": its}
    row.update({"cg 1e-6 [s]": t_cg, "cg 10 it [s]": t_cg10, "scipy H [s]": t_h})

    def solve(model: Any, cold: bool) -> None:
        if cold:
            _graphcert.clear_cache()
        q = GraphInverseProblem.from_scipy(adj, p.y, mask=p.mask, lam=p.lam)
        with torch.no_grad():
            model(q)

    def cg_now() -> float:
        """One CG solve to 1e-6, the faster of BLAS on 1 and on the default threads."""
        from scipy.sparse.linalg import cg

        t = _seconds(lambda: cg(h, b, rtol=1e-6, maxiter=20 * n))
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            return t
        with threadpool_limits(1, user_api="blas"):
            return min(t, _seconds(lambda: cg(h, b, rtol=1e-6, maxiter=20 * n)))

    for mode in _MODES:
        for cold in (False, True):
            tag = f"{mode}{' (new graph)' if cold else ''}"
            solve(models[mode], cold)  # warm-up; a known graph's caches are filled here
            times, ratios = [], []
            for _ in range(repeats):  # each paired with a CG solve timed right before it
                t_ref = cg_now()
                times.append(_seconds(lambda m=models[mode], c=cold: solve(m, c)))
                ratios.append(times[-1] / (t_h + t_ref))
            row[f"{tag} [s]"] = statistics.median(times)
            row[f"{tag} / (H + cg 1e-6)"] = statistics.median(ratios)
            row[f"{tag} / (H + cg 10 it)"] = row[f"{tag} [s]"] / (t_h + t_cg10)
    return row


def _seconds(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run_end_to_end(outdir: str | Path, *, quick: bool, big: int | None, repeats: int) -> int:
    """The rows above for the three graphs at 30% and 80% observed; writes
    ``graph_e2e.{json,md}``."""
    import os

    n = big or (5000 if quick else 100_000)
    models = {m: v for m, v in forward_models().items() if m in _MODES}
    config = run_config(n, repeats, controller="sampled (as the trained models), untrained")
    t0 = time.perf_counter()
    rows = []
    for name, adj in _graphs(n):
        for observed in (0.3, 0.8):
            rows.append(_row(name, adj, observed, models, repeats))
            print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in rows[-1].items()})
    config["load average after"] = os.getloadavg()[0]
    cols = ["graph", "observed", "cg 1e-6 iters", "scipy H [s]", "cg 1e-6 [s]", "cg 10 it [s]"]
    for mode in _MODES:
        cols += [f"{mode} [s]", f"{mode} / (H + cg 1e-6)", f"{mode} (new graph) / (H + cg 1e-6)"]
    cols += [f"{m} / (H + cg 10 it)" for m in _MODES]
    table = markdown_table(rows, cols)
    data = {"config": config, "rows": rows, "table": table, "seconds": time.perf_counter() - t0}
    path = write_results("graph_e2e", data, outdir, quick=quick)
    write_text(Path(outdir) / f"{results_name('graph_e2e', quick)}.md", table + "\n")
    print(table)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit("run it as: python benchmarks/graph.py --end-to-end")
