"""The factorization-free certified bounds of unrollsci/graph/_certify.py against dense
eigenvalues: a lower bound is never above lambda_min, an accepted upper bound is never
below lambda_max (for random weighted graphs, masks, lam and both Laplacians), and on
realistic graphs the bounds are close to the eigenvalues (not trivially loose)."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from unrollsci.graph import inpainting_problem, laplacian_matrix, road_graph, sensor_graph
from unrollsci.graph._certify import (
    certify_upper,
    collatz_lower,
    lanczos_max,
    upper_bound,
)


@st.composite
def hessians(draw):
    """``H = diag(m) + lam L`` of a random weighted graph (mask with >= 1 observed node per
    component, so H is positive definite)."""
    n = draw(st.integers(3, 40))
    m = draw(st.integers(n - 1, 4 * n))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    G = nx.gnm_random_graph(n, m, seed=seed)
    for u, v in G.edges:
        G[u][v]["weight"] = float(rng.uniform(0.05, 4.0))
    mask = rng.random(n) < draw(st.floats(0.05, 1.0))
    for comp in nx.connected_components(G):
        comp = list(comp)
        if not mask[comp].any():
            mask[rng.choice(comp)] = True
    lam = draw(st.floats(0.05, 20.0))
    kind = draw(st.sampled_from(["combinatorial", "normalized"]))
    adj = sp.csr_matrix(nx.to_scipy_sparse_array(G, weight="weight"))
    h = sp.csr_matrix(sp.diags(mask.astype(float)) + lam * laplacian_matrix(adj, kind))
    return h


def _scaled_eigs(h, scale):
    s = 1.0 / np.sqrt(scale)
    return np.linalg.eigvalsh(h.toarray() * s[:, None] * s[None, :])


@settings(max_examples=40, deadline=None)
@given(h=hessians(), iters=st.integers(1, 40), steps=st.integers(1, 3))
def test_collatz_lower_bound_is_below_lambda_min(h, iters, steps):
    scales = np.stack([np.ones(h.shape[0]), h.diagonal()], axis=1)
    lo = collatz_lower(h, scales, iters=iters, steps=steps)
    for k in range(2):
        ev = _scaled_eigs(h, scales[:, k])
        assert 0.0 <= lo[k] <= ev[0] * (1 + 1e-12)


@settings(max_examples=40, deadline=None)
@given(h=hessians(), frac=st.floats(0.3, 0.9999), jacobi=st.booleans())
def test_certify_upper_rejects_every_value_below_lambda_max(h, frac, jacobi):
    scale = h.diagonal() if jacobi else np.ones(h.shape[0])
    top = _scaled_eigs(h, scale)[-1]
    assert not certify_upper(h, scale, frac * top)
    # and whatever upper_bound returns is at least lambda_max
    cap = float(np.asarray(abs(h).sum(axis=1)).ravel().max()) if not jacobi else np.inf
    if not jacobi:
        assert upper_bound(h, scale, 1.0, cap) >= top * (1 - 1e-12)


def test_lanczos_max_estimates_from_below():
    adj, _ = sensor_graph(500, seed=1)
    p = inpainting_problem(adj, 1, seed=2)
    h = p.hessian_scipy(0)
    top = np.linalg.eigvalsh(h.toarray())[-1]
    est = lanczos_max(h, np.ones(500), steps=30)
    assert 0.97 * top <= est <= top * (1 + 1e-10)


@pytest.mark.slow  # 24 dense eigendecompositions of 1500 x 1500 (soundness on small graphs: above)
def test_bounds_are_tight_on_large_sparse_graphs():
    """On 1500-node sensor, road and random geometric graphs at 30% and 80% observed: Lip
    at most 1.25 times lambda_max (1.02 on the geometric graph, whose top eigenvector sits
    on a few high-degree nodes), lambda_min bounds within a factor 2 (dense reference)."""
    import networkx as nx

    from unrollsci.graph import random_graph

    rgg = sp.csr_matrix(nx.to_scipy_sparse_array(random_graph("geometric", 1500, seed=1)))
    for name, adj in (
        ("sensor", sensor_graph(1500, seed=5)[0]),
        ("road", road_graph(1500, seed=6)[0]),
        ("geometric", rgg),
    ):
        for observed in (0.3, 0.8):
            p = inpainting_problem(adj, 1, observed=observed, seed=7)
            h = p.hessian_scipy(0)
            n = h.shape[0]
            d = h.diagonal()
            ev = np.linalg.eigvalsh(h.toarray())
            evs = _scaled_eigs(h, d)
            cap = float(np.asarray(abs(h).sum(axis=1)).max())
            lip = upper_bound(h, np.ones(n), 1.01, cap)
            assert ev[-1] <= lip <= (1.02 if name == "geometric" else 1.26) * ev[-1]
            lo = collatz_lower(h, np.stack([np.ones(n), d], axis=1))
            assert 0.5 * ev[0] <= lo[0] <= ev[0]
            assert 0.5 * evs[0] <= lo[1] <= evs[0]
