"""Data-parallel training through ``torch.distributed``: the process group, the sharding
of every global batch across ranks, and the few collectives :func:`~unrollsci.train.fit`
needs besides DistributedDataParallel's gradient all-reduce.

The sharding keeps ``batch_size`` the *global* batch: every rank draws the same global
batch from the same seeded generator and keeps its share, its loss is weighted by
``share / global_batch`` and DDP sums (not averages) the gradients over the ranks, so that
the sum is the gradient of the mean loss over the whole global batch and every row's
gradient in a rank's backward is as large as on one process (a row's float16 gradient
overflows on the same steps). A run therefore gives the same result on any number of
processes, up to floating-point reduction order (exceptions: dropout, and fp16 overflows
of gradients summed over rows; see docs/unrolled.md).
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any

import torch
from torch import nn

from .._validation import check_count
from ._checks import _check_loss
from ._same_args import args_digest, check_same_args, data_size, differing_args  # noqa: F401

_TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass
class DistContext:
    """Where this process stands: ``enabled`` is False for plain single-process training."""

    enabled: bool = False
    rank: int = 0
    world: int = 1
    backend: str | None = None
    comm_device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        """True on the process that writes files and shows progress (rank 0)."""
        return self.rank == 0

    # ------------------------------------------------------------ collectives
    def all_sum(self, values: Sequence[float]) -> list[float]:
        """Sum of ``values`` over the ranks (float64), the same list on every rank."""
        if not self.enabled:
            return [float(v) for v in values]
        import torch.distributed as dist

        t = torch.tensor(list(values), dtype=torch.float64, device=self.comm_device)
        dist.all_reduce(t)
        return t.cpu().tolist()

    def from_main(self, values: Sequence[float]) -> list[float]:
        """Rank 0's ``values`` on every rank (decisions identical on every rank)."""
        if not self.enabled:
            return [float(v) for v in values]
        import torch.distributed as dist

        t = torch.tensor(list(values), dtype=torch.float64, device=self.comm_device)
        dist.broadcast(t, 0)
        return t.cpu().tolist()

    def gather(self, value: float) -> list[float]:
        """Every rank's ``value``, in rank order."""
        if not self.enabled:
            return [float(value)]
        import torch.distributed as dist

        t = torch.zeros(self.world, dtype=torch.float64, device=self.comm_device)
        t[self.rank] = float(value)
        dist.all_reduce(t)
        return t.cpu().tolist()

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            if self.backend == "nccl":
                dist.barrier(device_ids=[self.comm_device.index or 0])
            else:
                dist.barrier()


def _launched_by_torchrun() -> bool:
    return all(k in os.environ for k in _TORCHRUN_ENV)


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def setup(distributed: bool | None, model: nn.Module) -> DistContext:
    """The distributed context of one :func:`fit` call.

    ``distributed=None`` (auto): data-parallel when a process group of more than one
    process is initialized, or when ``torchrun`` set ``WORLD_SIZE > 1`` (the group is then
    initialized here: NCCL for a model on a CUDA device, else gloo). ``True``: always, also
    on one process (the same code path). ``False``: never (every process trains alone).
    """
    if distributed is not None and not isinstance(distributed, bool):
        raise TypeError(
            f"Expected 'distributed' to be None, True or False (got {type(distributed).__name__})."
        )
    if distributed is False:
        return DistContext()
    import torch.distributed as dist

    if not dist.is_available():
        if distributed:
            raise RuntimeError("distributed=True, but this torch build has no torch.distributed.")
        return DistContext()
    if not dist.is_initialized():
        world = int(os.environ.get("WORLD_SIZE", "1") or 1)
        if not _launched_by_torchrun() or (distributed is None and world <= 1):
            if distributed:
                missing = [k for k in _TORCHRUN_ENV if k not in os.environ]
                raise RuntimeError(
                    "distributed=True needs an initialized process group "
                    "(torch.distributed.init_process_group) or a launch by torchrun; "
                    f"neither was found (environment lacks {', '.join(missing)})."
                )
            return DistContext()
        device = _model_device(model)
        backend = "nccl" if device.type == "cuda" and dist.is_nccl_available() else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend)
        atexit.register(_destroy)
    world = dist.get_world_size()
    if distributed is None and world <= 1:
        return DistContext()
    backend = str(dist.get_backend())
    device = _model_device(model)
    comm = device if backend == "nccl" else torch.device("cpu")
    return DistContext(True, dist.get_rank(), world, backend, comm)


def _destroy() -> None:  # pragma: no cover - runs at interpreter exit
    import gc

    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        # DDP wrappers of finished fits may still wait for the garbage collector (reference
        # cycles): destroyed after the process group, their reducers abort the process
        # ("terminate called without an active exception")
        gc.collect()
        dist.destroy_process_group()


def is_main_process() -> bool:
    """True unless this process is a rank other than 0 of an initialized process group.

    Code around :func:`fit` uses it to write files and print once per job, e.g.
    ``if is_main_process(): save_checkpoint(model, path)``.
    """
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


# ---------------------------------------------------------------- the sharding
def _is_tensors(data: Any) -> bool:
    return isinstance(data, torch.Tensor) or (
        isinstance(data, (tuple, list))
        and bool(data)
        and all(isinstance(t, torch.Tensor) for t in data)
    )


def _take(data: Any, idx: torch.Tensor) -> Any:
    """Rows ``idx`` of a tensor, or of each tensor of a tuple/list (the same form back)."""
    if isinstance(data, torch.Tensor):
        return data[idx.to(data.device)]
    return (
        type(data)(t[idx.to(t.device)] for t in data)
        if isinstance(data, list)
        else tuple(t[idx.to(t.device)] for t in data)
    )


def _share(n: int, ctx: DistContext) -> torch.Tensor:
    """This rank's positions among ``n`` (contiguous, sizes differ by at most one)."""
    return torch.tensor_split(torch.arange(n), ctx.world)[ctx.rank]


def _split_rows(batch: Any, idx: torch.Tensor, ctx: DistContext) -> tuple[list, list[float]]:
    """This rank's rows of the global batch ``batch[idx]`` and their weight."""
    mine = idx[_share(idx.shape[0], ctx)]
    if mine.numel() == 0:  # a stand-in with weight 0 keeps DDP's collectives in step
        return [_take(batch, idx[:1])], [0.0]
    return [_take(batch, mine)], [ctx.world * mine.numel() / idx.shape[0]]


def _split_items(items: list, ctx: DistContext) -> tuple[list, list[float]]:
    """This rank's batches of a group of ``len(items)`` batches, weighted to their mean."""
    g = len(items)
    if not ctx.enabled:
        return items, ([1.0] if g == 1 else [1.0 / g] * g)
    mine = _share(g, ctx).tolist()
    if not mine:
        return [items[0]], [0.0]
    return [items[i] for i in mine], [ctx.world / g] * len(mine)


def global_steps(
    data: Any,
    batch_size: int | None,
    generator: torch.Generator,
    steps: int | None,
    ctx: DistContext,
) -> Iterator[tuple[list, list[float]]]:
    """Yield ``(parts, weights)`` per optimizer step: this rank's loss is
    ``sum(w * loss_fn(model, part))``, and DDP's average over the ranks of its gradient is
    the gradient of the mean loss over the global batch.

    * tensors: the global batches of :func:`iterate_batches` (the same permutation drawn
      from ``generator``, reshuffled every epoch), each split into contiguous row blocks;
    * a sampler ``data(generator)``: every rank draws the whole global batch (the same
      samples on any number of processes) and keeps its rows;
    * batches (a list, a DataLoader, ...): ``batch_size`` batches per step (1 if None),
      their losses averaged; each rank evaluates its share of them.

    Without ``ctx.enabled`` the steps are exactly those of :func:`iterate_batches` (with
    ``batch_size`` batches of an iterable per step). :func:`counted_steps` also gives each
    step's size.
    """
    for parts, weights, _ in counted_steps(data, batch_size, generator, steps, ctx):
        yield parts, weights


def _rows(batch: Any) -> int:
    """Samples of a tensor batch (rows of its first tensor); 1 for any other batch."""
    if _is_tensors(batch):
        first = batch if isinstance(batch, torch.Tensor) else batch[0]
        return int(first.shape[0]) if first.dim() else 1
    return 1


def counted_steps(
    data: Any,
    batch_size: int | None,
    generator: torch.Generator,
    steps: int | None,
    ctx: DistContext,
) -> Iterator[tuple[list, list[float], int]]:
    """The steps of :func:`global_steps` as ``(parts, weights, size)``: ``size`` is the
    number of samples the step's loss is the mean of, the same on every rank: the rows of
    the global batch (tensors, a sampler returning tensors), the batches of the step (an
    iterable of batches), else 1."""
    from ._data import iterate_batches

    single = not ctx.enabled
    if callable(data) and not isinstance(data, (torch.Tensor, nn.Module)):
        for batch in iterate_batches(data, batch_size, generator, steps):
            if single:
                yield [batch], [1.0], _rows(batch)
                continue
            if not _is_tensors(batch):
                raise TypeError(
                    "Under torch.distributed a sampler must return a tensor or a tuple/list "
                    "of tensors with the samples along dim 0, so that each rank can keep its "
                    f"share of the global batch (got {type(batch).__name__}); pass a list of "
                    "batches instead, with batch_size batches per step."
                )
            first = batch if isinstance(batch, torch.Tensor) else batch[0]
            yield (*_split_rows(batch, torch.arange(first.shape[0]), ctx), first.shape[0])
        return
    if _is_tensors(data):
        tensors = (data,) if isinstance(data, torch.Tensor) else tuple(data)
        n = tensors[0].shape[0]
        if any(t.shape[0] != n for t in tensors):
            raise ValueError(
                "Expected training tensors with equal first dimension (got "
                f"{[tuple(t.shape) for t in tensors]})."
            )
        if single:
            for batch in iterate_batches(data, batch_size, generator, steps):
                yield [batch], [1.0], _rows(batch)
            return
        bs = n if batch_size is None else int(batch_size)
        perm = torch.randperm(n, generator=generator)  # the permutation iterate_batches draws
        for i in range(0, n, bs):
            idx = perm[i : i + bs]
            yield (*_split_rows(data, idx, ctx), idx.shape[0])
        return
    group = 1 if batch_size is None else int(batch_size)
    it = iter(data)
    while True:
        items = list(islice(it, group))
        if not items:
            return
        yield (*_split_items(items, ctx), len(items))


def local_loss(model: nn.Module, loss_fn: Any, parts: list, weights: list[float]) -> torch.Tensor:
    """``sum(w * loss_fn(model, part))``; one part of weight 1 is its loss as is."""
    if len(parts) == 1 and weights[0] == 1.0:
        return _check_loss(loss_fn(model, parts[0]), "training").reshape(())
    total = None
    for part, w in zip(parts, weights, strict=True):
        term = _check_loss(loss_fn(model, part), "training").reshape(()) * w
        total = term if total is None else total + term
    assert total is not None
    return total


class LossModule(nn.Module):
    """``model`` and ``loss_fn`` as one module, so that DistributedDataParallel sees every
    call ``loss_fn`` makes into the model (methods other than ``forward`` included)."""

    def __init__(self, model: nn.Module, loss_fn: Any) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, parts: list, weights: list[float]) -> torch.Tensor:
        loss = local_loss(self.model, self.loss_fn, parts, weights)
        # every trainable parameter in the graph by an empty slice (adds exactly 0, also for
        # non-finite values): DDP then reduces all of them every step without searching the
        # graph for unused ones (find_unused_parameters=True printed torch's warning that it
        # found none, at every rank, in every distributed fit)
        used = [
            p.reshape(-1)[:0].sum().to(loss.dtype)
            for p in self.parameters()
            if p.requires_grad and p.layout == torch.strided
        ]
        return loss + torch.stack(used).sum() if used else loss


def wrap(model: nn.Module, loss_fn: Any, ctx: DistContext) -> Any:
    """A callable ``(parts, weights) -> loss``: DDP over the model under ``ctx``."""
    if not ctx.enabled:
        return lambda parts, weights: local_loss(model, loss_fn, parts, weights)
    from torch.nn.parallel import DistributedDataParallel

    module = LossModule(model, loss_fn)
    # Sparse buffers (e.g. a Radon projector's system matrix) are built the same on every
    # rank and cannot be broadcast by DDP: left out of its start-up and buffer syncs.
    sparse = [n for n, b in module.named_buffers() if b.layout != torch.strided]
    if sparse:
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, sparse)
    # layer-wise stages, unused heads and zero-weight stand-ins leave parameters out of some
    # steps: LossModule keeps every one in the graph, so every all-reduce completes
    ddp = DistributedDataParallel(module)
    # The weights of :func:`counted_steps` suit DDP's average (world * share / global);
    # divided by world, with the gradients summed, a rank's backward sees every row with
    # the weight 1 / global of one process: each row's gradients are as large as there,
    # so a row's float16 gradient overflows (and the scaler skips the step) as there.
    ddp.register_comm_hook(None, _sum_hook)
    world = ctx.world
    return lambda parts, weights: ddp(parts, [w / world for w in weights])


def _sum_hook(group, bucket):
    """DDP communication hook: the sum over the ranks of a bucket of gradients (left
    unannotated: DDP refuses any annotation but the real classes, and the module's
    ``from __future__ import annotations`` turns those into strings)."""
    import torch.distributed as dist

    fut = dist.all_reduce(bucket.buffer(), group=group, async_op=True).get_future()
    return fut.then(lambda f: f.value()[0])


def eval_shares(
    data: Any, generator: torch.Generator, steps: int | None, ctx: DistContext
) -> Iterable[tuple[Any, float]]:
    """``(share, weight)`` for every batch of one validation pass: ``share`` is this rank's
    part of it (None when it has none). The mean validation loss is the sum over the ranks
    of ``sum(weight * loss_fn(model, share))``, divided by the number of batches."""
    from ._data import iterate_batches

    sampler = callable(data) and not isinstance(data, (torch.Tensor, nn.Module))
    for i, batch in enumerate(iterate_batches(data, None, generator, steps or 1)):
        if not ctx.enabled:
            yield batch, 1.0
        elif _is_tensors(data) or (sampler and _is_tensors(batch)):
            first = batch if isinstance(batch, torch.Tensor) else batch[0]
            mine = _share(first.shape[0], ctx)
            n = first.shape[0]
            yield (_take(batch, mine), mine.numel() / n) if mine.numel() else (None, 0.0)
        else:
            yield (batch, 1.0) if i % ctx.world == ctx.rank else (None, 0.0)


def run_callback(
    callback: Any, ctx: Any, epoch: int, train_loss: float, val_loss: float | None
) -> bool:
    """Call ``callback`` on every rank; True when rank 0's call asks to stop. An exception
    in any rank's call is raised on every rank (so no rank waits for the others)."""
    if callback is None:
        return False
    error: BaseException | None = None
    stop = False
    try:
        stop = callback(epoch, train_loss, val_loss) is True
    except Exception as exc:  # re-raised below, after the ranks agree
        if not ctx.enabled:
            raise
        error = exc
    if not ctx.enabled:
        return stop
    codes = ctx.gather(2.0 if error is not None else (1.0 if stop else 0.0))
    if error is not None:
        raise error
    failed = [r for r, c in enumerate(codes) if c == 2.0]
    if failed:
        raise RuntimeError(f"fit stopped: the callback raised on rank {failed[0]}.")
    return codes[0] == 1.0


# ---------------------------------------------------------------- a launcher
def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _child(rank: int, fn: Any, world: int, port: int, args: tuple) -> None:
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    try:
        fn(rank, *args)
    finally:
        _destroy()


def spawn(fn: Any, nprocs: int, *args: Any) -> None:
    """Run ``fn(rank, *args)`` in ``nprocs`` fresh processes on this machine, with the
    environment ``torchrun`` sets (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ...), so
    that :func:`fit` inside ``fn`` initializes the process group itself.

    For notebooks, tests and benchmarks; scripts are better launched by ``torchrun``.
    ``fn`` must be importable by name (a module-level function). Raises if a process
    fails (the others are then stopped).
    """
    import torch.multiprocessing as mp

    nprocs = check_count("nprocs", nprocs)
    mp.spawn(_child, args=(fn, nprocs, _free_port(), args), nprocs=nprocs, join=True)
