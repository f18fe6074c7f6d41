"""GraphInverseProblem: constructors, gradients, exact solution, spectral bounds, bad input."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
import scipy.linalg as sla
import scipy.sparse as sp
import torch
from torch_geometric.data import Batch, Data
from torch_geometric.utils import from_networkx

from unrollsci.graph import GraphInverseProblem, HeatKernel, inpainting_problem, sensor_graph
from unrollsci.operators import MatrixOperator, check_adjoint


def _dense_h(G, mask, lam, kind="combinatorial"):
    if kind == "combinatorial":
        lap = nx.laplacian_matrix(G, nodelist=list(G.nodes)).toarray()
    else:
        lap = nx.normalized_laplacian_matrix(G, nodelist=list(G.nodes)).toarray()
    return np.diag(mask.astype(float)) + lam * lap


@pytest.mark.parametrize("kind", ["combinatorial", "normalized"])
def test_exact_solution_matches_dense_solve(device, kind):
    G = nx.connected_watts_strogatz_graph(30, 4, 0.3, seed=1)
    rng = np.random.default_rng(0)
    mask = rng.random(30) < 0.5
    mask[0] = True
    y = torch.as_tensor(rng.standard_normal((3, 30)) * mask, device=device)
    p = GraphInverseProblem.from_networkx(G, y, mask=torch.as_tensor(mask), lam=0.7, laplacian=kind)
    h = _dense_h(G, mask, 0.7, kind)
    ref = np.linalg.solve(h, (y.cpu().numpy() * mask).T).T
    np.testing.assert_allclose(p.solve_exact().cpu().numpy(), ref, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(p.solve_exact("cg").cpu().numpy(), ref, rtol=1e-7, atol=1e-9)
    # Gradient = autograd of the objective; H x matches the dense matrix.
    x = torch.randn(3, 30, dtype=torch.float64, device=device, requires_grad=True)
    p.objective(x).sum().backward()
    torch.testing.assert_close(x.grad, p.gradient(x.detach()))
    np.testing.assert_allclose(
        p.hessian(x.detach()).cpu().numpy(), x.detach().cpu().numpy() @ h, rtol=1e-12, atol=1e-12
    )


def test_spectral_bounds_bracket_the_spectrum(device):
    G = nx.random_geometric_graph(60, 0.3, seed=3)
    G = G.subgraph(max(nx.connected_components(G), key=len)).copy()
    n = G.number_of_nodes()
    rng = np.random.default_rng(1)
    mask = rng.random((2, n)) < 0.5
    mask[:, 0] = True
    y = torch.as_tensor(rng.standard_normal((2, n)), device=device)
    p = GraphInverseProblem.from_networkx(G, y, mask=torch.as_tensor(mask), lam=1.3)
    lip, lip_g, lo = p.lipschitz(), p.lipschitz("gershgorin"), p.lambda_min_bound()
    degmax = max(d for _, d in G.degree())
    for b in range(2):
        ev = np.linalg.eigvalsh(_dense_h(G, mask[b], 1.3))
        # Gershgorin, rounded up (1 + 2 * 1.3 * degmax in float64 may be below the exact sum)
        assert (
            ev[-1] <= float(lip[b, 0]) <= float(lip_g[b, 0]) <= (1 + 2 * 1.3 * degmax) * (1 + 1e-13)
        )
        assert float(lip[b, 0]) <= 1.02 * ev[-1]
        assert 0 < float(lo[b, 0]) <= ev[0]


def test_large_graph_bounds_use_lanczos(device):
    # above 800 nodes: Lanczos x 1.01, 1.1 or 1.25, proved by the Schur-complement test
    # (a kNN sensor graph's top eigenvector is spread out: about 1.1 is needed there)
    adj, _ = sensor_graph(1200, seed=4)
    p = inpainting_problem(adj, 1, seed=0, device=device)
    ev = np.linalg.eigvalsh(p.hessian_scipy(0).toarray())
    lip = float(p.lipschitz()[0, 0])
    assert ev[-1] <= lip <= 1.26 * ev[-1]
    assert lip < float(p.lipschitz("gershgorin")[0, 0])
    assert 0.5 * ev[0] <= float(p.lambda_min_bound()[0, 0]) <= ev[0]


def test_constructors_agree(device):
    G = nx.grid_2d_graph(4, 5)
    G = nx.convert_node_labels_to_integers(G)
    for u, v in G.edges:
        G[u][v]["weight"] = 1.0 + (u + v) % 3
    y = torch.randn(2, 20, dtype=torch.float64, device=device)
    mask = torch.arange(20) % 2 == 0
    p1 = GraphInverseProblem.from_networkx(G, y, mask=mask)
    adj = sp.csr_matrix(nx.to_scipy_sparse_array(G, weight="weight"))
    p2 = GraphInverseProblem.from_scipy(adj, y, mask=mask)
    data = from_networkx(G, group_edge_attrs=["weight"])
    p3 = GraphInverseProblem.from_pyg(data, y, mask=mask)
    x1 = p1.solve_exact()
    torch.testing.assert_close(p2.solve_exact(), x1)
    torch.testing.assert_close(p3.solve_exact(), x1)


def test_pyg_batch_is_block_diagonal(device):
    graphs = [nx.path_graph(5), nx.cycle_graph(8), nx.star_graph(6)]
    data = [from_networkx(g) for g in graphs]
    batch = Batch.from_data_list(data)
    n = batch.num_nodes
    y = torch.randn(2, n, dtype=torch.float64, device=device)
    mask = torch.rand(n) < 0.6
    mask[batch.ptr[:-1]] = True
    p = GraphInverseProblem.from_pyg(batch, y, mask=mask, lam=0.5)
    assert p.num_blocks == 3
    x = p.solve_exact()
    for k, g in enumerate(graphs):
        s, e = int(batch.ptr[k]), int(batch.ptr[k + 1])
        q = GraphInverseProblem.from_networkx(g, y[:, s:e], mask=mask[s:e], lam=0.5)
        torch.testing.assert_close(x[:, s:e], q.solve_exact())
        torch.testing.assert_close(p.objective(x)[:, k], q.objective(x[:, s:e])[:, 0])
        torch.testing.assert_close(p.lipschitz()[:, k], q.lipschitz()[:, 0])


def test_heat_kernel_matches_expm_and_is_self_adjoint(device):
    G = nx.connected_watts_strogatz_graph(25, 4, 0.2, seed=0)
    lap = sp.csr_matrix(nx.laplacian_matrix(G).astype(float))
    heat = HeatKernel(lap, tau=0.8, degree=30).to(device)
    assert check_adjoint(heat, device=device) < 1e-12
    ref = sla.expm(-0.8 * lap.toarray())
    dense = heat.to_dense().cpu().numpy()
    np.testing.assert_allclose(dense, ref, atol=1e-10)
    # Deblurring problem with the heat kernel: exact solution vs dense solve.
    y = torch.randn(2, 25, dtype=torch.float64, device=device)
    p = GraphInverseProblem.from_networkx(G, y, operator="heat", tau=0.8, lam=0.1)
    h = ref @ ref + 0.1 * lap.toarray()
    np.testing.assert_allclose(
        p.solve_exact().cpu().numpy(),
        np.linalg.solve(h, ref @ y.cpu().numpy().T).T,
        rtol=1e-8,
        atol=1e-9,
    )
    ev = np.linalg.eigvalsh(h)
    assert ev[-1] <= float(p.lipschitz()[0, 0]) <= 1.05 * ev[-1]
    assert 0 < float(p.lambda_min_bound()[0, 0]) <= ev[0]


def test_general_operator(device):
    G = nx.path_graph(12)
    a = torch.randn(7, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    op = MatrixOperator(a.to(device))
    y = torch.randn(1, 7, dtype=torch.float64, device=device)
    p = GraphInverseProblem.from_networkx(G, y, operator=op, lam=0.3)
    lap = nx.laplacian_matrix(G).toarray()
    h = a.numpy().T @ a.numpy() + 0.3 * lap
    ref = np.linalg.solve(h, a.numpy().T @ y.cpu().numpy()[0])
    np.testing.assert_allclose(p.solve_exact().cpu().numpy()[0], ref, rtol=1e-7, atol=1e-9)
    ev = np.linalg.eigvalsh(h)
    assert ev[-1] <= float(p.lipschitz()[0, 0])
    assert 0 <= float(p.lambda_min_bound()[0, 0]) <= ev[0]
    assert (
        bool((p.gershgorin_rows()[0].cpu().numpy() >= np.abs(h).sum(1) - 1e-9).all())
        or np.linalg.eigvalsh(np.diag(p.gershgorin_rows()[0].cpu().numpy()) - h)[0] >= -1e-9
    )


# ------------------------------------------------------------------ bad input
def test_disconnected_unobserved_component_is_rejected():
    G = nx.disjoint_union(nx.path_graph(4), nx.path_graph(3))
    mask = torch.tensor([1, 0, 1, 0, 0, 0, 0])
    with pytest.raises(ValueError, match="No unique solution: connected component 1"):
        GraphInverseProblem.from_networkx(G, torch.zeros(7, dtype=torch.float64), mask=mask)
    # observed somewhere in each component: fine
    mask[5] = 1
    GraphInverseProblem.from_networkx(G, torch.zeros(7, dtype=torch.float64), mask=mask)


def test_components_are_computed_once_per_graph(monkeypatch):
    """The identifiability check reads the graph's components from the certificate cache:
    a second problem on the same graph (another mask) does not search them again, a changed
    weight is another graph, and an unobserved component is still refused from the cache."""
    import scipy.sparse.csgraph as csgraph

    from unrollsci.graph import _graphcert

    _graphcert.clear_cache()
    calls = []
    real = csgraph.connected_components

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(csgraph, "connected_components", counted)
    G = nx.disjoint_union(nx.path_graph(4), nx.path_graph(3))
    adj = nx.to_scipy_sparse_array(G, format="csr", dtype=float)
    y = torch.zeros(7, dtype=torch.float64)
    GraphInverseProblem.from_scipy(adj, y, mask=torch.tensor([1, 0, 0, 0, 1, 0, 0]))
    GraphInverseProblem.from_scipy(adj, y, mask=torch.tensor([0, 1, 0, 0, 0, 0, 1]))
    assert len(calls) == 1
    with pytest.raises(ValueError, match="No unique solution: connected component 1"):
        GraphInverseProblem.from_scipy(adj, y, mask=torch.tensor([1, 0, 0, 0, 0, 0, 0]))
    assert len(calls) == 1
    heavier = adj.copy()
    heavier.data[:] = 2.0
    GraphInverseProblem.from_scipy(heavier, y, mask=torch.tensor([1, 0, 0, 0, 1, 0, 0]))
    assert len(calls) == 2


def test_laplacian_is_built_once_per_graph(monkeypatch):
    """A second problem on the same adjacency (another mask) reuses the checked weights and
    the Laplacian (read-only, shared); changed weights are another graph, checked again."""
    from unrollsci.graph import _laplacian, clear_graph_cache

    clear_graph_cache()
    built = []
    real = _laplacian.laplacian_matrix
    monkeypatch.setattr(
        _laplacian, "laplacian_matrix", lambda *a, **k: built.append(1) or real(*a, **k)
    )
    adj = nx.to_scipy_sparse_array(nx.cycle_graph(6), format="csr", dtype=float)
    y = torch.zeros(6, dtype=torch.float64)
    p = GraphInverseProblem.from_scipy(adj, y, mask=torch.tensor([1, 0, 0, 1, 0, 0]))
    q = GraphInverseProblem.from_scipy(adj.copy(), y, mask=torch.tensor([0, 1, 0, 0, 0, 1]))
    assert len(built) == 1 and q.lap_scipy is p.lap_scipy
    with pytest.raises(ValueError, match="read-only"):
        p.lap_scipy.data[0] = 5.0
    np.testing.assert_array_equal(
        p.lap_scipy.toarray(), nx.laplacian_matrix(nx.cycle_graph(6)).toarray()
    )
    bad = adj.copy()
    bad.data[0] = -1.0  # asymmetric and negative: refused, not served from the cache
    with pytest.raises(ValueError, match="non-negative"):
        GraphInverseProblem.from_scipy(bad, y, mask=torch.ones(6))
    norm = GraphInverseProblem.from_scipy(adj, y, mask=torch.ones(6), laplacian="normalized")
    assert len(built) == 2 and not np.allclose(norm.lap_scipy.toarray(), p.lap_scipy.toarray())


def test_bad_inputs():
    G = nx.path_graph(5)
    y = torch.zeros(5, dtype=torch.float64)
    with pytest.raises(ValueError, match="lam >= 0"):
        GraphInverseProblem.from_networkx(G, y, lam=-1.0)
    with pytest.raises(ValueError, match=r"Expected 'y' of length 5 \(the node count"):
        GraphInverseProblem.from_networkx(G, torch.zeros(2, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="finite"):
        GraphInverseProblem.from_networkx(G, torch.tensor([0, 1, float("nan"), 0, 0.0]))
    Gn = nx.path_graph(3)
    Gn[0][1]["weight"] = -1.0
    with pytest.raises(ValueError, match="non-negative edge weights"):
        GraphInverseProblem.from_networkx(Gn, torch.zeros(3, dtype=torch.float64))
    Gn[0][1]["weight"] = float("nan")
    with pytest.raises(ValueError, match="finite edge weights"):
        GraphInverseProblem.from_networkx(Gn, torch.zeros(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="undirected"):
        GraphInverseProblem.from_networkx(nx.DiGraph(G), y)
    with pytest.raises(ValueError, match="symmetric"):
        GraphInverseProblem.from_scipy(
            sp.csr_matrix(np.triu(np.ones((3, 3)), 1)), torch.zeros(3, dtype=torch.float64)
        )
    with pytest.raises(ValueError, match="mask"):
        GraphInverseProblem.from_networkx(G, y, mask=torch.ones(4))
    with pytest.raises(ValueError, match="lam = 0"):
        GraphInverseProblem.from_networkx(G, y, mask=torch.tensor([1, 0, 1, 1, 1]), lam=0.0)
    with pytest.raises(TypeError, match="LinearOperator"):
        GraphInverseProblem.from_networkx(G, y, operator=np.eye(5))
    with pytest.raises(TypeError, match="scipy sparse"):
        GraphInverseProblem.from_scipy(np.eye(3), torch.zeros(3, dtype=torch.float64))
    data = Data(edge_index=torch.tensor([[0, 1], [1, 0]]), num_nodes=2)
    with pytest.raises(ValueError, match="data.y"):
        GraphInverseProblem.from_pyg(data)


def test_objective_gap_is_half_the_energy_norm(device):
    adj, _ = sensor_graph(80, seed=2)
    p = inpainting_problem(adj, 3, seed=1, device=device)
    xs = p.solve_exact()
    x = torch.randn(3, 80, dtype=torch.float64, device=device)
    gap = p.objective(x) - p.objective(xs)
    torch.testing.assert_close(gap, 0.5 * p.energy_norm_sq(x - xs))
    assert float(p.gradient(xs).abs().max()) < 1e-10


def test_inertia_check_matches_eigenvalues():
    from unrollsci.graph._problem import _is_pd

    adj, _ = sensor_graph(300, seed=5)
    p = inpainting_problem(adj, 1, seed=2)
    h = p.hessian_scipy(0)
    ev = np.linalg.eigvalsh(h.toarray())
    eye = sp.identity(300, format="csc")
    assert _is_pd(h)
    assert _is_pd(h - 0.99 * ev[0] * eye)
    assert not _is_pd(h - 1.01 * ev[0] * eye)
    assert _is_pd(1.001 * ev[-1] * eye - h)
    assert not _is_pd(0.999 * ev[-1] * eye - h)


def test_problems_built_in_threads_share_one_graph_safely():
    """Threads building problems on two graphs at once (the caches are shared): every
    problem gets its graph's Laplacian and bounds equal to a single-threaded build."""
    from concurrent.futures import ThreadPoolExecutor

    from unrollsci.graph import _graphcert

    graphs = [nx.cycle_graph(40), nx.grid_2d_graph(6, 7)]
    adjs = [nx.to_scipy_sparse_array(g, format="csr", dtype=float) for g in graphs]

    def build(i):
        adj = adjs[i % 2]
        n = adj.shape[0]
        mask = torch.zeros(n)
        mask[:: 3 + i % 3] = 1
        p = GraphInverseProblem.from_scipy(adj, torch.zeros(n, dtype=torch.float64), mask=mask)
        return i, p.lap_scipy.toarray(), float(p.lipschitz()[0, 0]), mask

    _graphcert.clear_cache()
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(build, range(24)))
    for i, lap, lip, mask in results:
        adj = adjs[i % 2]
        np.testing.assert_array_equal(lap, np.diag(adj.toarray().sum(1)) - adj.toarray())
        _graphcert.clear_cache()
        ref = GraphInverseProblem.from_scipy(
            adj, torch.zeros(adj.shape[0], dtype=torch.float64), mask=mask
        )
        assert lip == float(ref.lipschitz()[0, 0])


def test_graph_without_edges_runs_without_a_warning():
    """A graph with no edges: the Hessian operator shared a read-only cached array with
    torch, which printed torch's 'NumPy array is not writable' warning at the user (torch
    warns once per process, so the copy is checked directly too)."""
    import warnings

    from unrollsci.graph import StepController, UnrolledGraphGD
    from unrollsci.operators._matrix import _csr_from_scipy

    y = torch.randn(2, 1, dtype=torch.float64)
    p = GraphInverseProblem.from_networkx(nx.empty_graph(1), y, mask=torch.ones(2, 1) > 0)
    model = UnrolledGraphGD(4, StepController(hidden=8, hops=0, window=4), mode="scalar").double()
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*not writable")
        out = model(p)
    assert torch.isfinite(out.x).all()
    frozen = sp.csr_matrix(np.array([[2.0, -1.0], [-1.0, 2.0]]))
    frozen.data.flags.writeable = False
    t = _csr_from_scipy(frozen)
    assert t.values().data_ptr() != frozen.data.ctypes.data  # a copy, not a shared view
    writable = sp.csr_matrix(np.array([[2.0, -1.0], [-1.0, 2.0]]))
    assert _csr_from_scipy(writable).values().data_ptr() == writable.data.ctypes.data
