"""QEq per MD step vs LAMMPS: ``unrollsci bench qeq --per-step [--quick]``.

The cost a user pays at every step of MD or a relaxation: rattled rock-salt NaCl (shielded
kernel, cutoff 10 A, k_e = 14.4, tol 1e-6), each atom moving 0.002 A per step in a fixed
random direction. unrollsci: one ``QEqCalculator`` (default skin), energy + forces at
every step (``forces="implicit"``, the default; ``"envelope"``; and implicit with
``check_definite=False``, i.e. without the polarization-catastrophe proof), after one
untimed first call. LAMMPS: ``run N`` with ``fix qeq/shielded`` every step and ``pair_style zero``
(charges only, no forces), its default skin 2 A, after ``run 0``. Both single-threaded,
in the same process, interleaved, repeated ``--repeats`` times; medians reported, with the
ratio unrollsci / LAMMPS. Writes ``benchmarks/results/qeq_step.json`` + ``.md`` + ``.png``
(``qeq_step_quick.*`` with ``--quick``).

``--threads 1 2`` (default) gives a row per size and torch thread count; LAMMPS runs its
serial ``fix qeq/shielded`` (no threaded variant) in both. Besides wall time, the process
CPU time per step of both (``cpu_ms_*``) is recorded, and the load average before each size:
on a shared machine the CPU-time ratio is the steadier of the two.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

import numpy as np
import torch

from .._argtypes import float_arg, int_arg
from ..chem import QEqCalculator
from ._common import (
    figure_path,
    loglog_figure,
    markdown_table,
    output_dir_arg,
    parse_bench_args,
    positive_int_arg,
    write_results,
    write_text,
)

__all__ = ["main"]

#: supercell repeats of the 8-atom cube -> timed steps (about a second of LAMMPS each)
FULL = {2: 200, 3: 60, 6: 10, 12: 3}
QUICK = {2: 10}


def _setup(n_rep: int, seed: int, step: float):
    from ase.build import bulk

    atoms = bulk("NaCl", "rocksalt", a=5.64, cubic=True).repeat(n_rep)
    atoms.rattle(0.05, seed=seed)
    v = np.random.default_rng(seed).normal(size=(len(atoms), 3))
    v *= step / np.linalg.norm(v, axis=1, keepdims=True)
    return atoms, v


#: unrollsci configurations timed: name -> QEqCalculator keywords
MODES = {
    "implicit": {"forces": "implicit"},
    "envelope": {"forces": "envelope"},
    # the same as "implicit" without the polarization-catastrophe proof (dense test and
    # its certificate), to show what that guarantee costs
    "nocheck": {"forces": "implicit", "check_definite": False},
}


def _ours(atoms, v, steps: int, mode: str, args: argparse.Namespace) -> dict[str, Any]:
    from .qeq import NACL_PARAMS

    atoms = atoms.copy()
    atoms.calc = calc = QEqCalculator(
        params=NACL_PARAMS, cutoff=args.cutoff, tol=args.tol, coulomb_constant=14.4, **MODES[mode]
    )
    atoms.get_forces()  # the first call: list, dense definiteness test, cold charges
    iters, adjoint = [], []
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        atoms.positions = atoms.positions + v
        atoms.get_potential_energy()
        atoms.get_forces()
        iters.append(calc.solution.iterations)
        adjoint.append(calc.solution.stats.get("adjoint_iterations", 0))
    seconds = (time.perf_counter() - t0) / steps
    return {
        "seconds": seconds,
        "cpu_seconds": (time.process_time() - c0) / steps,
        "solver": calc.solution.stats.get("solver", "autograd"),
        "adjoint_tol": calc.settings.adjoint_tol,
        "adjoint_iters": float(np.mean(adjoint)),
        "cg_iters": float(np.mean(iters)),
        "list_builds": calc.neighbor_list_builds,
        "dense_checks": calc._certificate.dense_checks,
        "charges": atoms.get_charges(),
    }


def _size(n_rep: int, steps: int, threads: int, args: argparse.Namespace, lammps_steps) -> dict:
    """One row: every mode and LAMMPS, interleaved, ``args.repeats`` times; medians."""
    from .qeq import NACL_PARAMS

    atoms, v = _setup(n_rep, args.seed, args.step)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    runs: dict[str, list[Any]] = {m: [] for m in (*MODES, "lammps")}
    for _ in range(args.repeats):  # interleaved, so that load changes hit all alike
        for mode in MODES:
            runs[mode].append(_ours(atoms, v, steps, mode, args))
        if lammps_steps is not None:
            sec, q, cpu = lammps_steps(
                atoms, NACL_PARAMS, v, steps=steps, cutoff=args.cutoff, tol=args.tol
            )
            # CPU time of the timed steps only (LAMMPS's setup and run 0 excluded, as
            # unrollsci's untimed first call)
            runs["lammps"].append((sec, q, cpu))
    row: dict[str, Any] = {"threads": threads, "atoms": len(atoms), "steps": steps}
    for mode in MODES:
        row[f"ms_{mode}"] = 1e3 * statistics.median(r["seconds"] for r in runs[mode])
        row[f"cpu_ms_{mode}"] = 1e3 * statistics.median(r["cpu_seconds"] for r in runs[mode])
    last = runs["implicit"][-1]
    keys = ("solver", "adjoint_tol", "cg_iters", "adjoint_iters", "list_builds", "dense_checks")
    for key in keys:
        row[key] = last[key]
    if runs["lammps"]:
        row["ms_lammps"] = 1e3 * statistics.median(r[0] for r in runs["lammps"])
        row["cpu_ms_lammps"] = 1e3 * statistics.median(r[2] for r in runs["lammps"])
        for mode in MODES:
            row[f"{mode}/lammps"] = row[f"ms_{mode}"] / row["ms_lammps"]
        for mode in ("implicit", "envelope"):
            row[f"cpu_{mode}/lammps"] = row[f"cpu_ms_{mode}"] / row["cpu_ms_lammps"]
        row["max_dq_vs_lammps"] = float(np.abs(runs["lammps"][-1][1] - last["charges"]).max())
    row["load_avg"] = load
    row["all_ms_implicit"] = [1e3 * r["seconds"] for r in runs["implicit"]]
    row["all_ms_lammps"] = [1e3 * r[0] for r in runs["lammps"]]
    return row


def main(argv: list[str] | None = None) -> int:
    """Run the per-step benchmark; see ``--help``."""
    p = argparse.ArgumentParser(prog="unrollsci bench qeq --per-step", description=__doc__)
    p.add_argument("--per-step", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--quick", action="store_true", help="64 atoms, 10 steps, no LAMMPS required")
    p.add_argument(
        "--reps", type=positive_int_arg, nargs="*", default=None, help="supercell repeats"
    )
    p.add_argument("--steps", type=positive_int_arg, default=None, help="timed steps per size")
    p.add_argument("--cutoff", type=float_arg(positive=True), default=10.0)
    p.add_argument("--tol", type=float_arg(positive=True), default=1e-6)
    p.add_argument(
        "--step", type=float_arg(positive=True), default=0.002, help="displacement per step, A"
    )
    p.add_argument("--seed", type=int_arg(0), default=0)
    p.add_argument("--repeats", type=positive_int_arg, default=3, help="medians of this many")
    p.add_argument(
        "--threads", type=positive_int_arg, nargs="+", default=[1, 2], help="torch threads"
    )
    p.add_argument("--no-lammps", action="store_true")
    p.add_argument("--out", type=output_dir_arg, default="benchmarks/results")
    args = parse_bench_args(p, argv, "qeq_step")
    plan = QUICK if args.quick else FULL
    if args.reps:
        plan = {r: FULL.get(r, 3) for r in args.reps}
    if args.steps:
        plan = dict.fromkeys(plan, args.steps)
    lammps_steps = None
    if not args.no_lammps:
        try:
            from .lammps import lammps_qeq_steps as lammps_steps
        except (ImportError, OSError) as exc:
            print(f"LAMMPS not available ({exc}); timing unrollsci only")
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for n_rep, steps in plan.items():
            row = _size(n_rep, steps, threads, args, lammps_steps)
            rows.append(row)
            print(markdown_table([{k: v for k, v in row.items() if not k.startswith("all_")}]))
    columns = [
        "threads",
        "atoms",
        "steps",
        "ms_lammps",
        "ms_implicit",
        "implicit/lammps",
        "ms_envelope",
        "envelope/lammps",
        "ms_nocheck",
        "nocheck/lammps",
        "cpu_implicit/lammps",
        "cpu_envelope/lammps",
        "solver",
        "adjoint_tol",
        "cg_iters",
        "adjoint_iters",
        "list_builds",
        "dense_checks",
        "max_dq_vs_lammps",
        "load_avg",
    ]
    columns = [c for c in columns if c in rows[0]]
    table = markdown_table(rows, columns)
    print()
    print(table)
    config = {k: v for k, v in vars(args).items() if k not in ("out", "per_step")}
    config.update(
        {
            "plan": plan,
            "kernel": "shielded",
            "coulomb_constant": 14.4,
            "skin_unrollsci": QEqCalculator().parameters["skin"],
            "skin_lammps": 2.0,
            "lammps": lammps_steps is not None,
            "timing": f"median of {args.repeats} interleaved repeats, per step, first call "
            "(unrollsci) / run 0 (LAMMPS) excluded",
        }
    )
    path = write_results("qeq_step", {"config": config, "rows": rows}, args.out, quick=args.quick)
    header = (
        f"QEq per MD step, rock salt, cutoff {args.cutoff} A, tol {args.tol:g}, torch threads "
        f"{args.threads} (LAMMPS serial); ms per step (wall), medians of {args.repeats}; "
        "cpu_*/lammps: process CPU time ratios over the timed steps (LAMMPS's setup and "
        "run 0 excluded)\n\n"
    )
    write_text(figure_path(args.out, "qeq_step.md", args.quick), header + table + "\n")
    loglog_figure(
        [r for r in rows if r["threads"] == args.threads[0]],
        "atoms",
        [
            ("ms_implicit", "unrollsci energy+implicit forces"),
            ("ms_envelope", "unrollsci energy+envelope forces"),
            ("ms_nocheck", "unrollsci implicit, check_definite=False"),
            ("ms_lammps", "LAMMPS qeq/shielded (charges only)"),
        ],
        figure_path(args.out, "qeq_step.png", args.quick),
        xlabel="atoms",
        ylabel="ms per step",
        title=f"QEq per MD step ({args.threads[0]} torch thread(s))",
    )
    print(f"results: {path}")
    return 0
