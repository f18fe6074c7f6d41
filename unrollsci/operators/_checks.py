"""Checks and cache keys shared by the operators and their callers: real input, dtypes."""

from __future__ import annotations

import operator
import weakref
from typing import Any

import numpy as np
import torch


def _dead() -> None:
    """The referent of a :class:`_Same` that refers to no tensor (it equals nothing)."""
    return None


class _Same:
    """The identity of a tensor in a cache key, held by a weak reference.

    Two ``_Same`` are equal only while both refer to one live tensor: a key made for a
    tensor that was since freed equals nothing, even a key of a new tensor that got the
    freed one's ``id()`` and memory (which an ``id``-based key would take for the old
    one). A copy (``copy.deepcopy``, pickling) refers to no tensor.
    """

    __slots__ = ("_ref", "_hash")

    def __init__(self, t: Any = None) -> None:
        self._ref = _dead if t is None else weakref.ref(t)
        self._hash = id(t)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _Same):
            return NotImplemented
        t = self._ref()
        return t is not None and t is other._ref()

    def __hash__(self) -> int:
        return self._hash

    def __reduce__(self) -> tuple[Any, ...]:
        return (_Same, ())


def tensor_key(t: torch.Tensor) -> tuple[Any, ...]:
    """Identity, version counter, storage address, shape, dtype and device of ``t``.

    Two calls give equal keys only if ``t`` is the same live tensor object and was not
    modified in place in between (in-place ops bump ``t._version``; for a sparse tensor
    a change of its values through ``t.values()`` does too). The identity is a weak
    reference compared with ``is`` (:class:`_Same`), so a key never matches a tensor
    created after the one it was made for was freed. An inference tensor (made under
    ``torch.inference_mode()``) has no version counter: its key equals no other key
    (nothing cached for it is reused).
    """
    try:
        ptr = t.data_ptr() if t.layout == torch.strided else t.values().data_ptr()
    except RuntimeError:  # e.g. an uncoalesced COO tensor, a meta tensor
        ptr = None
    version: Any = object() if t.is_inference() else t._version
    return (_Same(t), version, ptr, tuple(t.shape), t.dtype, str(t.device))


def as_shape(name: str, shape: Any, *, minimum: int | None = 0) -> tuple[int, ...]:
    """``shape`` (an int or a sequence of ints; numpy integers too) as a tuple of ints.

    Raises ``TypeError`` for anything else (a float such as ``4.5`` is not truncated)
    and ``ValueError`` for an entry below ``minimum`` (None: no bound checked here).
    """
    what = f"Expected '{name}' to be an int or a tuple of ints"
    if isinstance(shape, (int, np.integer)) and not isinstance(shape, (bool, np.bool_)):
        shape = (shape,)
    if isinstance(shape, (str, bytes)) or not hasattr(shape, "__iter__"):
        raise TypeError(f"{what} (got {type(shape).__name__} {shape!r}).")
    out = []
    for s in shape:
        if isinstance(s, (bool, np.bool_)) or not isinstance(s, (int, np.integer)):
            raise TypeError(f"{what} (got {shape!r}, holding {type(s).__name__} {s!r}).")
        out.append(operator.index(s))
    if minimum is not None and any(s < minimum for s in out):
        low = "non-negative" if minimum == 0 else "positive" if minimum == 1 else f">= {minimum}"
        raise ValueError(f"Expected '{name}' to hold {low} ints (got {tuple(out)}).")
    return tuple(out)


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


class FixedAngles:
    """Mixin of the CT projectors (:class:`Radon`, :class:`FanBeam`): their ray tables are
    built once from the ``angles`` buffer, so ``angles`` is read-only. Call
    :meth:`_fix_angles` after registering the buffer; a state dict with other angles is then
    refused, and an in-place edit of ``op.angles`` raises at the next product."""

    def _fix_angles(self) -> None:
        self._built_angles = self.angles.detach().cpu().to(torch.float64).clone()
        self._angles_seen = tensor_key(self.angles)

    def _check_angles(self, new: Any = None) -> None:
        """Raise ``ValueError`` if ``new`` (default: ``self.angles``) differs from the
        angles the ray tables were built for."""
        t = self.angles if new is None else new
        if new is None and tensor_key(t) == self._angles_seen:
            return  # cheap path: same live tensor, not modified in place
        built = self._built_angles
        if t.shape == built.shape and torch.equal(t.detach().cpu().to(torch.float64), built):
            if new is None:
                self._angles_seen = tensor_key(t)
            return
        name, got = type(self).__name__, t.detach().cpu().to(torch.float64)
        where = "a state dict's angles" if new is not None else "'angles' (edited in place)"
        detail = f"shape {tuple(got.shape)}, built for {tuple(built.shape)}"
        if got.shape == built.shape:
            i = int((got != built).nonzero()[0, 0])
            detail = f"{int((got != built).sum())} differ; first at index {i}: "
            detail += f"{got[i].item()} instead of {built[i].item()}"
        raise ValueError(
            f"{name}'s angles are fixed at construction (its ray tables are built from "
            f"them): {where} differ ({detail}); build a new {name} for another geometry."
        )

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[no-untyped-def]
        new = state_dict.get(prefix + "angles")
        if isinstance(new, torch.Tensor) and new.shape == self._built_angles.shape:
            self._check_angles(new)  # another shape: nn.Module reports the size mismatch
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)  # type: ignore[misc]
        self._angles_seen = tensor_key(self.angles)  # copy_ bumped its version
