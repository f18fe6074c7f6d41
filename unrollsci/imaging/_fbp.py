"""Filtered back-projection (FBP) and its ramp filters for the parallel-beam :class:`Radon`.

FBP is a reconstruction algorithm, so it lives in :mod:`unrollsci.imaging` next to the
other reconstructions; the projector itself is :class:`unrollsci.operators.Radon`.
The old paths ``unrollsci.operators.fbp`` and ``unrollsci.operators._radon.fbp``
(and ``ramp_filter``, ``filter_sinogram``, ``FILTERS``) still work.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .._validation import check_batch, check_count, check_device, check_finite, check_tensor
from ..operators._base import check_dtype_supported, check_real
from ..operators._radon import Radon

__all__ = ["FILTERS", "fbp", "filter_sinogram", "ramp_filter"]

#: Names of the FBP filters (the ramp, alone or times a window).
FILTERS = ("ram-lak", "shepp-logan", "cosine", "hamming", "hann")


def ramp_filter(
    n_detectors: int,
    filter: str = "ram-lak",
    *,
    dtype: torch.dtype = torch.float64,
    device: Any = None,
) -> torch.Tensor:
    """Frequency response of the FBP filter on the zero-padded detector axis.

    The ramp is the DFT of the band-limited spatial ramp of Kak & Slaney
    (Principles of Computerized Tomographic Imaging, 1988, eq. 3.61:
    ``h(0) = 1/4``, ``h(k) = -1/(pi k)^2`` for odd ``k``, 0 for even ``k``), times
    2, times an optional window of the normalized frequency ``f`` in [-1/2, 1/2]:
    shepp-logan ``sinc(f)``, cosine ``cos(pi f)``, hamming ``0.54 + 0.46 cos(2 pi f)``,
    hann ``(1 + cos(2 pi f)) / 2``.

    Returns:
        ``(P,)`` real tensor, ``P`` the padded length (a power of two >= 2 n_detectors).

    Example:
        >>> ramp_filter(16).shape  # padded to a power of two >= max(64, 2 n_det)
        torch.Size([64])
    """
    if filter not in FILTERS:
        raise ValueError(f"Expected filter in {FILTERS} (got {filter!r}).")
    n_detectors = check_count("n_detectors", n_detectors)
    device = check_device(device)
    size = max(64, 1 << int(math.ceil(math.log2(2 * n_detectors))))
    k = np.concatenate([np.arange(1, size // 2 + 1, 2), np.arange(size // 2 - 1, 0, -2)])
    h = np.zeros(size)
    h[0] = 0.25
    h[1::2] = -1.0 / (np.pi * k) ** 2
    resp = 2.0 * np.real(np.fft.fft(h))
    f = np.fft.fftfreq(size)
    if filter == "shepp-logan":
        resp *= np.sinc(f)
    elif filter == "cosine":
        resp *= np.cos(np.pi * f)
    elif filter == "hamming":
        resp *= 0.54 + 0.46 * np.cos(2 * np.pi * f)
    elif filter == "hann":
        resp *= 0.5 + 0.5 * np.cos(2 * np.pi * f)
    return torch.as_tensor(resp, dtype=dtype, device=device)


def fbp(y: torch.Tensor, radon: Radon, *, filter: str = "ram-lak") -> torch.Tensor:
    """Filtered back-projection: ``(pi / (2 n_angles)) A^T (h * y)``.

    Each projection is filtered along the detector axis with :func:`ramp_filter`
    (zero padded, by FFT) and back-projected with the exact adjoint of ``radon``.
    The map is linear and differentiable in ``y``.

    Args:
        y: sinograms ``(batch, n_angles, n_det)`` or ``(batch, 1, n_angles, n_det)``.
        radon: the :class:`Radon` operator that produced ``y``.
        filter: one of :data:`FILTERS`.

    Returns:
        Images ``(batch, N, N)`` (or ``(batch, 1, N, N)``).

    Example:
        >>> import torch
        >>> op = Radon(32, 60)
        >>> x = torch.zeros(1, 32, 32); x[0, 12:20, 12:20] = 1.0
        >>> float((fbp(op(x), op) - x).abs().mean()) < 0.05
        True
    """
    if not isinstance(radon, Radon):
        raise TypeError(f"Expected 'radon' to be a Radon operator (got {type(radon).__name__}).")
    sino, channel = checked_sinograms("fbp", y, radon)
    filtered = filter_sinogram(sino, filter)
    out = radon.rmv(filtered) * (math.pi / (2 * radon.n_angles))
    return out.unsqueeze(1) if channel else out


def checked_sinograms(fn: str, y: Any, op: Any) -> tuple[torch.Tensor, bool]:
    """The checks every FBP makes of its sinograms ``y`` for projector ``op`` (a
    :class:`Radon` or :class:`~unrollsci.operators.FanBeam`): a real, finite, non-empty
    tensor of a dtype ``op`` supports, shaped ``(batch, n_angles, n_det)`` or with a channel
    axis of 1. Returns the ``(batch, n_angles, n_det)`` sinograms and whether ``y`` had the
    channel axis; raises ``TypeError``/``ValueError`` naming what was expected otherwise."""
    check_tensor("y", y, ndim=(3, 4))
    check_real("y", y)
    check_batch("y", y)
    check_dtype_supported(fn, y.dtype, type(op).supported_dtypes)
    channel = y.dim() == 4
    if (channel and y.shape[1] != 1) or tuple(y.shape[-2:]) != op.out_shape:
        raise ValueError(
            f"Expected sinograms of shape (batch, {op.n_angles}, {op.n_detectors}) or (batch, 1, "
            f"{op.n_angles}, {op.n_detectors}) for a {op.image_size}x{op.image_size} image with "
            f"{op.n_angles} angles (got shape {tuple(y.shape)})."
        )
    sino = y[:, 0] if channel else y
    check_finite("y", sino)
    return sino, channel


def filter_sinogram(y: torch.Tensor, filter: str = "ram-lak") -> torch.Tensor:
    """Apply the FBP filter along the last (detector) axis of ``y: (..., n_det)``.

    Args:
        y: sinograms ``(..., n_det)``.
        filter: one of :data:`FILTERS`.

    Returns:
        The filtered sinograms, same shape as ``y``.

    Raises:
        TypeError: ``y`` not a floating-point tensor.
        ValueError: ``y`` 0-d or empty, or holding NaN or Inf.
    """
    if not isinstance(y, torch.Tensor) or not y.is_floating_point():
        what = y.dtype if isinstance(y, torch.Tensor) else type(y).__name__
        raise TypeError(
            f"Expected floating-point sinograms 'y' (got {what}); convert them with y.double()."
        )
    if y.dim() < 1 or y.numel() == 0:
        raise ValueError(
            "Expected sinograms 'y' of shape (..., n_det) holding at least one detector row "
            f"(got shape {tuple(y.shape)})."
        )
    check_finite("y", y)
    n_det = y.shape[-1]
    resp = ramp_filter(n_det, filter, dtype=y.dtype, device=y.device)
    size = resp.shape[0]
    spec = torch.fft.rfft(y, n=size, dim=-1) * resp[: size // 2 + 1]
    return torch.fft.irfft(spec, n=size, dim=-1)[..., :n_det]
