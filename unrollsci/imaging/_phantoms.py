"""Phantoms: the modified Shepp-Logan head and random ellipse images."""

from __future__ import annotations

import math
from typing import Any

import torch

from .._validation import check_count, check_device

__all__ = ["shepp_logan", "random_ellipses", "ellipse_image", "disk_mask"]

# Modified Shepp-Logan (Toft, "The Radon Transform", 1996, table 2.1; the
# contrast-enhanced variant used by MATLAB's phantom and scikit-image):
# (intensity, semi-axis a, semi-axis b, centre x, centre y, rotation degrees).
_MODIFIED_SHEPP_LOGAN = (
    (1.0, 0.69, 0.92, 0.0, 0.0, 0.0),
    (-0.8, 0.6624, 0.8740, 0.0, -0.0184, 0.0),
    (-0.2, 0.1100, 0.3100, 0.22, 0.0, -18.0),
    (-0.2, 0.1600, 0.4100, -0.22, 0.0, 18.0),
    (0.1, 0.2100, 0.2500, 0.0, 0.35, 0.0),
    (0.1, 0.0460, 0.0460, 0.0, 0.1, 0.0),
    (0.1, 0.0460, 0.0460, 0.0, -0.1, 0.0),
    (0.1, 0.0460, 0.0230, -0.08, -0.605, 0.0),
    (0.1, 0.0230, 0.0230, 0.0, -0.606, 0.0),
    (0.1, 0.0230, 0.0460, 0.06, -0.605, 0.0),
)


def _check_dtype(dtype: Any) -> None:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"Expected a floating-point torch dtype (got {dtype!r}).")


def _grid(
    size: int, supersample: int, dtype: torch.dtype, device: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sub-pixel sample coordinates in [-1, 1]: x to the right, y up (row 0 at the top)."""
    s = size * supersample
    t = (torch.arange(s, dtype=dtype, device=device) + 0.5) / s * 2 - 1
    y, x = torch.meshgrid(-t, t, indexing="ij")
    return x, y


def ellipse_image(params: torch.Tensor, size: int, *, supersample: int = 2) -> torch.Tensor:
    """Sum of filled ellipses, averaged over ``supersample^2`` points per pixel.

    Args:
        params: ``(batch, m, 6)`` rows ``(intensity, a, b, x0, y0, angle_rad)`` in the
            unit square ``[-1, 1]^2`` (x right, y up).
        size: output is ``(batch, size, size)``.
        supersample: sub-samples per pixel and axis (anti-aliasing).
    """
    x, y = _grid(size, supersample, params.dtype, params.device)
    val, a, b, x0, y0, phi = (params[..., i, None, None] for i in range(6))
    dx, dy = x - x0, y - y0
    c, s = torch.cos(phi), torch.sin(phi)
    u, v = c * dx + s * dy, -s * dx + c * dy
    inside = (u / a) ** 2 + (v / b) ** 2 <= 1
    img = (val * inside).sum(1)  # (batch, S, S)
    k = supersample
    return img.reshape(img.shape[0], size, k, size, k).mean((2, 4))


def shepp_logan(
    size: int = 128, *, dtype: torch.dtype = torch.float32, device: Any = None, supersample: int = 2
) -> torch.Tensor:
    """The modified Shepp-Logan head phantom, ``(size, size)``, values in [0, 1].

    Same geometry and contrast as ``skimage.data.shepp_logan_phantom`` (which is a
    400 x 400 rendering of it); the head lies inside the inscribed circle.

    Example:
        >>> x = shepp_logan(64)
        >>> x.shape, float(x.min()) >= 0.0, float(x.max()) <= 1.0
        (torch.Size([64, 64]), True, True)
    """
    device = check_device(device)
    size = check_count("size", size, 2)
    supersample = check_count("supersample", supersample, 1)
    _check_dtype(dtype)
    p = torch.tensor(_MODIFIED_SHEPP_LOGAN, dtype=torch.float64)
    p[:, 5] = torch.deg2rad(p[:, 5])
    img = ellipse_image(p[None], size, supersample=supersample)[0]
    return img.clamp(0.0, 1.0).to(dtype=dtype, device=device)


def disk_mask(size: int, *, device: Any = None) -> torch.Tensor:
    """Boolean ``(size, size)`` mask of the pixels within ``size // 2`` of the centre pixel.

    This is the reconstruction circle of :class:`~unrollsci.operators.Radon`.

    Example:
        >>> disk_mask(8).shape
        torch.Size([8, 8])
    """
    device = check_device(device)
    size = check_count("size", size, 1)
    i = torch.arange(size, device=device) - size // 2
    return (i[:, None] ** 2 + i[None, :] ** 2) <= (size // 2) ** 2


def random_ellipses(
    n: int,
    size: int = 64,
    *,
    n_ellipses: int = 8,
    seed: int | None = 0,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: Any = None,
    return_support: bool = False,
    supersample: int = 2,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Random ellipse phantoms: a body ellipse holding ``n_ellipses`` smaller ones.

    Each image has a "body" ellipse (intensity in [0.2, 0.5], semi-axes in
    [0.55, 0.85] of the half-width, centre within 0.05 of the middle per axis, random
    tilt) that fits in the reconstruction circle (its farthest point at most 0.921 of
    the half-width; on grids below about 20 pixels a pixel it touches can have its
    centre outside the circle, i.e. outside ``disk_mask``), and ``n_ellipses`` inner
    ellipses (intensities in [-0.2, 0.5], placed inside the body). Values are clipped to
    [0, 1], and everything outside the body is exactly zero, so the body is the object's
    support (the "patient boundary").

    Args:
        n: number of images.
        size: images are ``(size, size)``.
        n_ellipses: inner ellipses per image.
        seed / generator: randomness (a generator wins over the seed).
        return_support: also return the boolean body masks ``(n, size, size)``.

    Returns:
        ``(n, size, size)`` images (and masks if ``return_support``).

    Example:
        >>> x, m = random_ellipses(4, 32, return_support=True)
        >>> x.shape, m.shape, m.dtype
        (torch.Size([4, 32, 32]), torch.Size([4, 32, 32]), torch.bool)
    """
    device = check_device(device)
    n = check_count("n", n, 1)
    size = check_count("size", size, 2)
    n_ellipses = check_count("n_ellipses", n_ellipses, 0)
    supersample = check_count("supersample", supersample, 1)
    _check_dtype(dtype)
    gen = (
        generator
        if generator is not None
        else torch.Generator().manual_seed(0 if seed is None else int(seed))
    )

    def u(lo: float, hi: float, *shape: int) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(*shape, generator=gen, dtype=torch.float64)

    # Body: a tilted ellipse whose farthest point stays within radius 0.85 + 0.05 sqrt(2)
    # (0.921) of the half-width.
    body = torch.stack(
        [
            u(0.2, 0.5, n),
            u(0.55, 0.85, n),
            u(0.55, 0.85, n),
            u(-0.05, 0.05, n),
            u(-0.05, 0.05, n),
            u(0.0, math.pi, n),
        ],
        -1,
    )
    # Inner ellipses at radius r (fraction of the body) and angle t, small axes.
    m = n_ellipses
    r, t = torch.sqrt(u(0.0, 1.0, n, m)) * 0.6, u(0.0, 2 * math.pi, n, m)
    cx = body[:, None, 3] + r * body[:, None, 1] * torch.cos(t)
    cy = body[:, None, 4] + r * body[:, None, 2] * torch.sin(t)
    scale = torch.minimum(body[:, None, 1], body[:, None, 2])
    inner = torch.stack(
        [
            u(-0.2, 0.5, n, m),
            scale * u(0.05, 0.35, n, m),
            scale * u(0.05, 0.35, n, m),
            cx,
            cy,
            u(0.0, math.pi, n, m),
        ],
        -1,
    )
    body_only = body.clone()
    body_only[:, 0] = 1.0
    supp = ellipse_image(body_only[:, None], size, supersample=supersample) > 0
    img = ellipse_image(torch.cat([body[:, None], inner], 1), size, supersample=supersample)
    img = torch.where(supp, img.clamp(0.0, 1.0), torch.zeros((), dtype=img.dtype))
    img = img.to(dtype=dtype, device=device)
    if return_support:
        return img, supp.to(device=device)
    return img
