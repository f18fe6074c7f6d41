"""Argument checks of the proximal operators (:mod:`unrollsci.prox`)."""

from __future__ import annotations

import math
import operator
from typing import Any

import torch


def check_threshold(threshold: Any) -> None:
    """Refuse a number threshold below 0 or NaN (not a prox: ``t < 0`` makes the problem
    nonconvex and unbounded). A tensor threshold, e.g. a model's learned one, is not read
    here: that would synchronize a GPU at every layer."""
    if isinstance(threshold, (int, float)) and not threshold >= 0:
        raise ValueError(f"Expected a threshold >= 0 (got {threshold}).")


def cast_threshold(x: Any, threshold: Any) -> Any:
    """A tensor threshold in ``x``'s real dtype and on its device (a float64 threshold would
    otherwise promote a float32 ``x``); numbers, and thresholds of a non-floating ``x``,
    as given."""
    if not isinstance(threshold, torch.Tensor) or not isinstance(x, torch.Tensor):
        return threshold
    if not (x.is_floating_point() or x.is_complex()):
        return threshold
    real = x.real.dtype if x.is_complex() else x.dtype
    return threshold.to(dtype=real, device=x.device)


def check_dim(dim: Any, ndim: int) -> int:
    """``dim`` as an axis in ``0..ndim-1`` (``IndexError`` outside ``-ndim..ndim-1``)."""
    if isinstance(dim, bool) or not hasattr(dim, "__index__"):
        raise TypeError(f"Expected 'dim' to be an int (got {type(dim).__name__}).")
    dim = operator.index(dim)
    if not -ndim <= dim < ndim:
        raise IndexError(f"Expected 'dim' in [{-ndim}, {ndim - 1}] for a {ndim}-d 'x' (got {dim}).")
    return dim % ndim


def check_eps(eps: Any) -> None:
    if isinstance(eps, (bool, str, bytes)) or not hasattr(eps, "__float__"):
        raise TypeError(f"Expected a number 'eps' (got {type(eps).__name__}).")
    if not 0 <= float(eps) < math.inf:  # NaN fails too
        raise ValueError(f"Expected a finite eps >= 0 (got {eps!r}).")


def check_prox_input(x: Any, threshold: Any) -> None:
    """A floating tensor with at least one axis, and a number threshold >= 0
    (:func:`check_threshold`)."""
    if not isinstance(x, torch.Tensor) or not (x.dtype.is_floating_point or x.dtype.is_complex):
        what = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise TypeError(f"Expected a floating-point tensor 'x' (got {what}).")
    if x.dim() == 0:
        raise ValueError("Expected 'x' with at least one axis (got a 0-d tensor).")
    check_threshold(threshold)


def check_group_threshold(threshold: Any, groups: torch.Tensor) -> None:
    """With a per-group threshold (a tensor whose last axis is not 1), the labels must be
    ``0..G-1``, each used, and the threshold's last axis ``G``: entry ``g`` is label ``g``'s
    threshold. Labels with gaps would be renumbered (:func:`unrollsci.prox._compact`), which
    silently gives a group another label's threshold. Other thresholds are the same for
    every group, and any labels are accepted with them."""
    if not isinstance(threshold, torch.Tensor) or threshold.dim() == 0:
        return
    count = threshold.shape[-1]
    if count == 1 or not groups.numel():
        return
    top = int(groups.max()) + 1
    used = torch.unique(groups).numel()
    if used != top:
        raise ValueError(
            "Expected group labels 0..G-1, each used at least once, with a per-group "
            f"threshold of shape (..., G) (got {used} distinct labels from 0 to {top - 1} "
            f"and a threshold of shape {tuple(threshold.shape)}). Renumber the labels, e.g. "
            "torch.unique(groups, return_inverse=True)[1], and the threshold with them."
        )
    if count != top:
        raise ValueError(
            f"Expected a per-group threshold of shape (..., {top}), one entry per group label "
            f"0..{top - 1} (got shape {tuple(threshold.shape)})."
        )
