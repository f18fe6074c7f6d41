"""Audit Dec 13, "no runaway cost": ``Radon(method="matrix")`` kept up to eight system
matrices (GBs at 128 x 180) in a module-level cache after every operator was gone, with
no way to free them and unseen by the memory check. Now the cache is bounded in bytes,
``clear_radon_cache()`` empties it, and a construction short of memory empties it first.
"""

from __future__ import annotations

import pytest
import torch

from unrollsci.operators import Radon, _radon

F64 = torch.float64


def _cache():
    from unrollsci.operators import _radon_cache

    return _radon_cache


def _matrix_bytes(mat):
    return mat.data.nbytes + mat.indices.nbytes + mat.indptr.nbytes


def test_clear_radon_cache_is_public_and_frees_the_matrices():
    import unrollsci.operators as ops

    assert "clear_radon_cache" in ops.__all__
    ops.clear_radon_cache()
    x = torch.rand(2, 16, 16, dtype=F64)
    op = Radon(16, 6, method="matrix")
    ref = op(x)
    mat = _radon._system_matrix(16, tuple(op.angles.tolist()), True)
    assert mat.data.base is None and mat.indices.base is None  # the matrix alone is kept
    freed = ops.clear_radon_cache()
    assert freed == _matrix_bytes(mat)
    assert ops.clear_radon_cache() == 0
    # the operator holds its own copy and keeps working; a new one rebuilds the same
    torch.testing.assert_close(op(x), ref, rtol=0, atol=0)
    torch.testing.assert_close(Radon(16, 6, method="matrix")(x), ref, rtol=0, atol=0)


def test_the_cache_is_bounded_in_bytes(monkeypatch):
    rc = _cache()
    rc.clear_radon_cache()
    one = _matrix_bytes(_radon._system_matrix(16, (0.0, 30.0, 60.0), True))
    rc.clear_radon_cache()
    monkeypatch.setattr(rc, "RADON_CACHE_BYTES", int(2.5 * one))
    mats = []
    for k in range(6):  # six geometries of the same size: at most two kept
        angles = (0.0 + k, 30.0 + k, 60.0 + k)
        Radon(16, torch.tensor(angles, dtype=F64), method="matrix")
        mats.append(_radon._system_matrix(16, angles, True))
        assert rc._CACHE.nbytes <= rc.RADON_CACHE_BYTES
    assert len(rc._CACHE) == 2
    # the two most recent geometries are the ones kept (no rebuild: the same object)
    assert _radon._system_matrix(16, (5.0, 35.0, 65.0), True) is mats[5]
    assert _radon._system_matrix(16, (4.0, 34.0, 64.0), True) is mats[4]
    assert _radon._system_matrix(16, (0.0, 30.0, 60.0), True) is not mats[0]
    # a matrix larger than the whole budget is built and used, but not kept
    big = Radon(32, 30, method="matrix")
    assert big.nnz > 0 and rc._CACHE.nbytes <= rc.RADON_CACHE_BYTES
    assert rc.clear_radon_cache() <= rc.RADON_CACHE_BYTES


def test_memory_check_frees_the_cache_before_refusing(monkeypatch):
    """Short of memory with cached matrices: they are freed and the memory read again."""
    rc = _cache()
    rc.clear_radon_cache()
    Radon(24, 20, method="matrix")  # something in the cache
    assert rc._CACHE.nbytes > 0
    need = _radon.radon_memory_estimate(40, 12)
    reads = []

    def available():  # short while the cache holds matrices, enough once it is empty
        reads.append(rc._CACHE.nbytes)
        return need - 1 if rc._CACHE.nbytes else need + 1

    monkeypatch.setattr(_radon, "available_memory", available)
    op = Radon(40, 12, method="matrix")
    assert op.nnz > 0 and reads[0] > 0 and reads[-1] == 0
    # nothing to free: refused as before
    rc.clear_radon_cache()
    monkeypatch.setattr(_radon, "available_memory", lambda: need - 1)
    with pytest.raises(ValueError, match="is available"):
        Radon(40, 13, method="matrix")
