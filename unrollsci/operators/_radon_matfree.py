"""Matrix-free ray-driven projection with bilinear sampling, and its exact transpose.

A projector here is a list of rays. Ray ``i`` has a start point ``p_i`` and a step ``v_i``
in the coordinates of the image padded by one zero pixel on each side (``x``: column,
``y``: row, pixel ``(row, col)`` sits at ``(x, y) = (col, row)``), a first and a count of
sample indices ``k``, and a weight ``w_i``. Its value is

    ``w_i * sum_k bilinear(image, p_i + k v_i)``

with bilinear interpolation (samples outside ``[0, P - 1)^2`` are skipped: their taps
are all padding). The transpose scatters each ray's value back with the same four
weights per sample, so ``<A x, y> = <x, A^T y>`` holds to rounding: the two kernels
compute the same weights from the same coordinates.

On CPU the loops run in a small C kernel compiled on first use (:mod:`._raykernel`:
vectorised weights, the batch innermost in 64-byte vectors, no bounds branches); where
no compiler works, and on other devices (CUDA), the same sums run as chunked torch
gathers and ``index_add_``. Memory beyond the input and output:
the ray table (``O(rays)``), two padded copies of the batch (row- and column-major, so
that every ray walks memory in order) and, for the transpose on CPU, two image buffers
per thread.
"""

from __future__ import annotations

import ctypes
from typing import Any

import torch

from ._raykernel import MAX_PIXELS, kernel_available
from ._raykernel import library as _library

__all__ = ["RayTable", "ray_apply", "kernel_available"]


class RayTable:
    """Rays ``(px, py, vx, vy, w)`` with sample ranges ``[k0, k0 + nk)`` on a ``P x P`` grid.

    ``P`` is the padded image size (image ``n x n`` plus one zero pixel each side).
    Coordinates are float64 and held on the CPU; a device copy is made on first use.
    """

    def __init__(self, rays: torch.Tensor, k0: torch.Tensor, nk: torch.Tensor, n: int) -> None:
        self.rays = rays.to(torch.float64).contiguous()
        self.k0 = k0.to(torch.int64).contiguous()
        self.nk = nk.to(torch.int64).clamp_min(0).contiguous()
        self.n = int(n)
        self.P = self.n + 2
        self._samples = int(self.nk.sum())
        self._dev: dict[Any, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    @property
    def n_rays(self) -> int:
        return int(self.rays.shape[0])

    @property
    def samples(self) -> int:
        """Number of samples over all rays (the work of one projection per image)."""
        return self._samples

    def on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if device.type == "cpu":
            return self.rays, self.k0, self.nk
        key = str(device)
        if key not in self._dev:
            self._dev[key] = (self.rays.to(device), self.k0.to(device), self.nk.to(device))
        return self._dev[key]


def _pad_image(x: torch.Tensor, P: int) -> torch.Tensor:
    """``(B, n, n)`` -> ``(P * P, B)`` contiguous with a zero border of one pixel."""
    b, n = x.shape[0], x.shape[1]
    out = x.new_zeros(P, P, b)
    out[1 : n + 1, 1 : n + 1] = x.permute(1, 2, 0)
    return out.reshape(P * P, b)


def _threads(work: int) -> int:
    """Threads for a kernel call: torch's setting, but one for small calls (waking and
    joining a team costs more than it saves there, most of all on a loaded machine)."""
    return max(1, min(torch.get_num_threads(), work // (1 << 23)))


def _ptr(t: torch.Tensor) -> ctypes.c_void_p:
    return ctypes.c_void_p(t.data_ptr())


def _forward_kernel(lib: Any, table: RayTable, img: torch.Tensor) -> torch.Tensor:
    b, P = img.shape[1], table.P
    imgt = img.reshape(P, P, b).transpose(0, 1).contiguous()  # column-major copy
    out = img.new_empty(table.n_rays, b)
    fn = lib.ray_fwd_f64 if img.dtype == torch.float64 else lib.ray_fwd_f32
    fn(
        _ptr(img),
        _ptr(imgt),
        table.P,
        b,
        ctypes.cast(table.rays.data_ptr(), ctypes.POINTER(ctypes.c_double)),
        _ptr(table.k0),
        _ptr(table.nk),
        table.n_rays,
        _ptr(out),
        _threads(table.samples * b),
    )
    return out


def _adjoint_kernel(lib: Any, table: RayTable, y: torch.Tensor) -> torch.Tensor:
    b = y.shape[1]
    nt = _threads(table.samples * b)
    P = table.P
    bufs = y.new_zeros(nt, 2, P, P, b)
    fn = lib.ray_adj_f64 if y.dtype == torch.float64 else lib.ray_adj_f32
    fn(
        _ptr(y),
        table.P,
        b,
        ctypes.cast(table.rays.data_ptr(), ctypes.POINTER(ctypes.c_double)),
        _ptr(table.k0),
        _ptr(table.nk),
        table.n_rays,
        _ptr(bufs),
        nt,
    )
    acc = bufs[0] if nt == 1 else bufs.sum(0)
    return (acc[0] + acc[1].transpose(0, 1)).reshape(P * P, b)


def _chunks(table: RayTable, budget: int) -> list[tuple[int, int]]:
    """Ray ranges whose padded sample grid (rays x max count) stays under ``budget``."""
    nk = table.nk.tolist()
    out, start, widest = [], 0, 0
    for i, m in enumerate(nk):
        w = max(widest, m)
        if i > start and (i + 1 - start) * w > budget:
            out.append((start, i))
            start, w = i, m
        widest = w
    out.append((start, len(nk)))
    return out


def _samples(
    table: RayTable, lo: int, hi: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tap index (of the top-left pixel), weights ``wx, wy``, ray index and ray weight
    of every valid sample of rays ``lo:hi`` (torch fallback)."""
    rays, k0, nk = (t[lo:hi] for t in table.on(device))
    width = int(nk.max()) if hi > lo else 0
    k = torch.arange(width, device=device, dtype=torch.float64)
    kk = k0[:, None].to(torch.float64) + k[None, :]
    x = rays[:, 0:1] + kk * rays[:, 2:3]
    y = rays[:, 1:2] + kk * rays[:, 3:4]
    top = float(table.P - 1)
    ok = (k[None, :] < nk[:, None]) & (x >= 0) & (x < top) & (y >= 0) & (y < top)
    ray = torch.arange(lo, hi, device=device)[:, None].expand_as(x)[ok]
    x, y = x[ok], y[ok]
    fx, fy = torch.floor(x), torch.floor(y)
    idx = (fy * table.P + fx).to(torch.int64)
    return idx, x - fx, y - fy, ray, rays[:, 4][ray - lo]


def _forward_torch(table: RayTable, img: torch.Tensor) -> torch.Tensor:
    b, P = img.shape[1], table.P
    out = img.new_zeros(table.n_rays, b)
    for lo, hi in _chunks(table, max(1, (1 << 22) // max(b, 1))):
        idx, wx, wy, ray, w = _samples(table, lo, hi, img.device)
        dt = img.dtype
        w00 = ((1 - wy) * (1 - wx)).to(dt)[:, None]
        w01 = ((1 - wy) * wx).to(dt)[:, None]
        w10 = (wy * (1 - wx)).to(dt)[:, None]
        w11 = (wy * wx).to(dt)[:, None]
        v = w00 * img[idx] + w01 * img[idx + 1] + w10 * img[idx + P] + w11 * img[idx + P + 1]
        out.index_add_(0, ray, v)
    return out * table.on(img.device)[0][:, 4:5].to(img.dtype)


def _adjoint_torch(table: RayTable, y: torch.Tensor) -> torch.Tensor:
    b, P = y.shape[1], table.P
    out = y.new_zeros(P * P, b)
    g_all = y * table.on(y.device)[0][:, 4:5].to(y.dtype)
    for lo, hi in _chunks(table, max(1, (1 << 22) // max(b, 1))):
        idx, wx, wy, ray, _ = _samples(table, lo, hi, y.device)
        dt = y.dtype
        g = g_all[ray]
        out.index_add_(0, idx, ((1 - wy) * (1 - wx)).to(dt)[:, None] * g)
        out.index_add_(0, idx + 1, ((1 - wy) * wx).to(dt)[:, None] * g)
        out.index_add_(0, idx + P, (wy * (1 - wx)).to(dt)[:, None] * g)
        out.index_add_(0, idx + P + 1, (wy * wx).to(dt)[:, None] * g)
    return out


def _use_kernel(t: torch.Tensor, backend: str, P: int) -> Any:
    if backend == "torch" or t.device.type != "cpu" or P * P > MAX_PIXELS:
        return None
    return _library()


def project(table: RayTable, x: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """``(B, n, n)`` images -> ``(B, n_rays)`` ray sums (no autograd)."""
    img = _pad_image(x, table.P)
    lib = _use_kernel(img, backend, table.P)
    out = _forward_kernel(lib, table, img) if lib is not None else _forward_torch(table, img)
    return out.T


def backproject(table: RayTable, y: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """``(B, n_rays)`` -> ``(B, n, n)``: the exact transpose of :func:`project`."""
    yt = y.T.contiguous()
    lib = _use_kernel(yt, backend, table.P)
    flat = _adjoint_kernel(lib, table, yt) if lib is not None else _adjoint_torch(table, yt)
    n, P = table.n, table.P
    return flat.reshape(P, P, -1)[1 : n + 1, 1 : n + 1].permute(2, 0, 1)


class _RayApply(torch.autograd.Function):
    """Projection (``transpose=False``) or back-projection; the backward is the other one."""

    @staticmethod
    def forward(ctx: Any, t: torch.Tensor, table: RayTable, transpose: bool, backend: str):  # type: ignore[override]
        ctx.args = (table, transpose, backend)
        fn = backproject if transpose else project
        return fn(table, t.detach(), backend)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):  # type: ignore[override]
        table, transpose, backend = ctx.args
        return _RayApply.apply(grad.contiguous(), table, not transpose, backend), None, None, None


def ray_apply(
    table: RayTable, t: torch.Tensor, *, transpose: bool = False, backend: str = "auto"
) -> torch.Tensor:
    """Differentiable :func:`project` (or :func:`backproject` with ``transpose=True``)."""
    return _RayApply.apply(t, table, transpose, backend)
