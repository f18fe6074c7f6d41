"""Measurement noise for sinograms: additive Gaussian and Poisson (low-dose) models."""

from __future__ import annotations

from typing import Any

import torch

from .._validation import check_batch, check_finite, check_positive, check_tensor
from ..solvers._common import scaled_row_norm

__all__ = ["gaussian_noise", "poisson_noise"]


def _hyper(name: str, value: Any, *, allow_zero: bool) -> float:
    """A finite real hyper-parameter ``> 0`` (or ``>= 0``), as a Python float."""
    try:
        return check_positive(name, value, allow_zero=allow_zero)
    except ValueError:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"Expected {name} {bound} and finite (got {value!r}).") from None


def _generator(seed: int | None, generator: torch.Generator | None) -> torch.Generator:
    if generator is not None:
        if generator.device.type != "cpu":
            raise ValueError("Expected a CPU torch.Generator (noise is drawn on the CPU).")
        return generator
    return torch.Generator().manual_seed(0 if seed is None else int(seed))


def gaussian_noise(
    y: torch.Tensor,
    sigma: float,
    *,
    relative: bool = True,
    seed: int | None = 0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``y + sigma * s * n`` with ``n`` standard normal.

    Args:
        y: sinograms ``(batch, ...)``.
        sigma: noise level; with ``relative=True`` it is relative to each sinogram's
            root-mean-square value (``s = ||y_b|| / sqrt(numel)``), else ``s = 1``.
        seed / generator: randomness (drawn on the CPU, then moved to ``y``'s device).

    Example:
        >>> import torch
        >>> gaussian_noise(torch.ones(2, 10, 16), 0.05).shape
        torch.Size([2, 10, 16])
    """
    check_tensor("y", y)
    if y.dim() < 1:
        raise ValueError("Expected 'y' with a batch axis, (batch, ...) (got a 0-d tensor).")
    check_batch("y", y)
    check_finite("y", y)
    sigma = _hyper("sigma", sigma, allow_zero=True)
    gen = _generator(seed, generator)
    noise = torch.randn(y.shape, generator=gen, dtype=y.dtype).to(y.device)
    if relative:
        flat = y.reshape(y.shape[0], -1)
        # scale-free: a plain norm squares the entries (float32 sinograms above ~1e19 gave
        # Inf noise, NaN at sigma = 0; below ~1e-19 no noise)
        rms = scaled_row_norm(flat) / flat.shape[1] ** 0.5
        noise = noise * rms.reshape(-1, *([1] * (y.dim() - 1)))
    return y + sigma * noise


def poisson_noise(
    y: torch.Tensor,
    photons: float,
    *,
    pixel_size: float | None = None,
    seed: int | None = 0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Low-dose transmission noise (Beer-Lambert with Poisson photon counts).

    Each detector reading counts ``k ~ Poisson(I0 * exp(-mu * y))`` photons with
    ``I0 = photons`` and ``mu = pixel_size`` (the physical length of a pixel, so
    that ``mu * y`` is the line integral of the attenuation); the returned sinogram
    is ``-log(max(k, 1) / I0) / mu``. A count of zero (photon starvation) is
    clamped to one so the result stays finite.

    Args:
        y: clean sinograms ``(batch, n_angles, n_det)`` in pixel units.
        photons: incident photons per detector bin ``I0`` (lower = noisier).
        pixel_size: ``mu``; default ``1 / n_det`` (the image spans unit length).
        seed / generator: randomness (drawn on the CPU).

    Example:
        >>> import torch
        >>> y = torch.full((1, 4, 8), 2.0)
        >>> poisson_noise(y, 1e6).sub(y).abs().max().item() < 0.1
        True
    """
    check_tensor("y", y, ndim=(3, 4))
    check_batch("y", y)
    check_finite("y", y)
    photons = _hyper("photons", photons, allow_zero=False)
    mu = (
        1.0 / y.shape[-1]
        if pixel_size is None
        else _hyper("pixel_size", pixel_size, allow_zero=False)
    )
    gen = _generator(seed, generator)
    rate = photons * torch.exp(-mu * y.detach().to("cpu", torch.float64))
    counts = torch.poisson(rate, generator=gen).clamp(min=1.0)
    noisy = -torch.log(counts / photons) / mu
    return noisy.to(dtype=y.dtype, device=y.device)
