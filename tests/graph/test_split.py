"""The per-graph split certificate for ``lambda_max`` of mask problems (``_split``):
every bound it gives is above the dense largest eigenvalue (graphs with and without hubs,
weighted, normalized Laplacians, 0/1 and fractional masks, several ``lam``); it refuses a
wrong estimate; and it makes ``lipschitz()`` tight where the hub is unobserved (issue 23)."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
import scipy.sparse as sp
import torch

from unrollsci.graph import GraphInverseProblem, _certify, _graphcert, _split
from unrollsci.graph._data import sensor_graph
from unrollsci.graph._laplacian import laplacian_matrix


def _graphs():
    rng = np.random.default_rng(0)
    out = []
    a, _ = sensor_graph(400, seed=3)
    out.append(("sensor", a))
    hub = sp.lil_matrix(sensor_graph(300, seed=4)[0])
    for j in rng.choice(np.arange(1, 300), size=20, replace=False):
        hub[0, j] = hub[j, 0] = 1.0  # a hub: the top vector is localized on it
    out.append(("sensor+hub", sp.csr_matrix(hub)))
    ba = nx.to_scipy_sparse_array(nx.barabasi_albert_graph(300, 2, seed=5), format="csr")
    out.append(("barabasi-albert", sp.csr_matrix(ba, dtype=np.float64)))
    w = sp.csr_matrix(nx.to_scipy_sparse_array(nx.grid_2d_graph(15, 15), format="csr"))
    w = sp.triu(w, 1)
    w.data = rng.uniform(0.01, 5.0, w.nnz)
    out.append(("weighted grid", sp.csr_matrix(w + w.T)))
    return out


def _cert(lap):
    lap = sp.csr_matrix(lap)
    _, vec = _certify.lanczos(lap, np.ones(lap.shape[0]), steps=30)
    return _split.split_certificate(lap, vec)


@pytest.mark.parametrize("kind", ["combinatorial", "normalized"])
def test_split_bound_is_above_the_largest_eigenvalue(kind):
    rng = np.random.default_rng(1)
    for name, adj in _graphs():
        lap = sp.csr_matrix(laplacian_matrix(adj, kind))
        cert = _cert(lap)
        assert cert is not None, name
        dense = lap.toarray()
        top_l = np.linalg.eigvalsh(dense)[-1]
        assert cert.graph_top() >= top_l, name
        for lam in (0.0, 0.1, 1.0, 10.0):
            for draw in range(4):
                n = lap.shape[0]
                m = (rng.random(n) < 0.3).astype(float) if draw < 2 else rng.random(n)
                if draw == 3:
                    m[np.argmax(np.abs(dense).sum(axis=1))] = 0.0  # the hub unobserved
                true = np.linalg.eigvalsh(np.diag(m) + lam * dense)[-1]
                got = _split.split_bound(cert, m, lam)
                assert got >= true, (name, lam, draw, got, true)
                # and never worse than the graph bound it refines by more than its margin
                assert got <= (m.max() + lam * cert.graph_top()) * (1 + 1e-9) + 1e-12


def test_split_is_tight_where_the_hub_is_unobserved():
    adj = _graphs()[1][1]  # sensor + hub
    lap = sp.csr_matrix(laplacian_matrix(adj, "combinatorial"))
    cert = _cert(lap)
    dense = lap.toarray()
    m = (np.random.default_rng(2).random(lap.shape[0]) < 0.5).astype(float)
    m[0] = 0.0
    true = np.linalg.eigvalsh(np.diag(m) + dense)[-1]
    graph_bound = m.max() + np.linalg.eigvalsh(dense)[-1]
    assert graph_bound > 1.03 * true  # what the graph bound gives here
    assert _split.split_bound(cert, m, 1.0) <= 1.01 * true


def test_split_refuses_a_wrong_estimate(monkeypatch):
    lap = sp.csr_matrix(laplacian_matrix(_graphs()[0][1], "combinatorial"))
    _, vec = _certify.lanczos(lap, np.ones(lap.shape[0]), steps=30)
    real = _certify.lanczos

    def low(h, scale, **kw):
        est, v = real(h, scale, **kw)
        return 0.8 * est, v

    monkeypatch.setattr(_certify, "lanczos", low)
    assert _split.split_certificate(lap, vec) is None


def test_lipschitz_is_tight_on_a_large_graph_with_an_unobserved_hub():
    """Above the factorization tier (5,000 nodes) ``lipschitz()`` took the graph bound
    ``max m + lam lambda_max(L)`` (proved at 1.02 x the estimate): 8% above ``lambda_max(H)``
    on the table's 10^5-node sensor problem whose hub is unobserved. With the split
    certificate it is within 1% (and still above it)."""
    from scipy.sparse.linalg import eigsh

    _graphcert.clear_cache()
    adj, _ = sensor_graph(6000, seed=7)
    lap = sp.csr_matrix(laplacian_matrix(adj, "combinatorial"))
    _, vec = _certify.lanczos(lap, np.ones(6000), steps=30)
    hub = int(np.argmax(np.abs(vec)))
    rng = np.random.default_rng(3)
    masks = (rng.random((2, 6000)) < 0.5).astype(float)
    masks[0, hub], masks[1, hub] = 1.0, 0.0
    y = torch.from_numpy(rng.standard_normal((2, 6000)) * masks)
    p = GraphInverseProblem.from_scipy(adj, y, mask=torch.from_numpy(masks).bool(), lam=1.0)
    lip = p.lipschitz().numpy().ravel()
    for b in range(2):
        h = p.hessian_scipy(b)
        true = eigsh(h, k=1, which="LA", tol=1e-12, v0=np.ones(6000))[0][0]
        assert true <= lip[b] <= 1.01 * true, (b, lip[b], true)


def test_split_keeps_the_ball_of_least_score_with_fewer_lanczos_runs(monkeypatch):
    """The ball kept is the first of ``_HOPS`` with the least ``max(top of L~_SS, Lanczos
    top of L~_RR)``, as when every ball ran its Lanczos; the runs of balls whose own top
    cannot win are skipped."""
    from unrollsci.graph._local import _grow

    real, calls = _certify.lanczos, []

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    for _, adj in _graphs():
        lap = sp.csr_matrix(laplacian_matrix(adj, "combinatorial"))
        _, vec = _certify.lanczos(lap, np.ones(lap.shape[0]), steps=30)
        hub = np.array([int(np.argmax(np.abs(vec)))])
        scores = []
        for hops in _split._HOPS:
            inside = _grow(lap, hub, hops)
            if inside.sum() > _split.MAX_NODES or inside.all():
                continue
            s_idx, rest, block = _split._split(lap, inside)
            est = _certify.lanczos(rest, np.ones(rest.shape[0]), steps=30)[0]
            scores.append((max(float(np.linalg.eigvalsh(block)[-1]), est), len(scores), s_idx))
        want = min(scores, key=lambda c: (c[0], c[1]))[2]
        calls.clear()
        monkeypatch.setattr(_certify, "lanczos", counted)
        cert = _split.split_certificate(lap, vec)
        monkeypatch.setattr(_certify, "lanczos", real)
        assert cert is not None and np.array_equal(cert.nodes, want)
        assert 1 <= len(calls) <= len(scores)
