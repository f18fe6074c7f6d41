"""Argument checks of :class:`~unrollsci.precond.LearnedPreconditioner`'s constructor."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .._validation import check_count, ignored_option

_KINDS = ("factor", "inverse", "block", "poly", "amg")
_BASES = ("ic0", "mic", "ssor", "identity")
_DEFAULT_BASE = {
    "factor": "ssor",
    "inverse": "identity",
    "block": "ic0",
    "poly": "identity",
    "amg": "identity",
}
# options that act in one kind only, with their defaults: a non-default value given with
# another kind would be ignored, so it is refused (as coarsening= and sweeps= are)
_MODE_OPTIONS = {
    "block_size": ("block", 16),
    "degree": ("poly", 8),
    "ratio": ("poly", 0.01),
    "scaling": ("poly", True),
}


def _check_bool(name: str, value: Any) -> None:
    """Refuse a flag that is not a bool (a string such as ``"False"`` would read as True)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"Expected '{name}' to be a bool (got {value!r}).")


def _check_mode_options(kind: str, **options: Any) -> None:
    """Refuse a kind-specific option (:data:`_MODE_OPTIONS`) with a non-default value
    outside its kind (a flag that is not a bool in any kind)."""
    for name, value in options.items():
        owner, default = _MODE_OPTIONS[name]
        if isinstance(default, bool):
            _check_bool(name, value)
        same = bool(value) is default if isinstance(default, bool) else value == default
        if kind != owner and not same:
            raise ignored_option(
                name, value, default, where=f"kind={owner!r}", given=f"kind={kind!r}"
            )


def _check_ordering(ordering: Any) -> None:
    """The form of ``ordering`` (the check :func:`~unrollsci.precond.candidate_orderings`
    makes, without the matrix): None, ``"grid"``, ``"rcm"``, a non-empty mapping
    ``{name: perm}`` or sequence of permutations, or a callable."""
    if ordering is None or (callable(ordering) and not isinstance(ordering, str)):
        return
    expected = (
        "Expected 'ordering' to be None, 'grid', 'rcm', a mapping {name: perm}, a sequence "
        "of permutations or a callable A -> {name: perm}"
    )
    if isinstance(ordering, str):
        if ordering not in ("grid", "rcm"):
            raise ValueError(f"{expected} (got {ordering!r}).")
        return
    if isinstance(ordering, (bytes, bytearray)) or not isinstance(ordering, (Mapping, Sequence)):
        raise TypeError(f"{expected} (got {type(ordering).__name__} {ordering!r:.60}).")
    if len(ordering) == 0:
        raise ValueError(
            f"Expected at least one candidate ordering in 'ordering' (got an empty "
            f"{type(ordering).__name__})."
        )


def check_options(
    kind: str,
    base: str | None,
    *,
    hidden: Any,
    layers: Any,
    block_size: Any,
    min_n: Any,
    max_n: Any,
    degree: Any,
    ratio: Any,
    scaling: Any,
    ordering: Any,
    coarsening: Any,
    sweeps: Any,
) -> str:
    """Validate the constructor's arguments; returns the base factor (``base`` or the
    kind's default)."""
    if kind not in _KINDS:
        raise ValueError(f"Expected kind in {_KINDS} (got {kind!r}).")
    for name, value, low in (
        ("hidden", hidden, 1),
        ("layers", layers, 0),
        ("block_size", block_size, 1),
        ("min_n", min_n, 1),
        ("degree", degree, None),  # >= 1 with kind='poly', where it acts: checked below
        ("sweeps", sweeps, 1),
    ):
        check_count(name, value, low)
    check_count("max_n", max_n, 1, optional=True)
    if max_n is not None and max_n < min_n:
        raise ValueError(
            f"Expected 'max_n' >= 'min_n', a size range that holds a matrix (got "
            f"min_n={min_n}, max_n={max_n})."
        )
    base = base if base is not None else _DEFAULT_BASE[kind]
    if base not in _BASES:
        raise ValueError(f"Expected base in {_BASES} (got {base!r}).")
    if kind == "inverse" and base in ("ic0", "mic"):
        raise ValueError(
            f"base={base!r} is a factor of A, not of A^{{-1}}; use 'identity' "
            "or 'ssor' for kind='inverse'."
        )
    _check_ordering(ordering)
    if kind == "poly" and ordering is not None:
        raise ValueError("kind='poly' does not depend on the ordering of A; leave ordering=None.")
    if kind == "amg" and (base != "identity" or ordering is not None):
        raise ValueError(
            "kind='amg' learns a prolongation; it has no base factor and no ordering "
            f"(got base={base!r}, ordering={ordering!r})."
        )
    if coarsening not in ("sa", "rs", "rs-direct") or (kind != "amg" and coarsening != "sa"):
        raise ValueError(
            f"Expected coarsening 'sa', 'rs' or 'rs-direct', and only with kind='amg' (got "
            f"coarsening={coarsening!r}, kind={kind!r})."
        )
    if kind != "amg" and sweeps != 1:
        raise ValueError(
            f"Expected an integer sweeps >= 1, other than 1 only with kind='amg' (got "
            f"sweeps={sweeps!r}, kind={kind!r})."
        )
    if kind == "poly" and base != "identity":
        raise ValueError(f"kind='poly' has no base factor (got base={base!r}).")
    if kind == "poly" and (degree < 1 or not 0 < ratio < 1):
        raise ValueError(
            f"Expected an integer degree >= 1 and 0 < ratio < 1 for kind='poly' (got "
            f"{degree!r}, {ratio!r})."
        )
    _check_mode_options(kind, block_size=block_size, degree=degree, ratio=ratio, scaling=scaling)
    return base
