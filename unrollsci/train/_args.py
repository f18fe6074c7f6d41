"""The argument checks of :func:`~unrollsci.train.fit`, callable before ``fit`` itself, and
its progress bar.

:func:`check_fit_args` is what ``fit`` runs first (everything but the data); code that
builds costly training data before calling ``fit`` (``fit_preconditioner``) runs
:func:`check_fit_call` first, so that a bad argument or a typo fails before the work.
"""

from __future__ import annotations

import sys
from typing import Any

import torch
from torch import nn

from ._checks import _check_file_path


def check_fit_args(
    model: Any,
    loss_fn: Any,
    *,
    epochs: Any,
    lr: Any,
    batch_size: Any,
    steps_per_epoch: Any,
    schedule: Any,
    stage_epochs: Any,
    patience: Any,
    seed: Any,
    weight_decay: Any,
    clip_grad: Any,
    lr_decay: Any,
    lr_factor: Any,
    stage_hook: Any,
    checkpoint: Any,
    checkpoint_every: Any,
    resume: Any,
    callback: Any,
    distributed: Any,
    mixed_precision: Any,
    **_: Any,
) -> tuple[Any, list[int]]:
    """Refuse any argument of :func:`fit` but the data; return ``(low, stages)``: the
    checked mixed-precision dtype and the layer-wise stages (``[0]`` for end-to-end)."""
    from .._validation import check_count, check_positive, ignored_option
    from ._precision import check_mixed_precision

    if schedule not in ("end_to_end", "layerwise"):
        raise ValueError(f"Expected schedule 'end_to_end' or 'layerwise' (got {schedule!r}).")
    check_count("epochs", epochs)
    check_count("stage_epochs", stage_epochs, optional=True)
    check_count("batch_size", batch_size, optional=True)
    check_count("steps_per_epoch", steps_per_epoch, optional=True)
    check_count("patience", patience, optional=True)
    check_count("checkpoint_every", checkpoint_every)
    check_count("seed", seed, 0, high=2**63 - 1 - 10_007)  # validation uses seed + 10007
    check_positive("lr", lr)
    check_positive("weight_decay", weight_decay, allow_zero=True)
    if clip_grad is not None:
        check_positive("clip_grad", clip_grad)
    check_positive("lr_decay", lr_decay)
    if not 0 < lr_decay <= 1:
        raise ValueError(f"Expected 0 < lr_decay <= 1 (got {lr_decay}).")
    low = check_mixed_precision(mixed_precision)
    if distributed is not None and not isinstance(distributed, bool):
        raise TypeError(
            f"Expected 'distributed' to be None, True or False (got {type(distributed).__name__})."
        )
    if not isinstance(model, nn.Module):
        raise TypeError(f"Expected a torch.nn.Module model (got {type(model).__name__}).")
    for cname, cb in (("callback", callback), ("stage_hook", stage_hook)):
        if cb is not None and not callable(cb):
            raise TypeError(f"Expected '{cname}' to be callable or None (got {cb!r}).")
    if not callable(loss_fn):
        raise TypeError(
            f"Expected loss_fn to be callable (model, batch) -> scalar tensor "
            f"(got {type(loss_fn).__name__})."
        )
    for name, path in (("checkpoint", checkpoint), ("resume", resume)):
        if path is not None:  # a file path; checkpoint's folder writable (before training)
            _check_file_path(name, path)
    if checkpoint is not None and not callable(getattr(model, "get_config", None)):
        raise TypeError(
            f"checkpoint= needs a model with get_config() ({type(model).__name__} has "
            "none); checked before training so that no run is lost."
        )
    if checkpoint is not None:  # a config that cannot be stored: refused before training
        from ._config import _encode

        _encode(model.get_config(), "config")
    if lr_factor is not None and not callable(lr_factor):
        raise TypeError(
            f"Expected lr_factor to be callable step -> factor (got {type(lr_factor).__name__})."
        )
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"{type(model).__name__} has no trainable parameters.")
    if schedule == "end_to_end":  # options of the layer-wise schedule only: not ignored
        for name, value in (("stage_epochs", stage_epochs), ("stage_hook", stage_hook)):
            if value is not None:
                raise ignored_option(
                    name, value, None, where="schedule='layerwise'", given="schedule='end_to_end'"
                )
    if schedule == "layerwise":
        if not hasattr(model, "num_layers") or not hasattr(model, "active_layers"):
            raise ValueError(
                "schedule='layerwise' needs a model with 'num_layers' and a settable "
                f"'active_layers' ({type(model).__name__} has neither)."
            )
        return low, list(range(1, int(model.num_layers) + 1))
    return low, [0]


def check_data_options(train_data: Any, steps_per_epoch: Any) -> None:
    """Refuse ``steps_per_epoch`` without a sampler as ``train_data`` (tensors and
    iterables set their own epoch: it would be ignored)."""
    sampler = callable(train_data) and not isinstance(train_data, (torch.Tensor, nn.Module))
    if steps_per_epoch is not None and not sampler:
        raise ValueError(
            f"Expected steps_per_epoch only with a sampler as train_data (got "
            f"steps_per_epoch={steps_per_epoch!r} with {type(train_data).__name__} data, whose "
            "epoch is one pass over it)."
        )


def check_fit_call(caller: str, model: Any, loss_fn: Any, **kwargs: Any) -> None:
    """Check ``fit(model, loss_fn, <data>, **kwargs)`` before its data is built: an
    argument ``fit`` does not take (a typo) raises ``TypeError``, a bad value what ``fit``
    raises for it. ``caller`` names the function that passes ``kwargs`` on."""
    import inspect

    from ._fit import fit

    clash = sorted({"model", "loss_fn", "train_data"} & kwargs.keys())
    if clash:
        raise TypeError(
            f"Expected no {', '.join(map(repr, clash))} among the arguments {caller} passes "
            f"to fit (got {', '.join(clash)}=...): {caller} sets them itself."
        )
    try:
        bound = inspect.signature(fit).bind(model, loss_fn, None, **kwargs)
    except TypeError as exc:
        raise TypeError(
            f"Expected arguments that unrollsci.train.fit takes in {caller}'s **fit_kwargs "
            f"(got {exc}; see help(unrollsci.train.fit))."
        ) from None
    bound.apply_defaults()
    args = dict(bound.arguments)
    check_fit_args(args.pop("model"), args.pop("loss_fn"), **args)


def stderr_usable() -> bool:
    """False when ``sys.stderr`` is None (pythonw, some services) or a closed file (a
    daemon started with ``2>&-``): a progress bar there would raise on its first write."""
    import os

    stream = sys.stderr
    if stream is None or not callable(getattr(stream, "write", None)):
        return False
    if getattr(stream, "closed", False):
        return False
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # not an OS file (captured, a notebook)
        return True
    try:
        os.fstat(fd)
    except (OSError, ValueError, TypeError):
        return False
    return True


def progress_bar(total: int, initial: int, desc: str) -> Any:
    """A tqdm bar on stderr, or None when stderr cannot take one (see
    :func:`stderr_usable`)."""
    if not stderr_usable():
        return None
    from tqdm.auto import tqdm

    try:
        return tqdm(total=total, initial=initial, desc=desc, leave=False)
    except (OSError, ValueError, AttributeError):  # a stream that fails on its first write
        return None


def given_args(**kwargs: Any) -> dict[str, bool]:
    """``{"<name> given": value is not None}``: which optional inputs a run was given
    (stored in fit's checkpoint and compared between ranks)."""
    return {f"{k} given": v is not None for k, v in kwargs.items()}
