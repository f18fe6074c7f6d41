"""Shared references of the preconditioner tests."""

from __future__ import annotations

import numpy as np
import pytest


def _dense_dropped_fill(a, perm):
    """The first-order fill IC(0) drops in ``perm``'s order, per row (positive part, total):
    a loop over the rows of the permuted, Jacobi-scaled dense matrix."""
    ap = a[perm][:, perm].toarray()
    d = np.sqrt(np.diag(ap))
    s = ap / d[:, None] / d[None, :]
    pos = tot = 0.0
    for i in range(len(s)):
        nb = [j for j in range(i) if s[i, j] != 0]
        for x in range(len(nb)):
            for y in range(x + 1, len(nb)):
                j, k = nb[x], nb[y]
                if ap[j, k] == 0:
                    f = s[i, j] * s[i, k]
                    pos += max(f, 0.0)
                    tot += abs(f)
    return pos / len(s), tot / len(s)


@pytest.fixture
def dense_dropped_fill():
    """:func:`_dense_dropped_fill`, the dense reference of ``dropped_fill``."""
    return _dense_dropped_fill
