"""The local stage of ``collatz_lower(target=...)`` and the factorization tier of the spectral
bounds (800-5000 nodes) against eigenvalues computed independently (dense ``eigvalsh``,
scipy's shift-invert ``eigsh``): a returned lower bound is never above lambda_min, and on
realistic graphs it lands at the level asked for (``target`` times the smallest eigenvalue,
within the estimate's slack), not trivially low."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.sparse.linalg import eigsh

from unrollsci.graph import _inertia, _spectral, inpainting_problem, road_graph, sensor_graph
from unrollsci.graph._certify import collatz_lower

from .test_certify import _scaled_eigs, hessians


@settings(max_examples=40, deadline=None)
@given(
    h=hessians(),
    target=st.sampled_from([0.3, 0.9, 0.95, 1.0]),
    rounds=st.integers(0, 6),
    hops=st.integers(0, 4),
    iters=st.integers(1, 30),
    smooth=st.integers(0, 8),
)
def test_local_stage_stays_below_lambda_min(h, target, rounds, hops, iters, smooth):
    """Random weighted graphs (3-40 nodes, so a neighbourhood is often the whole graph or a
    whole component, where the local system has no outside coupling), both columns: the
    result is a proof, whatever the target, the rounds and the quality of the start."""
    scales = np.stack([np.ones(h.shape[0]), h.diagonal()], axis=1)
    lo = collatz_lower(
        h, scales, iters=iters, smooth=smooth, target=target, local_rounds=rounds, local_hops=hops
    )
    for k in range(2):
        ev = _scaled_eigs(h, scales[:, k])
        assert 0.0 <= lo[k] <= ev[0] * (1 + 1e-12)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(100, 400),
    observed=st.floats(0.05, 0.9),
    seed=st.integers(0, 2**31 - 1),
    target=st.sampled_from([0.9, 0.95, 1.0]),
    hops=st.integers(0, 3),
)
def test_local_stage_with_partial_neighbourhoods_stays_below_lambda_min(
    n, observed, seed, target, hops
):
    """Random geometric graphs of 100-400 nodes with random masks (one observed node per
    component at least) and the dense path off: the neighbourhoods are parts of the graph,
    so the local systems have outside coupling. Never above lambda_min (dense reference),
    both columns."""
    import networkx as nx

    from unrollsci.graph import laplacian_matrix

    rng = np.random.default_rng(seed)
    g = nx.random_geometric_graph(n, 1.6 / np.sqrt(n), seed=seed)
    mask = rng.random(n) < observed
    for comp in nx.connected_components(g):
        comp = list(comp)
        if not mask[comp].any():
            mask[rng.choice(comp)] = True
    adj = sp.csr_matrix(nx.to_scipy_sparse_array(g, format="csr"), dtype=np.float64)
    h = sp.csr_matrix(sp.diags(mask.astype(float)) + laplacian_matrix(adj, "combinatorial"))
    scales = np.stack([np.ones(n), h.diagonal()], axis=1)
    lo = collatz_lower(h, scales, stall=0.01, target=target, local_hops=hops)
    for k in range(2):
        assert 0.0 <= lo[k] <= _scaled_eigs(h, scales[:, k])[0] * (1 + 1e-12)


def _lambda_min(h, scale):
    d = 1.0 / np.sqrt(scale)
    s = sp.csc_matrix(sp.diags(d) @ h @ sp.diags(d))
    return float(eigsh(s, k=1, sigma=0, which="LM", return_eigenvectors=False)[0])


def _reaches_target(adj, observed, seed=42, **kw):
    p = inpainting_problem(adj, 1, observed=observed, noise=0.1, seed=seed)
    h = p.hessian_scipy(0)
    dg = h.diagonal()
    scales = np.stack([np.ones(h.shape[0]), dg], axis=1)
    plain = collatz_lower(h, scales, stall=0.01, diag=dg)
    lo = collatz_lower(h, scales, stall=0.01, diag=dg, target=0.95, **kw)
    for k in range(2):
        lam = _lambda_min(h, scales[:, k])
        assert plain[k] <= lam * (1 + 1e-12)
        assert 0.95 * lam * (1 - 1e-9) <= lo[k] <= 0.98 * lam


@pytest.mark.parametrize(
    "graph, observed, budget",
    [("sensor", 0.3, 1.0), ("sensor", 0.8, 1.0), ("road", 0.3, 0.1)],
)
def test_local_stage_reaches_the_target_on_realistic_graphs(graph, observed, budget):
    """20,000-node sensor and road-like graphs: the plain bound is 0.80-0.95 of lambda_min;
    with ``target=0.95`` both columns are proved at 0.95 times an estimate within 3% of
    lambda_min, so the result is in [0.95, 0.98] lambda_min. The sensor graph's
    low-eigenvalue regions are a large share of a graph this small: its neighbourhoods
    need more than the default budget (10% of the nodes), which is what this test lifts."""
    adj = (sensor_graph if graph == "sensor" else road_graph)(20000, seed=41)[0]
    _reaches_target(adj, observed, local_budget=budget)


@pytest.mark.slow
@pytest.mark.parametrize("observed", [0.3, 0.8])
def test_local_stage_reaches_the_target_at_benchmark_scale(observed):
    """The problems of the cost benchmark (``bench graph_cost``: its 10^5-node sensor graph
    and masks), default budget: [0.95, 0.98] lambda_min. (On other masks of that graph the
    default budget can stop short, at 0.89-0.95 lambda_min: docs/graph.md.)"""
    from unrollsci.bench.graph_cost import _sensor

    _reaches_target(_sensor(100_000), observed, seed=1003)


def test_local_stage_without_rounds_is_the_plain_bound():
    """``local_rounds=0``: no local solve, the plain Collatz-Wielandt bound comes back."""
    adj, _ = sensor_graph(3000, seed=43)
    p = inpainting_problem(adj, 1, observed=0.5, seed=44)
    h = p.hessian_scipy(0)
    d = h.diagonal()[:, None]
    plain = collatz_lower(h, d, stall=0.01)
    assert collatz_lower(h, d, stall=0.01, target=0.95, local_rounds=0)[0] == plain[0]


@pytest.mark.parametrize("target", [0.0, -0.5, 1.5])
def test_local_stage_rejects_a_bad_target(target):
    adj, _ = sensor_graph(200, seed=45)
    h = inpainting_problem(adj, 1, observed=0.5, seed=46).hessian_scipy(0)
    with pytest.raises(ValueError, match="target"):
        collatz_lower(h, np.ones((h.shape[0], 1)), target=target)


def _mid_problem():
    adj, _ = sensor_graph(2000, seed=47)
    return inpainting_problem(adj, 2, observed=0.5, seed=48)


def test_factor_tier_gives_the_safety_times_eigenvalue_interval():
    """800-5000 nodes: ``jacobi_interval() = (0.95 lambda_min(S), 1.01 lambda_max(S))`` and
    ``lambda_min_bound() = 0.95 lambda_min(H)``, ``lipschitz() = 1.01 lambda_max(H)`` (or the
    Gershgorin bound if smaller), for each signal's mask: ARPACK estimates proved by an
    inertia factorization, compared with dense eigenvalues."""
    p = _mid_problem()
    lo, hi = p.jacobi_interval()
    lmin, lip = p.lambda_min_bound(), p.lipschitz()
    for b in range(2):
        h = p.hessian_scipy(b)
        ev_s = _scaled_eigs(h, h.diagonal())
        ev_h = np.linalg.eigvalsh(h.toarray())
        assert float(lo[b, 0]) == pytest.approx(0.95 * ev_s[0], rel=1e-6)
        gersh_s = float((abs(h).sum(axis=1).A1 / h.diagonal()).max())
        assert float(hi[b, 0]) == pytest.approx(min(1.01 * ev_s[-1], gersh_s), rel=1e-6)
        assert float(lmin[b, 0]) == pytest.approx(0.95 * ev_h[0], rel=1e-6)
        gersh_h = float(abs(h).sum(axis=1).max())
        assert float(lip[b, 0]) == pytest.approx(min(1.01 * ev_h[-1], gersh_h), rel=1e-6)


def test_factor_tier_falls_back_when_the_proof_fails(monkeypatch):
    """If the inertia check refuses (here: forced), the factorization-free bounds are used,
    and they are still bounds."""
    calls = []
    monkeypatch.setattr(_inertia, "_shift_proved", lambda *a, **k: calls.append(1) and False)
    p = _mid_problem()
    lo, hi = p.jacobi_interval()
    assert calls  # the factorization tier ran and its proof was refused
    h = p.hessian_scipy(0)
    ev_s = _scaled_eigs(h, h.diagonal())
    assert 0 < float(lo[0, 0]) <= ev_s[0] * (1 + 1e-12)
    assert float(hi[0, 0]) >= ev_s[-1] * (1 - 1e-12)


def test_disconnected_graph_is_bounded_component_by_component():
    """A 6,000-node sensor graph plus a 200-node path observed at one end only (a
    component whose smallest eigenvalue is 500x below the rest): inverse iteration on the
    whole graph resolves the path only, and the whole-graph bound proves nothing there (0,
    before components were handled); per component the bounds are ``0.95 lambda_min``
    again, for ``H`` and for ``S``."""
    import torch

    from unrollsci.graph import GraphInverseProblem

    adj, _ = sensor_graph(6000, seed=5)
    m = 200
    path = sp.diags([np.ones(m - 1), np.ones(m - 1)], [-1, 1], shape=(m, m))
    a = sp.block_diag([adj, path]).tocsr()
    n = a.shape[0]
    mask = torch.tensor(np.random.default_rng(0).random(n) < 0.5, dtype=torch.float64)
    mask[6000:] = 0
    mask[n - 1] = 1
    p = GraphInverseProblem.from_scipy(
        a, torch.randn(1, n, dtype=torch.float64) * mask, mask=mask[None], lam=1.0
    )
    h = p.hessian_scipy(0)
    lam_h, lam_s = _lambda_min(h, np.ones(n)), _lambda_min(h, h.diagonal())
    assert float(p.lambda_min_bound()[0, 0]) == pytest.approx(0.95 * lam_h, rel=1e-6)
    assert float(p.jacobi_interval()[0][0, 0]) == pytest.approx(0.95 * lam_s, rel=1e-6)


def test_factor_tier_skips_graphs_that_fill_in():
    """Expander-like graphs (a stochastic block model) fill in under any sparse
    factorization (seconds at a few thousand nodes), so the factorization tier steps aside
    for them without factorizing; sensor and road-like graphs keep it."""
    from unrollsci.bench._graph_train import _nx_adj
    from unrollsci.graph import random_graph

    sbm = _nx_adj(random_graph("sbm", 2000, seed=3))
    h_sbm = inpainting_problem(sbm, 1, observed=0.5, seed=4).hessian_scipy(0)
    assert _spectral._fills_in(h_sbm)
    assert _spectral._factor_proved(h_sbm, "lo", 0.95, scaled=True) is None
    for adj in (sensor_graph(2000, seed=3)[0], road_graph(2000, seed=3)[0]):
        h = inpainting_problem(adj, 1, observed=0.5, seed=4).hessian_scipy(0)
        assert not _spectral._fills_in(h)
        lo = _spectral._factor_proved(h, "lo", 0.95, scaled=True)
        assert lo == pytest.approx(0.95 * _lambda_min(h, h.diagonal()), rel=1e-6)


@settings(max_examples=40, deadline=None)
@given(h=hessians(), data=st.data())
def test_row_gathers_match_scipy(h, data):
    """The local stage's row gathers (no scipy fancy indexing): the product of some rows is
    bit-identical to those rows of scipy's product, and the ring is the neighbours outside."""
    from unrollsci.graph._local import _ring, _rows_times

    n = h.shape[0]
    rows = np.array(sorted(data.draw(st.sets(st.integers(0, n - 1), max_size=n))), dtype=np.int64)
    u = np.random.default_rng(n).random(n)
    assert np.array_equal(_rows_times(h, rows, u), (h @ u)[rows])
    inside = np.zeros(n, dtype=bool)
    inside[data.draw(st.lists(st.integers(0, n - 1), max_size=n))] = True
    nb = np.unique(h[rows].indices) if rows.size else np.zeros(0, dtype=np.int64)
    assert np.array_equal(_ring(h, rows, inside), nb[~inside[nb]])
