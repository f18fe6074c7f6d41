"""``unrollsci relax FILE``: relax a structure with QEq + short-range repulsion."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["relax_main"]


def relax_main(argv: list[str] | None = None) -> int:
    """Relax the structure in FILE (any format ASE reads) and write it and its trajectory."""
    p = argparse.ArgumentParser(prog="unrollsci relax", description=relax_main.__doc__)
    p.add_argument("file", help="structure file (xyz, cif, POSCAR, ...)")
    p.add_argument("--out", default=None, help="relaxed structure (default FILE_relaxed.xyz)")
    p.add_argument("--fmax", type=float, default=0.01, help="force criterion, eV/A")
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--optimizer", choices=["BFGS", "FIRE"], default="BFGS")
    p.add_argument("--kernel", choices=["shielded", "point", "gaussian"], default="shielded")
    p.add_argument("--cutoff", default="10.0", help="Angstrom, or 'none' (molecules)")
    p.add_argument("--ewald", action="store_true")
    p.add_argument("--total-charge", type=float, default=0.0)
    p.add_argument("--forces", choices=["implicit", "unrolled", "envelope"], default="implicit")
    p.add_argument("--tol", type=float, default=1e-8)
    p.add_argument("--params", default=None, help="JSON file {element: {chi, eta, gamma}}")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)

    from ase.io import read, write
    from ase.io.trajectory import Trajectory
    from ase.optimize import BFGS, FIRE

    from ._calculator import QEqCalculator

    try:
        atoms = read(args.file)
    except Exception as exc:  # noqa: BLE001 - report any reader failure plainly
        print(f"could not read {args.file!r}: {exc}", file=sys.stderr)
        return 2
    cutoff = None if args.cutoff.lower() == "none" else float(args.cutoff)
    params = json.loads(Path(args.params).read_text()) if args.params else None
    atoms.calc = QEqCalculator(
        params=params,
        kernel=args.kernel,
        cutoff=cutoff,
        ewald=args.ewald,
        total_charge=args.total_charge,
        forces=args.forces,
        tol=args.tol,
        short_range="radii",
        device=args.device,
    )
    out = (
        Path(args.out)
        if args.out
        else Path(args.file).with_name(Path(args.file).stem + "_relaxed.xyz")
    )
    traj_path = out.with_suffix(".traj")
    opt_cls = BFGS if args.optimizer == "BFGS" else FIRE
    traj = Trajectory(str(traj_path), "w", atoms)
    opt = opt_cls(atoms, logfile=None)
    opt.attach(traj)

    def report() -> None:
        f = atoms.get_forces()
        sol = atoms.calc.solution
        print(
            f"step {opt.nsteps:4d}  E = {atoms.get_potential_energy():.6f} eV  "
            f"fmax = {((f**2).sum(1) ** 0.5).max():.4f} eV/A  "
            f"QEq CG iterations = {sol.iterations}",
            flush=True,
        )

    opt.attach(report)
    converged = opt.run(fmax=args.fmax, steps=args.steps)
    traj.close()
    write(out, atoms)
    print(
        f"{'converged' if converged else 'NOT converged'} after {opt.nsteps} steps; "
        f"relaxed structure: {out}; trajectory: {traj_path}"
    )
    return 0 if converged else 1
