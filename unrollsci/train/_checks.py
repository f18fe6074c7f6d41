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


def _check_grad_mode(caller: str) -> None:
    """Refuse training where autograd records nothing (under ``torch.no_grad()`` or
    ``torch.inference_mode()``), before anything changes: the error ``fit``'s check of the
    loss gives there, not torch's bare one from ``backward``."""
    inference = torch.is_inference_mode_enabled()
    if inference or not torch.is_grad_enabled():
        where = "torch.inference_mode()" if inference else "torch.no_grad()"
        raise ValueError(
            f"Expected {caller} to be called with autograd enabled (got a call under {where}): "
            "training needs the gradient of the loss; call it outside that block."
        )


def _check_data(name: str, data: Any, passes: int) -> None:
    """Refuse training/validation data that cannot give a batch in every epoch."""
    from ._data import refuse_tensor_list

    refuse_tensor_list(data, name)
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


def _check_file_path(name: str, path: Any) -> None:
    """Refuse a ``checkpoint`` / ``resume`` path that is no file path, before training.

    For ``checkpoint`` the nearest existing folder above it must be a writable folder (the
    missing ones are created when the file is written), else the run would train and then
    fail to store its result.
    """
    import os
    from pathlib import Path

    if not isinstance(path, (str, Path)):
        raise TypeError(f"Expected '{name}' to be a path (got {type(path).__name__}).")
    if Path(path).is_dir():
        raise IsADirectoryError(f"Expected '{name}' to be a file path, but {path} is a directory.")
    if name != "checkpoint":
        return
    above = Path(path).absolute().parent
    while not os.path.lexists(above) and above != above.parent:
        above = above.parent
    if not above.is_dir():
        raise NotADirectoryError(
            f"Expected 'checkpoint' under a folder (got {path}: {above} is a file, not a "
            "folder); checked before training so that no run is lost."
        )
    if not os.access(above, os.W_OK | os.X_OK):
        raise PermissionError(
            f"Expected 'checkpoint' in a writable folder (got {path}: {above} is not "
            "writable); checked before training so that no run is lost."
        )


def _check_resume_epochs(path: Any, saved: dict[str, Any], per_stage: int, name: str) -> None:
    """Refuse resuming with fewer epochs (per stage) than the checkpoint already trained:
    the run would train nothing and return the longer history. Only 'epochs' may grow."""
    from collections import Counter

    stages = list((saved.get("history") or {}).get("stage") or [])
    done = max(Counter(stages).values(), default=0)
    if done > per_stage:
        where = " in one layer-wise stage" if any(stages) else ""
        raise ValueError(
            f"Cannot resume from {path}: it already trained {done} epochs{where}. Expected "
            f"{name} >= {done} (got {per_stage}); only '{name}' may grow."
        )


def _check_resume_stages(path: Any, saved: dict[str, Any], per_stage: int) -> None:
    """Layer-wise schedule: refuse another number of epochs per stage once a stage has
    finished (the finished stages had the old length; an uninterrupted run with the new
    one differs). While the first stage runs, a larger number only lengthens every stage,
    as an uninterrupted run would. A checkpoint without the stored length (written before
    it was stored) is not refused."""
    old = saved.get("per_stage_epochs")
    if old is None or int(old) == per_stage or int(saved.get("stage_index", 0)) == 0:
        return
    done = int(saved["stage_index"])  # stages before this one finished; this one, if
    done += bool(saved.get("stopped")) or int(saved.get("epoch_in_stage", 0)) >= int(old)
    raise ValueError(
        f"Cannot resume from {path} with {per_stage} epochs per layer-wise stage: its run "
        f"finished {done} stage(s) of {int(old)} epochs, and the stages still to train "
        f"would get another length (not an uninterrupted run with epochs={per_stage}). "
        f"Expected epochs={int(old)} (got {per_stage}); to train longer, start a new run."
    )


def _check_pair(name: str, y: Any, x: Any, model: nn.Module | None = None) -> None:
    """Refuse a ``(y, x)`` evaluation set that holds no sample or whose shapes disagree
    (with each other, and with the model's ``m`` / ``n`` when it has them)."""
    for part, t in (("y", y), ("x", x)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(
                f"Expected {name} to be a pair (y, x) of tensors (got {part} of type "
                f"{type(t).__name__})."
            )
    if y.dim() != 2 or y.shape[0] == 0:
        raise ValueError(
            f"Expected {name} to hold at least one sample, y of shape (N, m) with N >= 1 "
            f"(got y of shape {tuple(y.shape)})."
        )
    m, n = getattr(model, "m", y.shape[1]), getattr(model, "n", None)
    want_x = f"({y.shape[0]}, {n if isinstance(n, int) else 'n'})"
    if x.dim() != 2 or x.shape[0] != y.shape[0] or (isinstance(n, int) and x.shape[1] != n):
        raise ValueError(
            f"Expected {name} x of shape {want_x}, {y.shape[0]} rows as y (got {tuple(x.shape)})."
        )
    if isinstance(m, int) and y.shape[1] != m:
        raise ValueError(
            f"Expected {name} y of shape ({y.shape[0]}, {m}), the model's m = {m} columns "
            f"(got {tuple(y.shape)})."
        )
