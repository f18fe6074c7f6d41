"""Argument and data checks of :func:`unrollsci.train.fit` (clear errors before training)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn


def _check_loss(loss: Any, where: str, *, train: bool = True) -> torch.Tensor:
    """``loss_fn``'s value as a one-element tensor, or a clear error."""
    if not isinstance(loss, torch.Tensor):
        raise TypeError(
            f"Expected loss_fn to return a scalar torch.Tensor ({where} batch; got "
            f"{type(loss).__name__})."
        )
    if loss.numel() != 1:
        raise ValueError(
            f"Expected loss_fn to return a scalar tensor ({where} batch; got shape "
            f"{tuple(loss.shape)}); reduce it, e.g. with .mean() or .sum()."
        )
    if train and not loss.requires_grad:
        raise ValueError(
            "Expected the loss to depend on the model's trainable parameters (loss_fn "
            "returned a tensor without gradient; was it computed under torch.no_grad() "
            "or from detached values?)."
        )
    return loss


def _check_int(name: str, value: Any, low: int, *, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            import numpy as np

            ok = isinstance(value, np.integer)
        except ImportError:  # pragma: no cover
            ok = False
        if not ok:
            kind = "an integer or None" if optional else "an integer"
            raise TypeError(f"Expected '{name}' to be {kind} (got {type(value).__name__}).")
    if value < low:
        raise ValueError(f"Expected '{name}' >= {low} (got {value}).")


def _check_data(name: str, data: Any, passes: int) -> None:
    """Refuse training/validation data that cannot give a batch in every epoch."""
    if isinstance(data, torch.Tensor) or (
        isinstance(data, (tuple, list)) and data and all(isinstance(t, torch.Tensor) for t in data)
    ):
        first = data if isinstance(data, torch.Tensor) else data[0]
        if first.dim() == 0 or first.shape[0] == 0:
            raise ValueError(
                f"Expected '{name}' to hold at least one sample (got a tensor of shape "
                f"{tuple(first.shape)})."
            )
        return
    if callable(data) and not isinstance(data, nn.Module):
        return
    if isinstance(data, (tuple, list)) and not data:
        raise ValueError(
            f"Expected '{name}' to hold at least one batch (got an empty {type(data).__name__})."
        )
    try:
        one_shot = iter(data) is data
    except TypeError:
        raise TypeError(
            f"Expected '{name}' to be tensors, an iterable of batches or a sampler "
            f"(got {type(data).__name__})."
        ) from None
    if one_shot and passes > 1:
        raise ValueError(
            f"'{name}' is a one-shot iterator ({type(data).__name__}): it would be "
            f"exhausted after the first of {passes} epochs. Pass a list of batches, "
            "tensors, a DataLoader, or a sampler with steps_per_epoch."
        )


def _check_factor(value: Any, step: int) -> float:
    try:
        factor = float(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"Expected lr_factor({step}) to return a number (got {type(value).__name__})."
        ) from None
    if not (math.isfinite(factor) and factor >= 0):
        raise ValueError(f"Expected lr_factor({step}) to be finite and >= 0 (got {factor}).")
    return factor
