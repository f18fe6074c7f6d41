"""Per-element QEq parameters: a built-in table and user overrides.

Built-in values: electronegativity ``chi`` (eV) and idempotential ``J`` (eV, the
hardness in ``E = chi q + J q^2 / 2``) and radius ``R`` (Angstrom) from
A. K. Rappe and W. A. Goddard III, "Charge equilibration for molecular dynamics
simulations", J. Phys. Chem. 95, 3358 (1991), Table I; the same chi and J/2 are the
"Xi" and "Hardness" columns of UFF (Rappe et al., J. Am. Chem. Soc. 114, 10024
(1992)). Derived defaults (a convention of this package, stated in docs/chem.md):

* ``gamma`` (shielded kernel, 1/Angstrom) = J / (2 k_e): the shielded interaction of two
  like atoms at r = 0 is half their hardness. This is a choice, not a fit: with J / k_e
  61 of the 143 G2 molecules (``ase.collections.g2``) made only of tabulated elements
  are polarization catastrophes; with J / (2 k_e) all 143 are positive definite
  (max |q| 1.41 e);
* ``sigma`` (gaussian kernel, Angstrom) = R.

Users override any entry with ``params={"Na": {"chi": 2.843, "eta": 12.0, "gamma": 0.7}}``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from ase.data import atomic_numbers, chemical_symbols

from .._validation import check_device
from ._settings import COULOMB_CONSTANT

__all__ = ["BUILTIN_PARAMS", "resolve_params", "KEYS"]

_SYMBOLS = np.array(chemical_symbols, dtype=object)


def _symbols(numbers: Any, n: int) -> list[str]:
    """The N chemical symbols of ``numbers`` (atomic numbers or symbols); an integer array
    is converted without a Python loop."""
    arr = None if isinstance(numbers, str) else np.asarray(numbers)
    if arr is not None and arr.ndim == 1 and arr.dtype.kind in "iu":
        bad = (arr < 1) | (arr >= len(chemical_symbols))
        if bool(bad.any()):
            raise ValueError(f"Expected atomic numbers in 1..118 (got {int(arr[bad][0])}).")
        out = _SYMBOLS[arr].tolist()
    else:
        out = []
        for z in numbers:
            if isinstance(z, str):
                if z not in atomic_numbers:
                    raise ValueError(f"Expected chemical symbols in 'numbers' (got {z!r}).")
                out.append(z)
            else:
                if isinstance(z, (bool, np.bool_)) or not float(z).is_integer():
                    raise ValueError(f"Expected integer atomic numbers (got {z!r}).")
                zi = int(z)
                if not 0 < zi < len(chemical_symbols):
                    raise ValueError(f"Expected atomic numbers in 1..118 (got {zi}).")
                out.append(chemical_symbols[zi])
    if len(out) != n:
        raise ValueError(f"Expected {n} atomic numbers to match 'positions' (got {len(out)}).")
    return out


#: symbol -> (chi [eV], J [eV], R [Angstrom]); Rappe & Goddard (1991) Table I / UFF (1992).
_RAPPE_GODDARD: dict[str, tuple[float, float, float]] = {
    "H": (4.528, 13.8904, 0.371),
    "Li": (3.006, 4.772, 1.557),
    "C": (5.343, 10.126, 0.759),
    "N": (6.899, 11.760, 0.715),
    "O": (8.741, 13.364, 0.669),
    "F": (10.874, 14.948, 0.706),
    "Na": (2.843, 4.592, 2.085),
    "Si": (4.168, 6.974, 1.176),
    "P": (5.463, 8.000, 1.102),
    "S": (6.928, 8.972, 1.047),
    "Cl": (8.564, 9.892, 0.994),
    "K": (2.421, 3.840, 2.586),
}

KEYS = ("chi", "eta", "gamma", "sigma")
_KE_DEFAULT = COULOMB_CONSTANT  # eV A / e^2: the gamma defaults use the same constant


def _builtin(symbol: str) -> dict[str, float]:
    chi, j, r = _RAPPE_GODDARD[symbol]
    return {"chi": chi, "eta": j, "gamma": 0.5 * j / _KE_DEFAULT, "sigma": r, "radius": r}


#: the built-in table as dicts (copy before editing).
BUILTIN_PARAMS: dict[str, dict[str, float]] = {s: _builtin(s) for s in _RAPPE_GODDARD}


def _check_number(symbol: str, key: str, value: Any) -> None:
    """A parameter value must be a real number (int, float, numpy scalar or 0-d array,
    one-element tensor); ``True`` is not 1.0 and ``None`` / text are not numbers."""
    if isinstance(value, torch.Tensor):
        ok = value.numel() == 1 and value.dtype != torch.bool
    elif isinstance(value, np.ndarray):  # a 0-d array (np.load, np.asarray(x), arr[()])
        ok = value.ndim == 0 and value.dtype.kind in "iuf"
    else:
        real = (int, float, np.integer, np.floating)
        ok = isinstance(value, real) and not isinstance(value, (bool, np.bool_))
    if not ok:
        raise TypeError(
            f"Expected a number for params[{symbol!r}][{key!r}] (got {value!r} of type "
            f"{type(value).__name__})."
        )


def element_table(
    symbols: Sequence[str], params: Mapping[str, Mapping[str, float]] | None
) -> dict[str, dict[str, float]]:
    """Parameters for each distinct symbol: built-in table updated by ``params``."""
    params = dict(params or {})
    for key, entry in params.items():
        if key not in chemical_symbols:
            raise ValueError(f"Expected element symbols as keys of 'params' (got {key!r}).")
        if not isinstance(entry, Mapping):
            raise TypeError(
                f"Expected params[{key!r}] to be a dict like {{'chi': 2.8, 'eta': 12.0}} "
                f"(got {type(entry).__name__})."
            )
        bad = set(entry) - set(KEYS) - {"radius"}
        if bad:
            raise ValueError(
                f"Unknown key(s) {sorted(bad)} in params[{key!r}]; allowed: {[*KEYS, 'radius']}."
            )
        for k, v in entry.items():
            _check_number(key, k, v)
    table: dict[str, dict[str, float]] = {}
    for s in dict.fromkeys(symbols):
        entry = dict(BUILTIN_PARAMS.get(s, {}))
        entry.update(params.get(s, {}))
        missing = [k for k in ("chi", "eta") if k not in entry]
        if missing:
            known = sorted(set(BUILTIN_PARAMS) | set(params))
            raise ValueError(
                f"No QEq parameters for element {s!r} (missing {missing}); the built-in table "
                f"and 'params' cover {known}. Pass params={{{s!r}: {{'chi': ..., 'eta': ..., "
                f"'gamma': ...}}}}."
            )
        if "gamma" not in entry:
            entry["gamma"] = 0.5 * entry["eta"] / _KE_DEFAULT
        if "sigma" not in entry:
            entry["sigma"] = entry.get("radius", 1.0)
        for k in KEYS:
            v = float(entry[k])
            if v != v or abs(v) == float("inf"):
                raise ValueError(f"Expected a finite params[{s!r}][{k!r}] (got {v}).")
            if k in ("gamma", "sigma") and v <= 0:
                raise ValueError(f"Expected params[{s!r}][{k!r}] > 0 (got {v}).")
        table[s] = entry
    return table


def resolve_params(
    symbols: Sequence[str],
    params: Mapping[str, Mapping[str, float]] | None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float64,
) -> dict[str, torch.Tensor]:
    """Per-atom parameter tensors ``{"chi", "eta", "gamma", "sigma"}``, each of shape (N,).

    ``device`` must exist here (``"cuda"`` without CUDA raises ``ValueError``).

    Args:
        symbols: element symbol of each atom.
        params: per-element overrides ``{symbol: {key: value}}`` (None: the built-in table).
        device, dtype: of the returned tensors.

    Example:
        >>> resolve_params(["O", "H", "H"], None)["chi"].shape
        torch.Size([3])
    """
    device = check_device(device)
    table = element_table(symbols, params)
    out: dict[str, Any] = {}
    for k in KEYS:
        out[k] = torch.tensor([table[s][k] for s in symbols], dtype=dtype, device=device)
    return out
