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

On CPU the loops run in a small C kernel compiled on first use with the system C
compiler (``cc``; OpenMP when available) and cached under ``$UNROLLSCI_CACHE`` (default
``~/.cache/unrollsci``); where no compiler works, and on other devices (CUDA), the same
sums run as chunked torch gathers and ``index_add_``. Memory beyond the input and output:
the ray table (``O(rays)``), two padded copies of the batch (row- and column-major, so
that every ray walks memory in order) and, for the transpose on CPU, two image buffers
per thread.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["RayTable", "ray_apply", "kernel_available"]

_SOURCE = r"""
#include <math.h>
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* Each ray walks the copy of the image laid out along its main direction (row-major for
   rays that move more in x, column-major for rays that move more in y), so consecutive
   samples touch neighbouring memory. Strides are in units of B values. */
#define RAY_SETUP                                                                           \
        const double px = rays[5 * i], py = rays[5 * i + 1];                                \
        const double vx = rays[5 * i + 2], vy = rays[5 * i + 3];                            \
        const int colmajor = fabs(vy) > fabs(vx);                                           \
        const int64_t sx = colmajor ? P * B : B, sy = colmajor ? B : P * B;

#define SAMPLE_SETUP                                                                        \
            const double x = px + (double)k * vx, y = py + (double)k * vy;                 \
            if (!(x >= 0.0 && x < hi && y >= 0.0 && y < hi)) continue;                      \
            const double fx = floor(x), fy = floor(y);                                      \
            const double wx = x - fx, wy = y - fy;                                          \
            const int64_t off = (int64_t)fy * sy + (int64_t)fx * sx;

/* The batch runs in blocks of W values (one 64-byte vector) with a fixed-length inner
   loop, then a remainder; the sample's weights are computed once for the whole batch. */
#define DEFINE_KERNELS(T, SUF, W)                                                           \
void ray_fwd_##SUF(const T* img, const T* imgt, int64_t P, int64_t B, const double* rays, \
                   const int64_t* k0, const int64_t* nk, int64_t R, T* out, int nt) {     \
    const double hi = (double)(P - 1);                                                      \
    const int64_t BW = B - B % W;                                                           \
    _Pragma("omp parallel for schedule(dynamic, 8) num_threads(nt)")                        \
    for (int64_t i = 0; i < R; i++) {                                                       \
        T* restrict o = out + i * B;                                                        \
        for (int64_t b = 0; b < B; b++) o[b] = 0;                                           \
        RAY_SETUP                                                                           \
        const T* base = colmajor ? imgt : img;                                              \
        for (int64_t k = k0[i]; k < k0[i] + nk[i]; k++) {                                  \
            SAMPLE_SETUP                                                                    \
            const T w00 = (T)((1 - wy) * (1 - wx)), w01 = (T)((1 - wy) * wx);              \
            const T w10 = (T)(wy * (1 - wx)), w11 = (T)(wy * wx);                          \
            const T* restrict p00 = base + off;                                             \
            const T* restrict p01 = p00 + sx;                                               \
            const T* restrict p10 = p00 + sy;                                               \
            const T* restrict p11 = p10 + sx;                                               \
            for (int64_t bb = 0; bb < BW; bb += W) {                                        \
                T acc[W];                                                                   \
                for (int b = 0; b < W; b++)                                                 \
                    acc[b] = w00 * p00[bb + b] + w01 * p01[bb + b]                          \
                           + w10 * p10[bb + b] + w11 * p11[bb + b];                         \
                for (int b = 0; b < W; b++) o[bb + b] += acc[b];                            \
            }                                                                               \
            for (int64_t b = BW; b < B; b++)                                                \
                o[b] += w00 * p00[b] + w01 * p01[b] + w10 * p10[b] + w11 * p11[b];         \
        }                                                                                   \
        const T w = (T)rays[5 * i + 4];                                                     \
        if (w != (T)1)                                                                      \
            for (int64_t b = 0; b < B; b++) o[b] *= w;                                      \
    }                                                                                       \
}                                                                                           \
void ray_adj_##SUF(const T* yin, int64_t P, int64_t B, const double* rays,                \
                   const int64_t* k0, const int64_t* nk, int64_t R, T* bufs, int nt) {    \
    const double hi = (double)(P - 1);                                                      \
    const int64_t BW = B - B % W;                                                           \
    _Pragma("omp parallel num_threads(nt)")                                                 \
    {                                                                                       \
        int tid = 0;                                                                        \
        OMP_TID(tid);                                                                       \
        T* restrict buf = bufs + (int64_t)tid * 2 * P * P * B;                              \
        _Pragma("omp for schedule(static)")                                                 \
        for (int64_t i = 0; i < R; i++) {                                                   \
            RAY_SETUP                                                                       \
            T* base = colmajor ? buf + P * P * B : buf;                                     \
            const T w = (T)rays[5 * i + 4];                                                 \
            const T* restrict g = yin + i * B;                                              \
            for (int64_t k = k0[i]; k < k0[i] + nk[i]; k++) {                              \
                SAMPLE_SETUP                                                                \
                const T w00 = (T)((1 - wy) * (1 - wx)) * w, w01 = (T)((1 - wy) * wx) * w;  \
                const T w10 = (T)(wy * (1 - wx)) * w, w11 = (T)(wy * wx) * w;              \
                T* restrict p00 = base + off;                                               \
                T* restrict p01 = p00 + sx;                                                 \
                T* restrict p10 = p00 + sy;                                                 \
                T* restrict p11 = p10 + sx;                                                 \
                for (int64_t bb = 0; bb < BW; bb += W) {                                    \
                    for (int b = 0; b < W; b++) p00[bb + b] += w00 * g[bb + b];             \
                    for (int b = 0; b < W; b++) p01[bb + b] += w01 * g[bb + b];             \
                    for (int b = 0; b < W; b++) p10[bb + b] += w10 * g[bb + b];             \
                    for (int b = 0; b < W; b++) p11[bb + b] += w11 * g[bb + b];             \
                }                                                                           \
                for (int64_t b = BW; b < B; b++) {                                          \
                    p00[b] += w00 * g[b]; p01[b] += w01 * g[b];                             \
                    p10[b] += w10 * g[b]; p11[b] += w11 * g[b];                             \
                }                                                                           \
            }                                                                               \
        }                                                                                   \
    }                                                                                       \
}

#ifdef _OPENMP
#define OMP_TID(t) t = omp_get_thread_num()
#else
#define OMP_TID(t) (void)t
#endif

DEFINE_KERNELS(float, f32, 16)
DEFINE_KERNELS(double, f64, 8)
"""

_FLAGS = ["-O3", "-ffp-contract=off", "-fno-math-errno", "-shared", "-fPIC"]
#: Tried in order (a compiler that rejects one falls through to the next).
_VARIANTS = (("-march=native", "-fopenmp"), ("-march=native",), ("-fopenmp",), ())


def _cache_dir() -> Path:
    root = os.environ.get("UNROLLSCI_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "unrollsci"
    )
    return Path(root)


def _cpu_signature() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return line.strip()
    except OSError:
        pass
    import platform

    return platform.processor() + platform.machine()


def _compile(path: Path, extra: tuple[str, ...]) -> bool:
    compiler = os.environ.get("CC", "cc")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        src = Path(tmp) / "raykernel.c"
        src.write_text(_SOURCE)
        lib = Path(tmp) / path.name
        cmd = [compiler, *_FLAGS, *extra, str(src), "-o", str(lib)]
        try:
            done = subprocess.run(cmd, capture_output=True, timeout=120)
        except (OSError, subprocess.SubprocessError):
            return False
        if done.returncode != 0 or not lib.exists():
            return False
        os.replace(lib, path)  # atomic: another process sees the old file or the new one
    return True


@functools.lru_cache(maxsize=1)
def _library() -> Any:
    """The compiled kernel (ctypes), or None where it cannot be built or loaded."""
    if os.environ.get("UNROLLSCI_NO_KERNEL"):
        return None
    key = hashlib.sha256(
        (_SOURCE + " ".join(_FLAGS) + _cpu_signature() + sys.platform).encode()
    ).hexdigest()[:16]
    for i, extra in enumerate(_VARIANTS):
        path = _cache_dir() / f"raykernel_{key}_{i}.so"
        try:
            if not path.exists() and not _compile(path, extra):
                continue
            lib = ctypes.CDLL(str(path))
        except OSError:
            continue
        i64, dbl, p = ctypes.c_int64, ctypes.POINTER(ctypes.c_double), ctypes.c_void_p
        for name in ("ray_fwd_f32", "ray_fwd_f64"):
            getattr(lib, name).argtypes = [p, p, i64, i64, dbl, p, p, i64, p, ctypes.c_int]
            getattr(lib, name).restype = None
        for name in ("ray_adj_f32", "ray_adj_f64"):
            getattr(lib, name).argtypes = [p, i64, i64, dbl, p, p, i64, p, ctypes.c_int]
            getattr(lib, name).restype = None
        return lib
    return None


def kernel_available() -> bool:
    """Whether the compiled CPU kernel is in use (else the torch fallback runs on CPU too)."""
    return _library() is not None


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


def _use_kernel(t: torch.Tensor, backend: str) -> Any:
    if backend == "torch" or t.device.type != "cpu":
        return None
    return _library()


def project(table: RayTable, x: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """``(B, n, n)`` images -> ``(B, n_rays)`` ray sums (no autograd)."""
    img = _pad_image(x, table.P)
    lib = _use_kernel(img, backend)
    out = _forward_kernel(lib, table, img) if lib is not None else _forward_torch(table, img)
    return out.T


def backproject(table: RayTable, y: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """``(B, n_rays)`` -> ``(B, n, n)``: the exact transpose of :func:`project`."""
    yt = y.T.contiguous()
    lib = _use_kernel(yt, backend)
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
