"""Benchmark: lasso solvers to scikit-learn's solution, and CG against scipy on 2D Poisson.

Run ``python benchmarks/solvers.py`` or ``unrollsci bench solvers``; writes
``benchmarks/results/solvers.json`` and prints markdown tables.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch

from ..operators import MatrixOperator, SparseOperator
from ..solvers import admm, amp, cg, fista, ista, lasso_objective
from ..solvers._problems import gaussian_lasso, poisson2d
from ._common import (
    Timer,
    device_arg,
    markdown_table,
    output_dir_arg,
    parse_bench_args,
    write_results,
)


def _lasso_rows(seeds: list[int], lams: list[float], device: torch.device) -> list[dict]:
    from sklearn.linear_model import Lasso

    rows = []
    for seed in seeds:
        a, _, y = gaussian_lasso(100, 200, 10, seed=seed)
        for lam in lams:
            sk = Lasso(alpha=lam / 100, fit_intercept=False, tol=1e-14, max_iter=1_000_000)
            t0 = time.perf_counter()
            sk.fit(a.numpy(), y[0].numpy())
            t_sk = time.perf_counter() - t0
            op = MatrixOperator(a).to(device)
            yd = y.to(device)
            ref = float(lasso_objective(op, torch.tensor(sk.coef_, device=device)[None], yd, lam))
            for name, solver in [("ista", ista), ("fista", fista), ("admm", admm), ("amp", amp)]:
                with Timer(device) as t:
                    try:
                        sol = solver(op, yd, lam, tol=1e-10, throw=True)
                        it, ok = sol.iterations, True
                        gap = (float(lasso_objective(op, sol.x, yd, lam)) - ref) / ref
                    except Exception as exc:  # report failures (AMP outside its regime)
                        it, ok, gap = -1, False, float("nan")
                        err = type(exc).__name__
                rows.append(
                    {
                        "seed": seed,
                        "lam": lam,
                        "solver": name,
                        "iterations": it,
                        "seconds": t.seconds,
                        "converged": ok,
                        "rel_objective_gap": gap,
                        "sklearn_seconds": t_sk,
                        **({} if ok else {"error": err}),
                    }
                )
    return rows


def _cg_rows(n: int, device: torch.device, repeats: int) -> list[dict]:
    """unrollsci's ``cg`` against scipy's on a Poisson system, interleaved (scipy, then
    unrollsci, ``repeats`` times), medians. scipy runs with its BLAS limited to one thread
    (its sparse product is single-threaded; threaded BLAS on its vector work stalls on a
    shared machine); unrollsci with torch's threads, and its timed region includes what a
    scipy user converting to it pays (the operator and the tensor)."""
    import scipy.sparse.linalg as spla
    from threadpoolctl import threadpool_limits

    a = poisson2d(n)
    rng = np.random.default_rng(0)
    b = rng.standard_normal(a.shape[0])
    rtol = 1e-8
    # scipy reference (same relative tolerance, same zero initial guess).
    it_sp = [0]

    def count(_):
        it_sp[0] += 1

    times_sp, times, sol, x_sp, info = [], [], None, None, 0
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    for _ in range(repeats):
        it_sp[0] = 0
        with threadpool_limits(1, user_api="blas"):
            t0 = time.perf_counter()
            x_sp, info = spla.cg(a, b, rtol=rtol, maxiter=100_000, callback=count)
            times_sp.append(time.perf_counter() - t0)
        with Timer(device) as t:
            op = SparseOperator(a).to(device)
            bt = torch.tensor(b, device=device)[None]
            sol = cg(op, bt, tol=rtol, max_iter=100_000, throw=True)
        times.append(t.seconds)
    x = sol.x[0].cpu().numpy()
    err = float(np.linalg.norm(x - x_sp) / np.linalg.norm(x_sp))
    res = float(np.linalg.norm(b - a @ x) / np.linalg.norm(b))
    t_sp, t_us = statistics.median(times_sp), statistics.median(times)
    return [
        {
            "solver": "scipy.sparse.linalg.cg (BLAS 1 thread)",
            "unknowns": a.shape[0],
            "iterations": it_sp[0],
            "seconds": t_sp,
            "time_ratio_vs_scipy": 1.0,
            "rel_residual": float(np.linalg.norm(b - a @ x_sp) / np.linalg.norm(b)),
            "info": int(info),
            "load_avg_before": load,
        },
        {
            "solver": f"unrollsci.cg ({device.type}, {torch.get_num_threads()} torch threads)",
            "unknowns": a.shape[0],
            "iterations": sol.iterations,
            "seconds": t_us,
            "time_ratio_vs_scipy": t_us / t_sp,
            "rel_residual": res,
            "rel_diff_to_scipy": err,
        },
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="unrollsci bench solvers", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="1 seed, Poisson 100x100; writes solvers_quick.json"
    )
    parser.add_argument("--device", type=device_arg, default="cpu")
    parser.add_argument("--out", type=output_dir_arg, default="benchmarks/results")
    args = parse_bench_args(parser, argv, "solvers")
    device = torch.device(args.device)
    seeds = [0] if args.quick else [0, 1, 2]
    lams = [0.02, 0.05, 0.2]
    grid = 100 if args.quick else 316  # 316^2 = 99,856 unknowns (~10^5)
    lasso = _lasso_rows(seeds, lams, device)
    summary = []
    for name in ["ista", "fista", "admm", "amp"]:
        rs = [r for r in lasso if r["solver"] == name]
        ok = [r for r in rs if r["converged"]]
        summary.append(
            {
                "solver": name,
                "converged": f"{len(ok)}/{len(rs)}",
                "median iterations": float(np.median([r["iterations"] for r in ok]))
                if ok
                else float("nan"),
                "median seconds": float(np.median([r["seconds"] for r in ok]))
                if ok
                else float("nan"),
                "max rel. objective gap": max(
                    (r["rel_objective_gap"] for r in ok), default=float("nan")
                ),
            }
        )
    cg_rows = _cg_rows(grid, device, repeats=1 if args.quick else 5)
    path = write_results(
        "solvers",
        {
            "config": {
                "lasso": "A 100x200 iid N(0,1/m), 10-sparse x, noise 0.01, tol 1e-10",
                "seeds": seeds,
                "lams": lams,
                "poisson_grid": grid,
                "cg_rtol": 1e-8,
                "device": str(device),
                "timing": "median over repeats",
            },
            "lasso": lasso,
            "lasso_summary": summary,
            "cg": cg_rows,
        },
        args.out,
        quick=args.quick,
    )
    print("## Lasso solvers to scikit-learn's solution (relative objective gap)\n")
    print(markdown_table(summary))
    print("\n## CG on 2D Poisson vs scipy.sparse.linalg.cg (rtol 1e-8)\n")
    print(
        markdown_table(
            cg_rows,
            ["solver", "unknowns", "iterations", "seconds", "time_ratio_vs_scipy", "rel_residual"],
        )
    )
    print(f"\nwrote {path}")
    return 0
