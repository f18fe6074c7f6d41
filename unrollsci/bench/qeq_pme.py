"""Particle-mesh Ewald (P3M) vs the explicit Ewald sum in QEq: time vs N, agreement.

``python benchmarks/qeq_pme.py [--quick]``. Rattled rock-salt NaCl supercells (shielded
kernel, real-space cutoff 10 A, k_e = 14.4, tol 1e-6) with ``ewald=True``; for each size
and Ewald accuracy, one cold :func:`~unrollsci.chem.solve_charges` call (neighbour list,
kernel, reciprocal part, CG) per method: ``ewald_method="ewald"`` (explicit k-vector sum,
O(N K) with K ~ N k-vectors at a fixed cutoff: the stored ``N x K`` basis below
``unrollsci.chem._ksum.KSUM_MIN_ELEMENTS`` entries, its separable form above, column
``ewald_form``) and ``"pme"`` (P3M, mesh chosen from the accuracy).
Timed: charges only (``grad="envelope"``, no autograd) and charges + energy + implicit forces
(adjoint solve + autograd). ``check_definite=False`` for both (the dense O(N^3)
definiteness proof is the same for both methods and off above 3000 atoms by default).
Methods interleaved in one process, medians of ``--repeats`` (one call where a call takes
more than ``--slow`` seconds); the explicit sum is skipped where N x K exceeds
``--max-ewald-elements`` (time; default: never; recorded in the row). Agreement columns: max |dq|,
relative energy difference and max |dF| between the two methods (forces run). The
crossover is the smallest timed size from which PME is faster (energy + forces) at every
larger timed size. ``--products``: only the reciprocal part, for sizes where one explicit
call takes hours (seconds to build each operator and per no-grad product, the CG's
matvec; ``--reps 4 5 6 8 10 12 16 19 --name qeq_pme_products``). Writes
``benchmarks/results/qeq_pme.json`` + ``.md`` + ``.png``
(``qeq_pme_quick.*`` with ``--quick``; ``--name`` for another stem, e.g. a run at a
smaller cutoff, which allows smaller cells: ``--reps 2 3 4 --cutoff 5.5 --name
qeq_pme_cutoff5``).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from typing import Any

import numpy as np
import torch

from .._argtypes import float_arg, int_arg
from ..chem import _ksum, _pme_mesh, solve_charges
from ..chem._geometry import ewald_alpha, ewald_kvectors
from ..chem._pme import PMEReciprocal, mesh_shape
from ._common import (
    figure_path,
    markdown_table,
    new_figure,
    output_dir_arg,
    parse_bench_args,
    positive_int_arg,
    save_figure,
    write_results,
    write_text,
)
from .qeq import NACL_PARAMS

__all__ = ["main"]

#: supercell repeats of the 8-atom cube: 512 ... 54,872 atoms (cutoff 10 A needs >= 4)
FULL = [4, 5, 6, 8, 10, 12, 16, 19]
QUICK = [4]


def _structure(n_rep: int, seed: int):
    from ase.build import bulk

    atoms = bulk("NaCl", "rocksalt", a=5.64, cubic=True).repeat(n_rep)
    atoms.rattle(0.05, seed=seed)
    return atoms


def _call(atoms, method: str, accuracy: float, args, forces: bool) -> dict[str, Any]:
    """One cold solve (+ forces); wall seconds and the results. Cold also for PME: the
    library's per-cell caches (mesh search, influence function) are emptied first."""
    _pme_mesh._SHAPES.clear()
    _pme_mesh._FILTERS.clear()
    t0 = time.perf_counter()
    pos = torch.tensor(atoms.positions, dtype=torch.float64, requires_grad=forces)
    sol = solve_charges(
        pos,
        atoms.numbers.tolist(),
        cell=torch.tensor(atoms.cell.array, dtype=torch.float64),
        pbc=True,
        params=NACL_PARAMS,
        kernel="shielded",
        cutoff=args.cutoff,
        coulomb_constant=14.4,
        ewald=True,
        ewald_accuracy=accuracy,
        ewald_method=method,
        tol=args.tol,
        grad="implicit" if forces else "envelope",
        adjoint_tol=max(args.tol, 1e-6),
        check_definite=False,
    )
    f = -torch.autograd.grad(sol.energy, pos)[0] if forces else None
    energy = float(sol.energy.detach())
    seconds = time.perf_counter() - t0
    return {
        "s": seconds,
        "q": sol.charges.detach().numpy(),
        "e": energy,
        "f": None if f is None else f.numpy(),
        "iters": sol.iterations,
        "stats": sol.stats,
    }


def _size(n_rep: int, accuracy: float, args) -> dict[str, Any]:
    atoms = _structure(n_rep, args.seed)
    n = len(atoms)
    alpha, kmax = ewald_alpha(args.cutoff, accuracy)
    n_k = len(ewald_kvectors(np.asarray(atoms.cell.array), kmax))
    methods = ["ewald", "pme"]
    row: dict[str, Any] = {"atoms": n, "accuracy": accuracy, "n_kvectors": n_k}
    row["ewald_form"] = "separable" if n * n_k >= _ksum.KSUM_MIN_ELEMENTS else "stored"
    cell = torch.tensor(atoms.cell.array, dtype=torch.float64)
    try:
        mesh = mesh_shape(cell, alpha, accuracy, n)[0]
    except ValueError:  # beyond the library's own mesh limit
        mesh = None
    row["pme_mesh"] = "x".join(str(x) for x in mesh) if mesh else "> MAX_MESH_POINTS"
    notes = []
    if args.max_ewald_elements is not None and n * n_k > args.max_ewald_elements:
        methods.remove("ewald")
        notes.append(f"explicit sum skipped: N x K = {n * n_k:.2e} > {args.max_ewald_elements:.0e}")
    if mesh is None or math.prod(mesh) > args.max_pme_points:
        methods.remove("pme")
        notes.append(f"PME skipped: mesh > {args.max_pme_points:.0e} points")
    if notes:
        row["note"] = "; ".join(notes)
    if not methods:
        return row
    row["load_avg"] = os.getloadavg()[0]
    kinds = [k for k in ("q", "ef") if k in args.kinds]
    times: dict[str, list[float]] = {f"{m}_{k}": [] for m in methods for k in kinds}
    last: dict[str, dict] = {}
    for rep in range(args.repeats):
        for m in methods:  # interleaved
            for kind in kinds:
                forces = kind == "ef"
                key = f"{m}_{kind}"
                if rep > 0 and times[key] and times[key][0] > args.slow:
                    continue  # one call of a slow configuration is enough
                out = _call(atoms, m, accuracy, args, forces)
                times[key].append(out["s"])
                last[key] = out
    for key, ts in times.items():
        row[f"s_{key}"] = statistics.median(ts)
        row[f"n_{key}"] = len(ts)
    row["cg_iters"] = last[f"{methods[-1]}_{kinds[-1]}"]["iters"]
    if "ewald_q" in last and "pme_q" in last:
        row["pme/ewald_q"] = row["s_pme_q"] / row["s_ewald_q"]
    if "ewald_ef" in last and "pme_ef" in last:
        row["pme/ewald_ef"] = row["s_pme_ef"] / row["s_ewald_ef"]
    both = [k for k in ("ef", "q") if f"ewald_{k}" in last and f"pme_{k}" in last]
    if both:  # agreement: from the forces run where there is one
        a, b = last[f"ewald_{both[0]}"], last[f"pme_{both[0]}"]
        row["max_dq"] = float(np.abs(a["q"] - b["q"]).max())
        row["rel_dE"] = abs(a["e"] - b["e"]) / abs(a["e"])
        if a["f"] is not None:
            row["max_dF"] = float(np.abs(a["f"] - b["f"]).max())
            row["max_F"] = float(np.abs(a["f"]).max())
    return row


def _products(n_rep: int, accuracy: float, args) -> dict[str, Any]:
    """``--products``: the reciprocal part alone, for sizes where a whole explicit-sum call
    would take hours: seconds to build each operator (cold, caches emptied) and per
    no-grad product ``q -> A_rec q`` (the CG's matvec; median of ``--repeats`` after one
    warm-up product), the explicit sum in its separable form."""
    atoms = _structure(n_rep, args.seed)
    n = len(atoms)
    alpha, kmax = ewald_alpha(args.cutoff, accuracy)
    pos = torch.tensor(atoms.positions, dtype=torch.float64)
    cell = torch.tensor(atoms.cell.array, dtype=torch.float64)
    q = torch.from_numpy(np.random.default_rng(args.seed).standard_normal(n))
    row: dict[str, Any] = {"atoms": n, "accuracy": accuracy, "load_avg": os.getloadavg()[0]}
    for name in ("ewald", "pme"):
        _pme_mesh._SHAPES.clear()
        _pme_mesh._FILTERS.clear()
        t0 = time.perf_counter()
        if name == "ewald":
            op = _ksum.KSumReciprocal(pos, cell, alpha, kmax, 14.4)
            row["n_kvectors"] = op.n_kvectors
        else:
            op = PMEReciprocal(pos, cell, alpha, kmax, 14.4, accuracy)
            row["pme_mesh"] = "x".join(str(x) for x in op.shape)
        op(q)  # the first product (PME: its sparse weights) belongs to the build
        row[f"s_{name}_build"] = time.perf_counter() - t0
        ts = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            op(q)
            ts.append(time.perf_counter() - t0)
        row[f"s_{name}_product"] = statistics.median(ts)
    row["pme/ewald_product"] = row["s_pme_product"] / row["s_ewald_product"]
    return row


def crossover(rows: list[dict[str, Any]], key: str = "pme/ewald_ef") -> int | None:
    """The smallest timed size from which PME is faster (``key``: energy + forces by
    default) at every larger size where both were timed (the smallest size timed: PME is
    faster at all of them); None when the explicit sum is faster at the largest."""
    both = sorted((r for r in rows if key in r), key=lambda r: r["atoms"])
    found = None
    for r in reversed(both):
        if r[key] >= 1.0:
            break
        found = r["atoms"]
    return found


def _plot(rows: list[dict[str, Any]], args, path) -> None:
    """Log-log time vs N: both methods, energy + forces, one line style per accuracy."""
    try:
        fig, ax = new_figure(figsize=(5.5, 3.8))
    except ImportError:
        return
    for acc, style in zip(args.accuracies, ("-", "--", ":", "-."), strict=False):
        sub = [r for r in rows if r["accuracy"] == acc]
        kind = "product" if args.products else ("ef" if "ef" in args.kinds else "q")
        for key, label, color in (
            (f"s_ewald_{kind}", "explicit Ewald", "C0"),
            (f"s_pme_{kind}", "PME (P3M)", "C1"),
        ):
            pts = [(r["atoms"], r[key]) for r in sub if key in r]
            if pts:
                x, y = zip(*pts, strict=True)
                ax.loglog(x, y, "o" + style, color=color, label=f"{label}, acc {acc:g}")
    ax.set_xlabel("atoms")
    ax.set_ylabel(
        "s per reciprocal product"
        if args.products
        else "s per cold call (" + ("energy + forces)" if "ef" in args.kinds else "charges)")
    )
    ax.set_title(f"QEq with Ewald, rock salt, cutoff {args.cutoff:g} A, {args.threads} thread")
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; see ``--help``."""
    p = argparse.ArgumentParser(prog="unrollsci bench qeq_pme", description=__doc__)
    p.add_argument("--quick", action="store_true", help="512 atoms, one repeat")
    p.add_argument("--reps", type=positive_int_arg, nargs="*", default=None)
    p.add_argument(
        "--accuracies",
        type=float_arg(positive=True),
        nargs="+",
        default=None,
        help="default 1e-6 1e-8",
    )
    p.add_argument("--cutoff", type=float_arg(positive=True), default=10.0)
    p.add_argument("--tol", type=float_arg(positive=True), default=1e-6)
    p.add_argument("--seed", type=int_arg(0), default=0)
    p.add_argument("--repeats", type=positive_int_arg, default=3, help="medians of this many")
    p.add_argument(
        "--slow", type=float_arg(positive=True), default=20.0, help="seconds: time such a call once"
    )
    p.add_argument(
        "--max-ewald-elements",
        type=float_arg(positive=True),
        default=None,
        help="skip the explicit sum above N x K",
    )
    p.add_argument(
        "--max-pme-points",
        type=float_arg(positive=True),
        default=3e7,
        help="skip PME above this mesh size",
    )
    p.add_argument(
        "--kinds",
        nargs="+",
        choices=["q", "ef"],
        default=["q", "ef"],
        help="time charges only (q) and/or charges + energy + forces (ef)",
    )
    p.add_argument(
        "--products",
        action="store_true",
        help="time only building the reciprocal part and one product (large sizes)",
    )
    p.add_argument("--threads", type=positive_int_arg, default=1, help="torch threads")
    p.add_argument("--out", type=output_dir_arg, default="benchmarks/results")
    p.add_argument(
        "--name", default="qeq_pme", help="results file stem (e.g. for a run at another cutoff)"
    )
    args = parse_bench_args(p, argv, lambda a: a.name)
    torch.set_num_threads(args.threads)
    if args.quick:
        args.repeats = min(args.repeats, 2) if args.products else 1
    if args.accuracies is None:
        args.accuracies = [1e-6] if args.quick else [1e-6, 1e-8]
    reps = args.reps or (QUICK if args.quick else FULL)
    rows = []
    for acc in args.accuracies:
        for n_rep in reps:
            row = (_products if args.products else _size)(n_rep, acc, args)
            rows.append(row)
            print(markdown_table([row]), flush=True)
    ckey = "pme/ewald_ef" if "ef" in args.kinds else "pme/ewald_q"
    cross = {
        str(acc): crossover([r for r in rows if r["accuracy"] == acc], ckey)
        for acc in args.accuracies
    }
    columns = [
        "accuracy",
        "atoms",
        "n_kvectors",
        "pme_mesh",
        "s_ewald_build",
        "s_pme_build",
        "s_ewald_product",
        "s_pme_product",
        "pme/ewald_product",
        "cg_iters",
        "s_ewald_q",
        "s_pme_q",
        "pme/ewald_q",
        "s_ewald_ef",
        "s_pme_ef",
        "pme/ewald_ef",
        "max_dq",
        "rel_dE",
        "max_dF",
        "max_F",
        "load_avg",
        "note",
    ]
    columns = [c for c in columns if any(c in r for r in rows)]
    table = markdown_table(rows, columns)
    print()
    print(table)
    if not args.products:
        print(f"crossover (smallest N from which PME is faster, {ckey}): {cross}")
    config = {k: v for k, v in vars(args).items() if k not in ("out", "name")}
    config.update(
        {
            "reps": reps,
            "kernel": "shielded",
            "coulomb_constant": 14.4,
            "check_definite": False,
            "timing": (
                f"--products: seconds to build each reciprocal operator and per product, "
                f"median of {args.repeats}"
                if args.products
                else f"wall seconds of one cold call, median of {args.repeats} interleaved "
                f"repeats (one call where the first took > {args.slow} s: n_* columns in rows)"
            ),
        }
    )
    data = {"config": config, "crossover_atoms": cross, "rows": rows}
    path = write_results(args.name, data, args.out, quick=args.quick)
    what = (
        f"seconds to build each reciprocal operator (with its first product) and per no-grad "
        f"product (the CG's matvec), medians of {args.repeats}; the explicit sum in its "
        f"separable form.\n\n"
        if args.products
        else f"seconds of one cold call (q: charges; ef: charges + energy + implicit forces), "
        f"medians of {args.repeats}; check_definite=False. Crossover (PME faster from N "
        f"atoms on, {'energy + forces' if 'ef' in args.kinds else 'charges'}): {cross}\n\n"
    )
    header = (
        f"QEq with Ewald: explicit k-vector sum vs PME (P3M, order 7, mesh from the accuracy), "
        f"rock salt, cutoff {args.cutoff} A, tol {args.tol:g}, {args.threads} torch "
        f"thread(s); " + what
    )
    write_text(figure_path(args.out, f"{args.name}.md", args.quick), header + table + "\n")
    _plot(rows, args, figure_path(args.out, f"{args.name}.png", args.quick))
    print(f"results: {path}")
    return 0
