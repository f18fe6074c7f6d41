"""Is a learned factor faster than IC(0) in total time, beyond timing noise?

The main precond benchmark times every method a few times (best of 5 interleaved repeats).
Where a learned preconditioner's margin over IC(0) is a few per cent (the MIC-based factor
on the 64 x 64 anisotropic systems), this script measures that one comparison closely: it
trains the factor models exactly as ``unrollsci bench precond`` does (same seeds, same
defaults), then times setup + PCG solve (rtol 1e-8, one right-hand side) of IC(0), MIC(0)
and the learned factors (on the grid families also MIC(0) and the MIC-based learned factor
in the selected ordering, ``-ord``) on the same held-out systems, ``--repeats`` times, the
methods in turn within each repeat. Reports the best and the median total time per method
(means over the systems), their ratios to IC(0) as the mean over the systems of the
per-system ratios (``best_vs_ic0``, ``median_vs_ic0``; the ratio of the mean times, which
weights the slowest system most, as ``best_vs_ic0_of_means``), the ratio of the best times
on each system, and in how many repeats (over all systems) the method was faster than the
IC(0) timed in the same repeat.

Writes ``benchmarks/results/precond_timing.json`` (``--quick``: ``precond_timing_quick.json``)
and prints a table.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from unrollsci._argtypes import positive_int_arg
from unrollsci._io import run_command
from unrollsci.bench._common import markdown_table, write_results
from unrollsci.bench.precond import _ordering, _systems, _train, build_parser, time_methods

METHODS = ("ic0", "mic0", "learned-factor-mic", "learned-factor")


def mean_ratio(times: list[float], ref: list[float]) -> float:
    """Mean over the systems of the per-system ratios ``times[i] / ref[i]``."""
    if len(times) != len(ref) or not times:
        raise ValueError(
            f"Expected equally long non-empty per-system lists, got {len(times)} and {len(ref)}."
        )
    return float(np.mean([x / y for x, y in zip(times, ref, strict=True)]))


def main(argv: list[str] | None = None) -> int:
    """Run the timing; see the module docstring. Returns 0 on success."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--family", default="anisotropic")
    p.add_argument("--n", nargs="+", type=positive_int_arg, default=[64])
    p.add_argument("--repeats", type=positive_int_arg, default=30)
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--name", default="precond_timing")
    p.add_argument("--quick", action="store_true", help="tiny configuration (a smoke test)")
    args = p.parse_args(argv)
    if args.repeats < 1:
        raise ValueError(f"Expected --repeats >= 1 (got {args.repeats}).")
    # The main benchmark's defaults for everything else (training and validation systems,
    # seeds, model sizes), so the models are the ones its default run trains.
    bench = build_parser().parse_args([])
    bench.val_n = bench.val_n or [min(bench.n)]
    bench.n, bench.frobenius = args.n, False
    if args.quick:
        args.n = bench.n = [20]
        args.repeats = 2
        bench.train_n, bench.val_n, bench.train_systems, bench.val_systems = [12], [16], 2, 1
        bench.test_systems, bench.epochs, bench.restarts = 2, 2, 1
    torch.set_num_threads(bench.threads)
    train, val, groups = _systems(args.family, bench, None)
    t0 = time.perf_counter()
    ordering = _ordering(args.family, bench)
    models, info = _train(args.family, train, val, ["factor"], bench, ordering=ordering)
    models["ordering"] = ordering
    methods = list(METHODS) + (["mic0-ord", "learned-factor-mic-ord"] if ordering else [])
    print(f"trained {sorted(models)} in {time.perf_counter() - t0:.1f} s", flush=True)
    rows = []
    for label, _, systems in groups:
        best = {m: [] for m in methods}
        median = {m: [] for m in methods}
        wins = {m: 0 for m in methods}
        iters = {m: [] for m in methods}
        for a, seed in systems:
            b = torch.from_numpy(np.random.default_rng(seed).standard_normal(a.shape[0]))
            parts, first = time_methods(a, b, methods, models, args.repeats, bench.rtol)
            times = {m: [x + y for x, y in zip(*parts[m], strict=True)] for m in methods}
            for meth in methods:
                iters[meth].append(first[meth][0].iterations)
                best[meth].append(min(times[meth]))
                median[meth].append(float(np.median(times[meth])))
                wins[meth] += sum(x < y for x, y in zip(times[meth], times["ic0"], strict=True))
        for meth in methods:
            rows.append(
                {
                    "family": args.family,
                    "n": label,
                    "method": meth,
                    "iters": float(np.mean(iters[meth])),
                    "best_total_s": float(np.mean(best[meth])),
                    "median_total_s": float(np.mean(median[meth])),
                    "best_vs_ic0": mean_ratio(best[meth], best["ic0"]),
                    "median_vs_ic0": mean_ratio(median[meth], median["ic0"]),
                    "best_vs_ic0_of_means": float(np.mean(best[meth]) / np.mean(best["ic0"])),
                    "best_vs_ic0_per_system": "/".join(
                        f"{x / y:.2f}" for x, y in zip(best[meth], best["ic0"], strict=True)
                    ),
                    "faster_than_ic0_in": (
                        f"{wins[meth]}/{args.repeats * len(systems)}" if meth != "ic0" else ""
                    ),
                }
            )
    print(markdown_table(rows))
    path = write_results(
        args.name,
        {
            "config": {**vars(args), "threads": bench.threads, "rtol": bench.rtol},
            "training": info,
            "rows": rows,
        },
        args.out,
        quick=args.quick,  # a smoke run never replaces the full results
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_command(main))
