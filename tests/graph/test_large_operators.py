"""Heat-kernel and general-operator problems on graphs above the dense size (800 nodes):
their spectral bounds read a proven ``lambda_max(L)`` (the graph certificate). An ARPACK
start from the ones vector, used before, failed on every combinatorial Laplacian (``L 1 =
0``: "Starting vector is zero"), so these problems could not be solved at all."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
import torch

from unrollsci.graph import GraphInverseProblem, StepController, UnrolledGraphGD
from unrollsci.operators import MatrixOperator


def _grid(laplacian: str):
    G = nx.grid_2d_graph(30, 31)  # 930 nodes
    adj = nx.to_scipy_sparse_array(G, format="csr", dtype=float)
    lap = (
        nx.laplacian_matrix(G)
        if laplacian == "combinatorial"
        else nx.normalized_laplacian_matrix(G)
    )
    return adj, lap.toarray()


@pytest.mark.parametrize("laplacian", ["combinatorial", "normalized"])
def test_heat_kernel_bounds_bracket_the_spectrum_above_the_dense_size(laplacian):
    adj, lap = _grid(laplacian)
    n, tau, lam = adj.shape[0], 0.7, 0.3
    y = torch.randn(1, n, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    p = GraphInverseProblem.from_scipy(
        adj, y, operator="heat", tau=tau, lam=lam, laplacian=laplacian
    )
    mu = np.linalg.eigvalsh(lap)
    h_eigs = np.exp(-2 * tau * mu) + lam * mu  # A = exp(-tau L) is symmetric
    assert h_eigs.max() <= float(p.lipschitz()[0, 0])
    assert 0 <= float(p.lambda_min_bound()[0, 0]) <= h_eigs.min()
    model = UnrolledGraphGD(4, StepController(hidden=8), mode="scalar").double()
    with torch.no_grad():
        out = model(p)
    assert torch.isfinite(out.x).all()


def test_general_operator_bounds_above_the_dense_size():
    adj, lap = _grid("combinatorial")
    n = adj.shape[0]
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(40, n, dtype=torch.float64, generator=gen) / np.sqrt(n)
    y = torch.randn(1, 40, dtype=torch.float64, generator=gen)
    p = GraphInverseProblem.from_scipy(adj, y, operator=MatrixOperator(a), lam=0.5)
    h = a.numpy().T @ a.numpy() + 0.5 * lap
    ev = np.linalg.eigvalsh(h)
    assert ev[-1] <= float(p.lipschitz()[0, 0])
    assert 0 <= float(p.lambda_min_bound()[0, 0]) <= ev[0]


def _mirror_path(n: int, seed: int = 0):
    """A weighted path whose weights are mirror-symmetric (``i -> n - 1 - i``)."""
    import scipy.sparse as sp

    w = np.random.default_rng(seed).uniform(0.5, 2.0, n - 1)
    w = (w + w[::-1]) / 2
    return sp.diags([w, w], [-1, 1], format="csr")


def test_operator_lower_bound_sees_every_symmetry_sector():
    """A problem with a mirror symmetry (graph and operator): the smallest eigenvalue of H
    lies in the antisymmetric sector, which ARPACK never reached from the (symmetric)
    ones vector; the estimate then came out 16x above lambda_min(H)."""
    n, lam = 400, 1e-3
    eye = torch.eye(n, dtype=torch.float64)
    a = eye + 0.6 * torch.flip(eye, [0])  # invertible, commutes with the mirror
    y = torch.randn(1, n, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    p = GraphInverseProblem.from_scipy(
        _mirror_path(n), y, operator=MatrixOperator(a), lam=lam, laplacian="normalized"
    )
    h = a.numpy().T @ a.numpy() + lam * p.lap_scipy.toarray()
    ev = np.linalg.eigvalsh(h)
    lo = float(p.lambda_min_bound()[0, 0])
    assert 0.9 * ev[0] <= lo <= ev[0]


def test_heat_kernel_with_a_symmetric_mask_lower_bound():
    n, lam, tau = 41, 0.1, 5.0
    mask = torch.zeros(n)
    mask[[10, 20, 30]] = 1.0  # mirror-symmetric observations
    p = GraphInverseProblem.from_scipy(
        _mirror_path(n, seed=3),
        torch.zeros(1, n, dtype=torch.float64),
        operator="heat",
        mask=mask,
        lam=lam,
        tau=tau,
    )
    a = p.operator.to_dense().numpy()
    h = a.T @ (mask.numpy()[:, None] * a) + lam * p.lap_scipy.toarray()
    ev = np.linalg.eigvalsh(h)
    assert 0 <= float(p.lambda_min_bound()[0, 0]) <= ev[0]
    assert float(p.lipschitz()[0, 0]) >= ev[-1]


def test_heat_kernel_the_polynomial_cannot_represent_is_refused():
    """tau * lambda_max ~ 1e6: every Chebyshev coefficient of exp(-tau mu) underflowed to 0,
    so A was 0 and H = lam L singular, silently (found by fuzzing). Refused now, with the
    degree that would do where one exists."""
    import scipy.sparse as sp

    n = 40
    y = torch.randn(1, n, dtype=torch.float64)

    def path(w):
        return sp.diags([np.full(n - 1, w), np.full(n - 1, w)], [-1, 1], format="csr")

    with pytest.raises(ValueError, match="lower tau"):
        GraphInverseProblem.from_scipy(path(1e6), y, operator="heat", lam=1e-3)
    with pytest.raises(ValueError, match=r"use degree >= (\d+)") as err:
        GraphInverseProblem.from_scipy(path(50.0), y, operator="heat", lam=1e-3)
    need = int(__import__("re").search(r"degree >= (\d+)", str(err.value)).group(1))
    p = GraphInverseProblem.from_scipy(path(50.0), y, operator="heat", lam=1e-3, heat_degree=need)
    mu = np.linspace(0.0, p.heat.lmax, 1001)
    assert np.abs(p.heat.response(mu) - np.exp(-mu)).max() <= 1e-6
