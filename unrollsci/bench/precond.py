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
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._common import (
    Timer,
    figure_path,
    markdown_table,
    output_dir_arg,
    save_figure,
    write_results,
)

TEST_SEED0 = 10_000
VAL_SEED0 = 5_000


#: Candidate orderings (``--orderings auto``) of the generated families: the grid ones
#: are numbered lexicographically; graphs and user matrices get no ordering methods.
AUTO_ORDERINGS = {"poisson": "grid", "anisotropic": "grid"}


def _ordering(family: str, args: argparse.Namespace) -> str | None:
    """The candidate orderings of the ``-ord`` methods on this family (None: no such rows)."""
    if args.orderings == "none":
        return None
    if args.orderings == "auto":
        return AUTO_ORDERINGS.get(family)
    return args.orderings


def _methods(args: argparse.Namespace, ordering: str | None = None) -> list[str]:
    out = ["none", "jacobi", "ic0", "mic0"]
    if ordering is not None:
        out += ["ic0-ord", "mic0-ord"]
    if not args.no_amg:
        out.append("amg")
    if args.chebyshev:
        out.append("chebyshev")
    for kind in args.kinds:
        out.append(f"learned-{kind}")
        if kind == "factor" and args.mic_base:
            out.append("learned-factor-mic")
        if kind == "factor" and args.ic0_base:
            out.append("learned-factor-ic0")
    if ordering is not None and "factor" in args.kinds and args.mic_base:
        out.append("learned-factor-mic-ord")
    if args.frobenius and "factor" in args.kinds:
        out.append("learned-factor-frob")
    return out


def _setup(method: str, a: Any, models: dict[str, Any]) -> tuple[Any, int]:
    from ..precond import amg, chebyshev, ic0, jacobi, mic0

    if method == "none":
        return None, 0
    if method == "jacobi":
        m = jacobi(a)
        return m, a.shape[0]
    if method in ("ic0", "mic0", "ic0-ord", "mic0-ord"):
        order = models["ordering"] if method.endswith("-ord") else None
        m = ic0(a, ordering=order) if method.startswith("ic0") else mic0(a, ordering=order)
        return m, m.nnz
    if method == "chebyshev":
        m = chebyshev(a, *models["chebyshev"])
        return m, m.nnz
    if method == "amg":
        m = amg(a)
        return m, int(round(m.ml.operator_complexity() * a.nnz))
    m = models[method].build(a)
    return m, m.nnz


def time_methods(
    a: Any, b: torch.Tensor, methods: list[str], models: dict[str, Any], repeats: int, rtol: float
) -> tuple[dict[str, tuple[list[float], list[float]]], dict[str, tuple[Any, int]]]:
    """Setup and PCG solve (to ``rtol``) of every method on one system, ``repeats`` times,
    the repeats interleaved over the methods (not one method's repeats in a row), so that
    a slow spell of the machine hits every method alike.

    Returns:
        ``{method: (setup seconds, solve seconds)}`` (one entry per repeat) and
        ``{method: (solution, nnz)}`` of the first repeat (the results are deterministic).
    """
    from ..solvers import cg

    times: dict[str, tuple[list[float], list[float]]] = {m: ([], []) for m in methods}
    first: dict[str, tuple[Any, int]] = {}
    for _ in range(repeats):
        for meth in methods:
            with Timer() as ts:
                m, nnz = _setup(meth, a, models)
            with Timer() as tv:
                sol = cg(a, b, M=m, tol=rtol, max_iter=20 * a.shape[0], throw=False, check=False)
            times[meth][0].append(ts.seconds)
            times[meth][1].append(tv.seconds)
            first.setdefault(meth, (sol, nnz))
    return times, first


USER = "user"


def _systems(
    family: str, args: argparse.Namespace, user: list[Any] | None
) -> tuple[list[Any], list[Any], list[tuple[str, bool, list[tuple[Any, int]]]]]:
    """Training matrices, validation matrices and test groups ``(label, seen in training,
    [(matrix, right-hand-side seed), ...])`` of a family.

    The user's family (``--matrices``, in file-name order) is split in order: the last
    ``--test-systems`` matrices are the held-out test systems, the ``--val-systems``
    before them validate, and the rest train (e.g. early time steps train, late ones test).
    """
    from ..precond import FAMILIES

    if family == USER:
        assert user is not None
        n_test, n_val = args.test_systems, args.val_systems
        n_train = len(user) - n_test - n_val
        if n_train < 1:
            raise ValueError(
                f"--matrices gave {len(user)} matrices; expected at least "
                f"--test-systems + --val-systems + 1 = {n_test + n_val + 1}."
            )
        test = user[n_train + n_val :]
        group = ("held-out", False, [(a, TEST_SEED0 + t) for t, a in enumerate(test)])
        return user[:n_train], user[n_train : n_train + n_val], [group]
    gen = FAMILIES[family]
    train = [gen(n, s) for s in range(args.train_systems) for n in args.train_n]
    val = [gen(n, VAL_SEED0 + s) for s in range(args.val_systems) for n in args.val_n]
    groups = []
    for n in args.n:
        seeds = [TEST_SEED0 + 100 * n + t for t in range(args.test_systems)]
        groups.append((f"{n}^2", n in args.train_n, [(gen(n, s), s) for s in seeds]))
    return train, val, groups


CHEB_RATIOS = (0.003, 0.01, 0.03)


def _tune_chebyshev(val: list[Any], args: argparse.Namespace) -> tuple[tuple[int, float], dict]:
    """Interval ratio of the degree-``--poly-degree`` Chebyshev baseline with the fewest
    PCG iterations to ``--rtol`` (mean over the validation systems; ties go to the
    smaller ratio): a tuned classical baseline, chosen without the test systems and
    without timings (at a fixed degree, fewer iterations is less work), so the choice is
    the same in every run. Without validation systems: ratio 0.01."""
    from ..precond import chebyshev
    from ..solvers import cg

    k = args.poly_degree
    if not val:
        return (k, 0.01), {}
    scores = {}
    for r in CHEB_RATIOS:
        its = []
        for s, a in enumerate(val):
            b = torch.from_numpy(np.random.default_rng(VAL_SEED0 + s).standard_normal(a.shape[0]))
            sol = cg(a, b, M=chebyshev(a, k, r), tol=args.rtol, throw=False, check=False)
            its.append(sol.iterations)
        scores[f"ratio {r}"] = float(np.mean(its))
    return (k, CHEB_RATIOS[int(np.argmin(list(scores.values())))]), scores


def _train(
    family: str,
    mats: list[Any],
    val: list[Any],
    kinds: list[str],
    args: argparse.Namespace,
    cheb: tuple[int, float] = (8, 0.01),
    ordering: str | None = None,
) -> tuple[dict, dict]:
    from ..precond import LearnedPreconditioner, fit_preconditioner

    models, info = {}, {}

    def job(name: str, kind: str = "factor", **kw: Any) -> tuple:
        """(name, kind, loss, base, layers, ordering, unrolled steps), defaults filled."""
        layers = args.poly_layers if kind == "poly" else args.layers
        d = {"loss": "energy", "base": None, "layers": layers, "ordering": None}
        d |= {"steps": args.steps, **kw}
        return (name, kind, d["loss"], d["base"], d["layers"], d["ordering"], d["steps"])

    jobs = [job(f"learned-{k}", k) for k in kinds]
    if "factor" in kinds and args.ic0_base:
        jobs.insert(1, job("learned-factor-ic0", base="ic0"))
    if "factor" in kinds and args.mic_base:
        jobs.insert(1, job("learned-factor-mic", base="mic", layers=args.mic_layers))
        if ordering is not None:
            mic_ord = job(
                "learned-factor-mic-ord",
                base="mic",
                layers=args.mic_layers,
                ordering=ordering,
                steps=args.ord_steps,
            )
            jobs.insert(2, mic_ord)
    if args.frobenius and "factor" in kinds:
        jobs.append(job("learned-factor-frob", loss="frobenius"))
    for name, kind, loss, base, layers, order, steps in jobs:
        model = LearnedPreconditioner(
            kind,
            hidden=args.hidden,
            layers=layers,
            block_size=args.block_size,
            base=base,
            seed=args.seed,
            degree=cheb[0],  # kind="poly" starts as the tuned Chebyshev preconditioner
            ratio=cheb[1],
            scaling=args.poly_scaling,
            ordering=order,
        )
        t0 = time.perf_counter()
        hist = fit_preconditioner(
            model,
            mats,
            steps=steps,
            loss=loss,
            n_rhs=args.n_rhs,
            epochs=args.epochs,
            lr=args.lr,
            seed=args.seed,
            restarts=args.restarts if val else 1,
            val_matrices=val or None,
            adaptive_tol=args.adaptive_tol,
            patience=args.patience if val else None,
        )
        secs = time.perf_counter() - t0
        model.eval()
        models[name] = model
        info[name] = {
            "kind": kind,
            "base": model.base,
            "layers": layers,
            "loss": loss,
            "ordering": order,
            "unrolled_steps": steps,
            "seconds": secs,
            "loss_first_epoch": hist.train_loss[0],
            "loss_last_epoch": hist.train_loss[-1],
            "best_val_loss": hist.best_val if val else None,
            "epochs_run": len(hist.train_loss),
            "initial_val_loss": getattr(hist, "initial_val", None),
            "kept_untrained_weights": getattr(hist, "kept_initial", None),
            "restart_val_losses": hist.restart_vals,
            "kept_restart": hist.restart,
        }
        print(
            f"  trained {name} on {family}: {secs:.1f} s, loss "
            f"{hist.train_loss[0]:.2f} -> {hist.train_loss[-1]:.2f}",
            flush=True,
        )
    return models, info


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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    meths = list(dict.fromkeys(k[2] for k in histories))
    colors = {m: plt.cm.tab20(i % 20) for i, m in enumerate(meths)}
    fams = list(dict.fromkeys(k[0] for k in histories))
    labels = {f: list(dict.fromkeys(k[1] for k in histories if k[0] == f)) for f in fams}
    ncol = max(len(v) for v in labels.values())
    fig, axes = plt.subplots(len(fams), ncol, figsize=(4.2 * ncol, 3.4 * len(fams)), squeeze=False)
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
    plt.close(fig)


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
        type=int,
        default=[64, 128, 256],
        help="grid sizes of the held-out test systems (n x n unknowns)",
    )
    p.add_argument("--train-n", nargs="+", type=int, default=[32])
    p.add_argument(
        "--val-n",
        nargs="+",
        type=int,
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

    args = build_parser().parse_args(argv)
    if args.quick:
        args.n, args.train_n, args.train_systems, args.test_systems = [24, 40], [16], 4, 2
        args.epochs, args.repeats, args.val_systems = 3, 1, 1
    args.val_n = args.val_n or [min(args.n)]
    torch.set_num_threads(args.threads)
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
                m: {"it": [], "setup": [], "solve": [], "nnz": [], "conv": []} for m in methods
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
                    d["setup"].append(min(times[meth][0]))
                    d["solve"].append(min(times[meth][1]))
                    if t == 0:
                        histories[(family, label, meth)] = list(sol.residuals)
            ref_it = float(np.mean(per["ic0"]["it"]))
            ref_t = float(np.mean(per["ic0"]["setup"]) + np.mean(per["ic0"]["solve"]))
            for meth in methods:
                d = per[meth]
                total = float(np.mean(d["setup"]) + np.mean(d["solve"]))
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
