"""Self-loops in the Laplacians, identifiability at any number of components, bad devices."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
import scipy.sparse as sp
import torch

import unrollsci.graph._identifiability as problem_mod
from unrollsci.graph import (
    GraphInverseProblem,
    inpainting_problem,
    laplacian_matrix,
    validate_adjacency,
)
from unrollsci.operators import MatrixOperator


def _loopy_graph() -> nx.Graph:
    G = nx.Graph()
    G.add_weighted_edges_from(
        [(0, 1, 1.0), (1, 2, 2.0), (2, 0, 0.5), (2, 3, 1.5), (1, 1, 0.7), (3, 3, 2.0)]
    )
    G.add_node(4)  # isolated
    G.add_edge(5, 5, weight=3.0)  # a node with only a self-loop
    return G


@pytest.mark.parametrize(
    "kind, reference",
    [
        ("combinatorial", nx.laplacian_matrix),
        ("normalized", nx.normalized_laplacian_matrix),
    ],
)
def test_laplacian_with_self_loops_matches_networkx(kind, reference):
    G = _loopy_graph()
    nodes = list(G.nodes)
    adj = sp.csr_matrix(nx.to_scipy_sparse_array(G, nodelist=nodes))
    ref = reference(G, nodelist=nodes).toarray()
    lap = laplacian_matrix(validate_adjacency(adj), kind).toarray()
    np.testing.assert_allclose(lap, ref, rtol=0, atol=1e-14)


@pytest.mark.parametrize(
    "kind, reference",
    [
        ("combinatorial", nx.laplacian_matrix),
        ("normalized", nx.normalized_laplacian_matrix),
    ],
)
def test_problem_hessian_with_self_loops_matches_networkx(kind, reference):
    G = _loopy_graph()
    n = G.number_of_nodes()
    mask = np.array([1, 0, 0, 1, 1, 1])
    y = torch.arange(n, dtype=torch.float64) * torch.as_tensor(mask)
    p = GraphInverseProblem.from_networkx(G, y, mask=torch.as_tensor(mask), lam=0.8, laplacian=kind)
    h_ref = np.diag(mask.astype(float)) + 0.8 * reference(G, nodelist=list(G.nodes)).toarray()
    h = p.hessian(torch.eye(n, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(h, h_ref, rtol=0, atol=1e-13)
    x_ref = np.linalg.solve(h_ref, y.numpy())
    np.testing.assert_allclose(p.solve_exact()[0].numpy(), x_ref, rtol=1e-10, atol=1e-12)
    # message passing stays over neighbours: no self-loop edges
    assert bool((p.edge_index[0] != p.edge_index[1]).all())


def _isolated_edges(k: int) -> nx.Graph:
    G = nx.Graph()
    G.add_edges_from((2 * i, 2 * i + 1) for i in range(k))
    return G


def _lambda_min(a: np.ndarray, G: nx.Graph, lam: float, kind: str = "combinatorial") -> float:
    lap = (nx.laplacian_matrix if kind == "combinatorial" else nx.normalized_laplacian_matrix)(
        G, nodelist=list(G.nodes)
    ).toarray()
    return float(np.linalg.eigvalsh(a.T @ a + lam * lap)[0])


def _observe_first_nodes(k: int) -> np.ndarray:
    a = np.zeros((k, 2 * k))
    a[np.arange(k), 2 * np.arange(k)] = 1.0  # one measurement per component
    return a


@pytest.mark.parametrize("dense_path", [True, False])
def test_unidentifiable_operator_detected_above_256_components(dense_path, monkeypatch):
    if not dense_path:  # force the sparse Gram/inertia path and chunked operator calls
        monkeypatch.setattr(problem_mod, "_RANK_DENSE_MAX", 0)
        monkeypatch.setattr(problem_mod, "_CHUNK_ENTRIES", 50 * 600)
    k = 300
    G = _isolated_edges(k)
    y = torch.zeros(k, dtype=torch.float64)
    good = _observe_first_nodes(k)
    assert _lambda_min(good, G, 1.0) > 1e-6  # reference: H is invertible
    GraphInverseProblem.from_networkx(G, y, operator=MatrixOperator(torch.as_tensor(good)))

    # components 7 and 250 are only seen through their difference: H is singular
    dep = good.copy()
    dep[7] = 0.0
    dep[7, 14], dep[7, 500] = 1.0, -1.0
    dep[250] = dep[7]
    assert _lambda_min(dep, G, 1.0) < 1e-10
    with pytest.raises(ValueError, match="No unique solution for signal 0.*linearly dependent"):
        GraphInverseProblem.from_networkx(G, y, operator=MatrixOperator(torch.as_tensor(dep)))

    # component 123 is not measured at all
    blind = good.copy()
    blind[123] = 0.0
    assert _lambda_min(blind, G, 1.0) < 1e-10
    with pytest.raises(ValueError, match=r"A maps component 123 \(nodes \[246, 247\]\) to zero"):
        GraphInverseProblem.from_networkx(G, y, operator=MatrixOperator(torch.as_tensor(blind)))


def test_unidentifiable_per_signal_mask_above_256_components():
    k = 300
    G = _isolated_edges(k)
    a = torch.as_tensor(_observe_first_nodes(k))
    mask = torch.ones(2, k)
    mask[1, 42] = 0  # signal 1 loses the only measurement of component 42
    with pytest.raises(ValueError, match="signal 1: .*component 42"):
        GraphInverseProblem.from_networkx(
            G, torch.zeros(2, k, dtype=torch.float64), operator=MatrixOperator(a), mask=mask
        )


def test_more_components_than_measurements_is_rejected():
    G = _isolated_edges(5)
    a = torch.ones(4, 10, dtype=torch.float64)
    with pytest.raises(ValueError, match="5 components but only 4 measurements"):
        GraphInverseProblem.from_networkx(
            G, torch.zeros(4, dtype=torch.float64), operator=MatrixOperator(a)
        )


def test_normalized_identifiability_uses_the_degree_weighted_null_vector():
    # star with 3 leaves: null(L_norm) is spanned by D^{1/2} 1 = (sqrt 3, 1, 1, 1), not 1
    G = nx.star_graph(3)
    y = torch.zeros(1, dtype=torch.float64)
    v = np.array([np.sqrt(3.0), 1.0, 1.0, 1.0])
    blind = np.array([[1.0, -np.sqrt(3.0), 0.0, 0.0]])  # A v = 0 but A 1 != 0
    assert abs(blind @ v).max() < 1e-15
    assert _lambda_min(blind, G, 1.0, "normalized") < 1e-10
    with pytest.raises(ValueError, match="No unique solution"):
        GraphInverseProblem.from_networkx(
            G, y, operator=MatrixOperator(torch.as_tensor(blind)), laplacian="normalized"
        )
    seen = np.array([[1.0, -1.0, 0.0, 0.0]])  # A 1 = 0 but A v != 0: H is invertible
    assert _lambda_min(seen, G, 1.0, "normalized") > 1e-3
    GraphInverseProblem.from_networkx(
        G, y, operator=MatrixOperator(torch.as_tensor(seen)), laplacian="normalized"
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_without_cuda_is_a_value_error():
    adj = sp.csr_matrix(nx.to_scipy_sparse_array(nx.path_graph(6)))
    with pytest.raises(ValueError, match="CUDA is not available"):
        inpainting_problem(adj, 2, device="cuda")


def test_inpainting_problem_bad_arguments():
    adj = sp.csr_matrix(nx.to_scipy_sparse_array(nx.path_graph(6)))
    with pytest.raises(ValueError, match=r"Expected 'num' >= 1 \(got 0\)"):
        inpainting_problem(adj, 0)
    with pytest.raises(ValueError, match=r"Expected 0 <= observed <= 1"):
        inpainting_problem(adj, 1, observed=1.5)
    with pytest.raises(ValueError, match=r"Expected 'observed' to be finite"):
        inpainting_problem(adj, 1, observed=float("nan"))
