"""The backup controller of the window modes, the shrinking hops of the sampled controller
and pooling small graphs in full (``controller_full_up_to``)."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from unrollsci import DtypeMismatchError
from unrollsci.graph import GraphInverseProblem, StepController, UnrolledGraphGD
from unrollsci.graph._sample import controller_sample
from unrollsci.graph._window import equal_steps_certificate
from unrollsci.train import load_checkpoint, save_checkpoint

WINDOW_MODES = ("window", "window_jacobi")


def _problem(n: int = 90, seed: int = 0, batch: int = 3, p_obs: float = 0.5):
    G = nx.random_geometric_graph(n, 0.2, seed=seed)
    rng = np.random.default_rng(seed)
    for u, v in G.edges:
        G[u][v]["weight"] = float(rng.uniform(0.5, 2.0))
    mask = rng.random((batch, n)) < p_obs
    for comp in nx.connected_components(G):  # every component observed: H invertible
        mask[:, min(comp)] = True
    y = torch.as_tensor(rng.standard_normal((batch, n)) * mask)
    return GraphInverseProblem.from_networkx(G, y, mask=torch.as_tensor(mask), lam=0.7)


def _ctrl(
    seed: int, bias: float | None = None, hops: int = 2, window: int = 4, scale: float = 3.0
) -> StepController:
    """A random controller (weights ``scale`` times the initial ones; 1: roots near
    Chebyshev's, which pass); ``bias``: window head weights 0 and every root logit
    ``bias`` (-12: roots at the interval's lower end, which never pass)."""
    torch.manual_seed(seed)
    ctrl = StepController(hidden=8, hops=hops, window=window).double()
    with torch.no_grad():
        for prm in ctrl.parameters():
            prm.mul_(scale)
        if bias is not None:
            ctrl.head_window.weight.zero_()
            ctrl.head_window.bias.fill_(bias)
    return ctrl


def _model(mode, ctrl, backup=None, layers: int = 8, **kw) -> UnrolledGraphGD:
    return UnrolledGraphGD(layers, ctrl, mode=mode, backup=backup, **kw).double().eval()


class _Counting(StepController):
    calls = 0

    def forward(self, *args, **kwargs):
        type(self).calls += 1
        return super().forward(*args, **kwargs)


@pytest.mark.parametrize("mode", WINDOW_MODES)
def test_backup_never_runs_where_the_controller_passes(mode):
    """Learned roots that pass: the output is that of the model without a backup, bit for
    bit, and the backup is never evaluated."""
    p = _problem()
    primary = _ctrl(0, scale=1.0)
    backup = _Counting(hidden=8, hops=2, window=4).double()
    _Counting.calls = 0
    with torch.no_grad():
        a = _model(mode, primary)(p)
        b = _model(mode, primary, backup)(p)
    assert bool(torch.stack(a.certified).all())
    assert _Counting.calls == 0
    assert torch.equal(a.x, b.x)
    assert not bool(torch.stack(b.backup).any())


@pytest.mark.parametrize("mode", WINDOW_MODES)
def test_backup_roots_run_where_the_controller_fails(mode):
    """Learned roots that fail everywhere: the backup's roots run (on the same features),
    so the result equals the backup controller run alone, and every window counts as
    learned and as the backup's. Without the backup the same windows fall back."""
    p = _problem()
    bad, good = _ctrl(0, bias=-12.0), _ctrl(1, scale=1.0)
    with torch.no_grad():
        alone = _model(mode, bad)(p)
        cascade = _model(mode, bad, good)(p)
        reference = _model(mode, good)(p)
    assert not bool(torch.stack(alone.certified).any())  # the controller alone falls back
    assert bool(torch.stack(reference.certified).all())
    assert bool(torch.stack(cascade.certified).all())
    assert bool(torch.stack(cascade.backup).all())
    torch.testing.assert_close(cascade.x, reference.x, rtol=1e-13, atol=1e-13)
    for qa, qb in zip(cascade.certificates, reference.certificates, strict=True):
        torch.testing.assert_close(qa, qb, rtol=0, atol=0)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), p_obs=st.floats(0.1, 0.9))
def test_cascade_keeps_the_certificate(seed, p_obs):
    """Random weights in both controllers: every window runs steps whose certificate is
    below one, the energy-norm error contracts by it over the window, and a window that
    ran the backup's roots is one whose own learned roots failed."""
    p = _problem(n=60, seed=seed % 7, batch=2, p_obs=p_obs)
    model = _model("window_jacobi", _ctrl(seed, hops=1), _ctrl(seed + 1, hops=1), layers=8)
    with torch.no_grad():
        out = model(p)
    x_star = p.solve_exact()
    errors = [p.relative_error(x, x_star) for x in out.iterates]
    for k, q, used in zip(out.window_starts, out.certificates, out.backup, strict=True):
        assert bool((q < 1).all())
        end = min(k + 4, len(errors) - 1)
        assert bool((errors[end] <= q * errors[k] * (1 + 1e-9) + 1e-12).all())
        assert used.dtype == torch.bool
    solo = _model("window_jacobi", model.controller, layers=8)
    with torch.no_grad():
        first = solo(p)
    # in the first window both start from the same state: the backup ran exactly where
    # the controller's own roots failed
    assert torch.equal(out.backup[0], ~first.certified[0] & out.certified[0])


def test_backup_round_trips_through_a_checkpoint(tmp_path):
    p = _problem()
    model = _model(
        "window_jacobi",
        _ctrl(0, bias=-12.0),
        _ctrl(1, scale=1.0),
        controller_sample=20,
        controller_full_up_to=30,
    )
    path = save_checkpoint(model, tmp_path / "cascade.pt")
    back = load_checkpoint(path, expected=UnrolledGraphGD).double().eval()
    assert back.backup is not None and back.controller_full_up_to == 30
    with torch.no_grad():
        a, b = model(p), back(p)
    torch.testing.assert_close(a.x, b.x, rtol=0, atol=0)
    assert bool(torch.stack(b.backup).any())


def test_backup_bad_input():
    ctrl = StepController(hidden=8, hops=2, window=4)
    with pytest.raises(ValueError, match="window mode"):
        UnrolledGraphGD(4, ctrl, mode="scalar", backup=StepController(hidden=8, window=4))
    with pytest.raises(ValueError, match="window and hops"):
        UnrolledGraphGD(4, ctrl, mode="window", backup=StepController(hidden=8, window=5))
    with pytest.raises(ValueError, match="window and hops"):
        UnrolledGraphGD(4, ctrl, mode="window", backup=StepController(window=4, hops=1))
    with pytest.raises(TypeError, match="StepController backup"):
        UnrolledGraphGD(4, ctrl, mode="window", backup=torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="controller_full_up_to"):
        UnrolledGraphGD(4, ctrl, mode="window", controller_full_up_to=-1)
    for bad in (1.5, True, "5"):
        with pytest.raises(TypeError, match="controller_full_up_to"):
            UnrolledGraphGD(4, ctrl, mode="window", controller_full_up_to=bad)


@pytest.mark.parametrize("hops", [0, 1, 2, 3])
def test_shrinking_hops_equal_message_passing_on_the_neighbourhood(hops):
    """``hop_rows`` (each hop only on the nodes the pooled ones still need) gives the graph
    heads of message passing on the whole neighbourhood, and of the whole graph pooled
    over the sample."""
    p = _problem(n=150, seed=2)
    torch.manual_seed(5)
    ctrl = StepController(hidden=8, hops=hops, window=4).double()
    with torch.no_grad():
        for prm in ctrl.parameters():
            prm.mul_(2.0)
    s = controller_sample(p, 6, 1, hops, torch.float64)
    if hops >= 1:
        assert 6 < s.nodes.numel() < p.num_nodes
    assert len(s.hop_rows) == hops
    gen = torch.Generator().manual_seed(0)
    feat = torch.randn(2, p.num_nodes, 7, generator=gen, dtype=torch.float64)
    glob = torch.randn(2, 1, 4, generator=gen, dtype=torch.float64)
    w = p.edge_weight.double()
    args = (p.edge_index, w)
    whole = ctrl(feat, glob, *args, p.block_index, 1, node_head=False, pool_index=s.nodes[s.pool])
    part = ctrl(
        feat[:, s.nodes],
        glob,
        *args,
        s.block_index,
        1,
        adj=s.adj,
        node_head=False,
        pool_index=s.pool,
    )
    shrunk = ctrl(
        feat[:, s.nodes], glob, *args, s.block_index, 1, node_head=False, hop_rows=s.hop_rows
    )
    for key in ("scalar", "window", "graph"):
        torch.testing.assert_close(shrunk[key], part[key], rtol=1e-13, atol=1e-13)
        torch.testing.assert_close(shrunk[key], whole[key], rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="hop_rows"):
        ctrl(feat[:, s.nodes], glob, *args, s.block_index, 1, node_head=True, hop_rows=s.hop_rows)


def test_full_up_to_pools_small_graphs_in_full():
    """A graph of at most ``controller_full_up_to`` nodes runs the controller on every node
    (the result of the model without a sample); a larger one is sampled. In a batch of
    graphs the rule is per graph."""
    p = _problem(n=90)
    ctrl = _ctrl(3)
    full = _model("window_jacobi", ctrl)
    small = _model("window_jacobi", ctrl, controller_sample=10, controller_full_up_to=90)
    sampled = _model("window_jacobi", ctrl, controller_sample=10, controller_full_up_to=89)
    with torch.no_grad():
        a, b, c = full(p), small(p), sampled(p)
    torch.testing.assert_close(b.x, a.x, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(c.x, a.x, rtol=1e-6, atol=0)
    graphs = [nx.cycle_graph(30), nx.grid_2d_graph(8, 8)]
    adj = nx.to_scipy_sparse_array(nx.disjoint_union_all(graphs), format="csr")
    gi = np.repeat(np.arange(2), [30, 64])
    y = torch.randn(1, 94, dtype=torch.float64)
    q = GraphInverseProblem.from_scipy(adj, y, mask=torch.ones(94), graph_index=gi)
    s = controller_sample(q, 5, 0, 1, torch.float64, full_up_to=40)
    chosen = s.block_index[s.pool]
    assert torch.bincount(chosen, minlength=2).tolist() == [30, 5]  # the cycle in full
    assert int((s.block_index == 1).sum()) < 64  # the grid: 5 nodes and their neighbours


def test_backup_in_another_dtype_is_refused_clearly():
    """A backup left in float32 behind a float64 controller would crash deep in torch only
    where it runs: the forward refuses it up front; converting the whole model fixes it."""
    p = _problem()
    model = UnrolledGraphGD(
        8, _ctrl(0, bias=-12.0), mode="window", backup=StepController(window=4, hidden=8)
    )
    with pytest.raises(DtypeMismatchError, match="backup controller"):
        model(p)
    model.double()(p)  # both controllers converted


@pytest.mark.parametrize("mode", WINDOW_MODES)
def test_safe_steps_certify_below_one_on_ill_conditioned_problems(mode):
    """A path of 150 nodes with one observed node (hi / lo ~ 4e4): learned roots that fail
    fall back to safe steps whose certificate is a proof below one (the grid certificate's
    Markov allowance alone gave 1.003 there), and the error contracts by it."""
    n = 150
    mask = torch.zeros(1, n, dtype=torch.bool)
    mask[0, 0] = True
    y = torch.randn(1, n, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * mask
    p = GraphInverseProblem.from_networkx(nx.path_graph(n), y, mask=mask, lam=1.0)
    out = _model(mode, _ctrl(0, bias=-12.0, hops=1))(p)
    x_star = p.solve_exact()
    errors = [p.relative_error(x, x_star) for x in out.iterates]
    for k, q, t in zip(out.window_starts, out.certificates, out.blend, strict=True):
        assert bool((t <= 0).all())  # the safe steps ran
        assert bool((q < 1).all()), q
        assert bool((errors[k + 4] <= q * errors[k] * (1 + 1e-9)).all())


@settings(max_examples=200, deadline=None)
@given(
    w=st.integers(1, 12),
    lo=st.floats(1e-9, 1.0),
    width=st.floats(1e-6, 1e6),
    scale=st.floats(0.1, 2.5),
)
def test_equal_steps_certificate_bounds_the_maximum(w, lo, width, scale):
    """``max |1 - s lam|^w`` over ``[lo, hi]``: the certificate is at least the maximum over
    a fine grid and both ends, and below one for ``s = 1 / hi`` and ``lo > 0``."""
    lo_t = torch.tensor([lo], dtype=torch.float64)
    hi_t = lo_t + width
    s = scale / hi_t
    q = equal_steps_certificate(s, lo_t, hi_t, w)
    lam = torch.cat([lo_t, torch.linspace(lo, lo + width, 20001, dtype=torch.float64), hi_t])
    assert float(q) >= float(((1 - s * lam).abs() ** w).max())
    assert (
        float(equal_steps_certificate(1.0 / hi_t, lo_t, hi_t, w)) < 1.0 or lo / (lo + width) < 1e-12
    )
