"""Parallel-beam Radon transform (CT projector) with an exact adjoint.

Two implementations of one operator, chosen by size (``method=``): a precomputed sparse
system matrix (fast to apply, but ``O(N^2)`` entries per angle to build and hold), and a
matrix-free ray-driven kernel (:mod:`._radon_matfree`) that computes the same weights on
the fly (memory ``O(N^2 + angles * N)`` beyond the batch, nothing to build). The matrix's
rows follow the rotation-and-sum definition that ``skimage.transform.radon`` uses: for each angle
the image is rotated about the pixel ``(N // 2, N // 2)`` with bilinear
interpolation (zero outside the image) and summed along the rows; detector ``j``
collects column ``j`` of the rotated image. Writing that rotation as a sparse
matrix makes the forward projection agree with scikit-image to rounding, makes
the adjoint exact (it is the transposed matrix), and turns one projection of a
batch into a single sparse-dense product. The comparison with a ``grid_sample``
projector is in ``benchmarks/radon.py`` and docs/ct.md.

Filtered back-projection (``fbp``, ``ramp_filter``, ``filter_sinogram``, ``FILTERS``)
is a reconstruction algorithm and lives in :mod:`unrollsci.imaging._fbp`; the names
stay importable from here (lazily, see ``__getattr__``) for old code.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .._compat import quiet_csr
from .._validation import check_count, check_device
from ._base import LinearOperator
from ._checks import FixedAngles, as_shape, tensor_key
from ._memory import available_memory
from ._radon_cache import (  # noqa: F401 - _system_matrix: importable from here
    _CACHE,
    _system_matrix,
    clear_radon_cache,
)

__all__ = [
    "Radon",
    "radon_memory_estimate",
    "available_memory",
    "clear_radon_cache",
    "RADON_METHODS",
]

#: Implementations of :class:`Radon` (``method=``).
RADON_METHODS = ("auto", "matrix", "matfree")
#: ``method="auto"`` stores the matrix up to this many estimated entries (its build time
#: grows with them: benchmarks/results/radon.md), and goes matrix-free above.
AUTO_MATRIX_MAX_NNZ = 12_000_000

#: Stored entries of the system matrix per pixel of the support and per angle (an upper
#: calibration of the bilinear weights; how it was obtained: docs/solvers.md, "Radon memory").
_NNZ_PER_PIXEL = 2.21
#: Peak bytes per stored entry while building (coordinate lists of the bilinear weights,
#: their concatenation, the COO -> CSR conversion, the torch copies of A and A^T); a
#: rounded-up calibration, see docs/solvers.md, "Radon memory".
_PEAK_BYTES_PER_ENTRY = 128

#: FBP names that moved to :mod:`unrollsci.imaging._fbp`, still importable from here.
_MOVED_TO_IMAGING = ("FILTERS", "fbp", "filter_sinogram", "ramp_filter")


def __getattr__(name: str) -> Any:
    # Old import path (``from unrollsci.operators._radon import fbp``). Lazy: imaging
    # imports this module, so importing imaging here at import time would be a cycle.
    if name in _MOVED_TO_IMAGING:
        from ..imaging import _fbp

        return getattr(_fbp, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _as_angles(angles: Any) -> np.ndarray:
    """Angles in degrees as a float64 array (a count gives ``linspace(0, 180, n)``)."""
    if isinstance(angles, (bool, str, bytes)):
        raise TypeError(f"Expected 'angles' to be a count or a 1D tensor (got {angles!r}).")
    if isinstance(angles, (int, np.integer)):
        if angles < 1:
            raise ValueError(f"Expected at least one projection angle (got angles={angles}).")
        return np.linspace(0.0, 180.0, int(angles), endpoint=False)
    if isinstance(angles, torch.Tensor):
        if angles.is_complex():
            raise TypeError(f"Expected real angles in degrees (got dtype {angles.dtype}).")
        arr = angles.detach().cpu().to(torch.float64).numpy()
    elif isinstance(angles, (np.ndarray, Sequence)):
        if np.iscomplexobj(np.asarray(angles)):
            raise TypeError("Expected real angles in degrees (got complex values).")
        arr = np.asarray(angles, dtype=np.float64)
    else:
        raise TypeError(
            "Expected 'angles' to be a count or a 1D tensor of angles in degrees "
            f"(got {type(angles).__name__})."
        )
    if arr.ndim != 1:
        raise ValueError(f"Expected 'angles' to be 1-dimensional (got shape {arr.shape}).")
    if arr.size == 0:
        raise ValueError("Expected at least one projection angle (got an empty 'angles').")
    if not np.all(np.isfinite(arr)):
        raise ValueError("Expected finite angles (got NaN or Inf in 'angles').")
    return arr


def _as_size(image_size: Any) -> int:
    if isinstance(image_size, (tuple, list, torch.Size)):
        sizes = as_shape("image_size", image_size, minimum=None)  # ints only: no truncation
        if len(sizes) != 2 or sizes[0] != sizes[1]:
            raise ValueError(
                f"Expected a square image size n or (n, n) (got image_size={tuple(sizes)})."
            )
        image_size = sizes[0]
    return check_count("image_size", image_size, 2)


def _support_pixels(n: int, circle: bool) -> int:
    if not circle:
        return n * n
    # the pixels within radius n // 2 of the centre, counted row by row (no n x n array: the
    # memory guard runs this before refusing a geometry far too large to build)
    lo, hi, r2 = -(n // 2), n - 1 - n // 2, (n // 2) ** 2
    total = 0
    for a in range(lo, hi + 1):
        if a * a <= r2:
            m = math.isqrt(r2 - a * a)  # |i| <= m on this row
            total += min(m, hi) - max(-m, lo) + 1
    return total


def radon_memory_estimate(image_size: Any, angles: Any = 180, *, circle: bool = True) -> int:
    """Peak memory in bytes that building ``Radon(image_size, angles, circle=circle)`` needs.

    The model is ``2.21 x (pixels in the support) x n_angles`` stored entries times 128
    bytes per entry at the peak of the construction (how the constants were obtained:
    docs/solvers.md, "Radon memory"). :class:`Radon` refuses a geometry whose estimate
    exceeds the memory available.

    Args:
        image_size: ``N`` (or ``(N, N)``).
        angles: a count or a 1D array of angles in degrees, as for :class:`Radon`.
        circle: as for :class:`Radon`.

    Returns:
        The estimate in bytes (an ``int``).

    Example:
        >>> radon_memory_estimate(64, 60) < radon_memory_estimate(128, 60)
        True
    """
    n = _as_size(image_size)
    n_angles = int(_as_angles(angles).size)
    nnz = _NNZ_PER_PIXEL * _support_pixels(n, bool(circle)) * n_angles
    return int(math.ceil(nnz * _PEAK_BYTES_PER_ENTRY))


def _check_memory(n: int, theta: np.ndarray, circle: bool, max_memory: Any) -> None:
    """Refuse a geometry whose construction would not fit. Without ``max_memory`` the
    limit is the memory available; when that is short, the matrix cache is emptied and
    the memory available read again."""
    if max_memory is not None:
        if isinstance(max_memory, bool) or not isinstance(max_memory, (int, float)):
            raise TypeError(
                f"Expected 'max_memory' to be a number of bytes or None (got "
                f"{type(max_memory).__name__})."
            )
        if not max_memory > 0:  # also NaN
            raise ValueError(f"Expected 'max_memory' > 0 bytes (got {max_memory!r}).")
        if math.isinf(max_memory):
            return
    need = radon_memory_estimate(n, theta, circle=circle)
    limit = available_memory() if max_memory is None else max_memory
    if limit is None or need <= limit:
        return
    if max_memory is None and _CACHE.clear():  # free the cached matrices, look again
        limit = available_memory()
        if limit is None or need <= limit:
            return
    what = "available" if max_memory is None else "allowed (max_memory)"
    raise ValueError(
        f"Radon({n}, {theta.size} angles, circle={circle}) needs about {need / 1e9:.2f} GB "
        f"of memory to build its system matrix (~{need // _PEAK_BYTES_PER_ENTRY:,} stored "
        f"entries x {_PEAK_BYTES_PER_ENTRY} bytes at the peak), but only {limit / 1e9:.2f} GB "
        f"is {what}. Use method='matfree' (the same operator, nothing stored), fewer angles "
        "or a smaller image, or pass max_memory=float('inf') to build it anyway."
    )


def _detector_geometry(n: int, circle: bool) -> tuple[int, int, int]:
    """``(size, centre, offset)``: detector count, rotation centre on the padded grid and
    the shift from padded to image coordinates (as scikit-image pads for circle=False)."""
    size = n if circle else n + int(math.ceil(math.sqrt(2.0) * n - n))
    centre = size // 2
    return size, centre, centre - n // 2


@functools.lru_cache(maxsize=8)
def _ray_table(n: int, angles: tuple[float, ...], circle: bool) -> Any:
    """The rays of the rotate-and-sum projector, for the matrix-free kernel.

    Ray ``(a, c)`` samples the image at the points where :func:`_system_matrix` does:
    ``x = centre + cos(c - centre) + sin(r - centre) - offset`` (column),
    ``y = centre - sin(c - centre) + cos(r - centre) - offset`` (row), ``r = 0..size-1``,
    written as ``p + k v`` with ``k = r - centre`` (plus one for the kernel's zero border).
    With ``circle=True`` only samples within ``centre + 1.5`` of the centre are visited
    (the others have no tap in the disk; rotation keeps the lattice distance).
    """
    from ._radon_matfree import RayTable

    size, centre, offset = _detector_geometry(n, circle)
    theta = torch.deg2rad(torch.tensor(angles, dtype=torch.float64))
    cos_t, sin_t = torch.cos(theta)[:, None], torch.sin(theta)[:, None]
    c = torch.arange(size, dtype=torch.float64)[None, :] - centre
    px = centre + cos_t * c - offset + 1.0
    py = centre - sin_t * c - offset + 1.0
    vx, vy = sin_t.expand_as(px), cos_t.expand_as(px)
    rays = torch.stack([px, py, vx, vy, torch.ones_like(px)], -1).reshape(-1, 5)
    lo, hi = torch.full_like(c, -centre), torch.full_like(c, size - 1 - centre)
    if circle:
        half = torch.floor(torch.sqrt(torch.clamp((centre + 1.5) ** 2 - c**2, min=0.0)))
        lo, hi = torch.maximum(lo, -half), torch.minimum(hi, half)
    k0 = lo.expand(len(angles), size).reshape(-1)
    nk = (hi - lo + 1).expand(len(angles), size).reshape(-1)
    return RayTable(rays, k0, nk, n)


def _to_csr(mat: Any) -> torch.Tensor:
    """torch CSR copy of scipy CSR ``mat`` (its own arrays: ``mat`` may be the cached
    system matrix, which other operators of the geometry are built from)."""
    index = torch.int32 if max(mat.shape[0], mat.nnz) < 2**31 - 1 else torch.int64
    with quiet_csr():
        return torch.sparse_csr_tensor(
            torch.from_numpy(mat.indptr.astype(np.int64)).to(index),
            torch.from_numpy(mat.indices.astype(np.int64)).to(index),
            torch.from_numpy(np.array(mat.data, dtype=np.float64)),  # a copy
            size=mat.shape,
            check_invariants=False,
        )


class _SparseApply(torch.autograd.Function):
    """``x @ M^T`` for CSR ``M``; the backward applies ``M^T`` (itself differentiable)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, mat: torch.Tensor, mat_t: torch.Tensor) -> torch.Tensor:
        ctx.mats = (mat, mat_t)
        return (mat @ x.T.contiguous()).T

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        mat, mat_t = ctx.mats
        return _SparseApply.apply(grad, mat_t, mat), None, None


class Radon(FixedAngles, LinearOperator):
    """Parallel-beam Radon transform ``A`` with an exact adjoint (back-projection).

    ``A x`` rotates the image by each angle about the pixel ``(N // 2, N // 2)``
    (bilinear interpolation) and sums along the rows, exactly as
    ``skimage.transform.radon``: ``Radon(n, theta)(x)[b, k, j]`` equals
    ``radon(x[b], theta, circle=circle)[j, k]``. ``A`` and ``A^T`` are differentiable
    and run on any device.

    Two implementations compute the same operator (``method=``):

    * ``"matrix"``: a sparse system matrix (built once per geometry and cached, up to
      256 MiB of recent matrices, freed by :func:`clear_radon_cache`; each
      ``Radon`` holds its own copy of the entries, so an in-place change of one
      operator's ``op.matrix`` changes that operator only, its adjoint included);
      ``A`` and ``A^T`` are one sparse product each. ``O(N^2)`` entries per angle:
      :func:`radon_memory_estimate` gives the peak of its construction (figures:
      docs/solvers.md, "Radon memory"), and a geometry whose estimate exceeds the
      memory available (``/proc/meminfo``, cgroup limit) is refused with a
      ``ValueError`` before anything is allocated.
    * ``"matfree"``: a ray-driven kernel that recomputes the bilinear weights of each
      sample on the fly (a compiled C loop on CPU, torch gathers on other devices);
      the adjoint scatters with the same weights, so it is exact. Nothing to build;
      memory ``O(N^2 + n_angles * N)`` beyond the batch.
    * ``"auto"`` (default): the matrix up to :data:`AUTO_MATRIX_MAX_NNZ` estimated
      entries (about 128^2 pixels x 300 angles), matrix-free above. Both agree to
      rounding.

    With ``circle=True`` the image is assumed zero outside the inscribed circle
    (pixels at distance > ``N // 2`` from the centre are ignored and
    back-projection leaves them at zero); there are ``N`` detectors. With
    ``circle=False`` the detector covers the diagonal (``N + ceil(sqrt(2) N - N)``
    bins, as scikit-image).

    Computes in float32 or float64 (float16/bfloat16 input raises ``TypeError``).

    Args:
        image_size: ``N`` (or ``(N, N)``) for ``N x N`` images.
        angles: a count (angles ``linspace(0, 180, n, endpoint=False)`` degrees) or
            a 1D tensor / array of angles in degrees. Fixed: ``op.angles`` is read-only.
        circle: see above.
        max_memory: bytes the matrix's construction may use; default (None) the memory
            available now (when short, after emptying the matrix cache; no check where
            it is unknown); ``float("inf")`` skips the check. Not used by the
            matrix-free method.
        method: ``"auto"``, ``"matrix"`` or ``"matfree"`` (see above).

    Shapes:
        ``op(x)``: ``x`` of shape ``(batch, N, N)`` -> ``(batch, n_angles, n_det)``;
        ``(batch, 1, N, N)`` -> ``(batch, 1, n_angles, n_det)``.
        ``op.adjoint(y)`` goes back the same way.

    Example:
        >>> import torch
        >>> op = Radon(32, 45)
        >>> op(torch.zeros(2, 32, 32)).shape
        torch.Size([2, 45, 32])
    """

    supported_dtypes = (torch.float32, torch.float64)

    def __init__(
        self,
        image_size: int | Sequence[int],
        angles: Any = 180,
        *,
        circle: bool = True,
        max_memory: float | None = None,
        method: str = "auto",
    ) -> None:
        super().__init__()
        n = _as_size(image_size)
        theta = _as_angles(angles)
        if not isinstance(method, str) or method not in RADON_METHODS:
            raise ValueError(f"Expected method in {RADON_METHODS} (got {method!r}).")
        circle = bool(circle)
        if method == "auto":
            nnz = _NNZ_PER_PIXEL * _support_pixels(n, circle) * theta.size
            method = "matrix" if nnz <= AUTO_MATRIX_MAX_NNZ else "matfree"
        self.method = method
        self.image_size, self.circle = n, circle
        self.n_angles = int(theta.size)
        self.n_detectors = _detector_geometry(n, circle)[0]
        self.register_buffer("angles", torch.from_numpy(theta.copy()))
        self._fix_angles()
        key = (n, tuple(float(t) for t in theta), circle)
        if method == "matrix":
            _check_memory(n, theta, circle, max_memory)
            mat = _system_matrix(*key)
            # Derived from the geometry, so not part of the state dict (rebuilt from the cache).
            self.register_buffer("matrix", _to_csr(mat), persistent=False)
            self.register_buffer("matrix_t", _to_csr(mat.T.tocsr()), persistent=False)
            self._matrix_t_key: Any = tensor_key(self.matrix)  # what matrix_t transposes
        else:
            self._rays = _ray_table(*key)
            self.register_buffer("mask", self.support(), persistent=False)
        self.in_shape = (n, n)
        self.out_shape = (self.n_angles, self.n_detectors)

    @property
    def nnz(self) -> int:
        """Number of stored entries of the system matrix (0 for the matrix-free method)."""
        if self.method != "matrix":
            return 0
        return int(self.matrix.values().numel())

    def support(self, *, device: Any = None) -> torch.Tensor:
        """Boolean ``(N, N)`` mask of the reconstruction disk (all True if ``circle=False``)."""
        device = check_device(device)
        n = self.image_size
        if not self.circle:
            return torch.ones(n, n, dtype=torch.bool, device=device)
        i = torch.arange(n, device=device) - n // 2
        return (i[:, None] ** 2 + i[None, :] ** 2) <= (n // 2) ** 2

    def _masked(self, t: torch.Tensor) -> torch.Tensor:
        if not self.circle:
            return t
        return t * self.mask.to(device=t.device, dtype=t.dtype)

    def _mv(self, x: torch.Tensor) -> torch.Tensor:
        self._check_angles()
        if self.method == "matfree":
            from ._radon_matfree import ray_apply

            out = ray_apply(self._rays, self._masked(x))
            return out.reshape(x.shape[0], *self.out_shape)
        self._sync_matrix_t()
        flat = x.reshape(x.shape[0], -1)
        out = _SparseApply.apply(flat, self._cast("matrix", x), self._cast("matrix_t", x))
        return out.reshape(x.shape[0], *self.out_shape)

    def _rmv(self, y: torch.Tensor) -> torch.Tensor:
        self._check_angles()
        if self.method == "matfree":
            from ._radon_matfree import ray_apply

            flat = y.reshape(y.shape[0], -1)
            return self._masked(ray_apply(self._rays, flat, transpose=True))
        self._sync_matrix_t()
        flat = y.reshape(y.shape[0], -1)
        out = _SparseApply.apply(flat, self._cast("matrix_t", y), self._cast("matrix", y))
        return out.reshape(y.shape[0], *self.in_shape)

    def _sync_matrix_t(self) -> None:
        """Re-form ``matrix_t`` from ``matrix`` if the matrix changed since (modified in
        place or replaced: :func:`tensor_key`), so the adjoint stays its transpose."""
        key = tensor_key(self.matrix)
        if key != self._matrix_t_key:
            from ._matrix import _transpose_csr

            with torch.inference_mode(False):  # kept across calls: never an inference tensor
                self.matrix_t = _transpose_csr(self.matrix.detach())
            self._matrix_t_key = key

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def,override]
        # .to() / .cuda() move matrix and matrix_t alike: A^T stays the moved transpose
        if self.method != "matrix":
            return super()._apply(fn, recurse)
        self._sync_matrix_t()
        out = super()._apply(fn, recurse)
        self._matrix_t_key = tensor_key(self.matrix)
        return out

    def _channel_aware(
        self, name: str, t: torch.Tensor, shape: tuple[int, ...], fn: Any
    ) -> torch.Tensor:
        if isinstance(t, torch.Tensor) and t.dim() == len(shape) + 2 and t.shape[1] == 1:
            self._check_input(name, t[:, 0], shape)
            return fn(t[:, 0]).unsqueeze(1)
        self._check_input(name, t, shape)
        return fn(t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Project images ``x: (batch, N, N)`` or ``(batch, 1, N, N)`` to sinograms."""
        return self._channel_aware("x", x, self.in_shape, self._mv)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Back-project sinograms ``y: (batch, n_angles, n_det)`` (or with a channel axis)."""
        return self._channel_aware("y", y, self.out_shape, self._rmv)

    def fbp(self, y: torch.Tensor, filter: str = "ram-lak") -> torch.Tensor:
        """Filtered back-projection of ``y``; see :func:`unrollsci.imaging.fbp`."""
        from ..imaging._fbp import fbp

        return fbp(y, self, filter=filter)

    def extra_repr(self) -> str:
        return (
            f"image_size={self.image_size}, n_angles={self.n_angles}, "
            f"n_detectors={self.n_detectors}, circle={self.circle}, method={self.method!r}"
        )
