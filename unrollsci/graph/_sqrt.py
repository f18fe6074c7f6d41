"""A square root whose gradient at zero is zero, for norms that enter a loss."""

from __future__ import annotations

import torch

__all__ = ["sqrt0"]


def sqrt0(v: torch.Tensor) -> torch.Tensor:
    """``torch.sqrt(v)``, the same values bit for bit, with gradient 0 where ``v == 0``.

    ``torch.sqrt``'s backward at 0 is ``grad / (2 * 0)``: NaN even when ``grad`` is 0 (a
    clamp or a square downstream), and every parameter upstream gets NaN. The norms
    ``sqrt(u^T u)`` this serves are non-differentiable at 0 and 0 is a subgradient there.
    Negative and NaN entries give NaN, as ``torch.sqrt``.
    """
    zero = v == 0
    safe = torch.where(zero, torch.ones_like(v), v)
    return torch.where(zero, torch.zeros_like(v), torch.sqrt(safe))
