"""Audit of Dec 14 (the per-graph certificates' inertia proofs): ``lambda_max(L) <= c``,
``lambda_max(diag(L)^{-1} L) <= c_G`` and the split certificate's ``mu_R`` were accepted when
one factorization of ``c I - L`` (``c diag(L) - L``, ``mu_R I - L~_RR``) had positive pivots,
with no account of the factorization's rounding: a ``c`` a few units in the last place below
the top eigenvalue could pass. They now go through :func:`._inertia.upper_proved` (the shift
lowered by a bound on the backward error, as the per-problem factorization tier). The
reference is mpmath at 50 digits on the float64 entries."""

from __future__ import annotations

import mpmath as mp
import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from unrollsci.graph import _graphcert
from unrollsci.graph._inertia import is_pd, upper_proved

# a 5-node graph with weights from 3e-5 to 1.2e4: the plain inertia check of c I - L accepts
# a c that is 4e-13 below lambda_max(L)
_EDGES = [
    (0, 1, "0x1.21df7bff92546p-15"),
    (0, 3, "0x1.80751aa521976p+13"),
    (0, 4, "0x1.bc2fe47d30a2cp+5"),
    (1, 2, "0x1.3b43e6df3e968p-6"),
    (3, 4, "0x1.0bd8df979005cp+6"),
]
_C = float.fromhex("0x1.816a172d4221bp+14")


def _laplacian(edges, n):
    i, j, w = zip(*edges, strict=True)
    a = sp.coo_matrix((np.array(w, dtype=float), (i, j)), shape=(n, n)).tocsr()
    a = (a + a.T).tocsr()
    return sp.csr_matrix(sp.diags(np.asarray(a.sum(axis=1)).ravel()) - a)


def _top(h, mdiag=None):
    """lambda_max(M^{-1/2} H M^{-1/2}) at 50 digits, H and M as stored in float64."""
    with mp.workdps(50):
        dense = h.toarray()
        m = np.ones(h.shape[0]) if mdiag is None else mdiag
        mat = mp.matrix(
            [
                [mp.mpf(dense[r, c]) / mp.sqrt(mp.mpf(m[r]) * mp.mpf(m[c])) for c in range(len(m))]
                for r in range(len(m))
            ]
        )
        return max(mp.eigsy(mat, eigvals_only=True))


def _hard_laplacian():
    return _laplacian([(i, j, float.fromhex(w)) for i, j, w in _EDGES], 5)


def test_plain_inertia_check_accepts_a_value_below_the_top_and_the_proof_refuses_it():
    lap = _hard_laplacian()
    top = _top(lap)
    assert mp.mpf(_C) < top  # c is below lambda_max(L) ...
    assert is_pd(sp.csr_matrix(sp.diags(np.full(5, _C)) - lap))  # ... yet every pivot is positive
    assert not upper_proved(lap, _C)
    assert upper_proved(lap, float(top) * (1 + 1e-10))  # a margin above the backward error


def test_laplacian_top_is_a_bound_when_the_estimate_sits_at_the_top(monkeypatch):
    """The Lanczos estimate made to sit so that ``1.02 est`` is the ``c`` above: the old
    inertia check returned that ``c``; the bound returned now is above ``lambda_max(L)``."""
    lap = _hard_laplacian()
    top = _top(lap)
    est = _C / 1.02
    while 1.02 * est < _C:
        est = np.nextafter(est, np.inf)
    while 1.02 * est > _C:
        est = np.nextafter(est, -np.inf)
    assert mp.mpf(1.02 * est) < top  # the value an unproved check would return
    vec = np.linalg.eigh(lap.toarray())[1][:, -1]
    monkeypatch.setattr(_graphcert._certify, "lanczos", lambda *a, **k: (est, vec))
    monkeypatch.setattr(_graphcert, "split_top", lambda *a, **k: None)
    _graphcert.clear_cache()
    try:
        bound, _ = _graphcert.laplacian_top(lap)
    finally:
        _graphcert.clear_cache()
    assert mp.mpf(bound) >= top


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    n=st.integers(3, 9),
    seed=st.integers(0, 2**31 - 1),
    spread=st.floats(0.0, 8.0),
    rel=st.sampled_from([-1e-12, -1e-15, -3e-16, 0.0, 3e-16, 1e-15, 1e-12, 1e-6]),
    scaled=st.booleans(),
)
def test_upper_proved_only_above_the_top(n, seed, spread, rel, scaled):
    """Whenever ``upper_proved(h, val, mdiag)`` says True, ``val`` is at least the top
    eigenvalue of ``M^{-1/2} H M^{-1/2}`` (mpmath), for values at and around the top."""
    rng = np.random.default_rng(seed)
    edges = [
        (i, j, float(rng.lognormal(0.0, spread)))
        for i in range(n)
        for j in range(i + 1, n)
        if rng.random() < 0.5
    ]
    if not edges:
        return
    lap = _laplacian(edges, n)
    mdiag = None
    if scaled:
        d = lap.diagonal()
        if not np.all(d > 0):
            return
        mdiag = d
    top = _top(lap, mdiag)
    val = float(top) * (1.0 + rel)
    if upper_proved(lap, val, mdiag):
        assert mp.mpf(val) >= top


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf"), 1e-300])
def test_upper_proved_refuses_values_it_cannot_prove(bad):
    lap = _hard_laplacian()
    assert not upper_proved(lap, bad)
    assert not upper_proved(lap, 1e5, np.array([1.0, 1.0, 1e-300, 1.0, 1.0]))
