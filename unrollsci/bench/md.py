"""NVE MD energy drift: implicit vs envelope forces at a loose QEq tolerance.

ASE VelocityVerlet, 1 fs, rattled rock-salt NaCl (64 atoms, periodic, shielded kernel with
8 A taper cutoff, Born-Mayer repulsion), Maxwell-Boltzmann velocities (seeded). The same
initial state is run with ``forces="implicit"`` and ``forces="envelope"`` at ``--tol``,
with warm-started charge solves (as in production MD) and with cold starts, and once
converged (tol 1e-10) for reference, for ``--seeds`` independent initial states. Drift
per atom = |slope of a linear fit of E_total(t)| / N, averaged over the seeds (also
reported: E_total(end) - E_total(0)); the converged run gives the floor set by the 1 fs
Verlet error alone. "excess" = the same for E_total(t) - E_total_converged(t), the part of
the energy error caused by the inexact charges while the trajectories stay close.
Writes ``benchmarks/results/md.json`` (``md_quick.json`` with ``--quick``). The charge
solve is the tolerance-driven CG (``solver="cg"``) in every run.

``--equal-drift``: time to solution at equal drift instead. Implicit forces at ``--tol`` and
envelope forces at a ladder of tolerances (``--ladder``), all warm-started, plus the
converged reference, from the same initial states; for each, the drift attributable to the
charges (excess slope against the converged run) and the simulated picoseconds per
wall-clock hour. The envelope run that matches the implicit drift is the loosest tolerance
whose mean |excess slope| is at most the implicit one; the ratio of their ps per hour is the
speed-up. ``--adjoint-tols``: one implicit run per adjoint tolerance (default: the
calculator's default for ``--tol``), each with its own match; the first is the headline.
Writes ``md_equal_drift.json`` + ``.md``.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import numpy as np
import torch

from .._argtypes import float_arg, int_arg
from ..chem import BornMayer, QEqCalculator
from ._common import (
    device_arg,
    figure_path,
    markdown_table,
    output_dir_arg,
    parse_bench_args,
    positive_int_arg,
    write_results,
    write_text,
)
from .qeq import NACL_PARAMS

__all__ = ["main"]

REPULSION = {("Na", "Cl"): (1200.0, 0.32), ("Cl", "Cl"): (300.0, 0.32)}


def _run(
    mode: str,
    tol: float,
    steps: int,
    args: argparse.Namespace,
    warm_start: bool = True,
    adjoint_tol: float | None = None,
) -> dict[str, Any]:
    from ase import units
    from ase.build import bulk
    from ase.md import velocitydistribution as vd
    from ase.md.verlet import VelocityVerlet

    torch.set_num_threads(args.threads)
    atoms = bulk("NaCl", "rocksalt", a=5.64, cubic=True).repeat(args.repeat)
    atoms.rattle(0.05, seed=args.seed)
    # thermalize_momenta is the ASE >= 3.29 name of MaxwellBoltzmannDistribution
    thermalize = getattr(vd, "thermalize_momenta", None) or vd.MaxwellBoltzmannDistribution
    thermalize(atoms, temperature_K=args.temperature, rng=np.random.default_rng(args.seed))
    vd.Stationary(atoms)
    atoms.calc = QEqCalculator(
        params=NACL_PARAMS,
        cutoff=args.cutoff,
        tol=tol,
        forces=mode,
        adjoint_tol=adjoint_tol,
        short_range=BornMayer(REPULSION),
        warm_start=warm_start,
        device=args.device,
        solver="cg",  # the tolerance-driven CG at every size (not the small-system Cholesky)
    )
    dyn = VelocityVerlet(atoms, timestep=args.dt * units.fs)
    energies = [atoms.get_total_energy()]
    iters = [atoms.calc.solution.iterations]
    adjoint = [atoms.calc.solution.stats.get("adjoint_iterations", 0)]

    def record() -> None:
        energies.append(atoms.get_total_energy())
        iters.append(atoms.calc.solution.iterations)
        adjoint.append(atoms.calc.solution.stats.get("adjoint_iterations", 0))

    dyn.attach(record, interval=1)
    t0, c0 = time.perf_counter(), time.process_time()
    dyn.run(steps)
    seconds = time.perf_counter() - t0
    cpu_seconds = time.process_time() - c0
    e = np.array(energies[: steps + 1])
    n = len(atoms)
    t_ps = np.arange(len(e)) * args.dt / 1000.0
    slope = float(np.polyfit(t_ps, e / n, 1)[0])
    return {
        "forces": mode,
        "tol": tol,
        "adjoint_tol": atoms.calc.settings.adjoint_tol if mode == "implicit" else None,
        "warm_start": warm_start,
        "steps": steps,
        "drift_per_atom_eV": float((e[-1] - e[0]) / n),
        "slope_eV_per_atom_per_ps": slope,
        "max_dev_per_atom_eV": float(np.abs(e - e[0]).max() / n),
        "mean_cg_iters": float(np.mean(iters)),
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "mean_adjoint_iters": float(np.mean(adjoint)),
        "energy_trace": e[:: max(1, steps // 200)].tolist(),
        "_e": e,
        "_t": t_ps,
        "_n": n,
    }


def _excess(runs: list[dict[str, Any]], ref: dict[str, Any]) -> None:
    """Add the energy error attributable to the inexact charges: the difference to the
    converged run from the same initial state (the Verlet error is common to both; only
    meaningful while the two trajectories stay close, a few ps: MD is chaotic)."""
    for r in runs:
        diff = (r["_e"] - ref["_e"]) / r["_n"]
        r["excess_slope_eV_per_atom_per_ps"] = float(np.polyfit(r["_t"], diff, 1)[0])
        r["excess_max_per_atom_eV"] = float(np.abs(diff).max())


def _match(imp: dict[str, Any], envs: list[dict[str, Any]]) -> dict[str, Any]:
    """The loosest envelope run whose drift is at most ``imp``'s, and the speed-ups."""
    ok = [e for e in envs if e["mean_abs_excess_slope"] <= imp["mean_abs_excess_slope"]]
    match = max(ok, key=lambda e: e["tol"]) if ok else None
    return {
        "implicit_tol": imp["tol"],
        "adjoint_tol": imp["adjoint_tol"],
        "implicit_ps_per_hour": imp["ps_per_hour"],
        "matching_envelope_tol": None if match is None else match["tol"],
        "envelope_ps_per_hour": None if match is None else match["ps_per_hour"],
        "speedup_implicit_over_envelope": None
        if match is None
        else imp["ps_per_hour"] / match["ps_per_hour"],
        "cpu_speedup_implicit_over_envelope": None
        if match is None
        else imp["ps_per_cpu_hour"] / match["ps_per_cpu_hour"],
    }


def equal_drift(args: argparse.Namespace, steps: int) -> int:
    """The ``--equal-drift`` study (see the module docstring)."""
    adjoint = args.adjoint_tols or [None]
    configs = [("implicit", args.tol, a) for a in adjoint]
    configs += [("envelope", t, None) for t in args.ladder]
    configs.append(("implicit", 1e-10, 1e-6))  # converged reference
    nc, ni = len(configs), len(adjoint)
    runs = []
    for s in range(args.seeds):
        ns = argparse.Namespace(**{**vars(args), "seed": args.seed + s})
        mine = [_run(m, t, steps, ns, True, a) for m, t, a in configs]
        _excess(mine, mine[-1])
        for r in mine:
            r["seed"] = args.seed + s
        runs.extend(mine)
    sim_ps = steps * args.dt / 1000.0
    summary = []
    for j, (m, t, _) in enumerate(configs):
        mine = runs[j::nc]
        sec = float(np.median([r["seconds"] for r in mine]))
        cpu = float(np.median([r["cpu_seconds"] for r in mine]))
        summary.append(
            {
                "forces": m,
                "tol": t,
                "adjoint_tol": mine[0]["adjoint_tol"],
                "mean_abs_excess_slope": float(
                    np.mean([abs(r["excess_slope_eV_per_atom_per_ps"]) for r in mine])
                ),
                "mean_abs_slope": float(
                    np.mean([abs(r["slope_eV_per_atom_per_ps"]) for r in mine])
                ),
                "mean_cg_iters": float(np.mean([r["mean_cg_iters"] for r in mine])),
                "mean_adjoint_iters": float(np.mean([r["mean_adjoint_iters"] for r in mine])),
                "seconds": sec,
                "ps_per_hour": sim_ps / (sec / 3600.0),
                "ps_per_cpu_hour": sim_ps / (cpu / 3600.0),
            }
        )
    # the first implicit configuration (the calculator's default adjoint_tol unless
    # --adjoint-tols says otherwise) gives the headline; each one its own match
    by_adjoint = [_match(imp, summary[ni:-1]) for imp in summary[:ni]]
    result = {**by_adjoint[0], "by_adjoint_tol": by_adjoint}
    for r in runs:
        for k in ("_e", "_t", "_n"):
            r.pop(k)
    cols = list(summary[0])
    table = markdown_table(summary, cols)
    print(table)
    print(result)
    config = {k: v for k, v in vars(args).items() if k != "out"}
    config.update(
        {
            "steps": steps,
            "system": f"NaCl rock salt x{args.repeat}, rattle 0.05 A",
            "solver": "cg",
            "warm_start": True,
            "drift": "mean over seeds of |slope| of (E_total - E_total_converged) per atom "
            "(eV/atom/ps); seconds: median over seeds, wall clock",
            "load_avg": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        }
    )
    name = "md_equal_drift"
    path = write_results(
        name,
        {"config": config, "runs": runs, "summary": summary, "result": result},
        args.out,
        quick=args.quick,
    )
    header = (
        f"NVE time to solution at equal drift, NaCl x{args.repeat} ({steps} steps of "
        f"{args.dt} fs, {args.seeds} seed(s), {args.threads} thread(s))\n\n"
    )
    write_text(figure_path(args.out, f"{name}.md", args.quick), header + table + f"\n\n{result}\n")
    print(f"results: {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the drift benchmark; see ``--help``."""
    p = argparse.ArgumentParser(prog="unrollsci bench md", description=__doc__)
    p.add_argument("--quick", action="store_true", help="200 steps; writes md_quick.json")
    p.add_argument("--steps", type=positive_int_arg, default=2000)
    p.add_argument("--tol", type=float_arg(positive=True), default=1e-4)
    p.add_argument("--dt", type=float_arg(positive=True), default=1.0, help="fs")
    p.add_argument("--temperature", type=float_arg(minimum=0), default=600.0, help="K")
    p.add_argument(
        "--repeat", type=positive_int_arg, default=2, help="8-atom cubes per edge (2 -> 64)"
    )
    p.add_argument("--cutoff", type=float_arg(positive=True), default=8.0)
    p.add_argument("--seed", type=int_arg(0), default=0)
    p.add_argument(
        "--seeds",
        type=positive_int_arg,
        default=1,
        help="independent trajectories (seed, seed+1, ...)",
    )
    p.add_argument("--device", type=device_arg, default="cpu")
    p.add_argument("--threads", type=positive_int_arg, default=1)
    p.add_argument(
        "--jobs",
        type=positive_int_arg,
        default=1,
        help="run the five trajectories in this many processes",
    )
    p.add_argument(
        "--equal-drift",
        action="store_true",
        help="time to solution at equal drift (implicit at --tol vs envelope on --ladder)",
    )
    p.add_argument(
        "--ladder",
        type=float_arg(positive=True),
        nargs="+",
        default=[1e-4, 1e-5, 1e-6, 1e-7, 1e-8],
        help="envelope tolerances for --equal-drift",
    )
    p.add_argument(
        "--adjoint-tols",
        type=float_arg(positive=True),
        nargs="+",
        default=None,
        help="--equal-drift: implicit runs at --tol with each of these adjoint tolerances "
        "(default: the calculator's default)",
    )
    p.add_argument("--out", type=output_dir_arg, default="benchmarks/results")
    args = parse_bench_args(p, argv, lambda a: "md_equal_drift" if a.equal_drift else "md")
    torch.set_num_threads(args.threads)
    steps = 200 if args.quick else args.steps
    if args.equal_drift:
        return equal_drift(args, steps)
    configs = [(m, args.tol, ws) for ws in (True, False) for m in ("implicit", "envelope")]
    configs.append(("implicit", 1e-10, True))  # converged reference: the Verlet error alone
    jobs = [(c, args.seed + s) for s in range(args.seeds) for c in configs]
    if args.jobs > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(args.jobs) as pool:
            futs = [
                pool.submit(_run, m, t, steps, argparse.Namespace(**{**vars(args), "seed": sd}), ws)
                for (m, t, ws), sd in jobs
            ]
            done = [f.result() for f in futs]
    else:
        done = [
            _run(m, t, steps, argparse.Namespace(**{**vars(args), "seed": sd}), ws)
            for (m, t, ws), sd in jobs
        ]
    runs = []
    for (_, sd), r in zip(jobs, done, strict=True):
        r["seed"] = sd
        runs.append(r)
    nc = len(configs)
    for i in range(0, len(runs), nc):
        _excess(runs[i : i + nc], runs[i + nc - 1])
    for r in runs:
        for k in ("_e", "_t", "_n"):
            r.pop(k)
    cols = [
        "forces",
        "tol",
        "warm_start",
        "seed",
        "drift_per_atom_eV",
        "slope_eV_per_atom_per_ps",
        "excess_slope_eV_per_atom_per_ps",
        "excess_max_per_atom_eV",
        "mean_cg_iters",
        "seconds",
    ]
    print(markdown_table(runs, cols))
    # drift = |slope of a linear fit of E_total(t)| per atom, averaged over the seeds
    summary = []
    for j, (m, t, ws) in enumerate(configs):
        mine = runs[j::nc]
        sl = np.abs([r["slope_eV_per_atom_per_ps"] for r in mine])
        summary.append(
            {
                "forces": m,
                "tol": t,
                "warm_start": ws,
                "seeds": len(mine),
                "mean_abs_slope_eV_per_atom_per_ps": float(sl.mean()),
                "max_abs_slope_eV_per_atom_per_ps": float(sl.max()),
                "mean_abs_drift_per_atom_eV": float(
                    np.mean(np.abs([r["drift_per_atom_eV"] for r in mine]))
                ),
                "mean_max_dev_per_atom_eV": float(
                    np.mean([r["max_dev_per_atom_eV"] for r in mine])
                ),
            }
        )
    print()
    print(markdown_table(summary, list(summary[0])))
    ratios = {}
    for k, ws in enumerate(("warm", "cold")):
        imp, env = summary[2 * k], summary[2 * k + 1]
        for key in (
            "mean_abs_slope_eV_per_atom_per_ps",
            "mean_abs_drift_per_atom_eV",
            "mean_max_dev_per_atom_eV",
        ):
            ratios[f"{ws}:{key}"] = env[key] / max(imp[key], 1e-300)
    ref = summary[-1]["mean_abs_slope_eV_per_atom_per_ps"]
    for s_ in summary[:-1]:
        ratios[f"{'warm' if s_['warm_start'] else 'cold'}:{s_['forces']} slope / converged"] = s_[
            "mean_abs_slope_eV_per_atom_per_ps"
        ] / max(ref, 1e-300)
    print("\nratios:")
    for k, v in ratios.items():
        print(f"  {k}: {v:.3g}")
    config = {k: v for k, v in vars(args).items() if k != "out"}
    config.update(
        {
            "steps": steps,
            "system": f"NaCl rock salt x{args.repeat}, rattle 0.05 A",
            "params": NACL_PARAMS,
            "repulsion": {"-".join(k): v for k, v in REPULSION.items()},
            "kernel": "shielded",
        }
    )
    path = write_results(
        "md",
        {
            "config": config,
            "runs": runs,
            "summary": summary,
            "envelope_over_implicit": ratios,
        },
        args.out,
        quick=args.quick,
    )
    print(f"results: {path}")
    return 0
