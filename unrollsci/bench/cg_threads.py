"""CG with a PyAMG cycle at torch's default thread count: the library's loop against scipy's.

The library's CG (:func:`unrollsci.solvers.cg`) runs its vector work in torch; a PyAMG
preconditioner (:func:`unrollsci.precond.amg`, and what a learned AMG model builds) runs a
single-threaded numpy cycle. After each parallel torch operation, torch's idle worker
threads spin for a while and compete with that cycle. Since the loop runs torch
single-threaded around such a preconditioner (``serial_host``), this benchmark measures the
solve (setup excluded: the same hierarchy for every row) with the loop as it is now
(``serial``) and as it was (``parallel``: the attribute switched off), against what a PyAMG
user runs: ``scipy.sparse.linalg.cg`` with ``ml.aspreconditioner()``. Same machine, same
run, interleaved repeats, medians; torch at ``--threads`` threads (default: every core, as
torch starts).

The same spinning hurts the other way round, when scipy's ``cg`` drives a preconditioner of
this package (``M=jacobi(A)``, ``M=ic0(A)``): each call from numpy now runs torch
single-threaded for a small array (:func:`unrollsci.operators._scipy.apply_numpy`); the
second table times that as it is now, as it was, and (Jacobi) against a numpy diagonal
scaling.

Run: ``python benchmarks/cg_threads.py`` (``--quick``: a seconds-long smoke run). Results:
``benchmarks/results/cg_threads.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch

from .._argtypes import float_arg
from ._common import (
    markdown_table,
    output_dir_arg,
    parse_bench_args,
    positive_int_arg,
    write_results,
    write_text,
)

FAMILIES = ("diffusion", "anisotropic", "graph")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="seconds-long smoke run")
    p.add_argument("--n", type=positive_int_arg, default=256, help="grid side")
    p.add_argument("--families", nargs="+", choices=FAMILIES, default=list(FAMILIES))
    p.add_argument("--threads", type=positive_int_arg, default=os.cpu_count() or 1)
    p.add_argument("--repeats", type=positive_int_arg, default=5)
    p.add_argument("--rtol", type=float_arg(positive=True), default=1e-8)
    p.add_argument("--out", type=output_dir_arg, default="benchmarks/results")
    p.add_argument("--name", default="cg_threads")
    return p


def _solvers(a: Any, b: np.ndarray, rtol: float) -> dict[str, Any]:
    import pyamg
    import scipy.sparse.linalg as sla

    from ..precond import AMGPreconditioner
    from ..solvers import cg

    out: dict[str, Any] = {}
    bt = torch.from_numpy(b)
    builders = (("sa", pyamg.smoothed_aggregation_solver), ("rs", pyamg.ruge_stuben_solver))
    for kind, build in builders:
        state = np.random.get_state()
        try:
            np.random.seed(0)
            ml = build(a)
        finally:
            np.random.set_state(state)
        m = AMGPreconditioner(ml, a.shape[0])
        mp = ml.aspreconditioner(cycle="V")

        def ours(m: Any = m, serial: bool = True) -> int:
            m.serial_host = serial  # instance attribute: the class default stays True
            try:
                return int(cg(a, bt, M=m, tol=rtol, max_iter=5000).iterations)
            finally:
                del m.serial_host

        def scipy_cg(mp: Any = mp) -> int:
            count = [0]

            def cb(_: Any) -> None:
                count[0] += 1

            sla.cg(a, b, M=mp, rtol=rtol, maxiter=5000, callback=cb)
            return count[0]

        out[f"pyamg-{kind}"] = {
            "unrollsci cg, serial loop (now)": ours,
            "unrollsci cg, parallel loop (before)": lambda ours=ours: ours(serial=False),
            "scipy cg": scipy_cg,
        }
    return out


def _interop(a: Any, b: np.ndarray, rtol: float) -> dict[str, Any]:
    """scipy's ``cg`` driving a preconditioner of this package (``M=jacobi(A)``,
    ``M=ic0(A)``): the numpy-to-torch call as it is now (torch single-threaded for a small
    array) and as it was; for Jacobi also a numpy diagonal scaling, what a scipy user writes."""
    import scipy.sparse.linalg as sla

    from ..operators import _scipy
    from ..precond import ic0, jacobi

    def run(m: Any) -> int:
        count = [0]

        def cb(_: Any) -> None:
            count[0] += 1

        sla.cg(a, b, M=m, rtol=rtol, maxiter=20_000, callback=cb)
        return count[0]

    def before(m: Any) -> int:
        keep = _scipy._serial_on_cpu
        _scipy._serial_on_cpu = lambda *args: nullcontext()  # type: ignore[assignment]
        try:
            return run(m)
        finally:
            _scipy._serial_on_cpu = keep  # type: ignore[assignment]

    out: dict[str, Any] = {}
    for name, m in (("jacobi", jacobi(a)), ("ic0", ic0(a))):
        ways = {
            "scipy cg, M = this package's (now)": lambda m=m: run(m),
            "scipy cg, M = this package's (before)": lambda m=m: before(m),
        }
        if name == "jacobi":
            inv = 1.0 / a.diagonal()
            mj = sla.LinearOperator(
                a.shape, matvec=lambda r, inv=inv: inv * r.ravel(), dtype=np.float64
            )
            ways["scipy cg, M = numpy diagonal scaling"] = lambda mj=mj: run(mj)
        out[name] = ways
    return out


def _timed(ways: dict[str, Any], repeats: int) -> tuple[dict[str, float], dict[str, int]]:
    """Median seconds and the iterations of each way, the ways interleaved."""
    times: dict[str, list[float]] = {w: [] for w in ways}
    iters: dict[str, int] = {}
    for _ in range(repeats):
        for w, fn in ways.items():
            t0 = time.perf_counter()
            iters[w] = fn()
            times[w].append(time.perf_counter() - t0)
    return {w: statistics.median(t) for w, t in times.items()}, iters


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (see the module docstring). Returns 0."""
    args = parse_bench_args(build_parser(), argv, lambda a: a.name)
    if args.quick:
        args.n, args.repeats, args.families = 32, 1, ["diffusion"]
    from .amg import _family

    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    rows: list[dict[str, Any]] = []
    interop: list[dict[str, Any]] = []
    try:
        for family in args.families:
            a = _family(family)(args.n, seed=10_000 + 100 * args.n)
            b = np.random.default_rng(args.n).standard_normal(a.shape[0])
            base = {"family": family, "n": a.shape[0]}
            for pre, ways in _solvers(a, b, args.rtol).items():
                med, iters = _timed(ways, args.repeats)
                for w in ways:
                    rows.append(
                        {**base, "preconditioner": pre, "solver": w, "iters": iters[w]}
                        | {"solve_s": med[w], "vs_scipy_cg": med[w] / med["scipy cg"]}
                    )
                    print(rows[-1], flush=True)
            for pre, ways in _interop(a, b, args.rtol).items():
                med, iters = _timed(ways, args.repeats)
                now = med["scipy cg, M = this package's (now)"]
                for w in ways:
                    interop.append(
                        {**base, "preconditioner": pre, "solver": w, "iters": iters[w]}
                        | {"solve_s": med[w], "vs_now": med[w] / now}
                    )
                    print(interop[-1], flush=True)
    finally:
        torch.set_num_threads(threads)
    cols = ["family", "n", "preconditioner", "solver", "iters", "solve_s", "vs_scipy_cg"]
    table = markdown_table(rows, cols)
    table2 = markdown_table(interop, [*cols[:-1], "vs_now"])
    config = {k: v for k, v in vars(args).items() if k != "out"}
    path = write_results(
        args.name, {"config": config, "rows": rows, "interop": interop}, args.out, quick=args.quick
    )
    stem = path.stem
    write_text(
        path.with_name(f"{stem}.md"),
        f"# CG with a PyAMG cycle at {args.threads} torch threads\n\n{table}\n\n"
        f"## scipy's cg with a preconditioner of this package\n\n{table2}\n",
    )
    print(table)
    print(table2)
    print(f"wrote {path}")
    return 0
