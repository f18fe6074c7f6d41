"""Input checks shared by the public boundary of every subpackage.

Each check raises a ``ValueError`` (or ``TypeError``) whose message says what was
expected and what came. Internals trust their inputs; only public entry points
call these.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = [
    "as_tensor",
    "check_batch",
    "check_device",
    "check_positive",
    "check_finite",
    "check_nonnegative",
    "check_same_device",
    "check_tensor",
    "ConvergenceWarning",
    "ConvergenceError",
    "UnrollsciWarning",
]


class UnrollsciWarning(UserWarning):
    """Base class of every warning unrollsci raises.

    Filter on it to silence or escalate the library's own warnings without touching
    those of torch, numpy or other packages (the test suite turns exactly these into
    errors).
    """


class ConvergenceWarning(UnrollsciWarning):
    """An iterative solver stopped before reaching its tolerance."""


class ConvergenceError(RuntimeError):
    """An iterative solver failed and ``throw=True`` was requested."""


def check_tensor(name: str, x: Any, *, ndim: tuple[int, ...] | None = None) -> torch.Tensor:
    """Check that ``x`` is a floating-point tensor with an allowed number of dimensions."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"Expected '{name}' to be a torch.Tensor (got {type(x).__name__}).")
    if ndim is not None and x.dim() not in ndim:
        allowed = " or ".join(str(d) for d in ndim)
        raise ValueError(
            f"Expected '{name}' to be {allowed}-dimensional (got {x.dim()} dimensions, "
            f"shape {tuple(x.shape)})."
        )
    if not (x.is_floating_point() or x.is_complex()):
        raise TypeError(f"Expected '{name}' to have a floating-point dtype (got {x.dtype}).")
    return x


def check_finite(name: str, x: torch.Tensor) -> torch.Tensor:
    """Raise if ``x`` contains NaN or Inf."""
    if x.is_sparse or x.layout in (torch.sparse_csr, torch.sparse_csc):
        vals = x.values()
    else:
        vals = x
    if not bool(torch.isfinite(vals).all()):
        n_nan = int(torch.isnan(vals).sum())
        n_inf = int(torch.isinf(vals).sum())
        raise ValueError(
            f"Expected '{name}' to be finite (got {n_nan} NaN and {n_inf} Inf entries)."
        )
    return x


def check_nonnegative(name: str, value: Any) -> None:
    """Raise if a scalar or tensor hyper-parameter is negative or not finite."""
    t = torch.as_tensor(value)
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"Expected '{name}' to be finite (got {value!r}).")
    if bool((t < 0).any()):
        raise ValueError(f"Expected '{name}' >= 0 (got {value!r}).")


def check_same_device(**tensors: Any) -> None:
    """Raise if the given tensors live on different devices."""
    devices = {name: t.device for name, t in tensors.items() if isinstance(t, torch.Tensor)}
    if len(set(devices.values())) > 1:
        desc = ", ".join(f"'{k}' on {v}" for k, v in devices.items())
        raise ValueError(
            f"Expected all inputs on one device (got {desc}). Move them with .to(device)."
        )


def as_tensor(x: Any, *, like: torch.Tensor | None = None) -> torch.Tensor:
    """Turn a number or tensor into a tensor on ``like``'s device and dtype."""
    if like is None:
        return torch.as_tensor(x)
    return torch.as_tensor(x, device=like.device, dtype=like.dtype)


def check_batch(name: str, x: torch.Tensor, *, dim: int = 0) -> torch.Tensor:
    """Raise if ``x`` holds a batch of zero problems (size 0 along ``dim``).

    The library's one rule for empty batches: a solver, operator or metric asked to
    work on no problem at all raises a ``ValueError`` rather than returning empty
    results, so that a data pipeline bug does not pass silently.
    """
    if x.dim() > dim and x.shape[dim] == 0:
        raise ValueError(
            f"Expected '{name}' to hold at least one problem (got a batch of size 0, "
            f"shape {tuple(x.shape)})."
        )
    return x


def check_positive(
    name: str, value: Any, *, allow_zero: bool = False, allow_inf: bool = False
) -> float:
    """Check a scalar hyper-parameter is a real number > 0 (or >= 0) and finite.

    Returns it as a Python float (no float32 cast, so values up to 1.8e308 pass).
    """
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"Expected '{name}' to be a scalar (got shape {tuple(value.shape)}).")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            import numpy as np

            if isinstance(value, np.generic) and np.isrealobj(value):
                value = value.item()
            else:
                raise TypeError
        except TypeError:
            raise TypeError(
                f"Expected '{name}' to be a real number (got {type(value).__name__})."
            ) from None
    v = float(value)
    if v != v or (v in (float("inf"), float("-inf")) and not allow_inf):
        raise ValueError(f"Expected '{name}' to be finite (got {value!r}).")
    if v < 0 or (v == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"Expected '{name}' {bound} (got {value!r}).")
    return v


def check_device(device: Any) -> torch.device | None:
    """Turn ``device`` into a ``torch.device`` that exists here, or raise a ``ValueError``.

    ``None`` passes through (the caller's default). A CUDA/MPS/XPU device on a machine
    without one, or an index past the last device, is refused with a message that says
    what is available, instead of torch's ``AssertionError`` deep inside a call.
    """
    if device is None:
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"Expected a torch device such as 'cpu' or 'cuda:0' (got {device!r})."
        ) from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"Device {str(dev)!r} was requested but CUDA is not available here "
                f"(torch {torch.__version__}, built with CUDA: {torch.version.cuda is not None}). "
                "Use device='cpu'."
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"Device {str(dev)!r} was requested but only {torch.cuda.device_count()} "
                "CUDA device(s) exist."
            )
    elif dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError(f"Device {str(dev)!r} was requested but MPS is not available here.")
    elif dev.type == "xpu":
        xpu = getattr(torch, "xpu", None)
        if xpu is None or not xpu.is_available():
            raise ValueError(f"Device {str(dev)!r} was requested but XPU is not available here.")
    return dev
