"""The cheap controller: pooling over a seeded node sample (message passing on its k-hop
neighbourhood only), the local per-node head, and the fused Hessian product."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from unrollsci.graph import GraphInverseProblem, StepController, UnrolledGraphGD
from unrollsci.graph._sample import controller_sample
from unrollsci.train import load_checkpoint, save_checkpoint

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
MODES = ("scalar", "diagonal", "window", "window_jacobi")


def _randomize(model: torch.nn.Module, seed: int, scale: float) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for prm in model.parameters():
            prm.copy_(scale * torch.randn(prm.shape, generator=gen, dtype=prm.dtype))


def _problem(n: int = 80, seed: int = 0, batch: int = 2, device: str = "cpu", shared=False):
    G = nx.random_geometric_graph(n, 0.2, seed=seed)
    rng = np.random.default_rng(seed)
    for u, v in G.edges:
        G[u][v]["weight"] = float(rng.uniform(0.5, 2.0))
    mask = rng.random((1 if shared else batch, n)) < 0.5
    for comp in nx.connected_components(G):  # every component observed: H invertible
        mask[:, min(comp)] = True
    y = rng.standard_normal((batch, n)) * mask
    return GraphInverseProblem.from_networkx(
        G, torch.as_tensor(y, device=device), mask=torch.as_tensor(mask), lam=0.7
    )


def _model(mode: str, sample: int | None, seed: int = 0, hops: int = 2, **kw) -> UnrolledGraphGD:
    head = "local" if mode == "diagonal" else "mp"
    ctrl = StepController(hidden=8, hops=hops, window=4, node_head=head)
    return UnrolledGraphGD(
        8, ctrl, mode=mode, controller_sample=sample, controller_seed=seed, **kw
    ).double()


@pytest.mark.parametrize("mode", MODES)
def test_sample_of_every_node_equals_the_full_controller(device, mode):
    p = _problem(device=device)
    full, samp = _model(mode, None), _model(mode, p.num_nodes)
    _randomize(full, 3, 0.5)
    samp.load_state_dict(full.state_dict())
    full, samp = full.to(device), samp.to(device)
    with torch.no_grad():
        a, b = full(p), samp(p)
    torch.testing.assert_close(b.x, a.x, rtol=1e-12, atol=1e-12)
    for sa, sb in zip(a.steps, b.steps, strict=True):
        torch.testing.assert_close(sb, sa, rtol=1e-12, atol=1e-12)


def test_pooled_sample_is_exact_on_its_neighbourhood(device):
    """Message passing on the k-hop neighbourhood of the sample gives the sampled nodes
    their whole-graph embeddings: the graph heads equal those of the whole graph pooled
    over the same nodes."""
    p = _problem(n=150, seed=2, device=device)
    ctrl = StepController(hidden=8, hops=2, window=4).double().to(device)
    _randomize(ctrl, 5, 0.7)
    s = controller_sample(p, 6, 1, 2, torch.float64)
    assert 6 < s.nodes.numel() < p.num_nodes  # a proper subset: the test means something
    gen = torch.Generator().manual_seed(0)
    feat = torch.randn(2, p.num_nodes, 7, generator=gen, dtype=torch.float64).to(device)
    glob = torch.randn(2, 1, 4, generator=gen, dtype=torch.float64).to(device)
    w = p.edge_weight.double()
    seeds = s.nodes[s.pool]
    whole = ctrl(feat, glob, p.edge_index, w, p.block_index, 1, node_head=False, pool_index=seeds)
    part = ctrl(
        feat[:, s.nodes],
        glob,
        p.edge_index,
        w,
        s.block_index,
        1,
        adj=s.adj,
        node_head=False,
        pool_index=s.pool,
    )
    for key in ("scalar", "window", "graph"):
        torch.testing.assert_close(part[key], whole[key], rtol=1e-12, atol=1e-12)
    # ... and pooling over a different node set gives something else
    other = ctrl(feat, glob, p.edge_index, w, p.block_index, 1, node_head=False)
    assert not torch.allclose(other["graph"], whole["graph"])


def test_sample_per_graph_of_a_batch(device):
    graphs = [nx.cycle_graph(30), nx.grid_2d_graph(5, 6), nx.path_graph(3)]
    adj = nx.to_scipy_sparse_array(nx.disjoint_union_all(graphs), format="csr")
    gi = np.repeat(np.arange(3), [30, 30, 3])
    y = torch.randn(1, 63, dtype=torch.float64, device=device)
    p = GraphInverseProblem.from_scipy(adj, y, mask=torch.ones(63), graph_index=gi)
    s = controller_sample(p, 4, 0, 1, torch.float64)
    chosen = s.block_index[s.pool].cpu()
    assert torch.bincount(chosen, minlength=3).tolist() == [4, 4, 3]  # min(4, graph size)


@pytest.mark.parametrize("mode", MODES)
def test_seed_fixes_the_sample_and_the_result(mode):
    p = _problem(n=120, seed=4)
    a, b, c = _model(mode, 5, seed=7), _model(mode, 5, seed=7), _model(mode, 5, seed=8)
    _randomize(a, 1, 0.5)
    b.load_state_dict(a.state_dict())
    c.load_state_dict(a.state_dict())
    q = _problem(n=120, seed=4)  # a new problem object: nothing cached from p
    with torch.no_grad():
        xa, xb, xc = a(p).x, b(q).x, c(p).x
    assert torch.equal(xa, xb)
    s7 = controller_sample(p, 5, 7, 2, torch.float64)
    s8 = controller_sample(p, 5, 8, 2, torch.float64)
    assert not torch.equal(s7.nodes[s7.pool], s8.nodes[s8.pool])
    assert xc.shape == xa.shape


@pytest.mark.parametrize("mode", MODES)
def test_dtype_and_device_follow_the_input(device, mode):
    p32 = GraphInverseProblem.from_networkx(
        nx.grid_2d_graph(6, 6),
        torch.randn(2, 36, device=device),
        mask=torch.arange(36) % 2 == 0,
    )
    model = _model(mode, 3).float().to(device)
    with torch.no_grad():
        out = model(p32)
    assert out.x.dtype == torch.float32 and out.x.device.type == torch.device(device).type
    assert bool((p32.objective(out.x) < p32.objective(out.iterates[0])).all())


def _graph_problem(draw_n, m, seed, batch, p_obs, lam):
    rng = np.random.default_rng(seed)
    G = nx.gnm_random_graph(draw_n, m, seed=seed)
    for u, v in G.edges:
        G[u][v]["weight"] = float(rng.uniform(0.1, 3.0))
    mask = rng.random((batch, draw_n)) < p_obs
    for comp in nx.connected_components(G):
        comp = list(comp)
        for b in range(batch):
            if not mask[b, comp].any():
                mask[b, rng.choice(comp)] = True
    y = rng.standard_normal((batch, draw_n)) * mask
    return GraphInverseProblem.from_networkx(
        G, torch.as_tensor(y), mask=torch.as_tensor(mask), lam=lam
    )


@settings(max_examples=20, **SETTINGS)
@given(
    n=st.integers(6, 30),
    seed=st.integers(0, 2**31 - 1),
    batch=st.integers(1, 2),
    p_obs=st.floats(0.2, 1.0),
    lam=st.floats(0.1, 5.0),
    wseed=st.integers(0, 10_000),
    scale=st.floats(0.05, 5.0),
    sample=st.integers(1, 4),
    mode=st.sampled_from(MODES),
    every=st.sampled_from([1, 3]),
)
def test_guarantees_hold_for_random_weights(
    n, seed, batch, p_obs, lam, wseed, scale, sample, mode, every
):
    """Scalar and diagonal: every layer a certified descent step; window modes: every
    window contracts the energy error by its certificate q < 1."""
    p = _graph_problem(n, 2 * n, seed, batch, p_obs, lam)
    # controller_every: scalar and diagonal only (the window modes refuse it)
    every = every if mode in ("scalar", "diagonal") else 1
    model = _model(mode, sample, seed=wseed, hops=1, controller_every=every)
    _randomize(model, wseed, scale)
    with torch.no_grad():
        out = model(p)
    f = [p.objective(x)[:, 0] for x in out.iterates]
    tol = 1e-9 * (f[0].abs() + 1.0)
    if mode in ("scalar", "diagonal"):
        lip, rows = p.lipschitz(), p.gershgorin_rows()
        for k, s in enumerate(out.steps):
            bound = 2 / lip if mode == "scalar" else 2 / rows
            assert bool(((s > 0) & (s < bound)).all())
            assert bool((f[k + 1] <= f[k] + tol).all())
    else:
        fstar = p.objective(p.solve_exact())[:, 0]
        starts = out.window_starts + [len(out.steps)]
        for i, (a, b) in enumerate(zip(starts[:-1], starts[1:], strict=True)):
            q = out.certificates[i][:, 0]
            assert bool((q < 1).all())
            assert bool((f[b] - fstar <= q * q * (f[a] - fstar) + tol).all())


def test_checkpoints_round_trip_and_old_configs_load(tmp_path):
    p = _problem(n=40, seed=1)
    model = _model("diagonal", 5, seed=3)
    _randomize(model, 2, 0.3)
    path = save_checkpoint(model, tmp_path / "m.pt")
    loaded = load_checkpoint(path, expected=UnrolledGraphGD).double()
    assert loaded.controller_sample == 5 and loaded.controller.node_head == "local"
    with torch.no_grad():
        torch.testing.assert_close(loaded(p).x, model(p).x)
    # a config written before these options existed builds the old (full) controller
    cfg = UnrolledGraphGD(4, StepController(hidden=8), mode="scalar").get_config()
    cfg.pop("controller_sample"), cfg.pop("controller_seed")
    ccfg = cfg["controller"].get_config()
    ccfg.pop("node_head")
    cfg["controller"] = StepController(**ccfg)
    old = UnrolledGraphGD(**cfg)
    assert old.controller_sample is None and old.controller.node_head == "mp"


def test_bad_options():
    with pytest.raises(ValueError, match="controller_sample"):
        UnrolledGraphGD(3, controller_sample=0)
    with pytest.raises(TypeError, match="controller_sample"):
        UnrolledGraphGD(3, controller_sample=True)
    with pytest.raises(TypeError, match="controller_seed"):
        UnrolledGraphGD(3, controller_sample=4, controller_seed=1.5)
    with pytest.raises(ValueError, match="node_head='local'"):
        UnrolledGraphGD(3, StepController(), mode="diagonal", controller_sample=4)
    with pytest.raises(ValueError, match="node_head"):
        StepController(node_head="bogus")
    with pytest.raises(ValueError, match="local_feat"):
        ctrl = StepController(hidden=4, node_head="local")
        ei = torch.tensor([[0, 1], [1, 0]])
        ctrl(
            torch.randn(1, 2, 7), torch.randn(1, 1, 4), ei, torch.ones(2), torch.zeros(2).long(), 1
        )


def test_fused_hessian_equals_the_factored_product(device):
    for shared in (True, False):
        p = _problem(n=50, seed=3, device=device, shared=shared)
        x = torch.randn(2, 50, dtype=torch.float64, device=device)
        ref = p.adjoint_op(p.forward_op(x)) + p.lam * p.laplacian(x)
        torch.testing.assert_close(p.hessian(x), ref, rtol=1e-12, atol=1e-12)
        dense = torch.as_tensor(p.hessian_scipy(0).toarray(), device=device)
        torch.testing.assert_close(p.hessian(x)[0], dense @ x[0], rtol=1e-12, atol=1e-12)


def test_sample_is_shared_by_the_problems_on_a_graph():
    """The node sample depends on the graph, its blocks and the device only: a second
    problem on the same graph (another mask) gets the same object, and its solve equals the
    solve with nothing cached; another block structure or seed gets its own sample."""
    from unrollsci.graph import _graphcert

    model = _model("window_jacobi", 6, seed=3)
    _randomize(model, 2, 0.5)
    p, q = _problem(n=90, seed=5, batch=1), _problem(n=90, seed=5, batch=1)
    q_mask = q.mask.clone()
    q_mask[0, :10] = 1 - q_mask[0, :10]
    q_mask[0, 0] = 1
    q2 = GraphInverseProblem.from_scipy(q.adjacency, q.y * q_mask, mask=q_mask, lam=0.7)
    with torch.no_grad():
        model(p)
        shared = model(q2).x
        assert controller_sample(q2, 6, 3, 2, torch.float64) is controller_sample(
            p, 6, 3, 2, torch.float64
        )
        _graphcert.clear_cache()
        fresh = GraphInverseProblem.from_scipy(q.adjacency, q.y * q_mask, mask=q_mask, lam=0.7)
        assert torch.equal(model(fresh).x, shared)
    gi = np.repeat([0, 1], [40, 50])
    # two graphs: the edges between the two node sets dropped (a batch has none)
    within = sp.csr_matrix(q.adjacency.multiply(gi[:, None] == gi[None, :]))
    full = torch.ones_like(q.mask)  # every component observed
    blocks = GraphInverseProblem.from_scipy(within, q.y, mask=full, graph_index=gi)
    sb = controller_sample(blocks, 6, 3, 2, torch.float64)
    assert sb is not controller_sample(p, 6, 3, 2, torch.float64)
    assert sb.block_index.unique().numel() == 2
