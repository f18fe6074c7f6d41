"""Benchmark: learned preconditioners vs none / Jacobi / IC(0) / MIC(0) / PyAMG / Chebyshev.

``unrollsci bench precond --family poisson --n 64 128 256`` trains each learned
preconditioner on small systems of the family (``--train-n``), then solves held-out
systems (seeds never used in training) of every size in ``--n`` with PCG to relative
residual ``--rtol``, timing setup and solve separately for every method in the same
run. Writes ``<out>/precond.json`` and ``<out>/precond.png`` (residual vs iteration);
``--quick`` writes ``precond_quick.json`` and ``precond_quick.png``.

``unrollsci bench precond --matrices 'run/step_*.npz'`` does the same for your own
family of matrices (files in name order: the last ``--test-systems`` are held out).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._argtypes import positive_int_arg
from ._common import (
    figure_path,
    markdown_table,
    new_figure,
    output_dir_arg,
    parse_bench_args,
    save_figure,
    tab20,
    write_results,
)
from ._precond_setup import (  # noqa: F401  (re-exported: benchmarks/precond_*.py use them)
    AUTO_ORDERINGS,
    CHEB_RATIOS,
    TEST_SEED0,
    USER,
    VAL_SEED0,
    _methods,
    _ordering,
    _setup,
    _systems,
    _train,
    _tune_chebyshev,
    time_methods,
)

_SUMMARIZED = (
    "learned-factor",
    "learned-factor-mic",
    "learned-factor-mic-ord",
    "learned-factor-ic0",
    "learned-poly",
)


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Learned factors and the learned polynomial vs IC(0) per family and size, from the
    measured rows (``iters_vs_mic0`` / ``iters_vs_chebyshev``: against their classical
    starting points; for ``learned-factor-mic-ord`` against MIC(0) in the ordering that
    the same selection picks, ``mic0-ord``).

    ``breakeven_rhs``: number of right-hand sides solved with one setup from which the
    learned factor's total time (setup + k solves) drops below IC(0)'s (1 when it wins
    already for one solve, ``inf`` when its solve is not faster).
    """
    out = []
    for r in rows:
        if r["method"] not in _SUMMARIZED:
            continue
        same = [q for q in rows if q["family"] == r["family"] and q["n"] == r["n"]]
        ic = next(q for q in same if q["method"] == "ic0")
        mic_name = "mic0-ord" if r["method"].endswith("-ord") else "mic0"
        mic = next((q for q in same if q["method"] == mic_name), None)
        cheb = next((q for q in same if q["method"] == "chebyshev"), None)
        amg_row = next((q for q in same if q["method"] == "amg"), None)
        d_setup = r["setup_s"] - ic["setup_s"]
        d_solve = ic["solve_s"] - r["solve_s"]
        if d_setup <= 0 and d_solve >= 0:
            k = 1.0
        elif d_solve <= 0:
            k = float("inf")
        else:
            k = float(max(1, int(np.ceil(d_setup / d_solve))))
        out.append(
            {
                "family": r["family"],
                "n": r["n"],
                "method": r["method"],
                "iter_reduction_vs_ic0": 1 - r["vs_ic0_iters"],
                "iters_vs_mic0": r["iters"] / mic["iters"] if mic else None,
                "iters_vs_chebyshev": r["iters"] / cheb["iters"] if cheb else None,
                "solve_time_vs_ic0": r["solve_s"] / ic["solve_s"],
                "total_time_vs_ic0": r["vs_ic0_time"],
                "breakeven_rhs": k,
                "goal_met": bool(r["vs_ic0_iters"] <= 0.75 and r["vs_ic0_time"] < 1.0),
                "amg_iters": amg_row["iters"] if amg_row else None,
                "amg_faster_total": bool(amg_row and amg_row["total_s"] < r["total_s"]),
            }
        )
    return out


def reference_check(seed: int = 0, rtol: float = 1e-8) -> dict[str, int]:
    """PCG iterations on one 100x100 ``diffusion2d`` system (sigma 1), for comparison with
    the issue's reference (none 270, Jacobi 130, IC(0) 44, PyAMG SA 9)."""
    from ..precond import amg, diffusion2d, ic0, jacobi
    from ..solvers import cg

    a = diffusion2d(100, 1.0, seed=seed)
    b = torch.from_numpy(np.random.default_rng(seed).standard_normal(a.shape[0]))
    out = {}
    for name, make in [
        ("none", lambda: None),
        ("jacobi", lambda: jacobi(a)),
        ("ic0", lambda: ic0(a)),
        ("amg", lambda: amg(a)),
    ]:
        try:
            m = make()
        except ImportError:  # pragma: no cover - pyamg missing
            continue
        out[name] = cg(a, b, M=m, tol=rtol, max_iter=10_000, check=False).iterations
    return out


def _plot(histories: dict, path: Path) -> None:
    meths = list(dict.fromkeys(k[2] for k in histories))
    colors = {m: tab20(i) for i, m in enumerate(meths)}
    fams = list(dict.fromkeys(k[0] for k in histories))
    labels = {f: list(dict.fromkeys(k[1] for k in histories if k[0] == f)) for f in fams}
    ncol = max(len(v) for v in labels.values())
    fig, axes = new_figure(len(fams), ncol, figsize=(4.2 * ncol, 3.4 * len(fams)), squeeze=False)
    for i, f in enumerate(fams):
        for j in range(len(labels[f]), ncol):
            axes[i][j].set_visible(False)
        for j, n in enumerate(labels[f]):
            ax = axes[i][j]
            for (ff, nn, meth), res in histories.items():
                if ff == f and nn == n:
                    ax.semilogy(
                        np.arange(1, len(res) + 1),
                        res,
                        label=meth,
                        color=colors[meth],
                        lw=2 if meth.startswith("learned") else 1,
                        ls="-" if meth.startswith("learned") else "--",
                    )
            ax.set_title(f"{f}, {n}")
            ax.set_xlabel("PCG iteration")
            ax.set_ylabel("relative residual")
            ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's command line (also the defaults that other precond scripts reuse)."""
    from ..precond import FAMILIES

    p = argparse.ArgumentParser(prog="unrollsci bench precond", description=__doc__)
    p.add_argument(
        "--family",
        nargs="+",
        default=None,
        choices=sorted(FAMILIES),
        help="generated families (default: all three, or none when --matrices is given)",
    )
    p.add_argument(
        "--matrices",
        nargs="+",
        default=None,
        metavar="PATH",
        help="your own family: .npz (scipy.sparse.save_npz) or .mtx files, globs or "
        "directories; sorted by name, the last --test-systems are held out, the "
        "--val-systems before them validate, the rest train (family 'user')",
    )
    p.add_argument(
        "--n",
        nargs="+",
        type=positive_int_arg,
        default=[64, 128, 256],
        help="grid sizes of the held-out test systems (n x n unknowns)",
    )
    p.add_argument("--train-n", nargs="+", type=positive_int_arg, default=[32])
    p.add_argument(
        "--val-n",
        nargs="+",
        type=positive_int_arg,
        default=None,
        help="grid sizes of the validation systems (default: the smallest --n; early "
        "stopping, the choice among restarts and keeping the base then reflect grids "
        "larger than the training ones)",
    )
    # Plain numeric options: (flag, type, default, help).
    numeric = [
        ("--train-systems", int, 16, "training matrices per size in --train-n"),
        ("--val-systems", int, 4, "validation systems (early stopping, restarts)"),
        ("--patience", int, 5, "epochs without validation improvement before stopping"),
        ("--restarts", int, 3, "seeded initial weights per learned model (best kept)"),
        ("--test-systems", int, 3, "held-out systems per family and size"),
        ("--steps", int, 10, "unrolled PCG steps in the loss"),
        (
            "--ord-steps",
            int,
            4,
            "unrolled PCG steps for the reordered MIC-based factor (MIC(0) in the selected "
            "ordering reaches 1e-8 in 5-13 steps on the anisotropic family, so 10 would "
            "train at round-off)",
        ),
        ("--epochs", int, 15, None),
        ("--lr", float, 2e-3, None),
        ("--n-rhs", int, 4, "right-hand sides per training matrix"),
        ("--hidden", int, 8, "GNN width"),
        ("--poly-degree", int, 8, "degree of the Chebyshev baseline and of kind 'poly'"),
        ("--poly-layers", int, 0, "message-passing layers of the polynomial's scaling GNN"),
        ("--layers", int, 1, "message-passing layers of the GNNs"),
        (
            "--mic-layers",
            int,
            0,
            "message-passing layers of the MIC-based factor (0: a per-entry MLP on the "
            "matrix entries and MIC's values; as good as 1 layer there, at half the GNN cost)",
        ),
        ("--block-size", int, 32, None),
        ("--rtol", float, 1e-8, "relative residual at which PCG stops"),
        ("--repeats", int, 5, "timing repeats, interleaved over the methods (best is kept)"),
        ("--threads", int, 1, None),
        ("--seed", int, 0, "seed of the training right-hand sides, data order and initial weights"),
        (
            "--adaptive-tol",
            float,
            None,
            "per-system unroll length: steps the base needs to reach this energy error",
        ),
    ]
    for flag, typ, default, help_ in numeric:
        p.add_argument(flag, type=typ, default=default, help=help_)
    p.add_argument(
        "--kinds",
        nargs="*",
        default=["factor", "inverse", "block", "poly"],
        choices=["factor", "inverse", "block", "poly"],
    )
    for flag, default, help_ in [
        ("--frobenius", True, "also train the factor with the sketched Frobenius loss"),
        ("--mic-base", True, "also train the factor on top of modified IC (base='mic')"),
        ("--ic0-base", False, "also train the factor on top of IC(0) (base='ic0')"),
        (
            "--poly-scaling",
            True,
            "learn a per-node correction of the polynomial's Jacobi scaling (a GNN run at "
            "every setup); off: only the polynomial is learned, shared by the family",
        ),
        (
            "--chebyshev",
            True,
            "Chebyshev polynomial baseline (--poly-degree), interval chosen on the validation "
            "systems",
        ),
    ]:
        p.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_)
    p.add_argument(
        "--orderings",
        default="auto",
        choices=["auto", "none", "grid", "rcm"],
        help="candidate orderings of the ic0-ord / mic0-ord / learned-factor-mic-ord rows "
        "(the one whose incomplete factor drops the least positive fill is used; auto: "
        "'grid' on the grid families, no such rows on graphs and user matrices)",
    )
    p.add_argument("--no-amg", action="store_true")
    p.add_argument(
        "--quick",
        action="store_true",
        help="tiny configuration (a smoke test); writes <name>_quick.json and <name>_quick.png",
    )
    p.add_argument("--out", type=output_dir_arg, default="benchmarks/results")
    p.add_argument("--name", default="precond", help="results file name (<out>/<name>.json)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; see the module docstring. Returns 0 on success."""

    args = parse_bench_args(build_parser(), argv, lambda a: a.name)
    if args.quick:
        args.n, args.train_n, args.train_systems, args.test_systems = [24, 40], [16], 4, 2
        args.epochs, args.repeats, args.val_systems = 3, 1, 1
    args.val_n = args.val_n or [min(args.n)]
    torch.set_num_threads(args.threads)
    # numpy/scipy BLAS threads too (as bench amg): oversubscribed, they slow the scipy and
    # PyAMG baselines' set-up and vector work many times on a shared machine
    from threadpoolctl import threadpool_limits

    with threadpool_limits(args.threads):
        return _run(args)


def _run(args: Any) -> int:
    if not args.no_amg:
        try:
            import pyamg  # noqa: F401
        except ImportError:
            print("pyamg not installed: skipping the AMG baseline")
            args.no_amg = True
    user, user_files = None, None
    if args.matrices:
        from ..precond import load_matrices

        user, user_files = load_matrices(args.matrices)
    families = args.family or ([] if user else ["poisson", "anisotropic", "graph"])
    if user:
        families = [*families, USER]
    rows: list[dict[str, Any]] = []
    training: dict[str, Any] = {}
    histories: dict[tuple[str, str, str], list[float]] = {}
    for family in families:
        train, val, groups = _systems(family, args, user)
        print(f"[{family}] training on {len(train)} systems ...", flush=True)
        cheb, scores = (args.poly_degree, 0.01), {}
        if args.chebyshev or "poly" in args.kinds:  # the baseline, and the polynomial's start
            cheb, scores = _tune_chebyshev(val, args)
            print(f"  chebyshev on {family}: degree, ratio = {cheb}", flush=True)
        ordering = _ordering(family, args)
        methods = _methods(args, ordering)
        models, training[family] = _train(family, train, val, args.kinds, args, cheb, ordering)
        models["chebyshev"], models["ordering"] = cheb, ordering
        training[family]["chebyshev"] = {
            "degree": cheb[0],
            "ratio": cheb[1],
            "validation_iterations": scores,
        }
        for label, seen, systems in groups:
            per: dict[str, dict[str, list[float]]] = {
                m: {"it": [], "setup": [], "solve": [], "total": [], "nnz": [], "conv": []}
                for m in methods
            }
            for t, (a, seed) in enumerate(systems):
                b = torch.from_numpy(np.random.default_rng(seed).standard_normal(a.shape[0]))
                times, first = time_methods(a, b, methods, models, args.repeats, args.rtol)
                for meth in methods:
                    sol, nnz = first[meth]
                    d = per[meth]
                    d["it"].append(sol.iterations)
                    d["nnz"].append(nnz)
                    d["conv"].append(sol.converged)
                    setup, solve = times[meth]
                    d["setup"].append(min(setup))
                    d["solve"].append(min(solve))
                    # the best real total: setup and solve of the same repeat
                    d["total"].append(min(s + v for s, v in zip(setup, solve, strict=True)))
                    if t == 0:
                        histories[(family, label, meth)] = list(sol.residuals)
            ref_it = float(np.mean(per["ic0"]["it"]))
            ref_t = float(np.mean(per["ic0"]["total"]))
            for meth in methods:
                d = per[meth]
                total = float(np.mean(d["total"]))
                rows.append(
                    {
                        "family": family,
                        "n": label,
                        "method": meth,
                        "nnz": int(np.mean(d["nnz"])),
                        "iters": float(np.mean(d["it"])),
                        "iters_min_max": f"{min(d['it'])}-{max(d['it'])}",
                        "vs_ic0_iters": float(np.mean(d["it"])) / ref_it,
                        "setup_s": float(np.mean(d["setup"])),
                        "solve_s": float(np.mean(d["solve"])),
                        "total_s": total,
                        "vs_ic0_time": total / ref_t,
                        "converged": all(d["conv"]),
                        "seen_in_training": seen,
                    }
                )
            print(
                markdown_table([r for r in rows if r["family"] == family and r["n"] == label]),
                flush=True,
            )
    cols = [
        "family",
        "n",
        "method",
        "nnz",
        "iters",
        "iters_min_max",
        "vs_ic0_iters",
        "setup_s",
        "solve_s",
        "total_s",
        "vs_ic0_time",
        "converged",
    ]
    print("\n" + markdown_table(rows, cols))
    summary = summarize(rows)
    print("\nlearned factors (IC(0)'s nonzeros) and learned polynomial (n) vs IC(0):")
    print(markdown_table(summary))
    out = Path(args.out)
    png = figure_path(out, f"{args.name}.png", args.quick)
    _plot(histories, png)
    path = write_results(
        args.name,
        {
            "config": {k: v for k, v in vars(args).items()},
            "test_seeds": f"{TEST_SEED0} + 100 n + t, t < test_systems (training uses seeds "
            f"0..{args.train_systems - 1}); right-hand sides of the user family: seeds "
            f"{TEST_SEED0} + t",
            "training": training,
            "user_matrices": user_files,
            "rows": rows,
            "summary_learned_factor_vs_ic0": summary,
            "reference_100x100_diffusion": (
                reference_check(rtol=args.rtol) if "poisson" in families else None
            ),
            "residual_histories": {f"{f}/{n}/{m}": h for (f, n, m), h in histories.items()},
            "plot": str(png),
        },
        out,
        quick=args.quick,
    )
    print(f"\nwrote {path} and {png}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
