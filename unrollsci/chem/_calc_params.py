"""The parameters of :class:`QEqCalculator`: defaults, normalisation to plain data (what ASE
writes to trajectories and databases), the solve settings built from them, and what makes
the calculator's results stale (changed parameters: :func:`stale`; changed atoms:
``_compare_atoms``)."""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from ase.calculators.calculator import all_changes

from .._validation import check_count, check_device
from ._geometry import check_ewald_accuracy
from ._pcg import out_of_range
from ._settings import COULOMB_CONSTANT, EWALD_METHODS, QEqSettings
from ._short_range import BornMayer

__all__ = [
    "ADJOINT_TARGET",
    "DEFAULT_PARAMETERS",
    "adjoint_tol",
    "build",
    "check_results",
    "copy_value",
    "normalize",
    "parameter_property",
    "plain_short_range",
    "snapshot",
    "stale",
]

#: ``QEqCalculator.default_parameters``: plain data only (strings, numbers, None, dicts)
DEFAULT_PARAMETERS: dict[str, Any] = {
    "params": None,
    "kernel": "shielded",
    "cutoff": 10.0,
    "coulomb_constant": COULOMB_CONSTANT,
    "ewald": False,
    "ewald_accuracy": 1e-8,
    "ewald_method": "auto",
    "total_charge": None,
    "tol": 1e-8,
    "max_iter": None,
    "iterations": None,
    "forces": "implicit",
    "adjoint_tol": None,
    "short_range": None,
    "warm_start": True,
    "device": "cpu",
    "dtype": "float64",
    "check_definite": "auto",
    "skin": 1.0,
    "solver": "auto",
}

#: parameters that cannot change the results (only how fast they are reached)
NEUTRAL: frozenset[str] = frozenset({"skin"})

#: values of the ``solver`` parameter
SOLVERS = ("auto", "cg")

_DTYPES = {"float64": torch.float64, "float32": torch.float32}


#: the calculator's default adjoint tolerance (``adjoint_tol=None``) is
#: ``clip(ADJOINT_TARGET / tol, tol, 1)``: the adjoint reduces the charge residual to
#: ``tol * adjoint_tol = ADJOINT_TARGET`` (forces as accurate as envelope forces at that
#: tolerance; chosen from the measurements in docs/chem.md), and never further than ``tol``
#: (where the implicit forces' own second-order error ``tol^2`` is the larger)
ADJOINT_TARGET = 1e-8


def adjoint_tol(tol: Any, value: Any = None) -> Any:
    """The calculator's adjoint tolerance: ``value``, or (None) ``clip(ADJOINT_TARGET /
    tol, tol, 1)``.

    The adjoint's right-hand side is the charge residual, so its relative tolerance
    ``eps`` moves the forces by about ``eps * |F_implicit - F_envelope|`` (docs/chem.md).
    A ``tol`` that is not a positive number is left for the solve to reject."""
    if value is not None:
        return value
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol > 0:
        return None
    return min(1.0, max(float(tol), ADJOINT_TARGET / tol))


def _optional_float(name: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"Expected {name} to be a number or None (got {type(value).__name__}).")
    return float(value)


def _short_range(value: Any) -> Any:
    """None, ``"radii"``, or the plain-data form of a :class:`BornMayer`; any other object
    with an ``energy`` method is kept as it is (and is not serialisable)."""
    if value is None:
        return None
    if isinstance(value, str):
        BornMayer(default=value)  # validates the name
        return value
    if isinstance(value, BornMayer):
        return value.todict()
    if isinstance(value, Mapping):
        return BornMayer.fromdict(value).todict()
    if hasattr(value, "energy"):
        return value
    raise TypeError(
        "Expected short_range to be None, 'radii', a dict of Born-Mayer pairs or a "
        f"BornMayer (got {type(value).__name__})."
    )


def normalize(key: str, value: Any) -> Any:
    """``value`` of parameter ``key`` as stored in ``calc.parameters`` (plain data)."""
    if key not in DEFAULT_PARAMETERS:
        raise TypeError(
            f"QEqCalculator got unexpected keyword argument(s) [{key!r}]; the parameters are "
            f"{sorted(DEFAULT_PARAMETERS)}."
        )
    if key == "params":
        if value is None:
            return None
        if not isinstance(value, Mapping) or not all(
            isinstance(v, Mapping) for v in value.values()
        ):
            raise TypeError(
                "Expected params to be None or {element: {name: value}} "
                f"(got {type(value).__name__})."
            )
        return {str(el): copy.deepcopy(dict(entry)) for el, entry in value.items()}
    if key == "short_range":
        return _short_range(value)
    if key == "device":
        dev = check_device(value)
        return "cpu" if dev is None else str(dev)
    if key == "dtype":
        for name, dt in _DTYPES.items():
            if value == dt or value == name:
                return name
        raise TypeError(f"Expected dtype torch.float32 or torch.float64 (got {value}).")
    if key in ("cutoff", "total_charge"):
        v = _optional_float(key, value)
        if v is not None and not math.isfinite(v):
            raise ValueError(f"Expected a finite {key} or None (got {value!r}).")
        if key == "cutoff" and v is not None and v <= 0:
            raise ValueError(f"Expected cutoff > 0 or None (got {value!r}).")
        return v
    if key in ("tol", "coulomb_constant"):
        v = _optional_float(key, value)
        if v is None or not (math.isfinite(v) and v > 0):
            raise ValueError(f"Expected a finite {key} > 0 (got {value!r}).")
        return v
    if key == "adjoint_tol":
        eps = _optional_float(key, value)
        if eps is not None and not 0.0 < eps <= 1.0:
            raise ValueError(f"Expected adjoint_tol in (0, 1] or None (got {value!r}).")
        return eps
    if key == "skin":
        skin = _optional_float(key, value)
        if skin is None or not (skin >= 0 and math.isfinite(skin)):
            raise ValueError(f"Expected skin >= 0 (Angstrom) (got {value!r}).")
        return skin
    if key == "ewald_method":
        if value not in EWALD_METHODS:
            raise ValueError(f"Expected ewald_method in {EWALD_METHODS} (got {value!r}).")
        return value
    if key == "solver":
        if value not in SOLVERS:
            raise ValueError(f"Expected solver in {SOLVERS} (got {value!r}).")
        return value
    if key == "ewald_accuracy":
        return check_ewald_accuracy(value)
    if key in ("iterations", "max_iter"):
        return check_count(key, value, 0, optional=True)
    if key in ("ewald", "warm_start"):
        if not isinstance(value, bool):
            raise TypeError(f"Expected {key} to be True or False (got {value!r}).")
        return value
    return value


def plain_short_range(value: Any) -> bool:
    """Whether a stored ``short_range`` is plain data (None, a table name or a
    :meth:`BornMayer.todict` dict), not a custom object."""
    return value is None or isinstance(value, (str, Mapping))


def copy_value(value: Any) -> Any:
    """A parameter value that shares nothing with ``value``: containers are deep-copied, a
    custom short-range object is kept as it is (the same object)."""
    if isinstance(value, (Mapping, list, tuple)):
        return copy.deepcopy(value)
    return value


def parameter_property(key: str, doc: str) -> property:
    """A calculator attribute that reads a copy of ``calc.parameters[key]`` and writes
    through ``calc.set(key=value)`` (so that a change clears the results it invalidates)."""

    def get(calc: Any) -> Any:
        return copy_value(calc.parameters[key])

    def put(calc: Any, value: Any) -> None:
        calc.set(**{key: value})

    return property(get, put, doc=doc)


def snapshot(p: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of the parameters ``p`` to tell later edits of ``p`` from (:func:`stale`)."""
    return {key: copy_value(value) for key, value in p.items()}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, Mapping) or isinstance(b, Mapping):
        if not (isinstance(a, Mapping) and isinstance(b, Mapping)) or a.keys() != b.keys():
            return False
        return all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        if not (isinstance(a, (list, tuple)) and isinstance(b, (list, tuple))):
            return False
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if a is b:
        return True
    scalars = (str, int, float, type(None))
    if isinstance(a, scalars) and isinstance(b, scalars):
        return type(a) is type(b) and a == b
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - an array or tensor: no single truth value
        return False


def stale(p: Mapping[str, Any], snap: Mapping[str, Any] | None) -> set[str]:
    """The parameters whose value in ``p`` differs from the :func:`snapshot` ``snap`` (all
    of them when there is none)."""
    if snap is None:
        return set(p)
    try:  # the usual case, at every property request: nothing changed
        if p == snap:
            return set()
    except Exception:  # noqa: BLE001 - a value without a single truth value
        pass
    keys = set(p) | set(snap)
    return {k for k in keys if k not in p or k not in snap or not _same(p[k], snap[k])}


@dataclass(frozen=True)
class Built:
    """What a calculation needs from the parameters (rebuilt when they change)."""

    settings: QEqSettings
    device: torch.device
    dtype: torch.dtype


def build(p: Mapping[str, Any]) -> Built:
    """Validate the combination of parameters ``p`` and build the solve settings."""
    sr = p["short_range"]
    if isinstance(sr, str):
        sr = BornMayer(default=sr)
    elif isinstance(sr, Mapping):
        sr = BornMayer.fromdict(sr)
    cutoff = p["cutoff"]
    settings = QEqSettings(  # checks the combination (e.g. the short-range cutoff)
        params=p["params"],
        kernel=p["kernel"],
        cutoff=cutoff,
        coulomb_constant=p["coulomb_constant"],
        ewald=p["ewald"],
        ewald_accuracy=p["ewald_accuracy"],
        ewald_method=p["ewald_method"],
        total_charge=0.0 if p["total_charge"] is None else p["total_charge"],
        tol=p["tol"],
        max_iter=p["max_iter"],
        iterations=p["iterations"],
        grad=p["forces"],
        short_range=sr,
        adjoint_tol=adjoint_tol(p["tol"], p["adjoint_tol"]),
        check_definite=p["check_definite"],
        grad_name="forces",
    )
    return Built(settings, torch.device(p["device"]), _DTYPES[p["dtype"]])


def check_results(calc: Any) -> None:
    """Clear the results of ``calc`` and raise ``ValueError`` if one of them is NaN or Inf
    (charges or an energy beyond the range of the dtype, e.g. float32 with a huge chi)."""
    bad = sorted(k for k, v in calc.results.items() if not np.isfinite(v).all())
    if bad:
        calc.reset()
        raise ValueError(out_of_range(f"QEq results {bad} are not finite (NaN or Inf)", calc.dtype))


def _close(a: Any, b: Any, tol: float) -> bool:
    """ASE's ``equal(a, b, atol=tol)`` (same shape, all close) with an exact-equality
    shortcut."""
    if np.shape(a) != np.shape(b):
        return False
    return bool(np.array_equal(a, b) or np.allclose(a, b, rtol=0, atol=tol))


def _compare_atoms(old: Any, atoms: Any, tol: float) -> list[str]:
    """ASE's ``compare_atoms(old, atoms, tol)`` (the same list of changes), cheaper for
    the common cases of an MD step (arrays exactly equal or clearly different)."""
    if old is None:
        return list(all_changes)
    changes = [p for p in ("cell", "pbc") if not _close(getattr(old, p), getattr(atoms, p), tol)]
    a, b = old.arrays, atoms.arrays
    for prop in all_changes:
        if prop in ("cell", "pbc"):
            continue
        if (prop in a) != (prop in b):
            changes.append(prop)
        elif prop in a and not _close(a[prop], b[prop], tol):
            changes.append(prop)
    return changes
