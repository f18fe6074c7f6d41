"""``fit(resume=...)``: the checks of a checkpoint against the model and the arguments
first (:func:`check_resume`), then the weights and the depth applied (:func:`apply_resume`),
undone on any failure up to the start of the training, so that a refused resume leaves the
caller's model as it was: every tensor, its ``active_layers``, its train/eval mode and its
``requires_grad`` flags."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._checks import _check_resume_epochs, _check_resume_stages


def check_resume(
    path: str | Path,
    model: nn.Module,
    args: dict[str, Any],
    per_stage: int,
    layerwise: bool,
    epochs_name: str,
) -> tuple[dict[str, Any], dict[str, Any], Any]:
    """``(state, weights, depth)`` of the checkpoint ``path`` after every check that can
    refuse the resume before the weights are loaded (its training arguments, epochs, the
    dtypes of its weights, the model's config, its depth against ``model``); ``model`` is
    not changed.
    ``depth`` is the saved ``active_layers`` (None where the file has none)."""
    from ._checkpoint import _check_depth
    from ._state import check_resume_args, check_resume_config, load_fit_state

    saved, weights, depth, config = load_fit_state(path, model)
    check_resume_args(path, saved, args)
    _check_resume_epochs(path, saved, per_stage, epochs_name)
    if layerwise:  # a finished stage had the old length: refuse another
        _check_resume_stages(path, saved, per_stage)
    mine = model.state_dict()
    bad = [k for k, v in weights.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(
            f"Checkpoint {path}: expected a state_dict of named tensors (got {bad[0]!r}); "
            "cannot resume from it."
        )
    changed = sorted(
        k
        for k, v in mine.items()
        if k in weights
        and v.is_floating_point()
        and weights[k].is_floating_point()
        and v.dtype != weights[k].dtype
    )
    if changed:
        k = changed[0]
        raise ValueError(
            f"Cannot resume from {path}: its weights are {weights[k].dtype} where the "
            f"model's are {mine[k].dtype} ({k}); resuming would round them. "
            "Convert the model to the checkpoint's dtype first."
        )
    # after the dtype check, whose message says what to do (the config holds the dtype)
    check_resume_config(path, config, model)
    if depth is not None:
        _check_depth(model, depth, Path(path))
    return saved, weights, depth


def apply_resume(
    path: str | Path, model: nn.Module, weights: dict[str, Any], depth: Any
) -> Callable[[], None]:
    """Load the checked ``weights`` and ``depth`` (:func:`check_resume`) into ``model`` and
    return a function that undoes it. ``load_state_dict`` is the last judge of whether the
    weights fit (a model's load hooks may accept older key names), and it copies what fits
    before it raises: on any failure the model gets back its tensors (the same objects,
    bit for bit), depth, train/eval modes and ``requires_grad`` flags before the error
    propagates (a ``RuntimeError`` of ``load_state_dict`` becomes ``ValueError``)."""
    undo = _undo(model)
    try:
        try:
            model.load_state_dict(weights)
        except RuntimeError as exc:
            raise ValueError(
                f"Cannot resume from {path}: its weights do not fit this "
                f"{type(model).__name__} (another configuration?): {exc}"
            ) from None
        if depth is not None:  # the depth the run trained at (a layer-wise stage sets its own)
            model.active_layers = depth
    except BaseException:
        undo()
        raise
    return undo


def _undo(model: nn.Module) -> Callable[[], None]:
    """A function that puts ``model`` back as it is now: every parameter and buffer (the
    same tensor objects, their values copied back from a CPU copy taken here), its
    ``active_layers``, every module's train/eval mode and every ``requires_grad`` flag."""
    tables = [
        (table, dict(table)) for m in model.modules() for table in (m._parameters, m._buffers)
    ]
    values = {
        id(t): t.detach().to("cpu", copy=True)
        for _, kept in tables
        for t in kept.values()
        if t is not None
    }
    has_depth = hasattr(model, "active_layers")
    depth = getattr(model, "active_layers", None)
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]

    def undo() -> None:
        with torch.no_grad():
            for table, kept in tables:
                table.clear()
                table.update(kept)
                for name, t in kept.items():
                    if t is None:
                        continue
                    saved = values[id(t)]
                    try:
                        t.copy_(saved)
                    except RuntimeError:  # (a sparse buffer whose entries changed in number)
                        table[name] = saved.to(t.device)
        if has_depth:
            model.active_layers = depth
        for m, mode in modes:
            m.training = mode
        for p, flag in flags:
            p.requires_grad_(flag)

    return undo
