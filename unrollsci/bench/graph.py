"""Benchmark: graph inpainting, learned step controllers vs GD, Nesterov, CG, Jacobi-PCG.

``python benchmarks/graph.py [--quick]`` (or ``unrollsci bench graph``) trains the
four modes (scalar, diagonal, window, window_jacobi) on a family of small random
graphs, then evaluates on held-out problems on graphs never seen in training: the
Minnesota road graph (PyGSP; a 2642-node sensor graph if pygsp is missing),
random sensor graphs of 10^3 and 10^5 nodes (50% observed), and the sensor, road-like and
random geometric graphs of 10^5 nodes at 30% and 80% observed (``windows_certified``: the
share of windows that ran the learned roots). ``--train-observed LO HI`` trains over
observation rates, ``--train-nodes LO HI`` over graph sizes (the transferable controller:
``--train-nodes 1000 10000 --train-small 6 --train-observed 0.3 0.8 --sample 256``: graphs of
1,000-10,000 nodes plus 6 of 300-900); ``--cost`` runs only
the wall-time comparison (:mod:`.graph_cost`). Writes
``benchmarks/results/graph.json``, a markdown table and a convergence plot
``graph_convergence.png`` (``--quick``: ``graph_quick.json``, ``graph_convergence_quick.png``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._argtypes import existing_dir_arg, float_arg, int_arg
from .._io import check_output_folder, check_writable
from ..graph import (
    MODES,
    GraphInverseProblem,
    UnrolledGraphGD,
)
from ..graph._baselines import BASELINES, classical_iterates
from ._common import (
    check_output_file,
    figure_path,
    markdown_table,
    new_figure,
    output_dir_arg,
    parse_bench_args,
    positive_int_arg,
    read_input,
    save_figure,
    write_results,
)
from ._graph_train import TRAIN_KINDS, test_problems, train_models, training_problems
from ._graph_train import load_models as _load_models
from ._graph_train import save_models as _save_models

__all__ = ["main", "train_models", "training_problems", "TRAIN_KINDS"]


def _errors(p: GraphInverseProblem, x: torch.Tensor) -> list[float]:
    return p.relative_error(x).reshape(-1).tolist()


def _evaluate(
    name: str,
    p: GraphInverseProblem,
    models: dict[str, UnrolledGraphGD],
    k: int,
    curves: bool,
) -> tuple[list[dict[str, Any]], dict[str, list[float]]]:
    rows: list[dict[str, Any]] = []
    curve: dict[str, list[float]] = {}
    base = classical_iterates(p, k)
    for meth in BASELINES:
        e = _errors(p, base[meth])
        rows.append(
            {
                "graph": name,
                "method": meth,
                "mean_err": float(np.mean(e)),
                "max_err": float(np.max(e)),
            }
        )
    with torch.no_grad():
        for mode, model in models.items():
            out = model(p)
            e = _errors(p, out.x)
            row = {
                "graph": name,
                "method": f"learned {mode}",
                "mean_err": float(np.mean(e)),
                "max_err": float(np.max(e)),
                "matvecs": out.matvecs,
            }
            if mode.startswith("window"):
                row["windows_certified"] = float(torch.stack(out.certified).double().mean())
            rows.append(row)
            if curves:
                curve[f"learned {mode}"] = [
                    float(p.relative_error(xi).mean()) for xi in out.iterates
                ]
    if curves:
        for meth in BASELINES:
            curve[meth] = [1.0] + [
                float(p.relative_error(classical_iterates(p, j)[meth]).mean())
                for j in range(1, k + 1)
            ]
    return rows, curve


def _steps_to_match(p: GraphInverseProblem, target: float, max_iter: int = 400) -> int:
    """Fixed 1/Lip GD steps needed to reach a mean energy error <= target."""
    lip = p.lipschitz()
    x = torch.zeros_like(p.rhs())
    for j in range(1, max_iter + 1):
        x = x - p.gradient(x) / lip
        if float(p.relative_error(x).mean()) <= target:
            return j
    return -1


def _plot(curves: dict[str, list[float]], title: str, path: Path) -> None:
    fig, ax = new_figure(figsize=(6, 4))
    for name, c in curves.items():
        ax.semilogy(
            range(len(c)),
            c,
            marker="o" if name.startswith("learned") else ".",
            ls="-" if name.startswith("learned") else "--",
            label=name,
        )
    ax.set_xlabel("layer / iteration k")
    ax.set_ylabel("energy-norm relative error to x*")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def _check_files(args: argparse.Namespace) -> None:
    """Before any work: the models of --load-models load; --save-models can be written."""
    if args.load_models:
        modes = tuple(args.modes)
        read_input(args.load_models, lambda p: _load_models(p, modes), "folder", fork_rng=True)
    elif args.save_models:
        check_output_folder(args.save_models, what="--save-models")
        for mode in args.modes:
            path = Path(args.save_models) / f"graph_{mode}.pt"
            check_output_file(path, what="a trained model", option="--save-models")
            check_writable([path], force=args.force)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="unrollsci bench graph", description=__doc__)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small, fast configuration; writes graph_quick.json, graph_convergence_quick.png",
    )
    parser.add_argument("--out", type=output_dir_arg, default="benchmarks/results")
    parser.add_argument("--layers", type=positive_int_arg, default=10)
    parser.add_argument("--window", type=positive_int_arg, default=None, help="default: = layers")
    parser.add_argument("--epochs", type=positive_int_arg, default=None)
    parser.add_argument("--train-graphs", type=positive_int_arg, default=None)
    parser.add_argument(
        "--big", type=positive_int_arg, default=None, help="nodes of the large sensor graph"
    )
    parser.add_argument("--seed", type=int_arg(0), default=0)
    parser.add_argument("--threads", type=positive_int_arg, default=1)
    parser.add_argument(
        "--cost",
        action="store_true",
        help="only the wall-time section (bounds and forward vs scipy CG; graph_cost.json)",
    )
    parser.add_argument("--repeats", type=positive_int_arg, default=3)
    bounds_help = "with --cost: only the certified bounds vs CG (graph_cost_bounds.json)"
    parser.add_argument("--bounds-only", action="store_true", help=bounds_help)
    batch_help = "with --cost: only the batch of 64 signals vs CG (graph_cost_batch.json)"
    parser.add_argument("--batch-only", action="store_true", help=batch_help)
    e2e_help = "one problem end to end: build + bounds + forward vs scipy (graph_e2e.json)"
    parser.add_argument("--end-to-end", action="store_true", help=e2e_help)
    parser.add_argument(
        "--forward",
        action="store_true",
        help="only the 10-layer forward of every mode vs 10 scipy CG iterations "
        "(cheap controller; graph_forward.json)",
    )
    parser.add_argument(
        "--sample",
        type=positive_int_arg,
        default=None,
        help="controller_sample: nodes per graph the controller pools over "
        "(default: none for training; 256 for --forward)",
    )
    parser.add_argument(
        "--train-observed",
        type=float_arg(positive=True, maximum=1),
        nargs=2,
        default=None,
        metavar=("LO", "HI"),
        help="train on observation rates drawn in [LO, HI] per graph (default: 0.5)",
    )
    nodes_help = "training graphs of LO to HI nodes, drawn per graph (default: 300 900)"
    parser.add_argument("--train-nodes", type=positive_int_arg, nargs=2, help=nodes_help)
    log_help = "with --train-nodes: draw the sizes log-uniformly (as many graphs per decade)"
    parser.add_argument("--train-nodes-log", action="store_true", help=log_help)
    small_help = "N more training graphs of 300-900 nodes (own seed) besides --train-graphs"
    parser.add_argument("--train-small", type=int_arg(0), default=0, metavar="N", help=small_help)
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument(
        "--save-models",
        type=output_dir_arg,
        default=None,
        metavar="DIR",
        help="save the trained models to DIR/graph_<mode>.pt (checkpoints; existing ones "
        "only with --force)",
    )
    parser.add_argument(
        "--force", action="store_true", help="replace existing models in --save-models"
    )
    parser.add_argument(
        "--load-models",
        type=existing_dir_arg,
        default=None,
        metavar="DIR",
        help="skip training: load the models saved by --save-models from DIR",
    )
    args = parse_bench_args(parser, argv, "graph", check=_check_files)
    if args.train_small < 0:
        parser.error(f"--train-small: expected N >= 0, got {args.train_small}")
    if args.train_nodes is not None and args.train_nodes[0] >= args.train_nodes[1]:
        parser.error(f"--train-nodes: expected LO < HI, got {args.train_nodes}")
    if (
        args.train_observed is not None
        and not 0 < min(args.train_observed) <= max(args.train_observed) <= 1
    ):
        parser.error(f"--train-observed: expected rates in (0, 1], got {args.train_observed}")
    torch.set_num_threads(args.threads)
    if args.end_to_end:
        from .graph_e2e import run_end_to_end

        return run_end_to_end(args.out, quick=args.quick, big=args.big, repeats=args.repeats)
    if args.forward:
        from .graph_forward import FORWARD_SAMPLE, run_forward

        return run_forward(
            args.out,
            quick=args.quick,
            big=args.big,
            repeats=args.repeats,
            sample=args.sample or FORWARD_SAMPLE,
        )
    if args.cost:
        from .graph_cost import run_cost

        if args.bounds_only and args.batch_only:
            parser.error("--bounds-only and --batch-only exclude each other")

        return run_cost(
            args.out,
            quick=args.quick,
            big=args.big,
            repeats=args.repeats,
            bounds_only=args.bounds_only,
            batch_only=args.batch_only,
        )
    k = args.layers
    window = args.window or k
    epochs = args.epochs or (4 if args.quick else 40)
    n_train = args.train_graphs or (3 if args.quick else 16)
    big = args.big or (5000 if args.quick else 100_000)
    signals = 4 if args.quick else 8
    test_signals = 4 if args.quick else 16
    config = {
        "num_layers": k,
        "window": window,
        "epochs": epochs,
        "train_graphs": n_train,
        "train_signals_per_graph": signals,
        "train_nodes": list(args.train_nodes or (300, 900)),
        "train_nodes_draw": "log-uniform" if args.train_nodes_log else "uniform",
        "train_small_graphs": args.train_small,
        "test_signals": test_signals,
        "big_nodes": big,
        "observed": 0.5,
        "validation": "2 graphs of 300-900 nodes at the training observation rates",
        "train_observed": args.train_observed or 0.5,
        "noise_train": [0.05, 0.2],
        "noise_test": 0.1,
        "lam": 1.0,
        "laplacian": "combinatorial",
        "hidden": 32,
        "lr": 1e-3,
        "seed": args.seed,
        "quick": args.quick,
        "dtype": "float64",
        "threads": args.threads,
        "controller_sample": args.sample,
        "modes": list(args.modes),
    }
    t_all = time.perf_counter()
    obs = tuple(args.train_observed) if args.train_observed else 0.5
    if args.load_models:
        models, train_info = _load_models(Path(args.load_models), tuple(args.modes))
        config["loaded_models"] = str(args.load_models)
    else:
        n_range = tuple(args.train_nodes or (300, 900))
        train = training_problems(
            n_train,
            signals,
            seed=args.seed,
            n_range=n_range,
            observed=obs,
            log_sizes=args.train_nodes_log,
        )
        if args.train_small > 0:  # small graphs too, drawn apart from the others
            train += training_problems(args.train_small, signals, seed=args.seed + 2, observed=obs)
        config["train_graph_nodes"] = [p.num_nodes for p in train]
        # validation: two graphs of the default size at the training observation rates
        val = training_problems(2, signals, seed=args.seed + 1, observed=obs)
        models, train_info = train_models(
            train,
            val,
            num_layers=k,
            window=window,
            epochs=epochs,
            seed=args.seed,
            sample=args.sample,
            modes=tuple(args.modes),
        )
        if args.save_models:
            _save_models(Path(args.save_models), models, train_info, config)
    tests = test_problems(
        big,
        test_signals,
        ("Minnesota (PyGSP, 2642 nodes)", "sensor 2642 (pygsp missing: Minnesota substitute)"),
    )
    mname = tests[0][0]
    rows: list[dict[str, Any]] = []
    curves: dict[str, list[float]] = {}
    gd_match: dict[str, Any] = {}
    for i, (name, p) in enumerate(tests):
        r, c = _evaluate(name, p, models, k, curves=i == 0)
        rows += r
        if i == 0:
            curves = c
            cg_err = next(x["mean_err"] for x in r if x["method"] == "CG")
            gd_match = {
                "graph": name,
                "cg_err_at_K": cg_err,
                "gd_steps_to_match_cg": _steps_to_match(p, cg_err),
            }
            with torch.no_grad():
                for mode, model in models.items():
                    long = model(p, num_layers=200)
                    errs = [float(p.relative_error(x).mean()) for x in long.iterates]
                    hit = next((j for j, e in enumerate(errs) if e <= cg_err), -1)
                    gd_match[f"learned {mode} layers_to_match_cg"] = hit
                    gd_match[f"learned {mode} err_after_200_layers"] = errs[-1]
    from .graph_cost import timing_big

    timing = timing_big(tests[2][1], models, k)
    png = figure_path(args.out, "graph_convergence.png", args.quick)
    _plot(curves, f"{tests[0][0]}: inpainting, 50% observed", png)
    table = markdown_table(
        rows, ["graph", "method", "mean_err", "max_err", "matvecs", "windows_certified"]
    )
    path = write_results(
        "graph",
        {
            "config": config,
            "minnesota": mname,
            "train": train_info,
            "results": rows,
            "convergence_curves": curves,
            "steps_to_match_cg": gd_match,
            "timing_big": timing,
            "table": table,
            "seconds": time.perf_counter() - t_all,
        },
        args.out,
        quick=args.quick,
    )
    print(f"Energy-norm relative error to x* after K={k} (held-out problems and graphs)\n")
    print(table)
    print("\nSteps to match CG's K=10 error on", tests[0][0], gd_match)
    print("\nWall time per solve on", tests[2][0])
    print(markdown_table([{"what": a, "value": b} for a, b in timing.items()]))
    print(f"\nwrote {path} and {png}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
