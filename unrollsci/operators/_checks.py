"""Checks and cache keys shared by the operators and their callers: real input, dtypes."""

from __future__ import annotations

from typing import Any

import torch


def tensor_key(t: torch.Tensor) -> tuple[Any, ...]:
    """Identity, version counter, storage address, shape, dtype and device of ``t``.

    Two calls give equal keys only if ``t`` is the same tensor object and was not
    modified in place in between (in-place ops bump ``t._version``; for a sparse tensor
    a change of its values through ``t.values()`` does too).
    """
    try:
        ptr = t.data_ptr() if t.layout == torch.strided else t.values().data_ptr()
    except RuntimeError:  # e.g. an uncoalesced COO tensor, a meta tensor
        ptr = None
    return (id(t), t._version, ptr, tuple(t.shape), t.dtype, str(t.device))


def check_real(name: str, x: Any) -> None:
    """Raise ``TypeError`` for a complex tensor or array: operators and solvers are real."""
    dtype = getattr(x, "dtype", None)
    complex_ = (
        x.is_complex()
        if isinstance(x, torch.Tensor)
        else dtype is not None and getattr(dtype, "kind", "") == "c"
    )
    if complex_:
        raise TypeError(
            f"Expected '{name}' to be real (got complex dtype {dtype}). unrollsci operators "
            "and solvers are real-valued; split a complex problem into real and imaginary "
            "parts (a real problem of twice the size)."
        )


def check_dtype_supported(
    who: str, dtype: torch.dtype, supported: tuple[torch.dtype, ...] | None
) -> None:
    """Raise ``TypeError`` if ``dtype`` is not one the operator ``who`` computes in."""
    if supported is not None and dtype not in supported:
        names = "/".join(str(d).replace("torch.", "") for d in supported)
        raise TypeError(
            f"{who} supports {names} (got {dtype}); convert with .float() or .double()."
        )
