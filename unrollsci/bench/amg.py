"""Learned AMG against the classical preconditioners, in total time (setup + solve).

``LearnedPreconditioner("amg")`` (issue 19) is trained through unrolled two-level-cycle PCG
on small systems of the training families, then tested on larger held-out systems of every
family (one not seen in training), against MIC(0), Chebyshev, PyAMG smoothed aggregation
and Ruge-Stuben (default settings, and the best of a few settings chosen per family on a
validation system), and the untrained learned AMG (smoothed aggregation's level with
PyAMG's coarser levels: what the learning adds). Every preconditioner runs in the same
PCG, relative residual ``--rtol``: :func:`unrollsci.solvers.cg` (default) or, with ``--loop
scipy``, ``scipy.sparse.linalg.cg`` with each preconditioner's ``to_scipy()`` (PyAMG's own
``aspreconditioner()`` for every AMG row: the loop a PyAMG user runs); times are medians over
``--repeats`` runs (the machine may be shared), setup and solve measured separately, and
the ratios are taken within this run.

Variants (``--variants``): ``sa``, ``rs``, ``rsd`` (RS on direct interpolation) and ``sa2`` /
``rs2`` (two symmetric Gauss-Seidel sweeps on the learned level, with PyAMG rows of the same
smoothing among the classical ones). ``--load-models benchmarks/checkpoints`` uses the
committed models instead of training (``--save-models DIR`` writes them).

Run: ``python benchmarks/amg.py`` (``--quick`` for a seconds-long smoke run, which writes
``amg_quick.*``). Results: ``benchmarks/results/amg.json`` and ``amg.md`` (``--name``
for another stem, e.g. ``amg512``).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._argtypes import existing_dir_arg, float_arg, int_arg
from .._io import check_output_folder, check_writable
from ._amg_rows import amg_floor, pyamg_build, run, summarise
from ._common import (
    check_output_file,
    keep_caller_rng,
    markdown_table,
    output_dir_arg,
    parse_bench_args,
    positive_int_arg,
    read_input,
    write_results,
    write_text,
)

FAMILIES = ("diffusion", "anisotropic", "graph")
TEST_SEED0 = 10_000
#: Learned variants: (coarsening, symmetric Gauss-Seidel sweeps on the learned level).
VARIANTS = {
    "sa": ("sa", 1),
    "rs": ("rs", 1),
    "sa2": ("sa", 2),
    "rs2": ("rs", 2),
    "rsd": ("rs-direct", 1),
}


def _learned_name(variant: str) -> str:
    return "learned-amg" if variant == "sa" else f"learned-amg-{variant}"


def _family(name: str) -> Callable[..., Any]:
    from ..precond import anisotropic2d, diffusion2d, graph_laplacian

    return {"diffusion": diffusion2d, "anisotropic": anisotropic2d, "graph": graph_laplacian}[name]


def _sa_candidates() -> dict[str, dict[str, Any]]:
    return {
        "default": {},
        "theta0.08": {"strength": ("symmetric", {"theta": 0.08})},
        "energy": {"smooth": ("energy", {"degree": 2})},
        "no-improve": {"improve_candidates": None},
    }


def _rs_candidates() -> dict[str, dict[str, Any]]:
    return {
        "default": {},
        "theta0.5": {"strength": ("classical", {"theta": 0.5})},
        # (symmetric Gauss-Seidel is already the default smoother); direct interpolation:
        # a cheaper set-up, as many iterations on some families
        "direct": {"interpolation": "direct"},
    }


def _measure(build: Callable[[Any], Any], a: Any, b: torch.Tensor, args: Any) -> dict[str, Any]:
    return summarise([run(build, a, b, args.rtol, args.loop) for _ in range(args.repeats)])


def _tune(kind: str, family: str, args: Any) -> tuple[str, dict[str, Any], dict[str, float]]:
    """The PyAMG setting with the least total time on a validation system of the family."""
    a = _family(family)(args.val_n, seed=TEST_SEED0 - 1)
    b = torch.from_numpy(np.random.default_rng(1).standard_normal(a.shape[0]))
    cands = _sa_candidates() if kind == "sa" else _rs_candidates()
    scores = {}
    for name, opts in cands.items():
        scores[name] = _measure(pyamg_build(kind, opts), a, b, args)["total_s"]
    best = min(scores, key=scores.__getitem__)
    return best, cands[best], scores


def _model(args: Any, variant: str, seed: int) -> Any:
    from ..precond import LearnedPreconditioner

    coarsening, sweeps = VARIANTS[variant]
    return LearnedPreconditioner(
        "amg",
        hidden=args.hidden,
        layers=args.layers,
        coarsening=coarsening,
        sweeps=sweeps,
        seed=seed,
    )


@keep_caller_rng
def _train(args: Any, variant: str = "sa") -> tuple[Any, dict[str, Any]]:
    from ..precond import fit_preconditioner

    torch.manual_seed(args.seed)
    mats, val = [], []
    for f in args.train_families:
        for k, n in enumerate(args.train_n):
            mats.append(_family(f)(n, seed=args.seed + k))
        val.append(_family(f)(args.train_n[0], seed=args.seed + 500))
    model = _model(args, variant, args.seed)
    t0 = time.perf_counter()
    hist = fit_preconditioner(
        model,
        mats,
        val_matrices=val,
        steps=args.steps,
        epochs=args.epochs,
        lr=args.lr,
        n_rhs=args.n_rhs,
        seed=args.seed,
    )
    seconds = time.perf_counter() - t0
    info = {
        "coarsening": VARIANTS[variant][0],
        "sweeps": VARIANTS[variant][1],
        "families": list(args.train_families),
        "sizes": [int(n) ** 2 for n in args.train_n],
        "systems": len(mats),
        "epochs": args.epochs,
        "unrolled_steps": args.steps,
        "seconds": seconds,
        "kept_initial": bool(getattr(hist, "kept_initial", False)),
    }
    return model, info


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="unrollsci bench amg", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="seconds-long smoke run")
    p.add_argument("--n", nargs="+", type=positive_int_arg, default=[256], help="test grid sides")
    p.add_argument("--families", nargs="+", choices=FAMILIES, default=list(FAMILIES))
    p.add_argument(
        "--train-families", nargs="+", choices=FAMILIES, default=["diffusion", "anisotropic"]
    )
    p.add_argument("--train-n", nargs="+", type=positive_int_arg, default=[32, 40, 48])
    p.add_argument("--val-n", type=positive_int_arg, default=128, help="tuning system side")
    p.add_argument("--epochs", type=positive_int_arg, default=25)
    p.add_argument(
        "--steps",
        type=positive_int_arg,
        default=3,
        help="unrolled PCG steps (AMG-PCG reaches round-off on the small training systems "
        "after about 6, where the loss stops carrying a signal)",
    )
    p.add_argument("--lr", type=float_arg(positive=True), default=1e-2)
    p.add_argument("--n-rhs", type=positive_int_arg, default=4)
    p.add_argument("--hidden", type=positive_int_arg, default=8)
    p.add_argument(
        "--layers",
        type=int_arg(0),
        default=0,
        help="message-passing layers (0: each weight from an MLP on its entry's features and "
        "the two nodes' features; one layer costs more setup time than it saves iterations)",
    )
    p.add_argument(
        "--variants",
        nargs="+",
        choices=tuple(VARIANTS),
        default=["sa", "rs", "sa2"],
        help="learned AMG variants: smoothed aggregation, Ruge-Stuben, Ruge-Stuben on direct "
        "interpolation (rsd); a trailing 2: two "
        "symmetric Gauss-Seidel sweeps on the learned level (then PyAMG rows with the same "
        "smoothing stand among the classical ones)",
    )
    p.add_argument(
        "--save-models",
        type=output_dir_arg,
        default=None,
        metavar="DIR",
        help="save the trained models to DIR/amg_<variant>.pt (checkpoints; existing ones "
        "only with --force)",
    )
    p.add_argument("--force", action="store_true", help="replace existing models in --save-models")
    p.add_argument(
        "--load-models",
        type=existing_dir_arg,
        default=None,
        metavar="DIR",
        help="skip training: load the models saved by --save-models from DIR",
    )
    p.add_argument("--test-systems", type=positive_int_arg, default=1)
    p.add_argument("--repeats", type=positive_int_arg, default=3)
    p.add_argument("--rtol", type=float_arg(positive=True), default=1e-8)
    p.add_argument(
        "--loop",
        choices=("unrollsci", "scipy"),
        default="unrollsci",
        help="the PCG every method runs in: the library's cg, or scipy's cg with each "
        "preconditioner's to_scipy() (PyAMG's own aspreconditioner() for the AMG rows: what "
        "a PyAMG user runs)",
    )
    p.add_argument("--seed", type=int_arg(0), default=0)
    p.add_argument("--threads", type=positive_int_arg, default=1, help="torch and BLAS threads")
    p.add_argument("--out", type=output_dir_arg, default="benchmarks/results")
    p.add_argument("--name", default="amg")
    return p


def _methods(tuned: dict[str, Any], learned: dict[str, tuple[Any, Any]]) -> dict[str, Callable]:
    from ..precond import chebyshev, mic0

    out: dict[str, Callable] = {
        "mic0": mic0,
        "chebyshev": chebyshev,
        "pyamg-sa": pyamg_build("sa", {}),
        "pyamg-sa-csr": pyamg_build("sa-csr", {}),
        "pyamg-rs": pyamg_build("rs", {}),
    }
    if any(VARIANTS[v][1] == 2 for v in learned):  # the same smoothing, classical
        out["pyamg-sa-csr-sgs2"] = pyamg_build("sa-csr", {}, sweeps=2)
        out["pyamg-rs-sgs2"] = pyamg_build("rs", {}, sweeps=2)
    for kind in ("sa", "rs"):
        name, opts, _ = tuned[kind]
        if name != "default":
            out[f"pyamg-{kind}-tuned"] = pyamg_build(kind, opts)
    for variant, (model, untrained) in learned.items():
        name = _learned_name(variant)
        out[f"{name}-untrained"] = untrained.build
        out[name] = model.build
    return out


def _save_models(folder: str, learned: dict[str, tuple[Any, Any]], info: dict) -> None:
    from ..train import save_checkpoint

    for variant, (model, _) in learned.items():
        path = Path(folder) / f"amg_{variant}.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint(model, path, extra={"train": info[variant]})


def _check_files(args: Any) -> None:
    """Before any work: the models of --load-models load (each of the right variant), and
    --save-models is a folder the models can be written to."""
    for variant in args.variants if args.load_models else ():
        path = Path(args.load_models) / f"amg_{variant}.pt"
        load = lambda p, v=variant: _load_model(str(p.parent), v)  # noqa: E731
        read_input(path, load, "model", fork_rng=True)
    if args.save_models and not args.load_models:
        check_output_folder(args.save_models, what="--save-models")
        for variant in args.variants:
            path = Path(args.save_models) / f"amg_{variant}.pt"
            check_output_file(path, what="a trained model", option="--save-models")
            check_writable([path], force=args.force)


def _load_model(folder: str, variant: str) -> tuple[Any, dict[str, Any]]:
    from ..precond import LearnedPreconditioner
    from ..train import load_checkpoint

    path = Path(folder) / f"amg_{variant}.pt"
    model = load_checkpoint(path, expected=LearnedPreconditioner)
    coarsening, sweeps = VARIANTS[variant]
    if (model.coarsening, model.sweeps) != (coarsening, sweeps):
        raise ValueError(
            f"Expected {path} to hold variant {variant!r} (coarsening {coarsening!r}, sweeps "
            f"{sweeps}); got coarsening {model.coarsening!r}, sweeps {model.sweeps}."
        )
    extra = torch.load(path, weights_only=True).get("extra", {})
    return model, {"loaded_from": str(path), **extra.get("train", {})}


CLASSICAL = (
    "mic0",
    "chebyshev",
    "pyamg-sa",
    "pyamg-sa-csr",
    "pyamg-rs",
    "pyamg-sa-tuned",
    "pyamg-rs-tuned",
    "pyamg-sa-csr-sgs2",
    "pyamg-rs-sgs2",
)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (see the module docstring). Returns 0."""
    args = parse_bench_args(build_parser(), argv, lambda a: a.name, check=_check_files)
    if args.quick:
        args.n, args.train_n, args.val_n, args.epochs = [24], [10, 12], 16, 1
        args.steps, args.test_systems, args.repeats, args.n_rhs = 4, 1, 1, 2
    torch.set_num_threads(args.threads)
    try:  # numpy/scipy BLAS threads too: oversubscribed, they slow PyAMG's set-up many times
        from threadpoolctl import threadpool_limits

        limits: Any = threadpool_limits(args.threads)
    except ImportError:  # pragma: no cover - threadpoolctl ships with scikit-learn
        limits = None
    try:
        return _main(args)
    finally:
        if limits is not None:
            limits.restore_original_limits()


def _main(args: Any) -> int:

    load_start = list(os.getloadavg())
    learned: dict[str, tuple[Any, Any]] = {}
    training: dict[str, Any] = {}
    for variant in args.variants:
        if args.load_models:
            model, training[variant] = _load_model(args.load_models, variant)
        else:
            print(f"training learned AMG ({variant}) on {args.train_families} at {args.train_n}")
            model, training[variant] = _train(args, variant)
            print(f"  trained in {training[variant]['seconds']:.1f} s", flush=True)
        learned[variant] = (model, _model(args, variant, 0))
    if args.save_models and not args.load_models:
        _save_models(args.save_models, learned, training)
    rows: list[dict[str, Any]] = []
    summary: list[dict[str, Any]] = []
    tuning: dict[str, Any] = {}
    for family in args.families:
        tuned = {k: _tune(k, family, args) for k in ("sa", "rs")}
        tuning[family] = {k: {"chosen": v[0], "total_s": v[2]} for k, v in tuned.items()}
        methods = _methods(tuned, learned)
        for n in args.n:
            per: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
            for t in range(args.test_systems):
                seed = TEST_SEED0 + 100 * n + t
                a = _family(family)(n, seed=seed)
                b = torch.from_numpy(np.random.default_rng(seed).standard_normal(a.shape[0]))
                # interleaved: every method once per round, medians over the rounds
                runs: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
                for _ in range(args.repeats):
                    for meth, build in methods.items():
                        runs[meth].append(run(build, a, b, args.rtol, args.loop))
                for meth in methods:
                    per[meth].append(summarise(runs[meth]))
            load = os.getloadavg()[0]
            block = []
            for meth, res in per.items():
                block.append(
                    {
                        "family": family,
                        "n": n * n,
                        "method": meth,
                        "seen_in_training": family in args.train_families,
                        "iters": float(np.mean([r["iters"] for r in res])),
                        "setup_s": float(np.mean([r["setup_s"] for r in res])),
                        "solve_s": float(np.mean([r["solve_s"] for r in res])),
                        "total_s": float(np.mean([r["total_s"] for r in res])),
                        "converged": all(r["converged"] for r in res),
                        "load1": load,
                    }
                )
            by = {r["method"]: r for r in block}
            best = min((r for r in block if r["method"] in CLASSICAL), key=lambda r: r["total_s"])
            for r in block:
                r["time_vs_best_classical"] = r["total_s"] / best["total_s"]
                r["iters_vs_sa"] = r["iters"] / by["pyamg-sa"]["iters"]
            floor = amg_floor(block) / best["total_s"]
            for variant in learned:
                name = _learned_name(variant)
                la = by[name]
                summary.append(
                    {
                        "family": family,
                        "n": n * n,
                        "variant": variant,
                        "seen_in_training": family in args.train_families,
                        "best_classical": best["method"],
                        "learned_time_vs_best": la["time_vs_best_classical"],
                        "learned_iters_vs_sa": la["iters_vs_sa"],
                        "untrained_iters_vs_sa": by[f"{name}-untrained"]["iters_vs_sa"],
                        "amg_floor_vs_best": floor,
                        "time_goal_met": la["time_vs_best_classical"] <= 1.0,
                        "iters_goal_met": la["iters_vs_sa"] <= 0.8,
                    }
                )
            rows.extend(block)
            print(markdown_table(block), flush=True)
    cols = [
        "family",
        "n",
        "method",
        "iters",
        "setup_s",
        "solve_s",
        "total_s",
        "time_vs_best_classical",
        "iters_vs_sa",
        "converged",
        "load1",
    ]
    table = markdown_table(rows, cols)
    summ = markdown_table(summary)
    print("\n" + table + "\n\n" + summ)
    out = Path(args.out)
    path = write_results(
        args.name,
        {
            "config": {
                **vars(args),
                # loaded models: their own training sizes are under "training" (sizes)
                **({"train_n": None} if args.load_models else {}),
            },
            "note": "times: median over repeats (methods interleaved, one run of each per "
            "round) of setup, solve and total, mean over test systems; ratios within this "
            f"run; every method in the same PCG ({args.loop}'s cg); load1: 1-minute load "
            "average after the block (the machine is shared)",
            "load_average_start_end": [load_start, list(os.getloadavg())],
            "training": training,
            "pyamg_tuning": tuning,
            "rows": rows,
            "summary": summary,
        },
        out,
        quick=args.quick,
    )
    md = out / f"{path.stem}.md"
    write_text(md, f"# learned AMG benchmark\n\n{table}\n\n## goals (issue 19)\n\n{summ}\n")
    print(f"\nwrote {path} and {md}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
