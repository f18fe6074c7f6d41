"""Fan-beam CT projector (flat detector) with an exact adjoint.

Geometry, in pixel units with the origin at the image centre (pixel ``(row, col)`` sits at
``x = col - (N - 1) / 2``, ``y = (N - 1) / 2 - row``: x to the right, y up, as
:func:`unrollsci.imaging.ellipse_image`): at view angle ``beta`` the source is at
``S = D_so (-sin beta, cos beta)``, the flat detector is perpendicular to the central ray
at distance ``D_sd`` from the source, and detector ``k`` sits at offset
``u_k = (k - (n_det - 1) / 2) * spacing`` along ``(cos beta, sin beta)``. At ``beta = 0``
the source is above the image and the rays go down, as the rays of
:class:`~unrollsci.operators.Radon` at angle 0.

Each ray is sampled from the source every ``step`` pixels with bilinear interpolation and
the samples are summed times ``step`` (a line integral in pixel units); the adjoint
scatters with the same weights (:mod:`._radon_matfree`), so it is the exact transpose.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .._validation import check_count
from ._base import LinearOperator
from ._checks import FixedAngles
from ._radon import _as_angles, _as_size
from ._radon_matfree import RayTable, ray_apply

__all__ = ["FanBeam"]

#: The default ``n_detectors`` covers a half fan angle of at most ``atan(_MAX_TAN)`` (84.3
#: degrees): a detector up to ``2 _MAX_TAN D_sd`` long.
_MAX_TAN = 10.0


def _positive(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"Expected '{name}' to be a number (got {type(value).__name__}).")
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"Expected '{name}' > 0 and finite (got {value!r}).")
    return value


def _fixed(name: str) -> property:
    """A read-only geometry scalar: the rays are built from it once."""

    def get(self: FanBeam) -> float:
        return getattr(self, "_" + name)

    def set_(self: FanBeam, value: Any) -> None:
        raise AttributeError(
            f"FanBeam.{name} is fixed at construction (the rays are built from it); "
            f"build a new FanBeam(..., {name}={value!r}) instead."
        )

    return property(get, set_, doc=f"``{name}`` (read-only; set at construction).")


class FanBeam(FixedAngles, LinearOperator):
    """Fan-beam projection with a flat detector, and its exact adjoint.

    Args:
        image_size: ``N`` (or ``(N, N)``).
        angles: a count (``linspace(0, 360, n, endpoint=False)`` degrees) or a 1D
            array / tensor of view angles in degrees.
        source_distance: source to rotation centre, ``D_so`` (pixels); the source must
            stay outside the image (``D_so > N / sqrt(2)``).
        detector_distance: source to detector, ``D_sd`` (pixels), ``> D_so``.
        n_detectors: detector elements; default: enough to see the whole image
            (its circumscribed circle, plus the one-pixel bilinear footprint) at every
            view, which needs ``D_so >= sqrt(1.01) (N / sqrt(2) + 1)`` (a half fan angle of at
            most ``atan(10)``, 84.3 degrees; ``ValueError`` closer: pass ``n_detectors``).
        detector_spacing: element pitch on the detector (pixels), default 1.
        step: sampling step along each ray (pixels), default 0.5.

    The geometry is fixed: ``angles`` and the four scalars above are read-only (reassigning
    a scalar raises ``AttributeError``; a changed ``angles`` raises ``ValueError``).

    Shapes:
        ``op(x)``: ``(batch, N, N)`` -> ``(batch, n_angles, n_detectors)``;
        ``op.adjoint(y)`` goes back. Float32 or float64; any device (a compiled loop on
        CPU, torch gathers elsewhere).

    The guarantee: ``<A x, y> = <x, A^T y>`` to rounding (both use the same weights), and
    ``A x`` converges to the line integrals of a smooth image as ``step`` and the pixel
    size go to zero (checked against closed-form ellipse projections in the tests).

    Example:
        >>> import torch
        >>> op = FanBeam(32, 60, source_distance=64.0, detector_distance=128.0)
        >>> op(torch.zeros(2, 32, 32)).shape[:2]
        torch.Size([2, 60])
    """

    supported_dtypes = (torch.float32, torch.float64)
    source_distance = _fixed("source_distance")
    detector_distance = _fixed("detector_distance")
    detector_spacing = _fixed("detector_spacing")
    step = _fixed("step")

    def __init__(
        self,
        image_size: int | Sequence[int],
        angles: Any = 360,
        *,
        source_distance: float,
        detector_distance: float,
        n_detectors: int | None = None,
        detector_spacing: float = 1.0,
        step: float = 0.5,
    ) -> None:
        super().__init__()
        n = _as_size(image_size)
        if isinstance(angles, (int, np.integer)) and not isinstance(angles, bool):
            if angles < 1:
                raise ValueError(f"Expected at least one view angle (got angles={angles}).")
            theta = np.linspace(0.0, 360.0, int(angles), endpoint=False)
        else:
            theta = _as_angles(angles)
        d_so = _positive("source_distance", source_distance)
        d_sd = _positive("detector_distance", detector_distance)
        du = _positive("detector_spacing", detector_spacing)
        step = _positive("step", step)
        radius = n / math.sqrt(2.0)  # circumscribed circle of the image (pixel edges)
        if d_so <= radius:
            raise ValueError(
                f"Expected source_distance > {radius:.2f} (the source must stay outside the "
                f"{n}x{n} image; got {d_so})."
            )
        if d_sd <= d_so:
            raise ValueError(
                f"Expected detector_distance > source_distance (the detector lies beyond the "
                f"rotation centre; got {d_sd} <= {d_so})."
            )
        if n_detectors is None:  # the bilinear taps reach one pixel past the corner centres
            # half fan angle at most atan(_MAX_TAN): a source at (or just past) the edge of
            # the circle would need a flat detector of (almost) infinite length
            closest = (radius + 1.0) * math.sqrt(1.0 + _MAX_TAN**-2)
            if d_so < closest:
                raise ValueError(
                    f"Expected source_distance >= {math.ceil(closest * 1e3) / 1e3} for the "
                    f"default n_detectors (got {d_so}): closer, a flat detector that sees the "
                    f"whole {n}x{n} image at every view is longer than {2 * _MAX_TAN:g} x "
                    f"detector_distance (and infinitely long at source_distance <= "
                    f"{radius + 1.0:.3f}); pass n_detectors= (the views then miss part of the "
                    "image) or move the source further out."
                )
            half = d_sd * math.tan(math.asin((radius + 1.0) / d_so))
            n_detectors = 2 * int(math.ceil(half / du)) + 2
        n_detectors = check_count("n_detectors", n_detectors)
        self.image_size, self.n_angles, self.n_detectors = n, int(theta.size), n_detectors
        self._source_distance, self._detector_distance = d_so, d_sd
        self._detector_spacing, self._step = du, step
        self.register_buffer("angles", torch.from_numpy(theta.copy()))
        self._fix_angles()
        self._rays = self._build_rays(theta)
        self.in_shape = (n, n)
        self.out_shape = (self.n_angles, self.n_detectors)

    def detector_offsets(self) -> torch.Tensor:
        """``u_k`` of each detector element (pixels, float64)."""
        k = torch.arange(self.n_detectors, dtype=torch.float64)
        return (k - (self.n_detectors - 1) / 2) * self.detector_spacing

    def rays(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Source points and unit directions of every ray, ``(n_angles, n_det, 2)`` each,
        in the centred pixel coordinates ``(x, y)`` of the module docstring (float64)."""
        self._check_angles()
        beta = torch.deg2rad(self.angles.detach().cpu().to(torch.float64))
        nx, ny = -torch.sin(beta), torch.cos(beta)  # unit vector centre -> source
        ex, ey = torch.cos(beta), torch.sin(beta)  # detector axis
        u = self.detector_offsets()[None, :]
        src = torch.stack([self.source_distance * nx, self.source_distance * ny], -1)
        src = src[:, None, :].expand(-1, self.n_detectors, -1)
        dx = -self.detector_distance * nx[:, None] + u * ex[:, None]
        dy = -self.detector_distance * ny[:, None] + u * ey[:, None]
        length = torch.sqrt(dx**2 + dy**2)
        return src, torch.stack([dx / length, dy / length], -1)

    def _build_rays(self, theta: np.ndarray) -> RayTable:
        n, h = self.image_size, self.step
        src, d = self.rays()
        sx, sy, dx, dy = src[..., 0], src[..., 1], d[..., 0], d[..., 1]
        # Kernel coordinates: column = x + (n-1)/2 + 1, row = (n-1)/2 - y + 1 (zero border).
        c0 = (n - 1) / 2 + 1
        px, py = sx + c0, c0 - sy
        vx, vy = dx * h, -dy * h
        # Samples that can touch the padded image: kernel coordinates in [0, n + 1).
        t_lo = torch.zeros_like(px)
        t_hi = torch.full_like(px, float("inf"))
        for p, v in ((px, vx), (py, vy)):
            with torch.no_grad():
                safe = torch.where(v == 0, torch.ones_like(v), v)
                a, b = (0.0 - p) / safe, (n + 1.0 - p) / safe
                lo, hi = torch.minimum(a, b), torch.maximum(a, b)
                inside = (p >= 0) & (p < n + 1)
                lo = torch.where(v == 0, torch.where(inside, -torch.inf, torch.inf), lo)
                hi = torch.where(v == 0, torch.where(inside, torch.inf, -torch.inf), hi)
            t_lo, t_hi = torch.maximum(t_lo, lo), torch.minimum(t_hi, hi)
        k0 = torch.floor(t_lo).clamp_min(0)
        nk = torch.where(t_hi > t_lo, torch.ceil(t_hi) - k0 + 1, torch.zeros_like(k0))
        rays = torch.stack([px, py, vx, vy, torch.full_like(px, h)], -1).reshape(-1, 5)
        return RayTable(rays, k0.reshape(-1), nk.reshape(-1), n)

    def _mv(self, x: torch.Tensor) -> torch.Tensor:
        self._check_angles()
        return ray_apply(self._rays, x).reshape(x.shape[0], *self.out_shape)

    def _rmv(self, y: torch.Tensor) -> torch.Tensor:
        self._check_angles()
        return ray_apply(self._rays, y.reshape(y.shape[0], -1), transpose=True)

    def fbp(self, y: torch.Tensor, filter: str = "ram-lak") -> torch.Tensor:
        """Fan-beam filtered back-projection; see :func:`unrollsci.imaging.fanbeam_fbp`."""
        from ..imaging._fanbeam_fbp import fanbeam_fbp

        return fanbeam_fbp(y, self, filter=filter)

    def extra_repr(self) -> str:
        return (
            f"image_size={self.image_size}, n_angles={self.n_angles}, "
            f"n_detectors={self.n_detectors}, source_distance={self.source_distance}, "
            f"detector_distance={self.detector_distance}, "
            f"detector_spacing={self.detector_spacing}, step={self.step}"
        )
