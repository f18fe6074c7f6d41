"""``unrollsci relax FILE``: relax a structure with QEq + short-range repulsion.

File safety: an existing output is replaced only with ``--force``, an input (FILE, the
``--params`` file) never is; nothing is created before the first energy and forces have
been computed, and the relaxed structure and trajectory are written to temporary files
in their folders and moved into place at the end, so a failed run leaves no file behind
and an interrupted one leaves earlier files as they were. Before the relaxation, the
starting structure is written to a temporary file in --out's format (then removed): a
format that cannot hold the structure (e.g. POSCAR for a molecule, which has no cell)
is a usage error before any work.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from .._argtypes import device_arg, existing_file_arg, float_arg, int_arg

__all__ = [
    "relax_main",
    "EXIT_CONVERGED",
    "EXIT_NOT_CONVERGED",
    "EXIT_USAGE",
    "EXIT_INPUT",
    "EXIT_OUTPUT",
    "EXIT_INTERRUPTED",
]

#: exit status of ``unrollsci relax``
EXIT_CONVERGED = 0
EXIT_NOT_CONVERGED = 1
EXIT_USAGE = 2
EXIT_INPUT = 3
EXIT_OUTPUT = 4
EXIT_INTERRUPTED = 130

PROG = "unrollsci relax"

EPILOG = """\
exit status:
  0  converged; the relaxed structure and its trajectory were written
  1  not converged within --steps; the last structure and trajectory were written
  2  usage error: a bad option value, a missing FILE or --params file, a --params file
     that is not JSON, an output that exists (pass --force) or is an input (never
     replaced), or an --out format that cannot hold the structure (e.g. POSCAR for a
     molecule); nothing was written
  3  input or computation error: FILE cannot be read, an element has no QEq parameters,
     the parameters are invalid, the charge solve fails; nothing was written
  4  output error: the relaxed structure could not be written in --out's format
     (nothing written), or an output could not be moved into place
  130  interrupted (Ctrl-C), or 143 terminated (SIGTERM): the temporary files are
     removed and existing files are left as they were

outputs: --out (default FILE_relaxed.xyz) and --traj (default: --out with suffix .traj)."""


class _Params(NamedTuple):
    path: Path
    table: dict[str, Any]


# -- argparse types: a bad value exits with status 2 and one line, no traceback --------------


_positive_float = float_arg(positive=True)
_finite_float = float_arg(positive=False)
_steps = int_arg(0)


def _cutoff(text: str) -> float | None:
    if text.strip().lower() == "none":
        return None
    try:
        return _positive_float(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected a cutoff in Angstrom (> 0) or 'none', got {text!r}"
        ) from None


_device = device_arg


def _existing_file(text: str) -> Path:
    return Path(existing_file_arg(text))


def _params(text: str) -> _Params:
    path = _existing_file(text)
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise argparse.ArgumentTypeError(f"cannot read {text!r}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not valid JSON: {exc}") from None
    if not isinstance(table, dict) or not all(isinstance(v, dict) for v in table.values()):
        raise argparse.ArgumentTypeError(
            f"{text!r} must hold a JSON object {{element: {{chi, eta, gamma}}}}"
        )
    return _Params(path, table)


def _structure_out(text: str) -> Path:
    """A structure file name whose format (from its extension) ASE can write."""
    from ase.io.formats import filetype, ioformats

    path = Path(text)
    try:
        fmt = filetype(path, read=False)
    except Exception:  # noqa: BLE001 - ASE raises several types for a name it cannot place
        fmt = None
    if fmt not in ioformats or not ioformats[fmt].can_write:
        raise argparse.ArgumentTypeError(
            f"cannot tell a structure format ASE writes from the name {text!r} "
            "(use e.g. .xyz, .cif, .traj, .pdb, POSCAR)"
        )
    return path


def _traj_out(text: str) -> Path:
    path = Path(text)
    if path.suffix != ".traj":
        raise argparse.ArgumentTypeError(f"expected a file name ending in .traj, got {text!r}")
    return path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Relax the structure in FILE (any format ASE reads) with QEq + "
        "short-range repulsion, and write it and its trajectory.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("file", type=_existing_file, help="structure file (xyz, cif, POSCAR, ...)")
    p.add_argument(
        "--out", type=_structure_out, default=None, help="relaxed structure (FILE_relaxed.xyz)"
    )
    p.add_argument(
        "--traj", type=_traj_out, default=None, help="trajectory (default: --out as .traj)"
    )
    p.add_argument("--force", action="store_true", help="replace existing output files")
    p.add_argument("--fmax", type=_positive_float, default=0.01, help="force criterion, eV/A")
    p.add_argument("--steps", type=_steps, default=500, help="at most this many steps")
    p.add_argument("--optimizer", choices=["BFGS", "FIRE"], default="BFGS")
    p.add_argument("--kernel", choices=["shielded", "point", "gaussian"], default="shielded")
    p.add_argument("--cutoff", type=_cutoff, default=10.0, help="Angstrom, or 'none' (molecules)")
    p.add_argument("--ewald", action="store_true")
    p.add_argument(
        "--ewald-method",
        choices=["auto", "ewald", "pme"],
        default="auto",
        help="reciprocal part with --ewald: explicit sum, PME (particle mesh), or by cost",
    )
    p.add_argument(
        "--total-charge",
        type=_finite_float,
        default=None,
        help="default: the sum of the initial charges in the input file (0 if it has none)",
    )
    p.add_argument("--forces", choices=["implicit", "unrolled", "envelope"], default="implicit")
    p.add_argument("--tol", type=_positive_float, default=1e-8, help="QEq solver tolerance")
    p.add_argument(
        "--params", type=_params, default=None, help="JSON file {element: {chi, eta, gamma}}"
    )
    p.add_argument("--device", type=_device, default="cpu", help="cpu, cuda, cuda:1, ...")
    return p


# -- file handling ----------------------------------------------------------------------------


@contextlib.contextmanager
def _temp_next_to(path: Path) -> Iterator[Path]:
    """A fresh temporary file name in ``path``'s folder (same suffix); removed on exit."""
    from .._io import temp_prefix

    suffix = path.suffix if len(path.suffix) <= 16 else ""  # a legal name stays legal
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _error(message: str, code: int) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return code


def _write_structure(path: Path, atoms: Any, fmt: str) -> str | None:
    """Write ``atoms`` to ``path`` as ``fmt``; None, or the reason it failed (one line)."""
    from ase.io import write

    try:
        write(path, atoms, format=fmt)
    except Exception as exc:  # noqa: BLE001 - ASE's writers raise many types
        return " ".join(f"{type(exc).__name__}: {exc}".split())
    return None


def relax_main(argv: list[str] | None = None) -> int:
    """Relax the structure in FILE (any format ASE reads) and write it and its trajectory.

    Returns the exit status (see ``EPILOG``); a bad argument exits with status 2. Ctrl-C
    returns 130 and SIGTERM exits with 143, after the temporary files are removed.
    """
    from .._io import run_command

    return run_command(_relax_main, argv)


def _relax_main(argv: list[str] | None) -> int:
    from .._io import (
        OutputExistsError,
        check_output_folder,
        check_writable,
        never_replace,
        publish,
    )
    from .._validation import ConvergenceError

    p = _parser()
    args = p.parse_args(argv)
    if args.ewald_method != "auto" and not args.ewald:  # exits with status 2
        p.error(f"--ewald-method {args.ewald_method} needs --ewald (got no --ewald)")
    inp: Path = args.file
    out: Path = args.out or inp.with_name(inp.stem + "_relaxed.xyz")
    traj_path: Path = args.traj or out.with_suffix(".traj")
    inputs = [inp] + ([args.params.path] if args.params else [])
    try:
        check_writable([out, traj_path], inputs=inputs, force=args.force)
    except (OSError, ValueError) as exc:
        hint = ""
        if args.traj is None and traj_path.resolve() in {i.resolve() for i in inputs}:
            hint = f" ({traj_path} is the trajectory's default name; choose another with --traj)"
        return _error(f"{exc}{hint}", EXIT_USAGE)
    for folder in {out.parent, traj_path.parent}:
        if not folder.is_dir():
            return _error(f"the output folder {str(folder)!r} does not exist", EXIT_USAGE)
        try:
            check_output_folder(folder)
        except OSError as exc:
            return _error(str(exc), EXIT_USAGE)

    from ase.io import read
    from ase.io.formats import filetype
    from ase.io.trajectory import Trajectory
    from ase.optimize import BFGS, FIRE

    from ._calculator import QEqCalculator

    try:
        atoms = read(inp)
    except Exception as exc:  # noqa: BLE001 - report any reader failure plainly
        return _error(f"could not read {str(inp)!r}: {exc}", EXIT_INPUT)
    fmt = filetype(out, read=False)
    # the format must hold this structure: find out now, not after the relaxation
    try:
        with _temp_next_to(out) as trial:
            failure = _write_structure(trial, atoms, fmt)
    except OSError as exc:  # no file can be created in the output folder
        return _error(f"cannot create a file next to {str(out)!r}: {exc}", EXIT_USAGE)
    if failure is not None:
        return _error(
            f"cannot write the structure of {str(inp)!r} as {fmt!r} ({str(out)!r}): {failure}",
            EXIT_USAGE,
        )
    library_errors = (ValueError, TypeError, KeyError, ConvergenceError, ImportError)
    try:
        atoms.calc = QEqCalculator(
            params=args.params.table if args.params else None,
            kernel=args.kernel,
            cutoff=args.cutoff,
            ewald=args.ewald,
            ewald_method=args.ewald_method,
            total_charge=args.total_charge,
            forces=args.forces,
            tol=args.tol,
            short_range="radii",
            device=args.device,
        )
        # the first energy and forces before any file is created: a structure the
        # calculator rejects (unknown element, overlapping atoms, ...) leaves no file
        atoms.get_potential_energy()
        atoms.get_forces()
    except library_errors as exc:
        return _error(str(exc), EXIT_INPUT)

    opt_cls = BFGS if args.optimizer == "BFGS" else FIRE
    opt = None
    with _temp_next_to(traj_path) as tmp_traj, _temp_next_to(out) as tmp_out:
        try:
            traj = Trajectory(str(tmp_traj), "w", atoms)
            try:
                opt = opt_cls(atoms, logfile=None)
                opt.attach(traj)

                def report() -> None:
                    f = atoms.get_forces()
                    sol = atoms.calc.solution
                    direct = sol.stats.get("solver") == "direct"
                    qeq = (
                        "QEq solved directly" if direct else f"QEq CG iterations = {sol.iterations}"
                    )
                    print(
                        f"step {opt.nsteps:4d}  E = {atoms.get_potential_energy():.6f} eV  "
                        f"fmax = {((f**2).sum(1) ** 0.5).max():.4f} eV/A  {qeq}",
                        flush=True,
                    )

                opt.attach(report)
                converged = opt.run(fmax=args.fmax, steps=args.steps)
            finally:
                traj.close()
        except library_errors as exc:
            steps = opt.nsteps if opt is not None else 0
            return _error(f"{exc} (after {steps} steps; nothing written)", EXIT_INPUT)
        failure = _write_structure(tmp_out, atoms, fmt)
        if failure is not None:
            return _error(
                f"could not write the relaxed structure to {str(out)!r}: {failure} (after "
                f"{opt.nsteps} steps; nothing written)",
                EXIT_OUTPUT,
            )
        # an output that appeared while the relaxation ran is not replaced without --force
        try:
            with never_replace([out, traj_path], force=args.force):
                publish(tmp_out, out)
                try:
                    publish(tmp_traj, traj_path)
                except OutputExistsError:
                    # the trajectory appeared while this ran: take back the structure just
                    # written (it did not exist a moment ago), so that nothing is written
                    Path(out).unlink(missing_ok=True)
                    raise
        except OutputExistsError as exc:
            return _error(str(exc), EXIT_USAGE)
        except OSError as exc:
            return _error(f"could not write the outputs: {exc}", EXIT_OUTPUT)
    print(
        f"{'converged' if converged else 'NOT converged'} after {opt.nsteps} steps; "
        f"relaxed structure: {out}; trajectory: {traj_path}"
    )
    return EXIT_CONVERGED if converged else EXIT_NOT_CONVERGED
