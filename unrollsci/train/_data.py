"""What :func:`~unrollsci.train.fit` trains on and reports: :class:`History`,
:func:`iterate_batches` (the data forms) and the validation pass."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ._checks import _check_loss

Batch = Any
LossFn = Callable[[nn.Module, Batch], torch.Tensor]


@dataclass
class History:
    """What happened during :func:`fit`.

    ``train_loss[e]`` is the mean training loss of epoch ``e``, each step's loss (taken
    before that step's update) weighted by the samples it averages over: for tensors,
    and for a sampler returning a tensor or tuple/list of tensors, the rows of the step's
    global batch (a short last batch counts by its rows: the per-sample mean over the
    epoch); for an iterable of batches (graphs, systems, a DataLoader), the number of
    batches in the step (the mean over the epoch's batches, as ``val_loss`` is); for a
    sampler returning anything else, one per step. With steps of equal size it is the
    plain mean over the steps. ``val_loss[e]`` is the validation loss after epoch ``e``.
    """

    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    stage: list[int] = field(default_factory=list)
    best_val: float = math.inf
    best_epoch: int = -1
    stopped_early: bool = False
    resumed_from_epoch: int = 0
    world_size: int = 1  # processes that trained data-parallel (1: no torch.distributed)
    seconds: float = 0.0


class StepMean:
    """The weighted mean of the step losses of one epoch (:attr:`History.train_loss`):
    ``sum(size * value) / sum(size)``, and exactly ``sum(value) / steps`` (the plain mean,
    the same bits) when every step has the same size."""

    def __init__(self) -> None:
        self.total, self.weighted, self.samples = 0.0, 0.0, 0.0
        self.count, self.equal = 0, True
        self.first: float | None = None

    def add(self, value: float, size: float) -> None:
        self.total += value
        self.weighted += size * value
        self.samples += size
        self.count += 1
        if self.first is None:
            self.first = size
        self.equal = self.equal and size == self.first

    def value(self) -> float:
        return self.total / self.count if self.equal else self.weighted / self.samples


def refuse_tensor_list(data: Any, name: str = "data") -> None:
    """Raise ``TypeError`` for a non-empty list whose items are all tensors.

    Such a list reads two ways: the columns of one data set (``[y, x]``, cut into
    mini-batches of rows) or a list of batches (``[y1, y2, y3]``, each passed to
    ``loss_fn``); both readings give a loss its batches with no error where the shapes
    agree, so neither is guessed. A tuple of tensors is the columns of one data set.
    """
    if not (isinstance(data, list) and data and all(isinstance(t, torch.Tensor) for t in data)):
        return
    shapes = [tuple(t.shape) for t in data[:4]] + (["..."] if len(data) > 4 else [])
    shown = ", ".join(str(s) for s in shapes)
    raise TypeError(
        f"Expected '{name}' to be a tensor, a tuple of tensors (the columns of one data "
        "set, e.g. (y, x), cut into mini-batches of batch_size rows), an iterable of "
        f"batches or a sampler (got a list of {len(data)} tensors of shapes {shown}, which "
        "reads two ways). For the columns of one data set pass a tuple: tuple(data). For "
        "separate batches of samples pass torch.cat(data) with batch_size=<rows per "
        "batch> (shuffled), or a list of tuples [(y,), ...] or a DataLoader, whose "
        "batches reach loss_fn as they are."
    )


def iterate_batches(
    data: Any, batch_size: int | None, generator: torch.Generator, steps: int | None
) -> Iterable[Batch]:
    """Yield mini-batches from tensors, an iterable of batches, or a sampler.

    * a tensor, or a tuple of tensors with equal first dimension (the columns of one
      data set, e.g. ``(y, x)``): shuffled mini-batches of ``batch_size`` rows (the
      whole set if None), a tensor or a tuple of tensors;
    * a callable ``sampler(generator) -> batch``: ``steps`` fresh batches
      (synthetic data drawn on the fly, as in the LISTA literature);
    * any other iterable (e.g. a ``DataLoader``, a list of ``(y, x)`` tuples or of PyG
      batches): its items as they are.

    A list of tensors reads two ways (the columns of one data set, or a list of batches)
    and is refused with ``TypeError`` (:func:`refuse_tensor_list`).
    """
    if callable(data) and not isinstance(data, (torch.Tensor, nn.Module)):
        if steps is None:
            raise ValueError("A sampler as training data needs steps_per_epoch.")
        for _ in range(steps):
            yield data(generator)
        return
    refuse_tensor_list(data)
    if isinstance(data, torch.Tensor) or (
        isinstance(data, tuple) and data and all(isinstance(t, torch.Tensor) for t in data)
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
    model: nn.Module,
    loss_fn: LossFn,
    data: Any,
    generator: torch.Generator,
    steps: int | None,
    ctx: Any = None,
) -> float:
    """Mean validation loss over the batches of one pass (each rank evaluates its share)."""
    from ._distributed import DistContext, eval_shares

    ctx = ctx if ctx is not None else DistContext()
    was = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for share, weight in eval_shares(data, generator, steps, ctx):
            count += 1
            if share is not None:
                value = float(_check_loss(loss_fn(model, share), "validation", train=False))
                total += value if weight == 1.0 else weight * value
    model.train(was)
    if count == 0:
        raise ValueError(
            f"val_data yielded no batch ({type(data).__name__}); expected at least one "
            "validation batch every epoch (a generator or iterator is exhausted after one "
            "pass: use a list of batches, tensors, a DataLoader or a sampler)."
        )
    if ctx.enabled:
        total = ctx.all_sum([total])[0]
    return total / count
