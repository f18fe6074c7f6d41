"""Input checks of a :class:`GraphInverseProblem` and the tracking of a general operator's
state, split from ``_problem`` (which stays the problem's interface).

* :func:`parse_operator`: the ``operator=`` argument (None, ``"heat"`` or an operator).
* :func:`parse_mask`: the ``mask=`` argument as a ``(1 or batch, m)`` tensor of 0/1.
* :func:`check_rows`: the batch of an input ``x`` against the problem's signals.
* :func:`sync_operator`: a general operator is held by reference, so everything cached
  on the problem that depends on it (spectral bounds, Gershgorin rows, the exact
  solution) is dropped, and identifiability is checked again, once the operator's state
  (:meth:`LinearOperator._norm_key`: identity, version counter, storage, shape, dtype
  and device of its buffers and parameters, and its scalar state) differs from the
  state the cache was built for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from ._problem import GraphInverseProblem

__all__ = ["check_rows", "operator_key", "parse_mask", "parse_operator", "sync_operator"]

#: cache entries that depend on the graph only (kept when the operator changes)
GRAPH_ONLY = ("graph-digest", "lap-")
#: a key no operator state equals: the next access checks again
_UNCHECKED = ("unchecked",)


def parse_operator(
    operator: Any, n: int, lap: Any, tau: float, heat_degree: int, device: torch.device
) -> tuple[str, Any, Any, int]:
    """``(kind, operator, heat kernel, output size)`` of the ``operator=`` argument: None
    (a mask problem), ``"heat"`` (a :class:`HeatKernel` of ``lap`` built here) or a
    :class:`LinearOperator` with ``in_shape == (n,)`` and a vector output, taken by
    reference (not copied)."""
    from ..operators import LinearOperator
    from ._laplacian import HeatKernel

    if operator is None:
        return "mask", None, None, n
    if isinstance(operator, str):
        if operator != "heat":
            raise ValueError(
                f"Expected operator None, 'heat' or a LinearOperator (got {operator!r})."
            )
        heat = HeatKernel(lap, tau, degree=heat_degree).to(device)
        return "heat", heat, heat, n
    if isinstance(operator, LinearOperator):
        if tuple(operator.in_shape) != (n,) or len(operator.out_shape) != 1:
            raise ValueError(
                f"Expected an operator with in_shape ({n},) (one entry per node) and a "
                f"vector output (got {operator.in_shape} -> {operator.out_shape})."
            )
        return "operator", operator, None, int(operator.out_shape[0])
    raise TypeError(
        "Expected 'operator' to be None, 'heat' or a LinearOperator (got "
        f"{type(operator).__name__})."
    )


def parse_mask(
    mask: Any, out_n: int, batch: int, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """``mask`` (bool or 0/1, ``(m,)`` or ``(batch, m)``) as a ``(1 or batch, m)`` copy."""
    if not isinstance(mask, torch.Tensor):
        mask = torch.as_tensor(np.asarray(mask))
    if mask.is_complex():
        raise TypeError(f"Expected a real or boolean 'mask' (got dtype {mask.dtype}).")
    if mask.dtype != torch.bool:
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError("Expected 'mask' to be boolean or contain only 0 and 1.")
    m = mask.to(device=device, dtype=dtype, copy=True)
    m = m[None] if m.dim() == 1 else m
    if m.dim() != 2 or m.shape[1] != out_n or m.shape[0] not in (1, batch):
        raise ValueError(
            f"Expected 'mask' of shape ({out_n},) or ({batch}, {out_n}) (got {tuple(mask.shape)})."
        )
    return m


def check_rows(p: GraphInverseProblem, x: torch.Tensor, name: str, *, data: bool) -> None:
    """Raise ``ValueError`` unless ``x`` has one row per signal where the result depends
    on the signal: ``data=True`` (gradient, objective, errors: ``y`` enters) whenever the
    problem has several signals; ``data=False`` (``A``, ``A^T``, ``H``) only for masks of
    one row per signal. A problem with one signal (or a shared ``H``) takes any number of
    rows, each evaluated with the same data."""
    rows = int(x.shape[0]) if x.dim() > 1 else 1
    per_signal = p.batch_size if data else (1 if p.mask is None else int(p.mask.shape[0]))
    if per_signal > 1 and rows != per_signal:
        why = "" if data else ", whose masks differ"
        raise ValueError(
            f"Expected '{name}' with {per_signal} rows, one per signal of the problem{why} "
            f"(got shape {tuple(x.shape)}); a batch is not broadcast across signals."
        )


def operator_key(op: Any) -> Any:
    """The state of a general operator that the problem's cache depends on."""
    return op._norm_key()


def sync_operator(p: GraphInverseProblem, store: dict[str, Any]) -> None:
    """Drop the operator-dependent entries of ``store`` (the problem's cache) and check
    identifiability again when ``p.operator``'s state changed since they were built."""
    key = operator_key(p.operator)
    if key == p._op_key:
        return
    keep = {k: v for k, v in store.items() if k.startswith(GRAPH_ONLY)}
    store.clear()
    store.update(keep)
    p._op_key = key  # set first: the check below reads the cache
    from ._identifiability import check_unique

    try:
        check_unique(p)
    except Exception:
        p._op_key = _UNCHECKED  # a singular H stays refused on every later access
        raise
