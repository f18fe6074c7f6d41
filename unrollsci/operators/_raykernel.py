"""The compiled CPU loops of the matrix-free projector (:mod:`._radon_matfree`).

A small C kernel, compiled on first use with the system C compiler (``cc``, or ``$CC``;
OpenMP when available) and cached under ``$UNROLLSCI_CACHE`` (default
``~/.cache/unrollsci``), loaded with :mod:`ctypes`. Where no compiler works
:func:`library` returns None and the caller runs its torch fallback.

How a ray is computed (the same sums in the same order as the torch fallback):

* its sample range is cut analytically to the samples whose point lies in the padded
  grid (a range found by division, trimmed at both ends with the exact test), so the
  inner loops have no bounds branch;
* its samples run in blocks of ``CH``: first the tap index and the four bilinear weights
  of every sample of the block, in a loop the compiler vectorises (the weights are
  computed in float64, as the stored matrix does, then rounded to the data type);
* then the batch, innermost in memory (image ``[P, P, B]``), is accumulated (forward) or
  scattered (adjoint) 64 bytes at a time (16 floats or 8 doubles, in registers), with
  the taps of the sample ``PD`` ahead prefetched.
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

__all__ = ["library", "kernel_available"]

_SOURCE = r"""
#include <math.h>
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#define OMP_TID(t) t = omp_get_thread_num()
#else
#define OMP_TID(t) (void)t
#endif

#define CH 64 /* samples per block of precomputed weights */
#define PD 16 /* prefetch distance, in samples */

/* One 64-byte vector of the batch; GCC/Clang lower it to the registers the target has.
   Loads and stores go through memcpy (any alignment). */
typedef float vf32 __attribute__((vector_size(64)));
typedef double vf64 __attribute__((vector_size(64)));

static inline int in_grid(double px, double py, double vx, double vy, double hi, int64_t k) {
    const double x = px + (double)k * vx, y = py + (double)k * vy;
    return x >= 0.0 && x < hi && y >= 0.0 && y < hi;
}

static inline void widen_cut(double p, double v, double hi, double* lo, double* up) {
    if (v == 0.0) {
        if (!(p >= 0.0 && p < hi)) { *lo = 1.0; *up = 0.0; }
        return;
    }
    double a = (0.0 - p) / v, b = (hi - p) / v;
    if (a > b) { const double t = a; a = b; b = t; }
    if (a - 2.0 > *lo) *lo = a - 2.0;
    if (b + 2.0 < *up) *up = b + 2.0;
}

/* [*ka, *kb) cut to the samples whose point lies in [0, hi)^2 (the only ones with a tap
   in the padded image). The points move linearly in k, so these form one interval: a
   range a little too wide is found by division, then trimmed with the exact test. */
static inline void clip_range(double px, double py, double vx, double vy, double hi,
                              int64_t* ka, int64_t* kb) {
    double lo = (double)*ka, up = (double)*kb;
    widen_cut(px, vx, hi, &lo, &up);
    widen_cut(py, vy, hi, &lo, &up);
    if (!(lo < up)) { *kb = *ka; return; }
    int64_t a = (int64_t)ceil(lo), b = (int64_t)floor(up);
    if (a < *ka) a = *ka;
    if (b > *kb) b = *kb;
    while (a < b && !in_grid(px, py, vx, vy, hi, a)) a++;
    while (b > a && !in_grid(px, py, vx, vy, hi, b - 1)) b--;
    *ka = a; *kb = b;
}

/* Each ray walks the copy of the image laid out along its main direction (row-major for
   rays that move more in x, column-major for rays that move more in y), so consecutive
   samples touch neighbouring memory. sx, sy: strides in values; SX, SY: in pixels. */
#define RAY_SETUP                                                                           \
    const double px = rays[5 * i], py = rays[5 * i + 1];                                    \
    const double vx = rays[5 * i + 2], vy = rays[5 * i + 3];                                \
    const int colmajor = fabs(vy) > fabs(vx);                                               \
    const int64_t sx = colmajor ? P * B : B, sy = colmajor ? B : P * B;                     \
    const double SX = colmajor ? (double)P : 1.0, SY = colmajor ? 1.0 : (double)P;          \
    int64_t ka = k0[i], kb = k0[i] + nk[i];                                                 \
    clip_range(px, py, vx, vy, hi, &ka, &kb);

#define TAPS(T, base, j)                                                                    \
    T* p00 = (T*)(base) + (int64_t)idx[j] * B;                                              \
    T* p01 = p00 + sx;                                                                      \
    T* p10 = p00 + sy;                                                                      \
    T* p11 = p10 + sx;

#define PREFETCH(base, j, rw)                                                               \
    if ((j) + PD < m) {                                                                     \
        const char* q = (const char*)((base) + (int64_t)idx[(j) + PD] * B);                 \
        __builtin_prefetch(q, rw); __builtin_prefetch(q + sx * sizeof(*(base)), rw);        \
        __builtin_prefetch(q + sy * sizeof(*(base)), rw);                                   \
        __builtin_prefetch(q + (sx + sy) * sizeof(*(base)), rw);                            \
    }

#define DEFINE_KERNELS(T, SUF, V)                                                           \
enum { W_##SUF = (int)(sizeof(V) / sizeof(T)) };                                            \
static inline V ld_##SUF(const T* p) { V v; memcpy(&v, p, sizeof v); return v; }            \
static inline void st_##SUF(T* p, V v) { memcpy(p, &v, sizeof v); }                        \
/* Tap index (pixels) and bilinear weights of samples k .. k + m - 1 (points >= 0 here,   \
   so floor is exact); vectorised by the compiler. */                                      \
static inline void weights_##SUF(double px, double py, double vx, double vy, double SX,    \
        double SY, int64_t k, int m, int32_t* restrict idx, T* restrict a, T* restrict b,  \
        T* restrict c, T* restrict d) {                                                     \
    const double kd = (double)k;                                                            \
    for (int j = 0; j < m; j++) {                                                           \
        const double kk = kd + (double)j;                                                   \
        const double x = px + kk * vx, y = py + kk * vy;                                   \
        const double fx = floor(x), fy = floor(y);                                          \
        const double wx = x - fx, wy = y - fy;                                              \
        idx[j] = (int32_t)(fy * SY + fx * SX);                                              \
        a[j] = (T)((1 - wy) * (1 - wx)); b[j] = (T)((1 - wy) * wx);                         \
        c[j] = (T)(wy * (1 - wx)); d[j] = (T)(wy * wx);                                     \
    }                                                                                       \
}                                                                                           \
/* Forward: NB vectors of the batch accumulated in registers over m samples. */            \
static inline __attribute__((always_inline)) void fwd_acc_##SUF(                            \
        const T* base, int64_t sx, int64_t sy, int64_t B, int m, const int32_t* idx,        \
        const T* a, const T* b, const T* c, const T* d, V* acc, const int NB) {             \
    for (int j = 0; j < m; j++) {                                                           \
        PREFETCH(base, j, 0)                                                                \
        TAPS(const T, base, j)                                                              \
        for (int v = 0; v < NB; v++) {                                                      \
            const int q = v * W_##SUF;                                                      \
            acc[v] += a[j] * ld_##SUF(p00 + q) + b[j] * ld_##SUF(p01 + q)                   \
                    + c[j] * ld_##SUF(p10 + q) + d[j] * ld_##SUF(p11 + q);                  \
        }                                                                                   \
    }                                                                                       \
}                                                                                           \
void ray_fwd_##SUF(const T* img, const T* imgt, int64_t P, int64_t B, const double* rays, \
                   const int64_t* k0, const int64_t* nk, int64_t R, T* out, int nt) {     \
    const double hi = (double)(P - 1);                                                      \
    _Pragma("omp parallel for schedule(dynamic, 8) num_threads(nt)")                        \
    for (int64_t i = 0; i < R; i++) {                                                       \
        T* o = out + i * B;                                                                 \
        RAY_SETUP                                                                           \
        const T* base = colmajor ? imgt : img;                                              \
        int32_t idx[CH];                                                                    \
        T wa[CH], wb[CH], wc[CH], wd[CH];                                                   \
        int64_t b0 = 0;                                                                     \
        while (b0 + W_##SUF <= B) { /* two vectors at a time, then one */                  \
            const int NB = b0 + 2 * W_##SUF <= B ? 2 : 1;                                   \
            V acc[2] = {{0}, {0}};                                                          \
            for (int64_t k = ka; k < kb; k += CH) {                                         \
                const int m = kb - k < CH ? (int)(kb - k) : CH;                             \
                weights_##SUF(px, py, vx, vy, SX, SY, k, m, idx, wa, wb, wc, wd);           \
                if (NB == 2)                                                                \
                    fwd_acc_##SUF(base + b0, sx, sy, B, m, idx, wa, wb, wc, wd, acc, 2);    \
                else                                                                        \
                    fwd_acc_##SUF(base + b0, sx, sy, B, m, idx, wa, wb, wc, wd, acc, 1);    \
            }                                                                               \
            for (int v = 0; v < NB; v++) st_##SUF(o + b0 + v * W_##SUF, acc[v]);           \
            b0 += NB * W_##SUF;                                                             \
        }                                                                                   \
        if (b0 < B) { /* the remainder, one value at a time */                              \
            const int64_t nb = B - b0;                                                      \
            T r[W_##SUF];                                                                   \
            for (int64_t bb = 0; bb < nb; bb++) r[bb] = 0;                                  \
            for (int64_t k = ka; k < kb; k += CH) {                                         \
                const int m = kb - k < CH ? (int)(kb - k) : CH;                             \
                weights_##SUF(px, py, vx, vy, SX, SY, k, m, idx, wa, wb, wc, wd);           \
                for (int j = 0; j < m; j++) {                                               \
                    TAPS(const T, base + b0, j)                                             \
                    for (int64_t bb = 0; bb < nb; bb++)                                     \
                        r[bb] += wa[j] * p00[bb] + wb[j] * p01[bb]                          \
                               + wc[j] * p10[bb] + wd[j] * p11[bb];                         \
                }                                                                           \
            }                                                                               \
            for (int64_t bb = 0; bb < nb; bb++) o[b0 + bb] = r[bb];                         \
        }                                                                                   \
        const T w = (T)rays[5 * i + 4];                                                     \
        if (w != (T)1)                                                                      \
            for (int64_t bb = 0; bb < B; bb++) o[bb] *= w;                                  \
    }                                                                                       \
}                                                                                           \
/* Adjoint: NB vectors of the ray's values scattered with the same weights. */             \
static inline __attribute__((always_inline)) void adj_acc_##SUF(                            \
        T* base, int64_t sx, int64_t sy, int64_t B, int m, const int32_t* idx,              \
        const T* a, const T* b, const T* c, const T* d, T w, const V* g, const int NB) {    \
    for (int j = 0; j < m; j++) {                                                           \
        PREFETCH(base, j, 1)                                                                \
        TAPS(T, base, j)                                                                    \
        const T w00 = a[j] * w, w01 = b[j] * w, w10 = c[j] * w, w11 = d[j] * w;             \
        for (int v = 0; v < NB; v++) {                                                      \
            const int q = v * W_##SUF;                                                      \
            st_##SUF(p00 + q, ld_##SUF(p00 + q) + w00 * g[v]);                              \
            st_##SUF(p01 + q, ld_##SUF(p01 + q) + w01 * g[v]);                              \
            st_##SUF(p10 + q, ld_##SUF(p10 + q) + w10 * g[v]);                              \
            st_##SUF(p11 + q, ld_##SUF(p11 + q) + w11 * g[v]);                              \
        }                                                                                   \
    }                                                                                       \
}                                                                                           \
void ray_adj_##SUF(const T* yin, int64_t P, int64_t B, const double* rays,                \
                   const int64_t* k0, const int64_t* nk, int64_t R, T* bufs, int nt) {    \
    const double hi = (double)(P - 1);                                                      \
    _Pragma("omp parallel num_threads(nt)")                                                 \
    {                                                                                       \
        int tid = 0;                                                                        \
        OMP_TID(tid);                                                                       \
        T* buf = bufs + (int64_t)tid * 2 * P * P * B;                                       \
        int32_t idx[CH];                                                                    \
        T wa[CH], wb[CH], wc[CH], wd[CH];                                                   \
        _Pragma("omp for schedule(static)")                                                 \
        for (int64_t i = 0; i < R; i++) {                                                   \
            RAY_SETUP                                                                       \
            T* base = colmajor ? buf + P * P * B : buf;                                     \
            const T w = (T)rays[5 * i + 4];                                                 \
            const T* gi = yin + i * B;                                                      \
            for (int64_t k = ka; k < kb; k += CH) {                                         \
                const int m = kb - k < CH ? (int)(kb - k) : CH;                             \
                weights_##SUF(px, py, vx, vy, SX, SY, k, m, idx, wa, wb, wc, wd);           \
                int64_t b0 = 0;                                                             \
                for (; b0 + 2 * W_##SUF <= B; b0 += 2 * W_##SUF) {                          \
                    const V g[2] = {ld_##SUF(gi + b0), ld_##SUF(gi + b0 + W_##SUF)};         \
                    adj_acc_##SUF(base + b0, sx, sy, B, m, idx, wa, wb, wc, wd, w, g, 2);   \
                }                                                                           \
                if (b0 + W_##SUF <= B) {                                                    \
                    const V g[1] = {ld_##SUF(gi + b0)};                                     \
                    adj_acc_##SUF(base + b0, sx, sy, B, m, idx, wa, wb, wc, wd, w, g, 1);   \
                    b0 += W_##SUF;                                                          \
                }                                                                           \
                for (int j = 0; b0 < B && j < m; j++) {                                     \
                    TAPS(T, base + b0, j)                                                   \
                    const T w00 = wa[j] * w, w01 = wb[j] * w;                               \
                    const T w10 = wc[j] * w, w11 = wd[j] * w;                               \
                    for (int64_t bb = 0; bb < B - b0; bb++) {                               \
                        const T gb = gi[b0 + bb];                                           \
                        p00[bb] += w00 * gb; p01[bb] += w01 * gb;                           \
                        p10[bb] += w10 * gb; p11[bb] += w11 * gb;                           \
                    }                                                                       \
                }                                                                           \
            }                                                                               \
        }                                                                                   \
    }                                                                                       \
}

DEFINE_KERNELS(float, f32, vf32)
DEFINE_KERNELS(double, f64, vf64)
"""

#: -ffp-contract=off: no fused multiply-adds, so the kernel rounds as the torch fallback
#: does; -fno-trapping-math lets the compiler vectorise floor and the conversions (it
#: changes no result: nothing here traps).
_FLAGS = ["-O3", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math", "-shared", "-fPIC"]
#: Tried in order (a compiler that rejects one falls through to the next).
_VARIANTS = (("-march=native", "-fopenmp"), ("-march=native",), ("-fopenmp",), ())
#: Largest padded grid the kernel takes (its tap indices are 32-bit).
MAX_PIXELS = 2**31 - 1


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
def library() -> Any:
    """The compiled kernel (ctypes), or None where it cannot be built or loaded (or
    ``$UNROLLSCI_NO_KERNEL`` is set)."""
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
    return library() is not None
