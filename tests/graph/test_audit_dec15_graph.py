"""Audit of Dec 15, graph: a PyG batch keeps every graph's mask (and old certified data that
lost one are refused), the energy relative error and the objective loss are scale-free,
subnormal ``diag(H)`` and huge float32 data give finite iterates, ``edge_index`` must hold
integer node ids, and NaN logits give a finite window penalty.

References are dense numpy solves, the same computation on data scaled into range by an
exact power of two, or the float64 run of the same model."""

from __future__ import annotations

import math
import warnings

import networkx as nx
import numpy as np
import pytest
import scipy.sparse as sp
import torch
from torch_geometric.data import Batch, Data

from unrollsci.graph import (
    CertifiedBounds,
    GraphInverseProblem,
    StepController,
    UnrolledGraphGD,
    _pyg,
    graph_loss,
    problem_from_data,
)
from unrollsci.graph._window import _violation

F64 = torch.float64


def _path_ei(n: int) -> torch.Tensor:
    s = torch.arange(n - 1)
    return torch.stack([torch.cat([s, s + 1]), torch.cat([s + 1, s])])


def _path_laplacian(n: int) -> np.ndarray:
    a = np.diag(np.ones(n - 1), 1)
    a = a + a.T
    return np.diag(a.sum(1)) - a


def _model(mode: str, dtype: torch.dtype, seed: int = 0, layers: int = 4) -> UnrolledGraphGD:
    torch.manual_seed(seed)
    return UnrolledGraphGD(layers, StepController(hidden=4, window=2), mode=mode).to(dtype)


# --------------------------------------------------------------------- defect 1
def _two_graphs(dtype: torch.dtype = F64):
    g0 = Data(edge_index=_path_ei(4), y=torch.tensor([1.0, 2, 3, 4], dtype=dtype), num_nodes=4)
    mask = torch.tensor([True, False, False, False, True])
    g1 = Data(
        edge_index=_path_ei(5),
        y=torch.tensor([1.0, 0, 0, 0, 5], dtype=dtype),
        mask=mask,
        num_nodes=5,
    )
    m = mask.double().numpy()
    x1 = np.linalg.solve(np.diag(m) + _path_laplacian(5), m * [1.0, 0, 0, 0, 5])
    return g0, g1, x1


def test_batch_whose_first_graph_has_no_mask_keeps_every_mask():
    """PyG collates the first graph's keys: a first graph without a mask dropped every
    graph's mask, and graph 1's unobserved nodes were solved as observations of 0."""
    g0, g1, x1 = _two_graphs()
    c0, c1 = CertifiedBounds()(g0), CertifiedBounds()(g1)
    assert c0.mask.dtype == torch.bool and c0.mask.shape == (4,) and bool(c0.mask.all())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p = problem_from_data(Batch.from_data_list([c0, c1]))
        # the stored bounds and x* are used (no recomputation), and they are right
        assert "exact-direct" in p._cache
        x = p.solve_exact()[0].numpy()
    np.testing.assert_allclose(x[4:], x1, rtol=1e-12)
    x0 = np.linalg.solve(np.eye(4) + _path_laplacian(4), [1.0, 2, 3, 4])  # all observed
    np.testing.assert_allclose(x[:4], x0, rtol=1e-12)
    alone = problem_from_data(c1).solve_exact()[0].numpy()
    np.testing.assert_array_equal(x[4:], alone)
    # the transformed maskless graph is the problem without a mask, bit for bit
    plain = problem_from_data(g0)
    np.testing.assert_array_equal(problem_from_data(c0).solve_exact(), plain.solve_exact())
    m = _model("scalar", F64)
    with torch.no_grad():
        np.testing.assert_array_equal(m(c0).x, m(plain).x)


def _old_certified(d: Data) -> Data:
    """``d`` as CertifiedBounds wrote it before this fix: no mask where ``d`` had none, and
    the fingerprint of the problem without a mask."""
    c = CertifiedBounds()(d)
    if d.get("mask") is None:
        del c.mask
        key = _pyg._fingerprints(problem_from_data(c))[0]
        c.cert_key = torch.tensor(list(key), dtype=torch.uint8)[None]
    return c


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("signals", [None, 3])
def test_old_certified_batch_that_lost_a_mask_is_refused(dtype, signals):
    g0, g1, _ = _two_graphs(dtype)
    if signals:
        gen = torch.Generator().manual_seed(0)
        g0.y = torch.randn(4, signals, generator=gen, dtype=dtype)
        g1.y = torch.randn(5, signals, generator=gen, dtype=dtype)
    c0, c1 = _old_certified(g0), _old_certified(g1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p0 = problem_from_data(c0)  # old data alone still load, with their stored values
        assert "exact-direct" in p0._cache
        with pytest.raises(ValueError, match="mask on every graph"):
            problem_from_data(Batch.from_data_list([c0, c1]))
        # a y changed after the transform is no dropped mask: recomputed, no error
        c1y = c1.clone()
        c1y.y = c1y.y + 1.0
        del c1y.mask
        p = problem_from_data(Batch.from_data_list([c0, c1y]))
    y1 = c1y.y.double().numpy().reshape(5, -1)
    ref = np.linalg.solve(np.eye(5) + _path_laplacian(5), y1)
    np.testing.assert_allclose(p.solve_exact()[:, 4:].double().numpy(), ref.T, rtol=1e-5)


# --------------------------------------------------------------------- defect 2
@pytest.mark.parametrize(
    "dtype, exps", [(torch.float64, (-560, -530, 530, 560)), (torch.float32, (-83, -60, 60, 83))]
)
def test_relative_error_is_scale_free(dtype, exps):
    """The squared energy norms underflowed (0: an exact solve) or overflowed (NaN)."""
    adj = sp.block_diag([nx.to_scipy_sparse_array(nx.path_graph(6))] * 2, format="csr")
    gi = torch.tensor([0] * 6 + [1] * 6)
    mask = torch.tensor([1, 0, 0, 1, 0, 0] * 2, dtype=torch.bool)
    base = torch.tensor([[1.0, 0, 0, -2.0, 0, 0]], dtype=F64)
    for e in exps:
        # graph 0 at 2^e, graph 1 at 1: each block is scaled on its own
        y = torch.cat([base * 2.0**e, base], dim=1).to(dtype)
        p = GraphInverseProblem.from_scipy(adj, y, mask=mask, lam=1.0, graph_index=gi)
        xs = p.solve_exact()
        tol = 1e-12 if dtype == F64 else 1e-5
        np.testing.assert_allclose(p.relative_error(torch.zeros_like(xs)), [[1.0, 1.0]], rtol=tol)
        np.testing.assert_allclose(p.relative_error(xs * 0.5), [[0.5, 0.5]], rtol=tol)
        np.testing.assert_allclose(p.relative_error(xs * 1.25), [[0.25, 0.25]], rtol=tol)


# --------------------------------------------------------------------- defect 3
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("e", [0, -40, -54, -66, -83])
def test_objective_loss_is_scale_free(dtype, e):
    """The scale's absolute floor 1e-30 shrank the loss of data below ~1e-15 towards 0."""
    G = nx.path_graph(6)
    mask = torch.tensor([1, 0, 0, 1, 0, 0], dtype=torch.bool)
    y = torch.tensor([[1.0, 0, 0, -2.0, 0, 0]], dtype=F64) * 2.0**e
    p = GraphInverseProblem.from_networkx(G, y.to(dtype), mask=mask, lam=1.0)
    m = _model("scalar", dtype, layers=3)
    with torch.no_grad():
        loss = graph_loss(m, p, "objective").item()
        x = m(p).x.double().numpy()[0] / 2.0**e  # the model is linear in y
    # reference: (f(x) - f(0)) / (0.5 ||b||^2 / Lip) in float64 at scale 1
    h = np.diag(mask.double().numpy()) + _path_laplacian(6)
    b = (y[0] / 2.0**e).numpy()
    lip = p.lipschitz().item()
    ref = (0.5 * x @ h @ x - b @ x) / (0.5 * b @ b / lip)
    assert math.isclose(loss, ref, rel_tol=1e-10 if dtype == F64 else 1e-5)


# --------------------------------------------------------------------- defect 4
@pytest.mark.parametrize("mode", ["diagonal", "window_jacobi"])
def test_subnormal_hessian_diagonal_gives_finite_iterates(mode):
    """float32, lam 1e-40: 1 / diag(H) overflowed to inf and inf * 0 gave NaN iterates."""
    G = nx.path_graph(6)
    mask = torch.tensor([1, 0, 0, 1, 0, 0], dtype=torch.bool)
    out = {}
    for dtype in (torch.float32, torch.float64):
        y = torch.tensor([[1.0, 0, 0, -2.0, 0, 0]], dtype=dtype)
        p = GraphInverseProblem.from_networkx(G, y, mask=mask, lam=1e-40)
        m = _model(mode, dtype)
        res = m(p)
        m.zero_grad()
        graph_loss(m, p).backward()
        grads = [q.grad for q in m.parameters() if q.grad is not None]
        assert grads and all(bool(torch.isfinite(g).all()) for g in grads)
        out[dtype] = res.x.detach().double()
    assert bool(torch.isfinite(out[torch.float32]).all())
    # float64 has no subnormal here: the same model there is the reference
    np.testing.assert_allclose(out[torch.float32], out[torch.float64], rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------- defect 5
def test_pyg_edge_index_must_be_integer_node_ids():
    y = torch.tensor([1.0, 0.0, 2.0], dtype=F64)
    ei = torch.tensor([[0, 1, 1, 2], [1, 0, 2, 1]])
    for bad in (ei.double() + 0.9, ei.bool()):
        with pytest.raises(TypeError, match="integer data.edge_index"):
            problem_from_data(Data(edge_index=bad, y=y, num_nodes=3))
    for bad in (torch.tensor([[0, -1], [-1, 0]]), torch.tensor([[0, 3], [3, 0]])):
        with pytest.raises(ValueError, match=r"edge_index entries in \[0, num_nodes\) = \[0, 3\)"):
            problem_from_data(Data(edge_index=bad, y=y, num_nodes=3))
    # integer node ids of any integer dtype: the same problem
    a = problem_from_data(Data(edge_index=ei.int(), y=y, num_nodes=3)).solve_exact()
    ref = np.linalg.solve(np.eye(3) + _path_laplacian(3), y.numpy())
    np.testing.assert_allclose(a[0].numpy(), ref, rtol=1e-12)


# --------------------------------------------------------------------- defect 6
def test_window_violation_reads_nan_logits_as_zero():
    """float32 weights of 1e10: NaN logits, safe steps, finite x, but a NaN penalty (and
    graph_loss) before."""
    G = nx.cycle_graph(12)
    gen = torch.Generator().manual_seed(0)
    p = GraphInverseProblem.from_networkx(
        G, torch.randn(2, 12, generator=gen), mask=torch.arange(12) % 2 == 0
    )
    for mode in ("window", "window_jacobi"):
        m = UnrolledGraphGD(6, StepController(hidden=4, window=3), mode=mode)
        with torch.no_grad():
            for prm in m.parameters():
                prm.copy_(torch.randn(prm.shape, generator=gen) * 1e10)
        out = m(p)
        assert bool(torch.isfinite(out.x).all())
        loss = graph_loss(m, p)
        assert math.isfinite(loss.item())
        err = p.relative_error(out.x)
        ref = torch.log(err * err + 1e-30).mean() + 10.0 * out.violation
        assert math.isfinite(out.violation.item())
        np.testing.assert_allclose(loss.item(), ref.item(), rtol=1e-6)
    # the rule itself: a NaN logit is a 0 logit (as the scalar and diagonal modes read it)
    z = torch.tensor([[[0.3, float("nan"), -2.0]]], dtype=F64, requires_grad=True)
    lo, hi = torch.tensor([[0.1]], dtype=F64), torch.tensor([[4.0]], dtype=F64)
    v = _violation(z, lo, hi, 0.999)
    v0 = _violation(torch.tensor([[[0.3, 0.0, -2.0]]], dtype=F64), lo, hi, 0.999)
    assert v.item() == v0.item() and v.item() > 0
    v.backward()
    assert bool(torch.isfinite(z.grad).all())


# --------------------------------------------------------------------- defect 7
@pytest.mark.parametrize("mode", ["scalar", "diagonal", "window", "window_jacobi"])
def test_huge_float32_data_run_on_data_scaled_into_range(mode):
    """float32 y ~ 1e30 with lam 1e10: H g overflowed and the scalar and window modes
    returned NaN. The solver is linear in y: its result is that on y / 2^100, times 2^100."""
    G = nx.path_graph(12)
    mask = torch.zeros(12, dtype=torch.bool)
    mask[::3] = True
    y = torch.randn(1, 12, generator=torch.Generator().manual_seed(0)) * mask
    big = GraphInverseProblem.from_networkx(G, y * 2.0**100, mask=mask, lam=1e10)
    ref = GraphInverseProblem.from_networkx(G, y, mask=mask, lam=1e10)
    m = _model(mode, torch.float32)
    x0 = torch.randn(1, 12, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out, want = m(big), m(ref)
        out0, want0 = m(big, x0 * 2.0**100), m(ref, x0)
    assert bool(torch.isfinite(out.x).all())
    np.testing.assert_allclose(out.x / 2.0**100, want.x, rtol=1e-6, atol=0)
    for a, b in zip(out.iterates, want.iterates, strict=True):
        np.testing.assert_allclose(a / 2.0**100, b, rtol=1e-6, atol=0)
    # a start x0 of the data's size is scaled with it
    np.testing.assert_allclose(out0.x / 2.0**100, want0.x, rtol=1e-6, atol=0)
