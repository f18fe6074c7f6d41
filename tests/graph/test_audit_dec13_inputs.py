"""Audit of Dec 13, graph inputs: self-loops cancel exactly in both Laplacians, a PyG batch
keeps every graph's edge weights, one-directional edges are refused, a numerically
singular or overflowing Hessian gives a ValueError, and bad PyG input a clear message.

References are dense numpy computations from the exact weights."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from torch_geometric.data import Batch, Data

from unrollsci import UnrollsciWarning
from unrollsci.graph import (
    CertifiedBounds,
    GraphInverseProblem,
    laplacian_matrix,
    problem_from_data,
    validate_adjacency,
)


def _path(w01: float, w12: float = 1.0, loop: float = 0.0) -> np.ndarray:
    w = np.array([[loop, w01, 0.0], [w01, 0.0, w12], [0.0, w12, 0.0]])
    return w


def _dense_laplacian(w: np.ndarray, kind: str) -> np.ndarray:
    """networkx's convention from the exact weights: ``D - W`` without the self-loops on
    top, scaled by the degree with them for the normalized kind."""
    off = w - np.diag(np.diag(w))
    lap = np.diag(off.sum(axis=1)) - off
    if kind == "normalized":
        d = w.sum(axis=1)
        inv = np.where(d > 0, 1.0 / np.sqrt(np.where(d > 0, d, 1.0)), 0.0)
        lap = inv[:, None] * lap * inv[None, :]
    return lap


# --------------------------------------------------------------------- defect 2
@pytest.mark.parametrize("loop, edge", [(1e15, 0.3), (1e16, 1.0), (1e9, 1e-8)])
def test_combinatorial_self_loop_cancels_exactly(loop, edge):
    """L_ii = fl(d_i + W_ii) - W_ii rounded the node's edges away (0.25 for 0.3, 0 for 1:
    H indefinite, x* a saddle point); the loop must contribute exactly nothing."""
    w, wl = _path(edge), _path(edge, loop=loop)
    lap = laplacian_matrix(sp.csr_matrix(wl)).toarray()
    np.testing.assert_array_equal(lap, _dense_laplacian(w, "combinatorial"))
    y = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64)
    mask = torch.tensor([0, 1, 1])
    p = GraphInverseProblem.from_scipy(sp.csr_matrix(wl), y, mask=mask, lam=1.0)
    h = np.diag(mask.double().numpy()) + _dense_laplacian(w, "combinatorial")
    np.testing.assert_allclose(p.solve_exact()[0].numpy(), np.linalg.solve(h, y.numpy()), rtol=1e-8)
    assert p.lambda_min_bound().item() <= np.linalg.eigvalsh(h)[0]


@pytest.mark.parametrize("loop, edge", [(1e12, 0.3), (1e16, 1.0)])
def test_normalized_self_loop_is_the_scaled_loop_free_laplacian(loop, edge):
    """The normalized diagonal 1 - W_ii / d_i cancelled (1e-4 relative off at 1e12; 0 at
    1e16 while the off-diagonal entries stayed: L indefinite). Now sum_{j != i} W_ij / d_i
    to rounding."""
    wl = _path(edge, loop=loop)
    lap = laplacian_matrix(sp.csr_matrix(wl), "normalized").toarray()
    ref = _dense_laplacian(wl, "normalized")
    np.testing.assert_allclose(lap, ref, rtol=1e-14, atol=0)
    # congruent to the PSD loop-free Laplacian: its eigenvalues are >= 0 up to rounding
    assert np.linalg.eigvalsh(lap)[0] >= -1e-15
    # a graph without self-loops: the same formula as before, bit for bit
    w = _path(0.7, 2.5)
    d = w.sum(axis=1)
    for kind in ("combinatorial", "normalized"):
        got = laplacian_matrix(sp.csr_matrix(w), kind).toarray()
        want = sp.diags(d) - sp.csr_matrix(w)
        if kind == "normalized":
            want = sp.diags(1 / np.sqrt(d)) @ want @ sp.diags(1 / np.sqrt(d))
        np.testing.assert_array_equal(got, want.toarray())


# --------------------------------------------------------------------- defect 3
def _pyg_pair() -> tuple[Data, Data, np.ndarray]:
    lam = torch.tensor([1.0], dtype=torch.float64)
    single = Data(
        edge_index=torch.zeros(2, 0, dtype=torch.long),
        num_nodes=1,
        y=torch.tensor([1.0], dtype=torch.float64),
        mask=torch.tensor([True]),
        lam=lam,
    )
    w = np.array([[0.0, 100.0, 0.0], [100.0, 0.0, 0.01], [0.0, 0.01, 0.0]])
    path = Data(
        edge_index=torch.tensor([[0, 1, 1, 2], [1, 0, 2, 1]]),
        edge_weight=torch.tensor([100.0, 100.0, 0.01, 0.01], dtype=torch.float64),
        num_nodes=3,
        y=torch.tensor([1.0, 0.0, -1.0], dtype=torch.float64),
        mask=torch.tensor([True, False, True]),
        lam=lam,
    )
    m = np.array([1.0, 0.0, 1.0])
    x_ref = np.linalg.solve(np.diag(m) + _dense_laplacian(w, "combinatorial"), m * [1, 0, -1])
    return single, path, x_ref


def test_batch_whose_first_graph_has_no_edge_weight_keeps_the_weights():
    """PyG collates the first graph's keys: an unweighted first graph dropped every other
    graph's edge_weight and the batch was solved on unit weights, silently."""
    single, path, x_ref = _pyg_pair()
    cs, cp = CertifiedBounds()(single), CertifiedBounds()(path)
    assert cs.edge_weight is not None and cs.edge_weight.numel() == 0  # always written
    batch = Batch.from_data_list([cs, cp])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p = problem_from_data(batch)
    np.testing.assert_allclose(p.solve_exact()[0, 1:].numpy(), x_ref, rtol=1e-10)
    assert p.lipschitz()[0, 1].item() >= 200.0  # the path's lambda_max is about 201
    # certified data whose edge_weight is gone: refused, not solved on unit weights
    bare = cs.clone()
    del bare.edge_weight
    with pytest.raises(ValueError, match="edge_weight on every graph"):
        problem_from_data(Batch.from_data_list([bare, cp]))


def test_graph_changed_after_certified_bounds_warns_and_recomputes():
    _, path, _ = _pyg_pair()
    cp = CertifiedBounds()(path)
    changed = cp.clone()
    changed.edge_weight = torch.tensor([1.0, 1.0, 2.0, 2.0], dtype=torch.float64)
    with pytest.warns(UnrollsciWarning, match="differ from the graph"):
        p = problem_from_data(changed)
    w = _path(1.0, 2.0)
    m = np.array([1.0, 0.0, 1.0])
    x_ref = np.linalg.solve(np.diag(m) + _dense_laplacian(w, "combinatorial"), m * [1, 0, -1])
    np.testing.assert_allclose(p.solve_exact()[0].numpy(), x_ref, rtol=1e-12)
    # a changed y or mask (a random-mask transform) recomputes without a warning
    other = cp.clone()
    other.y = other.y * 2.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        problem_from_data(other)


# --------------------------------------------------------------------- defect 4
def test_one_directional_or_mismatched_edge_is_refused():
    """Asymmetry was measured against max|W|: beside 1e8 weights a one-directional 1e-6
    edge passed and H had a zero row (solve_exact: bare RuntimeError)."""
    w = np.zeros((3, 3))
    w[0, 1] = w[1, 0] = 1e8
    w[1, 2] = 1e-6
    y = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    with pytest.raises(ValueError, match="symmetric, every edge stored in both directions"):
        GraphInverseProblem.from_scipy(sp.csr_matrix(w), y, mask=torch.tensor([1, 0, 0]))
    w[2, 1] = 2e-6  # both stored, but a factor 2 apart
    with pytest.raises(ValueError, match="symmetric entry by entry"):
        validate_adjacency(sp.csr_matrix(w))
    w[2, 1] = np.nextafter(1e-6, 1.0)  # a rounding-level difference is accepted
    p = GraphInverseProblem.from_scipy(sp.csr_matrix(w), y, mask=torch.tensor([1, 0, 1]))
    assert p.num_nodes == 3


# --------------------------------------------------------------------- defect 5
def test_numerically_singular_hessian_gives_a_value_error():
    """Weights 1e8 and 1e-9: in float64 the small one is rounded out of the degree and
    SuperLU's bare 'RuntimeError: Factor is exactly singular' escaped solve_exact."""
    w = _path(1e8, 1e-9)
    p = GraphInverseProblem.from_scipy(
        sp.csr_matrix(w),
        torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64),
        mask=torch.tensor([0.0, 0.0, 1.0]),
        lam=1.0,
    )
    with pytest.raises(ValueError, match="numerically singular"):
        p.solve_exact(method="direct")


def test_hessian_overflowing_the_dtype_is_refused():
    """float32, lam 1e30, weights 1e10: lam L ~ 2e40 > 3.4e38; Lip was inf and every
    output NaN, silently."""
    w = sp.csr_matrix(_path(1e10))
    mask = torch.tensor([1, 0, 1])
    with pytest.raises(ValueError, match="overflow torch.float32"):
        GraphInverseProblem.from_scipy(w, torch.ones(3), mask=mask, lam=1e30)
    # the same problem in float64 is representable: accepted, finite bounds
    p = GraphInverseProblem.from_scipy(w, torch.ones(3, dtype=torch.float64), mask=mask, lam=1e30)
    lip = p.lipschitz().item()
    assert np.isfinite(lip) and lip >= 2e40 * 0.99


# --------------------------------------------------------------------- defect 8
def test_pyg_bad_edge_weight_length_and_nan_lam_are_named():
    d = Data(
        edge_index=torch.tensor([[0, 1], [1, 0]]),
        edge_weight=torch.tensor([1.0], dtype=torch.float64),
        num_nodes=2,
        y=torch.ones(2, dtype=torch.float64),
    )
    with pytest.raises(ValueError, match=r"one edge weight per edge of edge_index \(2"):
        problem_from_data(d)
    d = Data(
        edge_index=torch.tensor([[0, 1], [1, 0]]),
        num_nodes=2,
        y=torch.ones(2, dtype=torch.float64),
        lam=torch.tensor([float("nan")], dtype=torch.float64),
    )
    with pytest.raises(ValueError, match="finite data.lam"):
        problem_from_data(d)
