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


class FixedAngles:
    """Mixin of the CT projectors (:class:`Radon`, :class:`FanBeam`): their ray tables are
    built once from the ``angles`` buffer, so ``angles`` is read-only. Call
    :meth:`_fix_angles` after registering the buffer; a state dict with other angles is then
    refused, and an in-place edit of ``op.angles`` raises at the next product."""

    def _fix_angles(self) -> None:
        self._built_angles = self.angles.detach().cpu().to(torch.float64).clone()
        self._angles_seen = (id(self.angles), self.angles._version)

    def _check_angles(self, new: Any = None) -> None:
        """Raise ``ValueError`` if ``new`` (default: ``self.angles``) differs from the
        angles the ray tables were built for."""
        t = self.angles if new is None else new
        if new is None and (id(t), t._version) == self._angles_seen:
            return  # cheap path: same tensor, not modified in place
        built = self._built_angles
        if t.shape == built.shape and torch.equal(t.detach().cpu().to(torch.float64), built):
            if new is None:
                self._angles_seen = (id(t), t._version)
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
        self._angles_seen = (id(self.angles), self.angles._version)  # copy_ bumped it
