"""Closed-form line integrals of ellipse phantoms (exact projections for any ray).

An ellipse of intensity ``rho`` is the set ``(u / a)^2 + (v / b)^2 <= 1`` in its own
frame; the line ``p + t d`` (``d`` a unit vector) crosses it over the chord where
``|p' + t d'|^2 = 1`` with ``p'``, ``d'`` the point and direction mapped to that frame and
scaled by the semi-axes, so its line integral is ``rho * 2 sqrt(B^2 - A C) / A`` with
``A = |d'|^2``, ``B = p'.d'``, ``C = |p'|^2 - 1`` (zero when the line misses). These are the
references the projectors are checked against (tests/imaging/test_fanbeam.py).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .._validation import check_count

__all__ = ["ellipse_line_integrals", "fanbeam_ellipse_sinogram", "profiled_ellipse_image"]


def profiled_ellipse_image(
    params: torch.Tensor, size: int, *, power: int = 2, supersample: int = 2
) -> torch.Tensor:
    """Ellipses with the profile ``rho * (1 - r^2)^power`` (``r``: the ellipse's normalized
    radius), ``(batch, size, size)``, averaged over ``supersample^2`` points per pixel.

    ``power=0`` is the filled ellipse of :func:`~unrollsci.imaging.ellipse_image`; with
    ``power >= 1`` the image is continuous (``power >= 2``: continuously differentiable),
    so a pixel image of it converges to it at second order and a projector can be held
    to a tight tolerance against :func:`ellipse_line_integrals` with the same ``power``.

    Example:
        >>> import torch
        >>> img = profiled_ellipse_image(torch.tensor([[[1.0, 0.5, 0.5, 0, 0, 0]]]), 8)
        >>> img.shape, float(img.max()) <= 1.0
        (torch.Size([1, 8, 8]), True)
    """
    from ._phantoms import _grid

    power = check_count("power", power, 0)
    x, y = _grid(size, supersample, params.dtype, params.device)
    val, a, b, x0, y0, phi = (params[..., i, None, None] for i in range(6))
    dx, dy = x - x0, y - y0
    c, s = torch.cos(phi), torch.sin(phi)
    r2 = ((c * dx + s * dy) / a) ** 2 + ((-s * dx + c * dy) / b) ** 2
    img = (val * torch.clamp(1 - r2, min=0) ** power * (r2 <= 1)).sum(1)
    k = supersample
    return img.reshape(img.shape[0], size, k, size, k).mean((2, 4))


def ellipse_line_integrals(
    params: torch.Tensor,
    points: torch.Tensor,
    directions: torch.Tensor,
    image_size: int,
    *,
    power: int = 0,
) -> torch.Tensor:
    """Line integrals of a sum of ellipses along the lines ``points + t * directions``.

    Args:
        params: ``(m, 6)`` or ``(batch, m, 6)`` rows ``(intensity, a, b, x0, y0, angle_rad)``
            in the unit square ``[-1, 1]^2`` (x right, y up), as
            :func:`~unrollsci.imaging.ellipse_image`.
        points, directions: ``(..., 2)`` points on the lines and unit directions, in the
            centred pixel coordinates of an ``image_size`` image (``x = col - (N-1)/2``,
            ``y = (N-1)/2 - row``).
        image_size: ``N``; one unit of the phantom is ``N / 2`` pixels.
        power: the profile ``(1 - r^2)^power`` of :func:`profiled_ellipse_image` (0:
            filled ellipses). Along a chord of half-length ``L`` (normalized units) the
            integral is ``L^(2 power + 1) sqrt(pi) power! / Gamma(power + 3/2) / |d'|``.

    Returns:
        ``(...)`` (or ``(batch, ...)``) integrals in pixel units (float64).

    Example:
        >>> import torch
        >>> disk = torch.tensor([[1.0, 0.5, 0.5, 0.0, 0.0, 0.0]])
        >>> p, d = torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, 1.0]])
        >>> round(float(ellipse_line_integrals(disk, p, d, 64)[0]), 9)  # diameter 2 * 0.5 * 32
        32.0
    """
    if not isinstance(params, torch.Tensor) or params.shape[-1] != 6 or params.dim() not in (2, 3):
        got = tuple(params.shape) if isinstance(params, torch.Tensor) else type(params).__name__
        raise ValueError(f"Expected 'params' of shape (m, 6) or (batch, m, 6) (got {got}).")
    batched = params.dim() == 3
    e = (params if batched else params[None]).to(torch.float64)
    if not bool(torch.isfinite(e).all()) or not bool((e[..., 1:3] > 0).all()):
        raise ValueError("Expected finite ellipse parameters with semi-axes a, b > 0.")
    pts = points.to(torch.float64)
    dirs = directions.to(device=pts.device, dtype=torch.float64)
    scale = image_size / 2.0
    lead = (1,) * (pts.dim() - 1)
    rho, a, b, x0, y0, phi = (e[..., i].reshape(*e.shape[:2], *lead) for i in range(6))
    a, b, x0, y0 = a * scale, b * scale, x0 * scale, y0 * scale
    c, s = torch.cos(phi), torch.sin(phi)
    px, py = pts[..., 0][None, None] - x0, pts[..., 1][None, None] - y0
    dx, dy = dirs[..., 0][None, None], dirs[..., 1][None, None]
    pu, pv = (c * px + s * py) / a, (-s * px + c * py) / b
    du, dv = (c * dx + s * dy) / a, (-s * dx + c * dy) / b
    qa = du * du + dv * dv
    qb = pu * du + pv * dv
    qc = pu * pu + pv * pv - 1.0
    power = check_count("power", power, 0)
    half2 = torch.clamp(qb * qb - qa * qc, min=0.0) / qa  # L^2, squared normalized half-chord
    coef = math.sqrt(math.pi) * math.factorial(power) / math.gamma(power + 1.5)
    out = (rho * coef * half2 ** (power + 0.5) / torch.sqrt(qa)).sum(1)
    return out if batched else out[0]


def fanbeam_ellipse_sinogram(params: torch.Tensor, op: Any, *, power: int = 0) -> torch.Tensor:
    """Exact fan-beam sinogram ``(n_angles, n_det)`` (or batched) of an ellipse phantom
    for the geometry of a :class:`~unrollsci.operators.FanBeam` ``op`` (pixel units)."""
    src, d = op.rays()
    return ellipse_line_integrals(params, src, d, op.image_size, power=power)
