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
    "check_finite",
    "check_nonnegative",
    "check_same_device",
    "check_tensor",
    "ConvergenceWarning",
    "ConvergenceError",
]


class ConvergenceWarning(UserWarning):
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
