"""Short-range repulsion so that a QEq energy has a minimum (Born-Mayer pairs)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from ase.data import atomic_numbers

from ._geometry import taper
from ._params import BUILTIN_PARAMS

__all__ = ["BornMayer"]


def _key(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a <= b else (b, a)


def _pair_symbols(k: object) -> tuple[str, str]:
    """The two element symbols of a pair key ``"Na-Cl"`` or ``("Na", "Cl")``; a key that is
    not two element symbols (``"NA-Cl"``, ``"Xx"``: a pair that would never match an atom,
    silently no repulsion) raises ``ValueError`` naming it."""
    parts = k.split("-") if isinstance(k, str) else k
    try:
        a, b = parts  # type: ignore[misc]
    except (TypeError, ValueError):
        a = b = None
    if not (a in atomic_numbers and b in atomic_numbers and a != "X" and b != "X"):
        raise ValueError(
            f"Expected a pair key of two element symbols, 'Na-Cl' or ('Na', 'Cl') (got {k!r})."
        )
    return a, b


class BornMayer:
    """Born-Mayer repulsion ``E = sum_pairs A_ab exp(-r / rho_ab) * Tap(r)``.

    Args:
        pairs: ``{("Na", "Cl"): (A [eV], rho [Angstrom]), "Na-Na": (...), ...}``. Pairs not
            listed fall back to the ``default`` rule when given, else contribute nothing.
        default: ``"radii"`` builds ``A exp(-(r - R_a - R_b) / rho)`` with ``A = 1 eV``,
            ``rho = 0.3`` Angstrom from the radii ``R`` (a generic wall, not a fitted
            potential): the ``radius`` of the solve's ``params``, else the built-in table's;
            an element with neither raises ``ValueError``. Or None.
        cutoff: taper radius (Angstrom) of the repulsion (smooth to zero there); None
            uses the calculator's cutoff.

    ``todict()`` / ``fromdict()`` convert to and from plain data (what an ASE trajectory or
    database stores as the calculator's parameters).

    Example:
        >>> rep = BornMayer({("Na", "Cl"): (1200.0, 0.32)})
        >>> rep.todict()["pairs"]
        {'Cl-Na': [1200.0, 0.32]}
        >>> BornMayer.fromdict(rep.todict()) == rep
        True
    """

    def __init__(
        self,
        pairs: Mapping[object, Sequence[float]] | None = None,
        *,
        default: str | None = None,
        cutoff: float | None = None,
    ) -> None:
        self.pairs: dict[tuple[str, str], tuple[float, float]] = {}
        for k, v in (pairs or {}).items():
            a, b = _pair_symbols(k)
            big_a, rho = (float(x) for x in v)
            if not (0 <= big_a < math.inf and 0 < rho < math.inf):  # NaN fails both
                raise ValueError(f"Expected finite A >= 0 and rho > 0 for pair {k!r} (got {v!r}).")
            self.pairs[_key(a, b)] = (big_a, rho)
        if default not in (None, "radii"):
            raise ValueError(f"Expected default=None or 'radii' (got {default!r}).")
        self.default = default
        if cutoff is not None and not cutoff > 0:  # NaN too
            raise ValueError(f"Expected cutoff > 0 (got {cutoff!r}).")
        self.cutoff = cutoff

    def todict(self) -> dict[str, Any]:
        """Plain data (JSON-safe) that :meth:`fromdict` turns back into an equal object:
        ``{"pairs": {"Cl-Na": [A, rho], ...}, "default": ..., "cutoff": ...}``."""
        pairs = {f"{a}-{b}": [big_a, rho] for (a, b), (big_a, rho) in sorted(self.pairs.items())}
        return {"pairs": pairs, "default": self.default, "cutoff": self.cutoff}

    @classmethod
    def fromdict(cls, data: Mapping[str, Any]) -> BornMayer:
        """A :class:`BornMayer` from :meth:`todict`'s output, or from a plain pairs dict
        ``{("Na", "Cl"): (A, rho)}`` / ``{"Na-Cl": (A, rho)}``."""
        if "pairs" in data:
            extra = set(data) - {"pairs", "default", "cutoff"}
            if extra:
                raise ValueError(f"Unexpected keys {sorted(extra)} in a BornMayer dict.")
            return cls(data["pairs"], default=data.get("default"), cutoff=data.get("cutoff"))
        return cls(data)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BornMayer):
            return NotImplemented
        return (self.pairs, self.default, self.cutoff) == (
            other.pairs,
            other.default,
            other.cutoff,
        )

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value

    def coefficients(self, a: str, b: str, radii: Mapping[str, float]) -> tuple[float, float]:
        """(A, rho) of the pair ``a``-``b`` (A = 0 when it has no repulsion)."""
        k = _key(a, b)
        if k in self.pairs:
            return self.pairs[k]
        if self.default == "radii":
            import math

            missing = [x for x in (a, b) if radii.get(x) is None]
            if missing:
                raise ValueError(
                    f"No radius for {missing[0]} (the 'radii' repulsion rule needs one): give "
                    f"params={{'{missing[0]}': {{'radius': ...}}}} or a BornMayer pair for it."
                )
            r0 = radii[a] + radii[b]
            return math.exp(r0 / 0.3), 0.3
        return 0.0, 1.0

    @staticmethod
    def radii_of(params: Mapping[str, Any] | None) -> dict[str, float]:
        """The ``radius`` entries of a QEq ``params`` table (``{element: {...}}``): the
        radii the ``"radii"`` rule uses before the built-in table's."""
        out = {}
        for el, entry in (params or {}).items():
            if isinstance(entry, Mapping) and entry.get("radius") is not None:
                out[el] = float(entry["radius"])
        return out

    def energy(
        self,
        symbols: Sequence[str],
        i: torch.Tensor,
        j: torch.Tensor,
        r: torch.Tensor,
        cutoff: float | None,
        radii: Mapping[str, float] | None = None,
    ) -> torch.Tensor:
        """Repulsion energy (eV) of the pairs ``(i, j)`` at distances ``r`` (P,)."""
        kinds = sorted(set(symbols))
        index = {s: n for n, s in enumerate(kinds)}
        radii = dict(radii or {})
        for s in kinds:  # the caller's radii (params), else the built-in table's
            radii.setdefault(s, BUILTIN_PARAMS.get(s, {}).get("radius"))
        ns = len(kinds)
        amat = torch.zeros(ns, ns, dtype=r.dtype)
        rmat = torch.ones(ns, ns, dtype=r.dtype)
        for x in kinds:
            for y in kinds:
                big_a, rho = self.coefficients(x, y, radii)
                amat[index[x], index[y]] = big_a
                rmat[index[x], index[y]] = rho
        amat, rmat = amat.to(r.device), rmat.to(r.device)
        t = torch.tensor([index[s] for s in symbols], device=r.device)
        ti, tj = t[i], t[j]
        e = amat[ti, tj] * torch.exp(-r / rmat[ti, tj])
        rc = self.cutoff if self.cutoff is not None else cutoff
        if rc is not None:
            e = torch.where(r < rc, e * taper(r, rc), torch.zeros_like(e))
        return e.sum()


def short_range_energy(
    sr: Any,
    params: Mapping[str, Any] | None,
    symbols: Sequence[str],
    i: torch.Tensor,
    j: torch.Tensor,
    r: torch.Tensor,
    cutoff: float | None,
) -> torch.Tensor:
    """``sr.energy(...)``; a :class:`BornMayer` also gets the ``radius`` entries of
    ``params`` (any other object is called as documented, without them, on the pairs
    within ``cutoff`` only: the neighbour list also holds pairs up to ``cutoff + skin``,
    which made its energy depend on the skin and on earlier calls)."""
    if isinstance(sr, BornMayer):
        return sr.energy(symbols, i, j, r, cutoff, radii=BornMayer.radii_of(params))
    if cutoff is not None:  # the pair list reaches cutoff + skin: only pairs within cutoff
        keep = r < cutoff
        i, j, r = i[keep], j[keep], r[keep]
    return sr.energy(symbols, i, j, r, cutoff)
