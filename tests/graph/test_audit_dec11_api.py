"""Audit (Dec 11, API): heat-kernel options outside operator="heat", controller_every in the
window modes, and GraphInverseProblem.objective against the documented formula
``f(x) = 0.5 ||m o (B x - y)||^2 + 0.5 lam x^T L x`` (dense numpy references)."""

import networkx as nx
import numpy as np
import pytest
import scipy.linalg
import torch

from unrollsci.graph import GraphInverseProblem, StepController, UnrolledGraphGD
from unrollsci.operators import MatrixOperator

F64 = torch.float64


# ------------------------------------------------------ tau / heat_degree outside "heat"
def _operators(n):
    mat = torch.randn(n + 2, n, dtype=F64, generator=torch.Generator().manual_seed(0))
    return {"mask": None, "matrix": MatrixOperator(mat)}


@pytest.mark.parametrize("which", ["mask", "matrix"])
@pytest.mark.parametrize("option", [{"tau": 5.0}, {"heat_degree": 3}, {"tau": 0.5}])
def test_heat_options_refused_without_the_heat_kernel(which, option):
    G = nx.path_graph(5)
    op = _operators(5)[which]
    y = torch.randn(1, 5 if op is None else 7, dtype=F64)
    mask = torch.ones(5, dtype=torch.bool) if op is None else None
    name = next(iter(option))
    with pytest.raises(ValueError, match=f"{name}=.*operator='heat'"):
        GraphInverseProblem.from_networkx(G, y, mask=mask, operator=op, **option)
    with pytest.raises(ValueError, match=f"{name}="):
        GraphInverseProblem.from_scipy(nx.to_scipy_sparse_array(G), y, operator=op, **option)


def test_heat_options_accepted_with_the_heat_kernel_and_at_their_defaults():
    G = nx.path_graph(6)
    y = torch.randn(1, 6, dtype=F64)
    p = GraphInverseProblem.from_networkx(G, y, operator="heat", tau=0.7, heat_degree=40)
    assert (p.heat.tau, p.heat.degree) == (0.7, 40)
    # the defaults, written out, stay accepted for every operator
    GraphInverseProblem.from_networkx(G, y, mask=torch.ones(6), tau=1.0, heat_degree=30)


# ------------------------------------------------------- controller_every in window modes
@pytest.mark.parametrize("mode", ["window", "window_jacobi"])
def test_controller_every_refused_in_window_modes(mode):
    with pytest.raises(ValueError, match=f"controller_every.*mode='{mode}'"):
        UnrolledGraphGD(10, StepController(hidden=4, window=5), mode=mode, controller_every=5)
    model = UnrolledGraphGD(10, StepController(hidden=4, window=5), mode=mode)
    # a stored config (controller_every=1) rebuilds the model
    assert UnrolledGraphGD(**model.get_config()).controller_every == 1


@pytest.mark.parametrize("mode", ["scalar", "diagonal"])
def test_controller_every_still_accepted_in_scalar_and_diagonal(mode):
    model = UnrolledGraphGD(10, StepController(hidden=4), mode=mode, controller_every=3)
    assert UnrolledGraphGD(**model.get_config()).controller_every == 3


# ----------------------------------------------------------------- objective formula
def _dense_objective(b_mat, y, m, lam, lap, x):
    """0.5 ||m o (B x - y)||^2 + 0.5 lam x^T L x per signal (one block)."""
    r = m * (x @ b_mat.T - y)
    return 0.5 * (r * r).sum(-1) + 0.5 * lam * np.einsum("bi,ij,bj->b", x, lap, x)


def _case(kind, masked, seed=0):
    rng = np.random.default_rng(seed)
    G = nx.connected_watts_strogatz_graph(9, 4, 0.3, seed=seed)
    n, lam, tau = 9, 0.7, 0.4
    lap = nx.laplacian_matrix(G, nodelist=list(G.nodes)).toarray().astype(float)
    kw = {"lam": lam}
    if kind == "mask":
        b_mat = np.eye(n)
    elif kind == "heat":
        b_mat = scipy.linalg.expm(-tau * lap)
        kw |= {"operator": "heat", "tau": tau}
    else:
        b_mat = rng.standard_normal((n + 3, n))
        kw["operator"] = MatrixOperator(torch.as_tensor(b_mat))
    out = b_mat.shape[0]
    y = 3.0 * rng.standard_normal((2, out))  # garbage at unobserved entries included
    m = np.ones((1, out))
    if masked:
        m = (rng.random((2, out)) < 0.5).astype(float)
        m[:, 0] = 1.0
        kw["mask"] = torch.as_tensor(m)
    p = GraphInverseProblem.from_networkx(G, torch.as_tensor(y), **kw)
    return p, b_mat, y, m, lam, lap


@pytest.mark.parametrize("masked", [False, True], ids=["no-mask", "mask"])
@pytest.mark.parametrize("kind", ["mask", "heat", "operator"])
def test_objective_is_the_documented_formula(kind, masked):
    p, b_mat, y, m, lam, lap = _case(kind, masked)
    x = np.random.default_rng(5).standard_normal((2, p.num_nodes))
    got = p.objective(torch.as_tensor(x))
    assert got.shape == (2, 1)
    ref = _dense_objective(b_mat, y, m, lam, lap, x)
    np.testing.assert_allclose(got[:, 0].numpy(), ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", ["mask", "heat", "operator"])
def test_objective_and_gradient_agree_with_a_mask(kind):
    """The objective is the function whose gradient is ``gradient()`` (central differences
    in float64): the documented f, with or without a mask."""
    p, *_ = _case(kind, True, seed=1)
    x = torch.as_tensor(np.random.default_rng(2).standard_normal((2, p.num_nodes)))
    grad = p.gradient(x)
    h = 1e-5
    for i in (0, 3, 8):
        e = torch.zeros_like(x)
        e[:, i] = h
        fd = (p.objective(x + e) - p.objective(x - e))[:, 0] / (2 * h)
        torch.testing.assert_close(fd, grad[:, i], rtol=1e-6, atol=1e-6)


def test_objective_per_block_for_a_batch_of_graphs():
    """Two graphs in one problem (graph_index): one documented f per graph."""
    a = nx.to_scipy_sparse_array(nx.disjoint_union(nx.cycle_graph(4), nx.path_graph(5)))
    gi = np.array([0] * 4 + [1] * 5)
    rng = np.random.default_rng(3)
    y = rng.standard_normal((1, 9))
    m = (rng.random((1, 9)) < 0.6).astype(float)
    m[0, [0, 4]] = 1.0
    p = GraphInverseProblem.from_scipy(
        a, torch.as_tensor(y), mask=torch.as_tensor(m[0]), lam=0.3, graph_index=gi
    )
    x = rng.standard_normal((1, 9))
    lap = np.diag(np.asarray(a.sum(1)).ravel()) - a.toarray()
    got = p.objective(torch.as_tensor(x))[0].numpy()
    for blk in (0, 1):
        s = gi == blk
        ref = _dense_objective(np.eye(s.sum()), y[:, s], m[:, s], 0.3, lap[np.ix_(s, s)], x[:, s])
        np.testing.assert_allclose(got[blk], ref[0], rtol=1e-12)


def test_class_docstring_example_objective():
    """The class docstring's example: objective(0) is 0.5 ||m o y||^2 (unobserved y
    ignored), 0.5 (0 + 4 + 16) = 10."""
    G = nx.cycle_graph(6)
    y = torch.arange(6.0, dtype=F64)
    mask = torch.tensor([1, 0, 1, 0, 1, 0])
    p = GraphInverseProblem.from_networkx(G, y, mask=mask)
    ref = 0.5 * float(((mask.numpy() * y.numpy()) ** 2).sum())
    assert float(p.objective(torch.zeros(1, 6, dtype=F64))) == pytest.approx(ref, rel=1e-14)


def test_sampling_options_refused_without_a_sample():
    """controller_seed / controller_full_up_to were accepted and ignored without
    controller_sample; q_max in the scalar and diagonal modes."""
    from unrollsci.graph import UnrolledGraphGD

    with pytest.raises(ValueError, match="only with controller_sample"):
        UnrolledGraphGD(3, mode="window", controller_seed=3)
    with pytest.raises(ValueError, match="only with controller_sample"):
        UnrolledGraphGD(3, mode="window", controller_full_up_to=30)
    with pytest.raises(ValueError, match="q_max only with a window mode"):
        UnrolledGraphGD(3, mode="scalar", q_max=0.9)
    UnrolledGraphGD(3, mode="window", controller_sample=10, controller_seed=3)  # acts there
    UnrolledGraphGD(3, mode="window", q_max=0.9)
    UnrolledGraphGD(3, mode="scalar", q_max=0.999)  # the default, passed explicitly
