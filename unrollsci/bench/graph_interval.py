"""Where the window_jacobi accuracy on the committed table's rows comes from (issue 23).

``python3 benchmarks/graph_interval.py`` evaluates saved window_jacobi models on the three
rows of the committed table (Minnesota, sensor 1000, sensor 10^5 at 50% observed; the
problems of ``benchmarks/graph.py``) with the model's Jacobi interval ``[lo, hi]`` replaced
by each of:

* ``certified``: today's :meth:`GraphInverseProblem.jacobi_interval` (up to 5,000 nodes
  ``0.95 lambda_min(S)`` and ``1.01 lambda_max(S)`` proved by an inertia factorization;
  above, the Collatz-Wielandt ``lo`` with its local stage, ``0.95`` times an estimate
  where proved, and the graph bound ``hi``);
* ``certified, refined lo``: ``lo`` from two further inverse-iteration rounds
  (``collatz_lower(refine=2)``, still a proof), ``hi`` certified;
* ``nov26``: the interval of the code that produced the committed table (November 26):
  ``0.95 lambda_min(S)`` and ``1.01 lambda_max(S)`` (shift-invert and Lanczos estimates
  that that code certified by an inertia factorization; computed here with scipy's
  ``eigsh``);
* ``nov26 lo + certified hi`` and ``certified lo + nov26 hi`` (one end at a time);
* ``exact``: ``lambda_min(S)`` and ``lambda_max(S)`` (diagnosis only: no margin).

The interval decides where the learned roots go (they are fractions of it) and is a
controller feature; the certificates are evaluated on the interval given, so the rows
other than ``certified`` are a diagnosis, not a certified solver. It also records the
sparse products of the plain and refined ``lo`` against scipy ``cg``'s iterations to
rtol 1e-6. Writes ``benchmarks/results/graph_interval.{json,md}`` (``--quick``: a
3,000-node sensor graph instead of 10^5 and 4 signals, ``graph_interval_quick.*``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..graph import GraphInverseProblem, UnrolledGraphGD, inpainting_problem
from ..graph._certify import collatz_lower
from ._common import (
    markdown_table,
    output_dir_arg,
    parse_bench_args,
    positive_int_arg,
    write_report,
)
from ._graph_train import load_models, table_problems
from .graph_cost import _graphs, cg_iterations

__all__ = ["VARIANTS", "problems", "intervals", "main"]

VARIANTS = (
    "certified",
    "certified, refined lo",
    "nov26",
    "nov26 lo + certified hi",
    "certified lo + nov26 hi",
    "exact",
)
MODELS = ("benchmarks/checkpoints/graph_transfer", "benchmarks/checkpoints/graph_nov26")
REFINE = 2


def problems(big: int = 100_000, signals: int = 16) -> list[tuple[str, GraphInverseProblem]]:
    """The committed table's rows (:func:`._graph_train.table_problems`: the test problems
    of ``benchmarks/graph.py``)."""
    return table_problems(big, signals)


class _Counted:
    """A sparse matrix that counts its products (columns) with vectors."""

    def __init__(self, h: Any) -> None:
        self.h, self.n = h, 0
        self.indptr, self.shape = h.indptr, h.shape

    def diagonal(self) -> np.ndarray:
        return self.h.diagonal()

    def __matmul__(self, x: np.ndarray) -> np.ndarray:
        self.n += 1 if x.ndim == 1 else x.shape[1]
        return self.h @ x


def intervals(p: GraphInverseProblem) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict]:
    """The intervals of :data:`VARIANTS` for ``p``, each ``(lo, hi)`` of shape
    ``(batch, 1)``, and the cost and tightness record (products, CG iterations,
    ``lambda_min(S)``, ``lambda_max(S)``)."""
    import scipy.sparse as sp
    from scipy.sparse.linalg import eigsh

    lo_c, hi_c = (t.detach().cpu().double().numpy() for t in p.jacobi_interval())
    ex_lo, ex_hi, ref_lo, prod0, prod2, its = [], [], [], [], [], []
    for b in range(p.batch_size):
        h = sp.csr_matrix(p.hessian_scipy(b))
        d = h.diagonal()
        dis = sp.diags(1.0 / np.sqrt(d))
        s = sp.csc_matrix(dis @ h @ dis)
        v0 = np.ones(s.shape[0])
        ex_hi.append(float(eigsh(s, k=1, which="LA", tol=1e-10, v0=v0)[0][0]))
        ex_lo.append(float(eigsh(s, k=1, sigma=0.0, which="LM", tol=1e-10, v0=v0)[0][0]))
        for rounds, store in ((0, prod0), (REFINE, prod2)):
            hc = _Counted(h)
            lo = collatz_lower(hc, d[:, None], stall=0.01, diag=d, refine=rounds)[0]
            store.append(hc.n)
        ref_lo.append(float(lo))
        its.append(cg_iterations(h, p.rhs()[b].detach().cpu().double().numpy(), rtol=1e-6))
    col = lambda v: np.asarray(v, dtype=np.float64)[:, None]  # noqa: E731
    ex_lo_a, ex_hi_a = col(ex_lo), col(ex_hi)
    n26 = (0.95 * ex_lo_a, 1.01 * ex_hi_a)
    out = {
        "certified": (lo_c, hi_c),
        "certified, refined lo": (np.maximum(col(ref_lo), lo_c), hi_c),
        "nov26": n26,
        "nov26 lo + certified hi": (n26[0], hi_c),
        "certified lo + nov26 hi": (lo_c, n26[1]),
        "exact": (ex_lo_a, ex_hi_a),
    }
    info = {
        "lambda_min_S": ex_lo,
        "lambda_max_S": ex_hi,
        "collatz_products": prod0,
        "refined_products": prod2,
        "cg_iterations_1e-6": its,
    }
    return out, info


def _run(model: UnrolledGraphGD, p: GraphInverseProblem, lo: np.ndarray, hi: np.ndarray):
    """K = 10 mean error and learned-window share with the interval replaced."""
    t = lambda a: torch.as_tensor(a, dtype=p.dtype, device=p.device)  # noqa: E731
    p.jacobi_interval = lambda **_kw: (t(lo), t(hi))  # type: ignore[method-assign]
    try:
        with torch.no_grad():
            r = model(p)
    finally:
        del p.jacobi_interval
    return float(p.relative_error(r.x).mean()), float(torch.stack(r.certified).double().mean())


def _paired_times(h: Any, d: np.ndarray, rhs: np.ndarray, repeats: int) -> dict[str, float]:
    """Median seconds of scipy ``cg`` to rtol 1e-6 and of the lower bound without and with
    the refinement rounds, interleaved, BLAS on 1 thread."""
    import statistics

    from scipy.sparse.linalg import cg
    from threadpoolctl import threadpool_limits

    runs = {
        "cg": lambda: cg(h, rhs, rtol=1e-6),
        "lo": lambda: collatz_lower(h, d[:, None], stall=0.01, diag=d),
        "lo refined": lambda: collatz_lower(h, d[:, None], stall=0.01, diag=d, refine=REFINE),
    }
    times: dict[str, list[float]] = {k: [] for k in runs}
    with threadpool_limits(1, user_api="blas"):
        for _ in range(repeats):
            for k, fn in runs.items():
                t = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def run_time(outdir: str | Path, *, quick: bool, big: int, repeats: int) -> int:
    """``--time``: the Jacobi interval's lower bound with and without the refinement
    rounds against one scipy ``cg`` solve to rtol 1e-6 on the cost benchmark's problems
    (sensor, road-like, geometric graphs at 30% and 80% observed), interleaved, BLAS on 1
    thread, medians of ``repeats``; writes ``graph_interval_cost.{json,md}``."""
    import os

    t0 = time.perf_counter()
    rows = []
    for gname, adj in _graphs(big):
        for observed in (0.3, 0.8):
            p = inpainting_problem(adj, 1, observed=observed, noise=0.1, seed=1003)
            h = p.hessian_scipy(0).tocsr()
            d = h.diagonal()
            rhs = p.rhs()[0].detach().cpu().double().numpy()
            row: dict[str, Any] = {"graph": gname, "observed": observed}
            row["load before"] = os.getloadavg()[0]
            row["CG its"] = cg_iterations(h, rhs, rtol=1e-6)
            for rounds in (0, REFINE):
                hc = _Counted(h)
                collatz_lower(hc, d[:, None], stall=0.01, diag=d, refine=rounds)
                row[f"lo products, refine {rounds}"] = hc.n
            med = _paired_times(h, d, rhs, repeats)
            row["cg [s]"] = med["cg"]
            row["lo / cg"] = med["lo"] / med["cg"]
            row[f"lo, refine {REFINE} / cg"] = med["lo refined"] / med["cg"]
            row["load after"] = os.getloadavg()[0]
            rows.append(row)
            print(row, flush=True)
    data = {"rows": rows, "repeats": repeats, "big": big, "seconds": time.perf_counter() - t0}
    md = (
        "# graph interval: cost of the Jacobi interval's lower bound, plain and refined\n\n"
        f"`python3 benchmarks/graph_interval.py --time --repeats {repeats}` (1 thread, "
        "interleaved, medians; the whole `jacobi_interval()` also hashes the graph and "
        "reads the cached upper end)\n\n" + markdown_table(rows) + "\n"
    )
    write_report("graph_interval_cost", data, outdir, quick=quick, markdown=md)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/graph_interval.py", description=__doc__)
    parser.add_argument("--models", nargs="+", default=list(MODELS), help="model folders")
    parser.add_argument("--out", type=output_dir_arg, default="benchmarks/results")
    parser.add_argument("--big", type=positive_int_arg, default=None)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=positive_int_arg, default=1)
    parser.add_argument("--time", action="store_true", help="time the lower bound vs cg")
    parser.add_argument("--repeats", type=positive_int_arg, default=5)
    args = parse_bench_args(parser, argv, "graph_interval")
    torch.set_num_threads(args.threads)
    big = args.big or (3000 if args.quick else 100_000)
    if args.time:
        return run_time(args.out, quick=args.quick, big=big, repeats=args.repeats)
    t0 = time.perf_counter()
    models = {}
    for f in args.models:
        name = Path(f).name
        if name in models:
            parser.error(f"--models: expected folders with distinct names (got {name} twice)")
        models[name] = load_models(Path(f), ("window_jacobi",))[0]["window_jacobi"]
    rows, cost = [], {}
    for pname, p in problems(big, 4 if args.quick else 16):
        p.solve_exact()
        ivs, info = intervals(p)
        cost[pname] = info
        lmin, lmax = np.asarray(info["lambda_min_S"]), np.asarray(info["lambda_max_S"])
        for vname in VARIANTS:
            lo, hi = ivs[vname]
            row: dict[str, Any] = {
                "problem": pname,
                "interval": vname,
                "lo": float(lo.mean()),
                "hi": float(hi.mean()),
                "lo / lambda_min": float((lo[:, 0] / lmin).mean()),
                "hi / lambda_max": float((hi[:, 0] / lmax).mean()),
            }
            for mname, m in models.items():
                err, learned = _run(m, p, lo, hi)
                row[mname] = err
                row[f"{mname} learned"] = learned
            rows.append(row)
            print(row, flush=True)
    crow = [
        {
            "problem": k,
            "CG its (1e-6)": float(np.mean(v["cg_iterations_1e-6"])),
            "lo products": float(np.mean(v["collatz_products"])),
            f"lo products, {REFINE} more rounds": float(np.mean(v["refined_products"])),
        }
        for k, v in cost.items()
    ]
    data = {
        "models": {k: str(f) for k, f in zip(models, args.models, strict=True)},
        "variants": list(VARIANTS),
        "refine_rounds": REFINE,
        "rows": rows,
        "cost": cost,
        "big": big,
        "threads": torch.get_num_threads(),
        "seconds": time.perf_counter() - t0,
    }
    md = (
        "# graph interval: window_jacobi K = 10 error under each Jacobi interval (issue 23)\n\n"
        f"`python3 benchmarks/graph_interval.py` (models: {', '.join(models)}; mean error "
        "over the signals, `learned` = share of windows that ran the learned roots)\n\n"
        + markdown_table(rows)
        + "\n\n## Products of the lower bound (mean per signal)\n\n"
        + markdown_table(crow)
        + "\n"
    )
    write_report("graph_interval", data, args.out, quick=args.quick, markdown=md)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
