"""scipy interoperability of :class:`~unrollsci.operators.LinearOperator`.

``op.to_scipy()`` returns a :class:`scipy.sparse.linalg.LinearOperator` that applies ``op``
to numpy arrays (no autograd), so an unrollsci operator or preconditioner drops into
scipy's Krylov solvers (``scipy.sparse.linalg.cg(A, b, M=M.to_scipy())``) and PyAMG's.
``op.matvec(x)`` / ``op.rmatvec(y)`` / ``op.matmat(X)`` / ``op.rmatmat(Y)`` are the same
products on numpy arrays, for code written against scipy's duck-typed operators.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .._threads import torch_serial

if TYPE_CHECKING:
    from ._linear import LinearOperator

__all__ = ["apply_numpy", "numpy_dtype", "to_scipy"]

_TO_NUMPY = {
    torch.float64: np.float64,
    torch.float32: np.float32,
    torch.float16: np.float16,
}


def numpy_dtype(dtype: Any) -> np.dtype:
    """numpy dtype of a torch or numpy floating dtype (``None``: float64)."""
    if dtype is None:
        return np.dtype(np.float64)
    if isinstance(dtype, torch.dtype):
        if dtype not in _TO_NUMPY:
            raise TypeError(f"Expected a real floating dtype for the scipy operator (got {dtype}).")
        return np.dtype(_TO_NUMPY[dtype])
    out = np.dtype(dtype)
    if out.kind != "f":
        raise TypeError(f"Expected a real floating dtype for the scipy operator (got {out}).")
    return out


def _operator_device(op: LinearOperator) -> torch.device:
    """Where ``op`` computes: its buffers' device, else that of a tensor it holds, else cpu."""
    dev = op.device
    if dev is not None:
        return dev
    for value in vars(op).values():
        if isinstance(value, torch.Tensor):
            return value.device
    return torch.device("cpu")


#: arrays with this many entries are applied with torch single-threaded: from torch's
#: grain size (below it torch runs one thread anyway) to a size where threads pay
_SERIAL_ENTRIES = (1 << 15, 1 << 20)


def _serial_on_cpu(device: torch.device, entries: int) -> AbstractContextManager[None]:
    """torch single-threaded (:func:`unrollsci._threads.torch_serial`) for one application
    on the CPU of an array of :data:`_SERIAL_ENTRIES` entries: :func:`apply_numpy` is called
    from numpy-driven loops (scipy's and PyAMG's Krylov solvers), between single-threaded
    numpy steps, where a parallel torch operation wakes torch's workers on every call."""
    lo, hi = _SERIAL_ENTRIES
    return torch_serial(device.type == "cpu" and lo <= entries <= hi)


def apply_numpy(
    op: LinearOperator, x: Any, *, adjoint: bool = False, dtype: Any = None
) -> np.ndarray:
    """``op`` (or its adjoint) applied to a numpy array-like, returned as numpy.

    ``x`` is one vector ``(n,)`` / ``(n, 1)`` or the columns of ``(n, k)`` (scipy's
    conventions; ``n`` the operator's flattened input size). Computed without autograd
    in ``dtype`` (default: ``x``'s floating dtype, float64 for integer input) on the
    operator's device; the result has the same layout as ``x``.

    Raises:
        TypeError: complex or non-numeric input.
        ValueError: a first dimension other than ``n``, or more than 2 dimensions.
    """
    arr = np.asarray(x)
    if arr.dtype.kind == "c":
        raise TypeError(
            f"Expected a real array for {type(op).__name__} (got complex dtype {arr.dtype})."
        )
    if arr.dtype.kind not in "fiub":
        raise TypeError(
            f"Expected a numeric array for {type(op).__name__} (got dtype {arr.dtype})."
        )
    want = numpy_dtype(dtype) if dtype is not None else None
    if want is None:
        want = arr.dtype if arr.dtype.kind == "f" else np.dtype(np.float64)
    m, n = op.shape
    in_shape, size_in, size_out = (op.out_shape, m, n) if adjoint else (op.in_shape, n, m)
    if arr.ndim not in (1, 2) or arr.shape[0] != size_in:
        raise ValueError(
            f"Expected an array of shape ({size_in},) or ({size_in}, k) for "
            f"{type(op).__name__}{'.T' if adjoint else ''} (got shape {arr.shape})."
        )
    cols = arr.reshape(size_in, -1).T  # (k, size_in): one sample per column of x
    dev = _operator_device(op)
    t = torch.from_numpy(np.ascontiguousarray(cols, dtype=want)).to(dev)
    with torch.no_grad(), _serial_on_cpu(dev, t.numel()):
        t = t.reshape(t.shape[0], *in_shape)
        y = op.adjoint(t) if adjoint else op(t)
    out = y.reshape(y.shape[0], size_out).T.detach().cpu().numpy()
    if arr.ndim == 1:
        return np.ascontiguousarray(out[:, 0])
    return np.ascontiguousarray(out)


# The scipy subclass is created on first use, so importing unrollsci does not import
# scipy.sparse.linalg.
_SCIPY_CLASS: list[type] = []


def _scipy_class() -> type:
    if _SCIPY_CLASS:
        return _SCIPY_CLASS[0]
    from scipy.sparse.linalg import LinearOperator as _SpLinOp

    class TorchScipyOperator(_SpLinOp):
        """A :class:`scipy.sparse.linalg.LinearOperator` applying an unrollsci operator.

        Attributes:
            operator: the wrapped unrollsci operator.
        """

        def __init__(self, operator: LinearOperator, dtype: np.dtype) -> None:
            super().__init__(dtype=dtype, shape=operator.shape)
            self.operator = operator

        def _matvec(self, x: np.ndarray) -> np.ndarray:
            return apply_numpy(self.operator, x, dtype=self.dtype)

        def _matmat(self, x: np.ndarray) -> np.ndarray:
            return apply_numpy(self.operator, x, dtype=self.dtype)

        def _rmatvec(self, y: np.ndarray) -> np.ndarray:
            return apply_numpy(self.operator, y, adjoint=True, dtype=self.dtype)

        def _rmatmat(self, y: np.ndarray) -> np.ndarray:
            return apply_numpy(self.operator, y, adjoint=True, dtype=self.dtype)

        def _adjoint(self) -> Any:
            return _scipy_class()(self.operator.T, self.dtype)

    _SCIPY_CLASS.append(TorchScipyOperator)
    return TorchScipyOperator


def to_scipy(op: LinearOperator, dtype: Any = None) -> Any:
    """``op`` as a :class:`scipy.sparse.linalg.LinearOperator` of shape ``op.shape``.

    ``dtype``: the numpy dtype scipy sees and the products compute in (default: the
    operator's own floating dtype, else float64).
    """
    if dtype is None:
        own = op.dtype
        dtype = own if (own is not None and own.is_floating_point) else None
    return _scipy_class()(op, numpy_dtype(dtype))
