"""The committed table's scalar and window columns under today's and November 26's bounds
(issue 23).

``python3 benchmarks/graph_lip.py`` runs the table recipe's ``scalar`` and ``window`` models
(retrained with today's code: ``benchmarks/checkpoints/graph_dec7/``; the table's recipe
retrains bit for bit on the small graphs) on the committed table's three rows (the problems
of ``benchmarks/graph.py``) with the bounds they read replaced by each of:

* ``certified``: today's :meth:`GraphInverseProblem.lipschitz` and ``lambda_min_bound``
  (above 5,000 nodes without factorizing ``H``: the graph bound ``max m + lam
  lambda_max(L)`` for ``Lip`` when it is within 10% of an estimate, the Collatz-Wielandt
  ``lo`` with its local stage);
* ``nov26``: the rule of the code that produced the committed table (November 26):
  ``Lip = 1.01 lambda_max(H)``, ``lo = 0.95 lambda_min(H)`` (estimates that that code
  proved by an inertia factorization; computed here with scipy's ``eigsh``);
* ``nov26 Lip + certified lo`` (the window mode; the scalar mode reads ``Lip`` only);
* ``inertia``: ``lipschitz("inertia")`` (the estimate times 1.01 proved by one sparse
  factorization per signal, the November 26 rule as an option, what a model with
  ``lipschitz_method="inertia"`` reads) and the certified ``lo``.

Per signal, ``Lip / lambda_max(H)`` and ``lo / lambda_min(H)`` are recorded; for the
``certified`` and ``inertia`` rows also the time of ``lipschitz()`` over the problem's
signals (on a graph whose own certificates are cached: the cost of a new mask) against
scipy's ``cg`` to rtol 1e-6 on each of them (timed after it, 1 BLAS thread). The
``nov26`` rows are a diagnosis, not a certified solver. Writes
``benchmarks/results/graph_lip.{json,md}`` (``--quick``: a 3,000-node sensor graph and 4
signals, ``graph_lip_quick.*``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..graph import GraphInverseProblem, UnrolledGraphGD
from ._common import (
    markdown_table,
    output_dir_arg,
    parse_bench_args,
    positive_int_arg,
    write_report,
)
from ._graph_train import load_models, table_problems
from .graph_cost import _fresh

__all__ = ["VARIANTS", "extremes", "main"]

VARIANTS = ("certified", "nov26", "nov26 Lip + certified lo", "inertia")
MODELS = "benchmarks/checkpoints/graph_dec7"
MODES = ("scalar", "window")


def extremes(p: GraphInverseProblem) -> tuple[np.ndarray, np.ndarray]:
    """``lambda_min(H)`` and ``lambda_max(H)`` per signal, ``(batch, 1)`` (one graph)."""
    from scipy.sparse.linalg import eigsh

    lo, hi = [], []
    for b in range(p.batch_size):
        h = p.hessian_scipy(b)
        v0 = np.ones(h.shape[0])
        hi.append(float(eigsh(h, k=1, which="LA", tol=1e-10, v0=v0)[0][0]))
        lo.append(float(eigsh(h.tocsc(), k=1, sigma=0.0, which="LM", tol=1e-10, v0=v0)[0][0]))
    return np.asarray(lo)[:, None], np.asarray(hi)[:, None]


def _run(model: UnrolledGraphGD, p: GraphInverseProblem, lip: np.ndarray, lo: np.ndarray):
    """K = 10 mean error with ``lipschitz()`` and ``lambda_min_bound()`` replaced."""
    t = lambda a: torch.as_tensor(a, dtype=p.dtype, device=p.device)  # noqa: E731
    p.lipschitz = lambda *_a, **_kw: t(lip)  # type: ignore[method-assign]
    p.lambda_min_bound = lambda **_kw: t(lo)  # type: ignore[method-assign]
    try:
        with torch.no_grad():
            r = model(p)
    finally:
        del p.lipschitz, p.lambda_min_bound
    return float(p.relative_error(r.x).mean())


def _cg_seconds(p: GraphInverseProblem) -> float:
    """scipy ``cg`` to rtol 1e-6 on each of the problem's signals, one after the other."""
    from scipy.sparse.linalg import cg
    from threadpoolctl import threadpool_limits

    b = p.rhs().detach().cpu().double().numpy()
    t0 = time.perf_counter()
    with threadpool_limits(1, user_api="blas"):
        for i in range(p.batch_size):
            cg(p.hessian_scipy(i), b[i], rtol=1e-6, maxiter=20 * p.num_nodes)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/graph_lip.py", description=__doc__)
    parser.add_argument("--models", default=MODELS, help="folder of graph_{scalar,window}.pt")
    parser.add_argument("--out", type=output_dir_arg, default="benchmarks/results")
    parser.add_argument("--big", type=positive_int_arg, default=None)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=positive_int_arg, default=1)
    args = parse_bench_args(parser, argv, "graph_lip")
    torch.set_num_threads(args.threads)
    big = args.big or (3000 if args.quick else 100_000)
    t0 = time.perf_counter()
    models = load_models(Path(args.models), MODES)[0]
    rows = []
    for pname, p in table_problems(big, 4 if args.quick else 16):
        p.solve_exact()
        seconds = {}
        p.lipschitz()  # the graph's own certificates, cached once per graph
        for method in ("auto", "inertia"):
            q = _fresh(p)  # the per-problem cost, as for a new mask on a known graph
            t1 = time.perf_counter()
            lip = q.lipschitz(method).detach().cpu().double().numpy()
            seconds[method] = (time.perf_counter() - t1, lip)
        lip_c, lip_i = seconds["auto"][1], seconds["inertia"][1]
        lo_c = p.lambda_min_bound().detach().cpu().double().numpy()
        ex_lo, ex_hi = extremes(p)
        t_cg = _cg_seconds(p)
        bounds = {
            "certified": (lip_c, lo_c),
            "nov26": (1.01 * ex_hi, 0.95 * ex_lo),
            "nov26 Lip + certified lo": (1.01 * ex_hi, lo_c),
            "inertia": (lip_i, lo_c),
        }
        for vname in VARIANTS:
            lip, lo = bounds[vname]
            row: dict[str, Any] = {
                "problem": pname,
                "bounds": vname,
                "Lip / lambda_max (per signal)": [
                    round(float(v), 4) for v in lip[:, 0] / ex_hi[:, 0]
                ],
                "lo / lambda_min (mean)": float((lo[:, 0] / ex_lo[:, 0]).mean()),
            }
            method = {"certified": "auto", "inertia": "inertia"}.get(vname)
            if method is not None:
                row["lipschitz() / cg (all signals)"] = seconds[method][0] / t_cg
            for mode in MODES:  # (the scalar mode reads Lip only)
                row[mode] = _run(models[mode], p, lip, lo)
            rows.append(row)
            print(row, flush=True)
    table = markdown_table(rows)
    data = {"models": args.models, "big": big, "rows": rows, "table": table}
    data.update(threads=torch.get_num_threads(), seconds=time.perf_counter() - t0)
    md = (
        "# graph: the table's scalar and window columns under today's and November 26's "
        "bounds (`python3 benchmarks/graph_lip.py`)\n\n" + table + "\n"
    )
    write_report("graph_lip", data, args.out, quick=args.quick, markdown=md)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
