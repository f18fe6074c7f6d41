"""The check that :func:`unrollsci.train.fit` runs on the gradients before each step."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["check_finite_grads"]


def _values(g: torch.Tensor) -> torch.Tensor:
    if g.is_sparse:
        return g.coalesce().values()
    return g if g.layout == torch.strided else g.values()


def check_finite_grads(
    model: nn.Module, epoch: int, step: int, *, where: str | None = None
) -> None:
    """``FloatingPointError`` naming the parameters whose gradient holds NaN or Inf.

    A finite loss can have non-finite gradients (``sqrt`` at 0, ``0 * inf``); Adam would
    write NaN into the parameters and training would go on silently. One device sync for
    all parameters; the names are only gathered on failure. Not for a float16 run: its
    ``GradScaler`` skips the steps of overflowing (scaled) gradients by design. ``where``
    replaces "epoch E, step S" in the message (the layer-wise trainer's stages).
    """
    named = [(n, p.grad) for n, p in model.named_parameters() if p.grad is not None]
    if not named:
        return
    ok = [torch.isfinite(_values(g)).all() for _, g in named]
    dev = ok[0].device
    flags = torch.stack([f.to(dev) for f in ok]).tolist()
    if all(flags):
        return
    bad = [n for (n, _), f in zip(named, flags, strict=True) if not f]
    shown = ", ".join(bad[:8]) + (f" and {len(bad) - 8} more" if len(bad) > 8 else "")
    raise FloatingPointError(
        f"Non-finite gradient (NaN or Inf) at {where or f'epoch {epoch}, step {step}'}, "
        "though the loss "
        f"is finite, in {len(bad)} parameter(s): {shown}. The parameters were not updated. "
        "Likely a sqrt, log or division at 0 in the loss or model (torch.autograd."
        "detect_anomaly() names the operation); else lower lr or check the data."
    )
