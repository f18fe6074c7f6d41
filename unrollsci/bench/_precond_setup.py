"""``unrollsci bench precond``: the systems, the methods, their timing and the training.

The command line, the summary, the plot and ``main`` are in :mod:`.precond`.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
import torch

from ._common import Timer

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
        # options of one kind only (refused with another): block_size for "block";
        # degree, ratio, scaling for "poly", which starts as the tuned Chebyshev preconditioner
        own: dict[str, Any] = {
            "block": {"block_size": args.block_size},
            "poly": {"degree": cheb[0], "ratio": cheb[1], "scaling": args.poly_scaling},
        }.get(kind, {})
        model = LearnedPreconditioner(
            kind,
            hidden=args.hidden,
            layers=layers,
            base=base,
            seed=args.seed,
            ordering=order,
            **own,
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
