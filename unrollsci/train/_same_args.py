"""The check that every rank passed :func:`~unrollsci.train.fit` the same arguments and
data of the same size (else replicas that silently diverge, or ranks waiting in a
collective the others never join), by one all-reduce of digests."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from ._distributed import DistContext


def data_size(data: Any, steps: int | None) -> int | None:
    """What the ranks' ``data`` must agree on to give the same steps: the rows of tensors,
    the steps per epoch of a sampler, ``len()`` of a sized iterable of batches (a list, a
    DataLoader); None for None and for an iterable without a length (not comparable)."""
    if data is None:
        return None
    from ._distributed import _is_tensors, _rows

    if _is_tensors(data):
        return _rows(data)
    if callable(data) and not isinstance(data, nn.Module):
        return steps
    try:
        return len(data)
    except TypeError:
        return None


def args_digest(args: dict[str, Any]) -> list[float]:
    """One number per argument, in sorted key order: 48 bits of a SHA-256 of its value
    (exact in float64, so it travels through the float collectives). Integers and reals are
    normalized first, so that ``8``, ``numpy.int64(8)`` and ``0.001``, ``1e-3`` agree."""
    import hashlib
    import numbers

    out = []
    for key in sorted(args):
        v = args[key]
        if isinstance(v, numbers.Integral):
            v = int(v)
        elif isinstance(v, numbers.Real):
            v = float(v)
        digest = hashlib.sha256(f"{key}={v!r}".encode()).digest()
        out.append(float(int.from_bytes(digest[:6], "big")))
    return out


def differing_args(table: Sequence[Sequence[float]], names: Sequence[str]) -> list[str]:
    """The ``names`` whose digest (a column of ``table``, one row per rank) is not the same
    on every rank."""
    return [n for j, n in enumerate(names) if any(row[j] != table[0][j] for row in table)]


def check_same_args(ctx: DistContext, args: dict[str, Any]) -> None:
    """Raise the same ``ValueError`` on every rank unless every rank passed the same
    ``args`` (one all-reduce of their digests). Ranks with another ``lr`` would train
    replicas that silently diverge, and another ``batch_size`` or ``epochs`` would leave
    ranks waiting in a collective the others never join."""
    if not ctx.enabled or ctx.world == 1:
        return
    import torch.distributed as dist

    names = sorted(args)
    table = torch.zeros(ctx.world, len(names) + 1, dtype=torch.float64, device=ctx.comm_device)
    table[ctx.rank, 0] = float(len(names))
    table[ctx.rank, 1:] = torch.tensor(args_digest(args), dtype=torch.float64)
    dist.all_reduce(table)
    rows = table.cpu().tolist()
    if any(row[0] != len(names) for row in rows):  # another version of fit on some rank
        diff = ["the set of arguments"]
    else:
        diff = differing_args([row[1:] for row in rows], names)
    if diff:
        mine = ", ".join(f"{k}={args[k]!r}" for k in diff if k in args)
        data = (
            " Every rank takes its own share of each global batch: pass the whole data set "
            "on every process, not a per-rank shard."
            if any(k.endswith("_data size") for k in diff)
            else ""
        )
        raise ValueError(
            f"Expected the same training arguments on every rank (got different "
            f"{', '.join(diff)} across the {ctx.world} ranks; rank {ctx.rank} has {mine}). "
            f"Pass fit the same arguments on every process.{data}"
        )
