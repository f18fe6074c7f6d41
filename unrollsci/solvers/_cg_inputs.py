"""cg's checks of scipy operators and callable preconditioners (see :func:`._cg.cg`)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch

from ..operators import LinearOperator
from ._common import as_operator


def refuse_scipy_operator(a: Any, name: str) -> None:
    """Raise ``TypeError`` for a ``scipy.sparse.linalg.LinearOperator``: cg works on
    torch tensors and would call it with them (scipy then failed inside its matvec)."""
    linalg = sys.modules.get("scipy.sparse.linalg")  # not imported: ``a`` is not one
    if linalg is None or not isinstance(a, linalg.LinearOperator):
        return
    if name == "M":
        takes = "a torch tensor, a scipy sparse matrix or a callable r -> z on torch tensors"
        instead = "the unrollsci preconditioner itself (e.g. M=ic0(A), not ic0(A).to_scipy())"
    else:
        takes = "a torch tensor or a scipy sparse matrix"
        instead = "the unrollsci operator itself (e.g. A, not A.to_scipy())"
    raise TypeError(
        f"Expected '{name}' to be an unrollsci LinearOperator, {takes} (got the scipy "
        f"LinearOperator {type(a).__name__}). cg works on torch tensors: pass {instead} or "
        "the sparse matrix; to_scipy() converts the other way, for scipy's own solvers."
    )


def as_apply(m: Any, name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    refuse_scipy_operator(m, name)
    if callable(m) and not isinstance(m, (torch.Tensor, LinearOperator)):
        return _checked_once(m, name)
    return as_operator(m, name)


def _checked_once(m: Callable[[torch.Tensor], torch.Tensor], name: str) -> Any:
    """The callable preconditioner ``m`` with its first output checked: a tensor of the
    dtype, device and shape of its input (a float64 ``M r`` for a float32 ``r`` failed
    inside CG's inner products, or silently promoted the iterates)."""
    checked = False

    def apply(r: torch.Tensor) -> torch.Tensor:
        nonlocal checked
        if checked:
            return m(r)
        try:
            z = m(r)
        except Exception as exc:  # e.g. a numpy function (spilu(...).solve) given a tensor
            raise TypeError(
                f"Expected the callable '{name}' to map a torch tensor r of shape (batch, n) "
                f"to a torch tensor of r's shape, dtype and device; called with r of shape "
                f"{tuple(r.shape)} ({r.dtype} on {r.device}) it raised "
                f"{type(exc).__name__}: {exc}. A function on numpy arrays (such as scipy's "
                "spilu(...).solve) must convert from and to torch tensors."
            ) from exc
        if not isinstance(z, torch.Tensor):
            raise TypeError(
                f"Expected the callable '{name}' to return a torch tensor (got {type(z).__name__})."
            )
        if z.dtype != r.dtype or z.device != r.device:
            raise TypeError(
                f"Expected the callable '{name}' to return a tensor of the dtype and "
                f"device of its input ({r.dtype} on {r.device}; got {z.dtype} on "
                f"{z.device})."
            )
        if z.shape != r.shape:
            raise ValueError(
                f"Expected the callable '{name}' to return a tensor of the shape of its "
                f"input {tuple(r.shape)} (got {tuple(z.shape)})."
            )
        checked = True
        return z

    apply.serial_host = getattr(m, "serial_host", False)  # type: ignore[attr-defined]
    return apply
