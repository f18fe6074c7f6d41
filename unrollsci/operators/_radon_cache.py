"""The system matrices of ``Radon(method="matrix")``: their construction and a cache of
recent geometries bounded in bytes (:data:`RADON_CACHE_BYTES`, :func:`clear_radon_cache`)."""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from typing import Any

import numpy as np

__all__ = ["RADON_CACHE_BYTES", "clear_radon_cache"]

#: Bytes of system matrices (scipy CSR arrays) kept for reuse by later operators of the
#: same geometry; the least recently used go first, and a larger matrix is not kept.
#: ``clear_radon_cache()`` frees them all.
RADON_CACHE_BYTES = 256 * 2**20


class _MatrixCache:
    """Least-recently-used system matrices by geometry, at most :data:`RADON_CACHE_BYTES`
    in all (read at every insertion)."""

    def __init__(self) -> None:
        self._items: OrderedDict[Any, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.nbytes = 0

    @staticmethod
    def size(mat: Any) -> int:
        return int(mat.data.nbytes + mat.indices.nbytes + mat.indptr.nbytes)

    def get(self, key: Any) -> Any:
        with self._lock:
            mat = self._items.get(key)
            if mat is not None:
                self._items.move_to_end(key)
            return mat

    def put(self, key: Any, mat: Any) -> None:
        size, budget = self.size(mat), RADON_CACHE_BYTES
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.nbytes -= self.size(old)
            if size > budget:
                return
            while self._items and self.nbytes + size > budget:
                self.nbytes -= self.size(self._items.popitem(last=False)[1])
            self._items[key] = mat
            self.nbytes += size

    def clear(self) -> int:
        with self._lock:
            freed, self.nbytes = self.nbytes, 0
            self._items.clear()
        return freed

    def __len__(self) -> int:
        return len(self._items)


_CACHE = _MatrixCache()


def clear_radon_cache() -> int:
    """Free the system matrices that ``Radon(method="matrix")`` keeps for later operators
    of the same geometry (at most :data:`RADON_CACHE_BYTES`; operators hold their own
    copies and keep working). Returns the bytes released.

    Example:
        >>> from unrollsci.operators import Radon, clear_radon_cache
        >>> _ = Radon(16, 4, method="matrix")
        >>> clear_radon_cache() > 0
        True
    """
    return _CACHE.clear()


def _system_matrix(n: int, angles: tuple[float, ...], circle: bool) -> Any:
    """Sparse ``(n_angles * n_det, n * n)`` matrix of the rotate-and-sum projector, from
    the cache when this geometry was built recently (then shared: do not modify it)."""
    key = (int(n), tuple(float(t) for t in angles), bool(circle))
    mat = _CACHE.get(key)
    if mat is None:
        mat = _build_system_matrix(*key)
        _CACHE.put(key, mat)
    return mat


def _build_system_matrix(n: int, angles: tuple[float, ...], circle: bool) -> Any:
    """Sparse ``(n_angles * n_det, n * n)`` matrix of the rotate-and-sum projector."""
    import scipy.sparse as sp

    if circle:
        size = n
    else:  # pad to the diagonal, as skimage does for circle=False
        size = n + int(math.ceil(math.sqrt(2.0) * n - n))
    centre = size // 2
    offset = centre - n // 2  # image pixel (i, j) sits at (i + offset, j + offset)
    radius2 = (n // 2) ** 2
    rr, cc = np.meshgrid(
        np.arange(size, dtype=np.float64), np.arange(size, dtype=np.float64), indexing="ij"
    )
    rows, cols, vals = [], [], []
    for a, theta in enumerate(np.deg2rad(np.asarray(angles))):
        cos_t, sin_t = math.cos(theta), math.sin(theta)
        # Sample point of output pixel (r, c) in the input image (x: column, y: row).
        x = centre + cos_t * (cc - centre) + sin_t * (rr - centre) - offset
        y = centre - sin_t * (cc - centre) + cos_t * (rr - centre) - offset
        x0, y0 = np.floor(x), np.floor(y)
        wx, wy = x - x0, y - y0
        x0, y0 = x0.astype(np.int64), y0.astype(np.int64)
        det = a * size + cc.astype(np.int64)
        for dy, dx, w in (
            (0, 0, (1 - wy) * (1 - wx)),
            (0, 1, (1 - wy) * wx),
            (1, 0, wy * (1 - wx)),
            (1, 1, wy * wx),
        ):
            yy, xx = y0 + dy, x0 + dx
            ok = (yy >= 0) & (yy < n) & (xx >= 0) & (xx < n) & (w > 0)
            if circle:
                ok &= (yy - n // 2) ** 2 + (xx - n // 2) ** 2 <= radius2
            rows.append(det[ok])
            cols.append(yy[ok] * n + xx[ok])
            vals.append(w[ok])
    mat = sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
        shape=(len(angles) * size, n * n),
    )
    mat.sum_duplicates()
    mat.sort_indices()
    # merging duplicates leaves data / indices as views of the longer unmerged arrays:
    # copy them, so that what the cache keeps (and counts) is the matrix alone
    for name in ("data", "indices", "indptr"):
        arr = getattr(mat, name)
        if arr.base is not None:
            setattr(mat, name, arr.copy())
    return mat
