"""Threaded sparse products of the certified bounds (``_product``): within the rounding
bound the proofs subtract, used only where they can pay off, and the bounds built on them
stay below the true eigenvalue."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from scipy.sparse.linalg import eigsh

from unrollsci.graph import _certify, inpainting_problem, sensor_graph
from unrollsci.graph._local import gamma
from unrollsci.graph._product import MIN_ROWS, threaded


@pytest.fixture(scope="module")
def hessian():
    adj, _ = sensor_graph(MIN_ROWS + 5000, seed=5)
    return inpainting_problem(adj, 1, observed=0.3, seed=2).hessian_scipy(0)


def test_threaded_product_is_within_the_rounding_bound(hessian, monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    hp = threaded(hessian)
    assert hp is not hessian
    rng = np.random.default_rng(0)
    x = rng.standard_normal(hessian.shape[0])
    bound = gamma(hessian) * (abs(hessian) @ np.abs(x))
    assert np.all(np.abs(hp @ x - hessian @ x) <= bound)
    xx = rng.standard_normal((hessian.shape[0], 2))
    assert np.all(np.abs(hp @ xx - hessian @ xx) <= gamma(hessian) * (abs(hessian) @ np.abs(xx)))


def test_threaded_only_where_it_pays(hessian, monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert threaded(hessian) is hessian  # one thread: scipy's product
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    small = sp.csr_matrix(hessian[:1000, :1000])
    assert threaded(small) is small
    f32 = hessian.astype(np.float32)
    assert threaded(f32) is f32  # float64 CSR only


def test_bounds_with_threaded_products_are_below_lambda_min(hessian, monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    n = hessian.shape[0]
    true = eigsh(sp.csc_matrix(hessian), k=1, sigma=0, which="LM", return_eigenvectors=False)[0]
    lo = _certify.collatz_lower(hessian, np.ones((n, 1)), stall=0.01, target=0.95)
    assert 0.5 * true < lo[0] <= true
