"""The graph module, audit round "dec10": each test fails on the code before the fix."""

from __future__ import annotations

import warnings

import networkx as nx
import numpy as np
import pytest
import scipy.linalg
import scipy.sparse as sp
import torch

from unrollsci.graph import (
    GraphInverseProblem,
    HeatKernel,
    StepController,
    UnrolledGraphGD,
    inpainting_problem,
    laplacian_matrix,
    road_graph,
    sensor_graph,
)
from unrollsci.operators import MatrixOperator


def _dense_h(p: GraphInverseProblem, a: np.ndarray) -> np.ndarray:
    """``A^T A + lam L`` from the operator's matrix ``a`` and the graph (numpy reference)."""
    lap = laplacian_matrix(sp.csr_matrix(p.adjacency)).toarray()
    return a.T @ a + p.lam * lap


def _operator_problem(matrix: torch.Tensor) -> tuple[GraphInverseProblem, MatrixOperator]:
    g = nx.cycle_graph(8)
    op = MatrixOperator(matrix)
    y = torch.randn(5, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    return GraphInverseProblem.from_networkx(g, y, operator=op, lam=0.5), op


def _check_against_dense(p: GraphInverseProblem, a: np.ndarray) -> None:
    h = _dense_h(p, a)
    ev = np.linalg.eigvalsh(h)
    assert float(p.lipschitz()) >= ev[-1] * (1 - 1e-12)
    assert float(p.lipschitz("gershgorin")) >= ev[-1] * (1 - 1e-12)
    assert 0 <= float(p.lambda_min_bound()) <= ev[0] * (1 + 1e-9)
    x_ref = np.linalg.solve(h, a.T @ p.y[0].numpy())
    np.testing.assert_allclose(p.solve_exact()[0].detach().numpy(), x_ref, rtol=1e-8, atol=1e-10)


def test_operator_edited_in_place_refreshes_bounds_and_solution():
    """``op.matrix.mul_(3)`` after ``p.lipschitz()``: the bound stayed 21.1 while
    lambda_max(H) became 165, and solve_exact kept the old x* (gradient norm 42)."""
    m = torch.randn(5, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    p, op = _operator_problem(m)
    _check_against_dense(p, m.numpy())
    with torch.no_grad():
        op.matrix.mul_(3.0)
    _check_against_dense(p, op.matrix.numpy())
    # the caller's operator is taken by reference: hessian products follow it too
    x = torch.randn(2, 8, dtype=torch.float64)
    h = _dense_h(p, op.matrix.numpy())
    np.testing.assert_allclose(p.hessian(x).numpy(), x.numpy() @ h, rtol=1e-12, atol=1e-12)


def test_learned_operator_after_an_optimizer_step_refreshes_bounds():
    """A ``MatrixOperator(nn.Parameter)`` trained between two uses of the problem."""
    m = torch.randn(5, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    p, op = _operator_problem(torch.nn.Parameter(m.clone()))
    assert isinstance(op.matrix, torch.nn.Parameter)
    _check_against_dense(p, m.numpy())
    opt = torch.optim.SGD(op.parameters(), lr=1.0)
    op.matrix.grad = 2.0 * op.matrix.detach()  # matrix = m - 2 m = -m
    opt.step()
    op.matrix.grad = -2.0 * op.matrix.detach()
    opt.step()  # matrix = -m * (1 + 2) = -3 m
    np.testing.assert_allclose(op.matrix.detach().numpy(), -3.0 * m.numpy())
    _check_against_dense(p, op.matrix.detach().numpy())


def test_operator_edited_to_lose_identifiability_is_refused():
    m = torch.randn(5, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    p, op = _operator_problem(m)
    p.lipschitz()
    with torch.no_grad():
        op.matrix.zero_()  # H = lam L: singular on a connected graph
    with pytest.raises(ValueError, match="No unique solution"):
        p.solve_exact()
    with pytest.raises(ValueError, match="No unique solution"):  # on every later use
        p.lipschitz()


def test_solve_exact_cg_tighter_tol_is_not_served_the_loose_solution():
    """After ``tol=1e-2``, ``tol=1e-12`` returned the loose solution (residual 8e-3)."""
    g = nx.grid_2d_graph(20, 20)
    n = g.number_of_nodes()
    gen = torch.Generator().manual_seed(0)
    mask = torch.rand(n, generator=gen) < 0.3
    p = GraphInverseProblem.from_networkx(
        g, torch.randn(n, dtype=torch.float64, generator=gen), mask=mask, lam=2.0
    )
    h = sp.diags(mask.double().numpy()) + 2.0 * laplacian_matrix(sp.csr_matrix(p.adjacency))
    b = mask.double().numpy() * p.y[0].numpy()

    def relres(x: torch.Tensor) -> float:
        return float(np.linalg.norm(h @ x[0].numpy() - b) / np.linalg.norm(b))

    loose = p.solve_exact("cg", tol=1e-2)
    assert relres(loose) <= 1e-2
    assert relres(p.solve_exact("cg", tol=1e-12)) <= 1e-11
    assert relres(p.solve_exact("cg", tol=1e-4)) <= 1e-11  # a tighter solve serves a looser tol


def _pyg_data(adj, seed):  # type: ignore[no-untyped-def]
    from torch_geometric.data import Data
    from torch_geometric.utils import from_scipy_sparse_matrix

    p = inpainting_problem(adj, 2, seed=seed, lam=1.0)
    ei, ew = from_scipy_sparse_matrix(adj)
    return Data(
        edge_index=ei,
        edge_weight=ew.double(),
        y=p.y.t().contiguous(),
        mask=p.mask.t().bool().contiguous(),
        lam=torch.tensor([1.0], dtype=torch.float64),
        num_nodes=adj.shape[0],
    )


@pytest.mark.parametrize("mode", ["scalar", "window"])
def test_controller_sample_gives_a_graph_the_same_output_alone_and_in_a_batch(mode):
    """With ``controller_sample`` one draw over all nodes of a PyG batch made each graph's
    output depend on the other graphs and on its position (relative differences 1e-4)."""
    from torch_geometric.data import Batch

    g1 = _pyg_data(sensor_graph(60, k=4, seed=1)[0], 1)
    g2 = _pyg_data(road_graph(80, seed=2)[0], 2)
    torch.manual_seed(0)
    model = UnrolledGraphGD(
        6, StepController(hidden=8, window=3), mode=mode, controller_sample=10
    ).double()
    n1, n2 = g1.num_nodes, g2.num_nodes
    with torch.no_grad():
        x1, x2 = model(g1).x, model(g2).x
        xb = model(Batch.from_data_list([g1, g2])).x
        xs = model(Batch.from_data_list([g2, g1])).x
    torch.testing.assert_close(xb[:, :n1], x1, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(xb[:, n1:], x2, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(xs[:, :n2], x2, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(xs[:, n2:], x1, rtol=1e-12, atol=1e-12)


def test_per_signal_problem_refuses_a_batch_of_another_size():
    """A ``(1, n)`` input to a problem with 3 per-signal masks returned ``(3, n)``."""
    adj = sensor_graph(40, k=4, seed=1)[0]
    p = inpainting_problem(adj, 3, seed=2, lam=0.5)
    assert p.mask is not None and p.mask.shape[0] == 3
    x1 = torch.randn(1, 40, dtype=torch.float64)
    for call in (
        p.hessian_operator(),
        p.hessian,
        p.gradient,
        p.objective,
        p.relative_error,
        p.forward_op,
        p.energy_norm_sq,
    ):
        with pytest.raises(ValueError, match="Expected 'x' with 3 rows"):
            call(x1)
    # the right batch still matches the dense per-signal Hessians
    x3 = torch.randn(3, 40, dtype=torch.float64)
    hx = p.hessian_operator()(x3)
    for i in range(3):
        h = np.diag(p.mask[i].numpy()) + 0.5 * laplacian_matrix(adj).toarray()
        np.testing.assert_allclose(hx[i].numpy(), h @ x3[i].numpy(), rtol=1e-12, atol=1e-12)


def test_shared_hessian_and_single_signal_still_take_any_rows():
    adj = sensor_graph(30, k=4, seed=3)[0]
    mask = torch.zeros(30)
    mask[::2] = 1
    y = torch.randn(3, 30, dtype=torch.float64)
    p = GraphInverseProblem.from_scipy(adj, y, mask=mask, lam=0.5)
    h = np.diag(mask.double().numpy()) + 0.5 * laplacian_matrix(adj).toarray()
    x = torch.randn(1, 30, dtype=torch.float64)
    np.testing.assert_allclose(p.hessian(x)[0].numpy(), h @ x[0].numpy(), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="Expected 'x' with 3 rows"):  # y differs per signal
        p.gradient(x)
    one = GraphInverseProblem.from_scipy(adj, y[0], mask=mask, lam=0.5)
    x4 = torch.randn(4, 30, dtype=torch.float64)
    g_ref = x4.numpy() @ h - mask.double().numpy() * y[0].numpy()
    np.testing.assert_allclose(one.gradient(x4).numpy(), g_ref, rtol=1e-12, atol=1e-12)


def _path_laplacian() -> sp.csr_matrix:
    return laplacian_matrix(sp.csr_matrix(np.array([[0, 1.0, 0], [1, 0, 1], [0, 1, 0]])))


def test_heat_kernel_refuses_a_matrix_that_is_not_a_laplacian():
    """``HeatKernel(-L)`` differed from ``expm(L)`` by 1.6e4; a non-symmetric matrix gave
    an operator whose adjoint was wrong by 52%."""
    lap = _path_laplacian()
    with pytest.raises(ValueError, match="diagonal entry"):
        HeatKernel(-lap)
    with pytest.raises(ValueError, match="off-diagonal entry"):
        HeatKernel(sp.csr_matrix(np.triu(np.ones((3, 3)))))
    skew = lap.toarray()
    skew[0, 1] = -2.0  # the signs of a Laplacian, not symmetric
    with pytest.raises(ValueError, match="symmetric"):
        HeatKernel(sp.csr_matrix(skew))
    bad = lap.toarray()
    bad[1, 1] = np.nan
    with pytest.raises(ValueError, match="finite"):
        HeatKernel(sp.csr_matrix(bad))
    with pytest.raises(TypeError, match="real"):
        HeatKernel(sp.csr_matrix(lap.toarray() * (1 + 0j)))


@pytest.mark.parametrize("kind", ["combinatorial", "normalized"])
def test_heat_kernel_of_a_laplacian_still_matches_expm(kind):
    adj = sensor_graph(20, k=4, seed=5)[0]
    lap = laplacian_matrix(adj, kind)
    k = HeatKernel(lap, 0.7).to_dense().numpy()
    np.testing.assert_allclose(k, scipy.linalg.expm(-0.7 * lap.toarray()), atol=1e-6)


def test_empty_batch_and_complex_adjacency_are_refused():
    adj = sp.csr_matrix(np.array([[0, 1.0], [1, 0]]))
    with pytest.raises(ValueError, match="at least one problem"):
        GraphInverseProblem(adj, torch.zeros(0, 2, dtype=torch.float64), mask=torch.tensor([1, 0]))
    cplx = sp.csr_matrix(np.array([[0, 1 + 1j], [1 - 1j, 0]]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's ComplexWarning reached the user
        with pytest.raises(TypeError, match="real edge weights"):
            GraphInverseProblem(cplx, torch.ones(2, dtype=torch.float64))
        g = nx.path_graph(3)
        g[0][1]["weight"] = 1 + 1j
        with pytest.raises(TypeError, match="real edge weights"):
            GraphInverseProblem.from_networkx(g, torch.ones(3, dtype=torch.float64))
        from torch_geometric.data import Data

        data = Data(
            edge_index=torch.tensor([[0, 1], [1, 0]]),
            edge_weight=torch.tensor([1 + 1j, 1 - 1j]),
            num_nodes=2,
            y=torch.ones(2, dtype=torch.float64),
        )
        with pytest.raises(TypeError, match="real edge weights"):
            GraphInverseProblem.from_pyg(data)
        with pytest.raises(TypeError, match="real or boolean 'mask'"):
            GraphInverseProblem(adj, torch.ones(2, dtype=torch.float64), mask=torch.ones(2) + 0j)
