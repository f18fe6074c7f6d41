"""Batched sparse products on the CPU: one scipy call on the whole batch against blocks of rows.

``SparseOperator`` multiplies a batch ``x: (batch, n)`` on the CPU through scipy's
multi-vector CSR kernel (:func:`unrollsci.operators._matrix._rows_times`). This benchmark
times, in one run and interleaved, the product of a batch with one call on the whole batch
(the earlier path) and with the blocks of rows the operator now uses, on a 10^5-node sensor
graph's Hessian and a 2D Poisson matrix of 316^2 unknowns, for batch sizes 1 to 256, and
checks the results are identical. Medians of ``--repeats``.

Run: ``python benchmarks/spmm.py`` (``--quick``: small matrices). Results:
``benchmarks/results/spmm.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import numpy as np
import torch

from ._common import (
    markdown_table,
    output_dir_arg,
    parse_bench_args,
    positive_int_arg,
    write_results,
    write_text,
)


def _matrices(quick: bool) -> list[tuple[str, Any]]:
    from ..graph import inpainting_problem, sensor_graph
    from ..precond import diffusion2d

    n = 5000 if quick else 100_000
    adj = sensor_graph(n, seed=888)[0]
    h = inpainting_problem(adj, 1, observed=0.3, noise=0.1, seed=1004).hessian_scipy(0)
    side = 40 if quick else 316
    return [(f"sensor Hessian {n}", h), (f"Poisson {side}^2", diffusion2d(side, seed=0))]


def _seconds(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (see the module docstring). Returns 0."""
    from ..operators import _matrix

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="seconds-long smoke run")
    p.add_argument("--batches", nargs="+", type=positive_int_arg, default=[1, 4, 8, 16, 64, 256])
    p.add_argument("--repeats", type=positive_int_arg, default=9)
    p.add_argument("--out", type=output_dir_arg, default="benchmarks/results")
    args = parse_bench_args(p, argv, "spmm")
    if args.quick:
        args.batches, args.repeats = [1, 16, 64], 2
    rows = []
    rng = np.random.default_rng(0)
    for name, a in _matrices(args.quick):
        a = a.tocsr().astype(np.float64)
        for b in args.batches:
            x = rng.standard_normal((b, a.shape[1]))
            one = np.ascontiguousarray((a @ x.T).T)
            blocked = _matrix._rows_times(a, x)
            one_t, blk_t = [], []
            for _ in range(args.repeats):  # interleaved (the calls above warmed both up)
                one_t.append(_seconds(lambda a=a, x=x: np.ascontiguousarray((a @ x.T).T)))
                blk_t.append(_seconds(lambda a=a, x=x: _matrix._rows_times(a, x)))
            t_one, t_blk = statistics.median(one_t), statistics.median(blk_t)
            rows.append(
                {
                    "matrix": name,
                    "nnz": int(a.nnz),
                    "batch": b,
                    "one call [ms]": 1e3 * t_one,
                    "blocked [ms]": 1e3 * t_blk,
                    "speed-up": t_one / t_blk,
                    "identical": bool(np.array_equal(one, blocked)),
                }
            )
            print(rows[-1], flush=True)
    table = markdown_table(rows)
    config = {k: v for k, v in vars(args).items() if k != "out"}
    config["torch_threads"] = torch.get_num_threads()
    path = write_results("spmm", {"config": config, "rows": rows}, args.out, quick=args.quick)
    write_text(path.with_name(f"{path.stem}.md"), f"# Batched CSR products (scipy)\n\n{table}\n")
    print(table)
    print(f"wrote {path}")
    return 0
