"""Convolution (blur) and masking operators."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F  # noqa: N812

from .._validation import check_finite, check_tensor
from ._base import LinearOperator, check_real
from ._checks import as_shape

__all__ = ["Convolution", "Mask"]

_CONV = {1: F.conv1d, 2: F.conv2d}


class Convolution(LinearOperator):
    """1D or 2D convolution ``y = h * x`` with zero or circular boundary.

    The output has the input's size ("same" convolution) and the kernel's centre is
    at index ``(k - 1) // 2`` along each axis. ``adjoint`` is the exact transpose
    (correlation with the kernel, the padding mirrored; computed by the same forward
    convolution routine, so it costs what the forward costs).

    Args:
        kernel: ``(k,)`` or ``(kh, kw)`` filter. Pass an ``nn.Parameter`` to learn it (it
            is then one of the operator's parameters); a kernel that requires grad is kept
            as given and flipped on each use, so its updates apply and gradients reach it,
            and ``norm()`` is not cached.
        in_shape: per-sample signal shape: ``(n,)`` (or the int ``n``) / ``(H, W)``, or
            with a leading channel axis ``(C, n)`` / ``(C, H, W)`` (each channel blurred
            alike). Integer entries only (``TypeError`` otherwise).
        boundary: ``"zero"`` or ``"circular"``.

    Example:
        >>> import torch
        >>> blur = Convolution(torch.ones(3) / 3, in_shape=(8,))
        >>> blur(torch.ones(1, 8))[0, 3].item()
        1.0
    """

    def __init__(
        self,
        kernel: torch.Tensor,
        in_shape: int | Sequence[int],
        *,
        boundary: str = "zero",
    ) -> None:
        super().__init__()
        check_tensor("kernel", kernel, ndim=(1, 2))
        check_real("kernel", kernel)
        check_finite("kernel", kernel)
        if boundary not in ("zero", "circular"):
            raise ValueError(f"Expected boundary 'zero' or 'circular' (got {boundary!r}).")
        d = kernel.dim()
        if kernel.numel() == 0:
            raise ValueError(f"Expected a non-empty kernel (got shape {tuple(kernel.shape)}).")
        in_shape = as_shape("in_shape", in_shape, minimum=None)
        if any(n < 1 for n in in_shape):
            raise ValueError(f"Expected a positive in_shape (got {in_shape}).")
        if len(in_shape) not in (d, d + 1):
            raise ValueError(
                f"Expected in_shape with {d} (or {d + 1}, with channels) entries for a "
                f"{d}D kernel (got {in_shape})."
            )
        spatial = in_shape[-d:]
        for k, n in zip(kernel.shape, spatial, strict=True):
            if k > n and boundary == "circular":
                raise ValueError(
                    f"Kernel size {tuple(kernel.shape)} exceeds signal size {spatial} "
                    "for a circular boundary."
                )
        self.boundary, self.ndim_spatial = boundary, d
        self.in_shape = self.out_shape = in_shape
        # the kernel as given, flipped on each use (the correlation weight), so that a
        # learned one (an nn.Parameter, or a kernel computed in the graph) sees its updates
        if isinstance(kernel, torch.nn.Parameter):
            self.kernel = kernel
        else:  # a constant kernel is copied: editing the caller's tensor leaves it alone
            self.register_buffer("kernel", kernel if kernel.requires_grad else kernel.clone())
        # a kernel that trains changes the norm with no edit the cache sees: never cached
        self.cacheable_norm = not kernel.requires_grad
        centre = [(k - 1) // 2 for k in kernel.shape]
        # (before, after) padding per spatial axis, in axis order.
        self._pads = [(k - 1 - c, c) for k, c in zip(kernel.shape, centre, strict=True)]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[no-untyped-def]
        # states saved by earlier versions hold the flipped kernel as "weight" (1, 1, *k)
        old = state_dict.pop(prefix + "weight", None)
        if old is not None and prefix + "kernel" not in state_dict:
            state_dict[prefix + "kernel"] = self._flipped(old)[0, 0]
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _flipped(self, t: torch.Tensor) -> torch.Tensor:
        return torch.flip(t, dims=tuple(range(t.dim() - self.ndim_spatial, t.dim())))

    def _weight(self, like: torch.Tensor, *, adjoint: bool = False) -> torch.Tensor:
        """The correlation weight (flipped kernel; the kernel itself for the adjoint),
        ``(1, 1, *k)``, in ``like``'s dtype and on its device."""
        k = self._cast("kernel", like)[None, None]
        return k if adjoint else self._flipped(k)

    def _fpad(self) -> list[int]:
        # F.pad wants the last axis first.
        out: list[int] = []
        for before, after in reversed(self._pads):
            out += [before, after]
        return out

    def _to_conv(self, x: torch.Tensor) -> torch.Tensor:
        d = self.ndim_spatial
        return x.reshape(-1, 1, *x.shape[-d:])

    def _mv(self, x: torch.Tensor) -> torch.Tensor:
        conv = _CONV[self.ndim_spatial]
        xc = self._to_conv(x)
        mode = "circular" if self.boundary == "circular" else "constant"
        xp = F.pad(xc, self._fpad(), mode=mode)
        return conv(xp, self._weight(x)).reshape(x.shape)

    def _rmv(self, y: torch.Tensor) -> torch.Tensor:
        # The transpose of "pad by (before, after), correlate with w" is "pad by (after,
        # before), correlate with flip(w)" (circular padding for a circular boundary): the
        # same sums as conv_transpose plus folding the padding back, but through the
        # forward conv kernel, which is several times faster on CPU than conv_transpose.
        conv = _CONV[self.ndim_spatial]
        mode = "circular" if self.boundary == "circular" else "constant"
        fpad: list[int] = []
        for before, after in reversed(self._pads):
            fpad += [after, before]
        yp = F.pad(self._to_conv(y), fpad, mode=mode)
        return conv(yp, self._weight(y, adjoint=True)).reshape(y.shape)

    def _norm_state(self) -> tuple[str]:
        return (self.boundary,)  # reassigning the boundary changes the norm


class Mask(LinearOperator):
    """Sampling / inpainting by a fixed mask.

    With ``subsample=False`` (default) ``A x = mask * x`` keeps the shape (missing
    entries are zero) and ``A`` is self-adjoint. With ``subsample=True`` ``A x``
    returns only the observed entries, shape ``(batch, mask.sum())``, and the
    adjoint scatters them back.

    Args:
        mask: boolean or 0/1 tensor of per-sample shape (e.g. ``(n,)`` or ``(H, W)``).
        subsample: return only observed entries.

    Example:
        >>> import torch
        >>> Mask(torch.tensor([True, False, True]), subsample=True)(torch.ones(1, 3)).shape
        torch.Size([1, 2])
    """

    def __init__(self, mask: torch.Tensor, *, subsample: bool = False) -> None:
        super().__init__()
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"Expected 'mask' to be a torch.Tensor (got {type(mask).__name__}).")
        if mask.dtype != torch.bool:
            if not bool(((mask == 0) | (mask == 1)).all()):
                raise ValueError("Expected 'mask' to be boolean or contain only 0 and 1.")
        # a copy: an edit of the caller's tensor must not change the operator (``index``)
        mask = mask.detach().to(torch.bool, copy=True)
        self.subsample = subsample
        self.in_shape = tuple(mask.shape)
        self.register_buffer("mask", mask)
        if subsample:
            self.register_buffer("index", torch.nonzero(mask.reshape(-1)).reshape(-1))
            self.out_shape = (int(self.index.numel()),)
        else:
            self.out_shape = tuple(mask.shape)

    @property
    def dtype(self) -> torch.dtype | None:
        return None  # a mask has no float dtype; follows the input

    def _mv(self, x: torch.Tensor) -> torch.Tensor:
        if self.subsample:
            return x.reshape(x.shape[0], -1).index_select(1, self.index)
        return x * self.mask

    def _rmv(self, y: torch.Tensor) -> torch.Tensor:
        if self.subsample:
            out = y.new_zeros(y.shape[0], self.mask.numel())
            out = out.index_add(1, self.index, y)
            return out.reshape(y.shape[0], *self.in_shape)
        return y * self.mask
