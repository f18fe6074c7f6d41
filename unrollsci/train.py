"""One training loop for every unrolled model in unrollsci.

``fit(model, loss_fn, data, ...)`` runs Adam over mini-batches with a tqdm progress
bar, an optional validation set with early stopping (the best weights are
restored), a fixed seed, end-to-end or layer-wise (greedy) schedules, and
checkpoints that rebuild the model without the training script.

The loss is a callable ``loss_fn(model, batch) -> scalar tensor`` so the same loop
serves sparse coding, graph solvers, preconditioners and CT.
"""

from __future__ import annotations

import copy
import importlib
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "fit",
    "History",
    "save_checkpoint",
    "load_checkpoint",
    "register_checkpoint_class",
    "registered_checkpoint_classes",
    "iterate_batches",
]

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
    from ._validation import check_positive

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


# --------------------------------------------------------------------------- checkpoints
#
# A checkpoint file is read with ``torch.load(..., weights_only=True)``: torch's restricted
# unpickler, which builds tensors, numbers, strings, dtypes, devices and plain containers
# and refuses every other global, so no code named in the file ever runs. The model is
# then built from a class looked up by name in the registry below (never imported from a
# name in the file) with a config that holds plain data only.

_FORMAT = "unrollsci-checkpoint-2"
_FORMAT_V1 = "unrollsci-checkpoint-1"  # config held pickled objects; still read, see below
_OBJECT = "__unrollsci_object__"  # {_OBJECT: name, "config": {...}}: a registered object
_NDARRAY = "__numpy_array__"  # {_NDARRAY: tensor}: a numpy array, stored as a tensor

# Trainable models and the config objects they hold, by checkpoint name. Constants of
# this module (name -> (module, attribute)); imported only when a checkpoint needs one.
_BUILTIN: dict[str, tuple[str, str]] = {
    f"unrollsci.{mod}:{name}": (f"unrollsci.{mod}", name)
    for mod, names in {
        "unrolled": ("LISTA", "LISTACP", "ALISTA", "UnrolledFISTA", "ADMMNet", "LAMP"),
        "graph": ("UnrolledGraphGD", "StepController"),
        "precond": ("LearnedPreconditioner",),
        "imaging": ("UnrolledCT",),
    }.items()
    for name in names
}
# Operators a config may hold, stored as their constructor's plain data (see _OPERATORS).
_OPERATOR_NAMES = (
    "MatrixOperator",
    "SparseOperator",
    "Convolution",
    "Mask",
    "Radon",
    "ComposedOperator",
    "SumOperator",
    "ScaledOperator",
    "AdjointOperator",
)
_USER: dict[str, type] = {}


def _builtin_class(name: str) -> type:
    mod, attr = _BUILTIN[name]
    return getattr(importlib.import_module(mod), attr)


def _class_path(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def register_checkpoint_class(cls: type, name: str | None = None) -> type:
    """Allow :func:`load_checkpoint` to build ``cls`` (a model, or an object in a config).

    unrollsci's own trainable models are registered already. A class of yours must
    implement ``get_config() -> dict`` returning its constructor keyword arguments as
    plain data (numbers, strings, None, tensors, dtypes, lists, tuples, dicts with string
    keys, unrollsci operators, or instances of registered classes). It is stored under
    ``name`` (default ``"module:QualifiedName"``). Usable as a class decorator; returns
    ``cls``.
    """
    if not isinstance(cls, type):
        raise TypeError(f"Expected a class to register (got {type(cls).__name__}).")
    if not callable(getattr(cls, "get_config", None)):
        raise TypeError(
            f"Expected a class with a get_config() method returning its constructor "
            f"arguments ({cls.__name__} has none)."
        )
    key = _class_path(cls) if name is None else name
    if not isinstance(key, str) or ":" not in key:
        raise ValueError(f"Expected a name of the form 'module:Class' (got {key!r}).")
    if key in _BUILTIN or (key in _USER and _USER[key] is not cls):
        raise ValueError(f"The checkpoint name {key!r} is taken by another class.")
    _USER[key] = cls
    return cls


def registered_checkpoint_classes() -> list[str]:
    """Names of the classes :func:`load_checkpoint` may build (built-in and registered)."""
    return sorted({*_BUILTIN, *_USER})


def _name_of(cls: type) -> str:
    """The checkpoint name of ``cls``: its registered name, else ``module:Class``."""
    for key, mod_attr in _BUILTIN.items():
        if cls.__name__ == mod_attr[1] and cls.__module__.startswith(mod_attr[0]):
            if _builtin_class(key) is cls:
                return key
    for key, user in _USER.items():
        if user is cls:
            return key
    return _class_path(cls)


def _lookup(name: str, expected: tuple[type, ...], path: Path) -> type:
    """The class registered as ``name`` (or one of ``expected`` of that name)."""
    if name in _BUILTIN:
        return _builtin_class(name)
    if name in _USER:
        return _USER[name]
    for cls in expected:
        if name in (_class_path(cls), _name_of(cls)):
            return cls
    if name.startswith("unrollsci.") and ":" in name:
        # format-1 files name the defining private module ("unrollsci.precond._model:
        # LearnedPreconditioner"), which may since have moved inside its subpackage: match
        # the subpackage and the class name against the registry (nothing is imported).
        module, _, cls_name = name.partition(":")
        key = f"{'.'.join(module.split('.')[:2])}:{cls_name}"
        if key in _BUILTIN:
            return _builtin_class(key)
    raise ValueError(
        f"Checkpoint {path} names the class {name!r}, which is not a registered checkpoint "
        "class; nothing was imported or run. Register your own class with "
        "unrollsci.train.register_checkpoint_class(cls) or pass expected=cls to "
        "load_checkpoint."
    )


def _operators() -> dict[str, type]:
    from . import operators

    return {name: getattr(operators, name) for name in _OPERATOR_NAMES}


def _operator_config(op: Any) -> tuple[str, dict[str, Any]] | None:
    """Constructor arguments of an unrollsci operator, or None for another class."""
    ops = _operators()
    kind = next((n for n, c in ops.items() if type(op) is c), None)
    if kind == "MatrixOperator":
        return kind, {
            "matrix": op.matrix.detach(),
            "parameter": isinstance(op.matrix, nn.Parameter),
        }
    if kind == "SparseOperator":
        return kind, {"matrix": op.matrix.detach()}
    if kind == "Convolution":
        d = op.ndim_spatial
        kernel = torch.flip(op.weight[0, 0].detach(), dims=tuple(range(d)))
        return kind, {"kernel": kernel, "in_shape": list(op.in_shape), "boundary": op.boundary}
    if kind == "Mask":
        return kind, {"mask": op.mask.detach(), "subsample": bool(op.subsample)}
    if kind == "Radon":
        return kind, {
            "image_size": int(op.image_size),
            "angles": op.angles.detach().cpu(),
            "circle": bool(op.circle),
        }
    if kind == "ComposedOperator":
        return kind, {"outer": op.outer, "inner": op.inner}
    if kind == "SumOperator":
        return kind, {"a": op.a, "b": op.b}
    if kind == "ScaledOperator":
        return kind, {"op": op.op, "scale": float(op.scale)}
    if kind == "AdjointOperator":
        return kind, {"op": op.op}
    return None


def _build_operator(kind: str, cfg: dict[str, Any]) -> Any:
    ops = _operators()
    if kind == "MatrixOperator":
        matrix = cfg["matrix"]
        return ops[kind](nn.Parameter(matrix) if cfg.get("parameter") else matrix)
    if kind == "Convolution":
        return ops[kind](cfg["kernel"], cfg["in_shape"], boundary=cfg["boundary"])
    if kind == "Mask":
        return ops[kind](cfg["mask"], subsample=cfg["subsample"])
    if kind == "Radon":
        return ops[kind](cfg["image_size"], cfg["angles"], circle=cfg["circle"])
    return ops[kind](**cfg)


_PLAIN = (str, int, float, complex, bool, type(None), torch.dtype, torch.device)


def _plain_hint(value: Any) -> str:
    if callable(value) and not isinstance(value, nn.Module):
        return (
            " A checkpoint stores no code: give a named option instead (e.g. ordering='grid' "
            "or 'rcm', or the permutations as {name: perm}) and pass functions again after "
            "loading."
        )
    return (
        f" Register its class with unrollsci.train.register_checkpoint_class "
        f"(it needs get_config()) if {type(value).__name__} should be stored."
    )


def _encode(value: Any, where: str) -> Any:
    """``value`` as plain data that ``torch.load(weights_only=True)`` accepts."""
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, torch.Tensor):
        return value if isinstance(value, nn.Parameter) else value.detach()
    try:
        import numpy as np

        if isinstance(value, np.ndarray):
            return {_NDARRAY: torch.from_numpy(np.ascontiguousarray(value))}
        if isinstance(value, np.generic):
            return value.item()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(value, (list, tuple)):
        out = [_encode(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return out if isinstance(value, list) else tuple(out)
    if isinstance(value, dict):
        bad = [k for k in value if not isinstance(k, str) or k in (_OBJECT, _NDARRAY)]
        if bad:
            raise TypeError(
                f"Cannot store {where} in a checkpoint: expected a dict with string keys "
                f"(got the key {bad[0]!r})."
            )
        return {k: _encode(v, f"{where}[{k!r}]") for k, v in value.items()}
    op = _operator_config(value)
    if op is not None:
        kind, cfg = op
        return {_OBJECT: f"unrollsci.operators:{kind}", "config": _encode(cfg, where)}
    name = _name_of(type(value))
    if (name in _BUILTIN or name in _USER) and callable(getattr(value, "get_config", None)):
        return {_OBJECT: name, "config": _encode(value.get_config(), where)}
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    raise TypeError(
        f"Cannot store {where} in a checkpoint: it is a {type(value).__name__} ({shown}); "
        "a checkpoint holds plain data only (numbers, strings, None, tensors, dtypes, "
        "lists, tuples, dicts with string keys, unrollsci operators and instances of "
        f"registered classes).{_plain_hint(value)}"
    )


def _decode(value: Any, where: str, path: Path, expected: tuple[type, ...]) -> Any:
    """Rebuild plain data written by :func:`_encode` (and format-1 operator objects)."""
    if isinstance(value, (torch.Tensor, *_PLAIN)):
        return value
    if isinstance(value, (list, tuple)):
        out = [_decode(v, f"{where}[{i}]", path, expected) for i, v in enumerate(value)]
        return out if isinstance(value, list) else tuple(out)
    if isinstance(value, dict):
        if set(value) == {_NDARRAY} and isinstance(value[_NDARRAY], torch.Tensor):
            return value[_NDARRAY].numpy()
        if set(value) == {_OBJECT, "config"}:
            return _build_object(value[_OBJECT], value["config"], where, path, expected)
        return {str(k): _decode(v, f"{where}[{k!r}]", path, expected) for k, v in value.items()}
    op = _operator_config(value)  # a format-1 file's pickled operator: rebuilt afresh
    if op is not None:
        kind, cfg = op
        return _build_operator(kind, _decode(_encode(cfg, where), where, path, expected))
    raise ValueError(
        f"Checkpoint {path}: {where} holds a {type(value).__name__}; expected plain data."
    )


def _build_object(name: Any, cfg: Any, where: str, path: Path, expected: tuple[type, ...]) -> Any:
    if not isinstance(name, str) or not isinstance(cfg, dict):
        raise ValueError(
            f"Checkpoint {path}: {where} is not a valid stored object (expected a class "
            f"name and a config dict, got {type(name).__name__} and {type(cfg).__name__})."
        )
    kwargs = _decode(cfg, where, path, expected)
    if name.startswith("unrollsci.operators:") and name.split(":", 1)[1] in _OPERATOR_NAMES:
        builder: Any = lambda **kw: _build_operator(name.split(":", 1)[1], kw)  # noqa: E731
    else:
        builder = _lookup(name, expected, path)
    try:
        return builder(**kwargs)
    except (TypeError, ValueError, KeyError) as exc:
        raise ValueError(
            f"Checkpoint {path}: could not rebuild {name} for {where} from its stored "
            f"config ({type(exc).__name__}: {exc})."
        ) from exc


def save_checkpoint(
    model: nn.Module, path: str | Path, *, extra: dict[str, Any] | None = None
) -> Path:
    """Save ``model`` so that :func:`load_checkpoint` rebuilds it without the training script.

    The model must implement ``get_config() -> dict`` returning its constructor keyword
    arguments as plain data: numbers, strings, None, tensors, dtypes, lists, tuples,
    dicts with string keys, numpy arrays, unrollsci operators (stored as their matrix,
    kernel, mask or geometry) and instances of registered classes (see
    :func:`register_checkpoint_class`). Anything else, e.g. a function, raises
    ``TypeError`` before the file is touched. ``extra`` must be plain data too.

    The file holds the model's checkpoint name, that config, the state dict and
    ``extra``. It is written atomically (a temporary file in the same folder, then
    moved onto ``path``): a failed save leaves a previous file at ``path`` as it was.
    An existing file at ``path`` is replaced.
    """
    from ._io import atomic_save

    if not callable(getattr(model, "get_config", None)):
        raise TypeError(
            f"{type(model).__name__} has no get_config(); cannot write a self-contained "
            "checkpoint. Save model.state_dict() instead."
        )
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"Expected a checkpoint file path, but {path} is a directory.")
    config = model.get_config()
    if not isinstance(config, dict):
        raise TypeError(
            f"Expected {type(model).__name__}.get_config() to return a dict "
            f"(got {type(config).__name__})."
        )
    if extra is not None and not isinstance(extra, dict):
        raise TypeError(f"Expected 'extra' to be a dict (got {type(extra).__name__}).")
    payload = {
        "format": _FORMAT,
        "class": _name_of(type(model)),
        "config": _encode(config, "config"),
        "state_dict": _encode(dict(model.state_dict()), "state_dict"),
        "extra": _encode(extra or {}, "extra"),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_save(path, lambda f: torch.save(payload, f))


def _read_payload(path: Path, map_location: Any) -> Any:
    """``torch.load(weights_only=True)`` with every failure as a ``ValueError``."""
    import pickle
    import re

    what = "an unrollsci checkpoint written by unrollsci.train.save_checkpoint"
    if not path.exists():
        raise FileNotFoundError(f"No checkpoint file at {path}.")
    if path.is_dir():
        raise IsADirectoryError(f"Expected a checkpoint file, but {path} is a directory.")
    if path.stat().st_size == 0:
        raise ValueError(f"Checkpoint {path} is empty (0 bytes); expected {what}.")
    # Format-1 files pickled these operators inside the config. The restricted unpickler
    # may create them (attribute dict only, no code of theirs runs); they are rebuilt
    # through their constructors from their matrix / geometry right after.
    from .operators import MatrixOperator, Radon

    try:
        with torch.serialization.safe_globals([MatrixOperator, Radon]):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL (\S+)", str(exc))
        if found or "Weights only load failed" in str(exc):
            name = found.group(1) if found else "an object"
            raise ValueError(
                f"Checkpoint {path} holds pickled Python objects ({name}) and was not "
                "loaded: unrollsci reads checkpoints with weights_only=True (tensors and "
                "plain data only), so nothing in the file ran. Expected "
                f"{what}. A file from an older unrollsci whose config held other "
                "objects must be re-saved with save_checkpoint from the training script."
            ) from None
        raise ValueError(
            f"Checkpoint {path} could not be read (truncated, or not a torch file: {exc}); "
            f"expected {what}."
        ) from None
    except Exception as exc:  # the unpickler of a corrupt file may raise anything
        if isinstance(exc, (FileNotFoundError, IsADirectoryError, PermissionError)):
            raise
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(
            f"Checkpoint {path} could not be read (truncated, or not a torch file: "
            f"{type(exc).__name__}: {first}); expected {what}."
        ) from None


def load_checkpoint(
    path: str | Path,
    *,
    expected: type | Sequence[type] | None = None,
    map_location: str | torch.device | None = None,
) -> nn.Module:
    """Rebuild a model saved by :func:`save_checkpoint`.

    The file is read with ``torch.load(weights_only=True)``: only tensors, numbers,
    strings, dtypes, devices and plain containers are unpickled, and a file holding
    anything else (e.g. an object whose unpickling would run code) raises
    ``ValueError`` without running it. The model class is looked up by name among the
    registered checkpoint classes (unrollsci's models and
    :func:`register_checkpoint_class`, plus the classes in ``expected``); no module
    named in the file is imported and no callable named in it is called.

    Args:
        path: checkpoint file.
        expected: class (or classes) the checkpoint must hold; a mismatch raises
            ``ValueError`` naming both. A class given here may be built even when not
            registered.
        map_location: passed to ``torch.load``.

    Raises:
        ValueError: the file is empty, truncated, not a torch file, not an unrollsci
            checkpoint, holds pickled objects, names an unregistered class, holds
            another class than ``expected``, or its config or weights do not fit.
        FileNotFoundError: no file at ``path``.
    """
    path = Path(path)
    exp: tuple[type, ...] = ()
    if expected is not None:
        exp = (expected,) if isinstance(expected, type) else tuple(expected)
        if not exp or not all(isinstance(e, type) for e in exp):
            raise TypeError(f"Expected 'expected' to be a class or classes (got {expected!r}).")
    payload = _read_payload(path, map_location)
    fmt = payload.get("format") if isinstance(payload, dict) else None
    if fmt not in (_FORMAT, _FORMAT_V1):
        got = f"format {fmt!r}" if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(
            f"{path} is not an unrollsci checkpoint (expected a dict with format "
            f"{_FORMAT!r} as written by save_checkpoint, got {got})."
        )
    name, config, state = payload.get("class"), payload.get("config"), payload.get("state_dict")
    if not isinstance(name, str) or ":" not in name:
        raise ValueError(
            f"Checkpoint {path}: expected its class as a name 'module:Class' (got {name!r})."
        )
    if not isinstance(config, dict) or not isinstance(state, dict):
        raise ValueError(
            f"Checkpoint {path}: expected a config dict and a state_dict dict (got "
            f"{type(config).__name__} and {type(state).__name__})."
        )
    cls = _lookup(name, exp, path)
    if exp and not issubclass(cls, exp):
        names = ", ".join(e.__name__ for e in exp)
        raise ValueError(f"Checkpoint {path} holds a {cls.__name__}, expected {names}.")
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(
            f"Checkpoint {path}: expected a state_dict of named tensors (got {bad[0]!r})."
        )
    model = _build_object(name, config, "config", path, exp)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(
            f"Checkpoint {path}: its weights do not fit the rebuilt {cls.__name__} ({exc})."
        ) from None
    return model
