"""Argument checks of :class:`~unrollsci.graph.GraphInverseProblem`'s constructor."""

from __future__ import annotations

import math
from typing import Any

import torch

from .._validation import ignored_option

# the heat kernel's options, with their defaults: they act with operator="heat" only
_HEAT_OPTIONS = {"tau": 1.0, "heat_degree": 30}


def check_lam(lam: Any) -> float:
    """``lam`` as a float: a finite number ``>= 0`` (or a one-element tensor)."""
    if isinstance(lam, torch.Tensor):
        if lam.numel() != 1:
            raise ValueError(f"Expected a scalar 'lam' (got shape {tuple(lam.shape)}).")
        lam = float(lam)
    if not isinstance(lam, (int, float)) or isinstance(lam, bool):
        raise TypeError(f"Expected 'lam' to be a float (got {type(lam).__name__}).")
    if not math.isfinite(lam) or lam < 0:
        raise ValueError(f"Expected lam >= 0 and finite (got {lam!r}).")
    return float(lam)


def check_heat_options(operator: Any, **options: Any) -> None:
    """Refuse ``tau`` or ``heat_degree`` other than the default unless ``operator`` is
    ``"heat"`` (elsewhere they would be ignored)."""
    if isinstance(operator, str) and operator == "heat":
        return  # checked by the HeatKernel
    what = operator if operator is None or isinstance(operator, str) else type(operator).__name__
    for name, value in options.items():
        default = _HEAT_OPTIONS[name]
        if isinstance(value, bool) or value != default:
            raise ignored_option(
                name, value, default, where="operator='heat'", given=f"operator={what!r}"
            )
