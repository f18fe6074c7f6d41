"""Sparse compressed tensors (CSR, CSC, BSR, BSC) across pickling, packed as plain tensors.

torch pickles a compressed tensor, and ``torch.multiprocessing`` (DataLoader workers) shares
one between processes, by rebuilding it with ``torch.sparse_compressed_tensor`` in the
receiving process, outside :func:`unrollsci._compat.quiet_csr`: torch's once-per-process
notices that sparse CSR support is "in beta" and that invariant checks are "implicitly
disabled" then reach the user. unrollsci's objects that hold such tensors (operators'
buffers, :class:`~unrollsci.graph.GraphInverseProblem`'s cache) pickle them packed as their
index and value tensors (plain strided tensors, shared as any other) and rebuild them here,
quietly and with torch's invariant check, when they are unpickled.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import torch

from .._compat import quiet_csr

#: Sparse layouts with no storage (``copy.deepcopy`` of such a tensor fails in torch).
COMPRESSED = (torch.sparse_csr, torch.sparse_csc, torch.sparse_bsr, torch.sparse_bsc)
_LAYOUTS = {str(lay).removeprefix("torch."): lay for lay in COMPRESSED}
# a packed tensor: (tag, layout name, compressed indices, plain indices, values, shape,
# requires_grad); plain data only, so a pickle holding one still loads with weights_only
_TAG = "unrollsci-compressed-tensor"


def is_compressed(t: Any) -> bool:
    """Whether ``t`` is a tensor of a compressed sparse layout."""
    return isinstance(t, torch.Tensor) and t.layout in COMPRESSED


def is_packed(v: Any) -> bool:
    """Whether ``v`` is a tensor packed by :func:`pack`."""
    return isinstance(v, tuple) and len(v) == 7 and isinstance(v[0], str) and v[0] == _TAG


def pack(t: torch.Tensor) -> tuple[Any, ...]:
    """A compressed tensor as ``(tag, layout, compressed, plain, values, shape, grad)``."""
    if t.layout in (torch.sparse_csr, torch.sparse_bsr):
        compressed, plain = t.crow_indices(), t.col_indices()
    else:
        compressed, plain = t.ccol_indices(), t.row_indices()
    name = str(t.layout).removeprefix("torch.")
    values = t.values().detach()
    return (_TAG, name, compressed, plain, values, tuple(t.shape), bool(t.requires_grad))


def unpack(v: tuple[Any, ...]) -> torch.Tensor:
    """The tensor :func:`pack` packed (torch's invariant check runs, its notices do not)."""
    _, name, compressed, plain, values, shape, grad = v
    layout = _LAYOUTS.get(name) if isinstance(name, str) else None
    if layout is None:
        raise ValueError(
            f"Expected a packed sparse tensor of layout {', '.join(_LAYOUTS)} (got {name!r})."
        )
    with quiet_csr():
        t = torch.sparse_compressed_tensor(
            compressed, plain, values, tuple(shape), layout=layout, check_invariants=True
        )
    return t.requires_grad_() if grad else t


def _map(obj: Any, leaf: Any, change: Any, memo: dict[int, Any]) -> Any:
    """``obj`` with every ``leaf(x)``-true value ``x`` replaced by ``change(x)``, looking into
    dicts, lists, tuples and dataclass instances (copied where something inside changed;
    ``obj`` itself is never modified; shared values stay shared)."""
    key = id(obj)
    if key in memo:
        return memo[key]
    if leaf(obj):
        memo[key] = out = change(obj)
        return out
    memo[key] = obj  # a cycle leads back here unchanged
    out = obj
    if type(obj) is dict:
        items = {k: _map(v, leaf, change, memo) for k, v in obj.items()}
        if any(items[k] is not v for k, v in obj.items()):
            out = items
    elif type(obj) in (list, tuple):
        seq = [_map(v, leaf, change, memo) for v in obj]
        if any(a is not b for a, b in zip(seq, obj, strict=True)):
            out = type(obj)(seq)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type) and hasattr(obj, "__dict__"):
        attrs = {k: _map(v, leaf, change, memo) for k, v in vars(obj).items()}
        if any(attrs[k] is not v for k, v in vars(obj).items()):
            out = copy.copy(obj)
            vars(out).update(attrs)
    memo[key] = out
    return out


def pack_tree(obj: Any) -> Any:
    """``obj`` with its compressed tensors packed (see :func:`_map` for where it looks)."""
    return _map(obj, is_compressed, pack, {})


def unpack_tree(obj: Any) -> Any:
    """The inverse of :func:`pack_tree`."""
    return _map(obj, is_packed, unpack, {})
