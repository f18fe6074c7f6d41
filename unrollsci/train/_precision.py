"""Mixed precision for :func:`~unrollsci.train.fit`: bfloat16 / float16 autocast confined to
the parts of a model where it is safe (its CNN and GNN layers), never around the parts that
carry a guarantee (projections, clamps, certificates, SPD constructions, operators).

Two routes, chosen per model:

* a model with its own ``precision`` switch (``UnrolledCT``: its CNN blocks run under
  ``torch.autocast``, the projector, steps and support projection in the working dtype)
  is switched for the duration of the training;
* any other model: every ``nn.Linear`` / ``nn.Bilinear`` / ``nn.Conv*`` /
  ``nn.ConvTranspose*`` layer runs under ``torch.autocast`` and its output is cast back to
  the dtype of its input, so the code between the layers (message aggregation, step-size
  maps into certified ranges, factor assembly) computes in the working precision.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

_KINDS = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}
_MODEL_NAMES = {torch.bfloat16: "bfloat16", torch.float16: "float16"}
SAFE_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Bilinear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)


def check_mixed_precision(value: Any) -> torch.dtype | None:
    """The low dtype asked for by ``fit(mixed_precision=...)``, or a clear error."""
    if value is None:
        return None
    if not isinstance(value, str) or value not in _KINDS:
        raise ValueError(f"Expected mixed_precision None, 'bf16' or 'fp16' (got {value!r}).")
    return _KINDS[value]


def _cast_back(out: Any, dtype: torch.dtype) -> Any:
    if isinstance(out, torch.Tensor):
        return out.to(dtype) if out.is_floating_point() and out.dtype != dtype else out
    if isinstance(out, tuple):
        return tuple(_cast_back(o, dtype) for o in out)
    if isinstance(out, list):
        return [_cast_back(o, dtype) for o in out]
    return out


def _first_float(args: tuple) -> torch.dtype | None:
    for a in args:
        if isinstance(a, torch.Tensor) and a.is_floating_point():
            return a.dtype
    return None


@contextmanager
def mixed_precision(model: nn.Module, low: torch.dtype | None) -> Iterator[None]:
    """Run ``model``'s safe layers in ``low`` inside the ``with`` block (see module doc).

    Raises:
        ValueError: the model computes in float64 (autocast leaves float64 alone, so the
            option would silently do nothing), it has no layer that may run in ``low``,
            or its own ``precision`` switch does not offer ``low``.
    """
    if low is None:
        yield
        return
    params = [p for p in model.parameters() if p.is_floating_point()]
    if any(p.dtype == torch.float64 for p in params):
        raise ValueError(
            f"mixed_precision lowers float32 work to {_MODEL_NAMES[low]}, but "
            f"{type(model).__name__} computes in float64 (torch.autocast leaves float64 "
            "untouched, so nothing would change): use model.float() or mixed_precision=None."
        )
    device_type = params[0].device.type if params else "cpu"
    if isinstance(getattr(type(model), "precision", None), property):
        old = model.precision
        try:
            model.precision = _MODEL_NAMES[low]
        except ValueError as exc:
            raise ValueError(
                f"{type(model).__name__} chooses where it runs in low precision itself and "
                f"does not offer {_MODEL_NAMES[low]} ({exc})."
            ) from None
        try:
            yield
        finally:
            model.precision = old
        return
    layers = [m for m in model.modules() if isinstance(m, SAFE_LAYERS)]
    if not layers:
        raise ValueError(
            f"mixed_precision found no layer of {type(model).__name__} that may run in "
            f"{_MODEL_NAMES[low]} (nn.Linear, nn.Conv*, ...): its computation is the "
            "iteration that carries its guarantee, which stays in the working precision. "
            "Use mixed_precision=None."
        )
    stack: list[tuple[Any, torch.dtype | None]] = []

    def enter(_mod: nn.Module, args: tuple, kwargs: dict) -> None:
        ctx = torch.autocast(device_type, dtype=low)
        ctx.__enter__()
        # the input's dtype, also when passed by keyword (layer(input=x) was left in low)
        stack.append((ctx, _first_float((*args, *kwargs.values()))))

    def leave(_mod: nn.Module, _args: tuple, _kwargs: dict, out: Any) -> Any:
        ctx, dtype = stack.pop()
        ctx.__exit__(None, None, None)
        return _cast_back(out, dtype) if dtype is not None else out

    handles = []
    for m in layers:
        handles.append(m.register_forward_pre_hook(enter, with_kwargs=True))
        handles.append(m.register_forward_hook(leave, with_kwargs=True))
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        while stack:  # a layer raised: leave its autocast region
            stack.pop()[0].__exit__(None, None, None)


def grad_scaler(low: torch.dtype | None, model: nn.Module) -> Any:
    """A ``torch.amp.GradScaler`` for float16 (whose gradients underflow without one)."""
    if low is not torch.float16:
        return None
    device_type = next((p.device.type for p in model.parameters()), "cpu")
    return torch.amp.GradScaler(device_type)
