"""The training loop: :func:`fit`, its argument and data checks, and :func:`iterate_batches`."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._checkpoint import save_checkpoint

Batch = Any
LossFn = Callable[[nn.Module, Batch], torch.Tensor]


@dataclass
class History:
    """What happened during :func:`fit`."""

    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    stage: list[int] = field(default_factory=list)
    best_val: float = math.inf
    best_epoch: int = -1
    stopped_early: bool = False
    seconds: float = 0.0


def iterate_batches(
    data: Any, batch_size: int | None, generator: torch.Generator, steps: int | None
) -> Iterable[Batch]:
    """Yield mini-batches from tensors, an iterable of batches, or a sampler.

    * a tensor or tuple/list of tensors with equal first dimension: shuffled
      mini-batches of ``batch_size`` (the whole set if None);
    * a callable ``sampler(generator) -> batch``: ``steps`` fresh batches
      (synthetic data drawn on the fly, as in the LISTA literature);
    * any other iterable (e.g. a ``DataLoader`` or list of PyG batches): as is.
    """
    if callable(data) and not isinstance(data, (torch.Tensor, nn.Module)):
        if steps is None:
            raise ValueError("A sampler as training data needs steps_per_epoch.")
        for _ in range(steps):
            yield data(generator)
        return
    if isinstance(data, torch.Tensor) or (
        isinstance(data, (tuple, list)) and data and all(isinstance(t, torch.Tensor) for t in data)
    ):
        tensors = (data,) if isinstance(data, torch.Tensor) else tuple(data)
        n = tensors[0].shape[0]
        if any(t.shape[0] != n for t in tensors):
            raise ValueError(
                "Expected training tensors with equal first dimension (got "
                f"{[tuple(t.shape) for t in tensors]})."
            )
        bs = n if batch_size is None else int(batch_size)
        perm = torch.randperm(n, generator=generator)
        for i in range(0, n, bs):
            idx = perm[i : i + bs].to(tensors[0].device)
            out = tuple(t[idx] for t in tensors)
            yield out[0] if isinstance(data, torch.Tensor) else out
        return
    yield from data


def _evaluate(
    model: nn.Module, loss_fn: LossFn, data: Any, generator: torch.Generator, steps: int | None
) -> float:
    was = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in iterate_batches(data, None, generator, steps or 1):
            total += float(_check_loss(loss_fn(model, batch), "validation", train=False))
            count += 1
    model.train(was)
    if count == 0:
        raise ValueError(
            f"val_data yielded no batch ({type(data).__name__}); expected at least one "
            "validation batch every epoch (a generator or iterator is exhausted after one "
            "pass: use a list of batches, tensors, a DataLoader or a sampler)."
        )
    return total / count


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


def fit(
    model: nn.Module,
    loss_fn: LossFn,
    train_data: Any,
    *,
    val_data: Any = None,
    epochs: int = 100,
    lr: float = 1e-3,
    batch_size: int | None = None,
    steps_per_epoch: int | None = None,
    schedule: str = "end_to_end",
    stage_epochs: int | None = None,
    patience: int | None = None,
    seed: int = 0,
    weight_decay: float = 0.0,
    clip_grad: float | None = None,
    lr_decay: float = 1.0,
    lr_factor: Callable[[int], float] | None = None,
    stage_hook: Callable[[nn.Module, int], None] | None = None,
    checkpoint: str | Path | None = None,
    progress: bool = True,
    callback: Callable[[int, float, float | None], None] | None = None,
) -> History:
    """Train ``model`` by Adam on ``loss_fn(model, batch)``.

    Args:
        model: any ``nn.Module``. For ``schedule="layerwise"`` it must have an
            integer attribute ``num_layers`` and a settable ``active_layers``: stage
            ``k`` trains the first ``k`` layers (all parameters of layers ``< k``
            stay trainable, as in the greedy LISTA-CPSS / ALISTA training).
        loss_fn: ``(model, batch) -> scalar tensor``.
        train_data: tensors, an iterable of batches, or a sampler (see
            :func:`iterate_batches`).
        val_data: same forms; evaluated after each epoch without gradients.
        epochs: epochs (per stage for the layer-wise schedule unless ``stage_epochs``).
        lr, weight_decay: Adam settings. A fresh optimizer starts every stage.
        batch_size, steps_per_epoch: see :func:`iterate_batches`.
        patience: stop a stage after this many epochs without validation
            improvement; the best weights (by validation loss) are restored.
        seed: seeds torch and the data order.
        clip_grad: clip the gradient norm to this value.
        lr_decay: multiply the learning rate by this factor after every epoch
            (restarting from ``lr`` at each layer-wise stage); 1 keeps it constant.
            Decaying steps let Adam settle to the low errors sparse coding needs.
        lr_factor: a schedule ``lr_factor(step) -> float``, called before every
            optimizer step with the number of optimizer steps taken so far (counted
            over all epochs and layer-wise stages, starting at 0). That step uses
            ``lr * lr_decay**epoch_in_stage * lr_factor(step)``. The factor must be
            finite and ``>= 0`` (else ``ValueError``). It may also read a clock, e.g.
            a cosine decay over a wall-clock budget. None keeps the factor at 1.
        stage_hook: layer-wise schedule only: called as ``stage_hook(model, k)``
            before stage ``k`` trains (e.g. to warm-start layer ``k`` from layer
            ``k - 1`` with :meth:`unrollsci.unrolled.UnrolledLasso.copy_layer`).
        checkpoint: path; the best model is saved there with :func:`save_checkpoint`.
        progress: show a tqdm progress bar.
        callback: called as ``callback(epoch, train_loss, val_loss)``.

    Returns:
        History of losses per epoch.
    """
    from .._validation import check_positive

    if schedule not in ("end_to_end", "layerwise"):
        raise ValueError(f"Expected schedule 'end_to_end' or 'layerwise' (got {schedule!r}).")
    _check_int("epochs", epochs, 1)
    _check_int("stage_epochs", stage_epochs, 1, optional=True)
    _check_int("batch_size", batch_size, 1, optional=True)
    _check_int("steps_per_epoch", steps_per_epoch, 1, optional=True)
    _check_int("patience", patience, 1, optional=True)
    _check_int("seed", seed, -(2**63))  # torch.manual_seed's range
    check_positive("lr", lr)
    check_positive("weight_decay", weight_decay, allow_zero=True)
    if clip_grad is not None:
        check_positive("clip_grad", clip_grad)
    check_positive("lr_decay", lr_decay)
    if not 0 < lr_decay <= 1:
        raise ValueError(f"Expected 0 < lr_decay <= 1 (got {lr_decay}).")
    if not callable(loss_fn):
        raise TypeError(
            f"Expected loss_fn to be callable (model, batch) -> scalar tensor "
            f"(got {type(loss_fn).__name__})."
        )
    if checkpoint is not None:
        if not isinstance(checkpoint, (str, Path)):
            raise TypeError(
                f"Expected 'checkpoint' to be a path (got {type(checkpoint).__name__})."
            )
        if Path(checkpoint).is_dir():
            raise IsADirectoryError(
                f"Expected 'checkpoint' to be a file path, but {checkpoint} is a directory."
            )
        if not callable(getattr(model, "get_config", None)):
            raise TypeError(
                f"checkpoint= needs a model with get_config() ({type(model).__name__} has "
                "none); checked before training so that no run is lost."
            )
    if lr_factor is not None and not callable(lr_factor):
        raise TypeError(
            f"Expected lr_factor to be callable step -> factor (got {type(lr_factor).__name__})."
        )
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"{type(model).__name__} has no trainable parameters.")
    if schedule == "layerwise":
        if not hasattr(model, "num_layers") or not hasattr(model, "active_layers"):
            raise ValueError(
                "schedule='layerwise' needs a model with 'num_layers' and a settable "
                f"'active_layers' ({type(model).__name__} has neither)."
            )
        stages = list(range(1, int(model.num_layers) + 1))
    else:
        stages = [0]
    per_stage = stage_epochs if stage_epochs is not None else epochs
    _check_data("train_data", train_data, per_stage * len(stages))
    if val_data is not None:
        _check_data("val_data", val_data, per_stage * len(stages))
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    val_gen_seed = seed + 10_007
    hist = History()
    t0 = time.perf_counter()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=per_stage * len(stages), desc=f"fit {type(model).__name__}", leave=False)
    epoch_counter = 0
    step_counter = 0
    try:
        for stage in stages:
            if stage:
                model.active_layers = stage
                if stage_hook is not None:
                    stage_hook(model, stage)
            opt = torch.optim.Adam(
                [p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay
            )
            best, best_state, bad = math.inf, None, 0
            epoch_lr = lr  # lr * lr_decay**epoch_in_stage, by repeated products as before
            for _ in range(per_stage):
                model.train()
                total, count = 0.0, 0
                for batch in iterate_batches(train_data, batch_size, gen, steps_per_epoch):
                    opt.zero_grad(set_to_none=True)
                    loss = _check_loss(loss_fn(model, batch), "training").reshape(())
                    if not torch.isfinite(loss.detach()):
                        raise FloatingPointError(
                            f"Training loss became {float(loss.detach())} at epoch "
                            f"{epoch_counter}; lower lr or check the data."
                        )
                    loss.backward()
                    if clip_grad is not None:
                        nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
                    if lr_factor is not None:
                        factor = _check_factor(lr_factor(step_counter), step_counter)
                        for group in opt.param_groups:
                            group["lr"] = epoch_lr * factor
                    opt.step()
                    step_counter += 1
                    total += float(loss.detach())
                    count += 1
                if count == 0:
                    raise ValueError(
                        f"Epoch {epoch_counter} saw no training batch: train_data "
                        f"({type(train_data).__name__}) yielded nothing. An exhausted "
                        "generator or iterator, or an empty dataset, is the likely cause; "
                        "pass a list of batches, tensors, a DataLoader, or a sampler with "
                        "steps_per_epoch >= 1."
                    )
                train_loss = total / count
                val_loss = None
                if val_data is not None:
                    val_loss = _evaluate(
                        model,
                        loss_fn,
                        val_data,
                        torch.Generator().manual_seed(val_gen_seed),
                        steps_per_epoch,
                    )
                hist.train_loss.append(train_loss)
                hist.stage.append(stage)
                if val_loss is not None:
                    hist.val_loss.append(val_loss)
                score = val_loss if val_loss is not None else train_loss
                if score < best:
                    best, bad = score, 0
                    best_state = copy.deepcopy(model.state_dict())
                    if stage == stages[-1]:
                        hist.best_val, hist.best_epoch = best, epoch_counter
                else:
                    bad += 1
                if callback is not None:
                    callback(epoch_counter, train_loss, val_loss)
                epoch_counter += 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(
                        stage=stage or "-",
                        loss=f"{train_loss:.3e}",
                        val=f"{val_loss:.3e}" if val_loss is not None else "-",
                    )
                epoch_lr *= lr_decay
                for group in opt.param_groups:
                    group["lr"] = epoch_lr
                if patience is not None and bad >= patience:
                    hist.stopped_early = True
                    if bar is not None:
                        bar.update(per_stage - (_ + 1))
                    break
            if best_state is not None and (val_data is not None or patience is not None):
                model.load_state_dict(best_state)
    finally:
        if bar is not None:
            bar.close()
    if stages[-1]:
        model.active_layers = stages[-1]
    hist.seconds = time.perf_counter() - t0
    if checkpoint is not None:
        save_checkpoint(model, checkpoint)
    return hist
