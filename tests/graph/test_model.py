"""UnrolledGraphGD and StepController: equivariance, batching, gradients, training, errors."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
import torch
from torch_geometric.data import Batch
from torch_geometric.utils import from_networkx

from unrollsci.graph import (
    GraphInverseProblem,
    StepController,
    UnrolledGraphGD,
    graph_loss,
)
from unrollsci.train import fit, load_checkpoint, save_checkpoint


def _randomize(model: torch.nn.Module, seed: int, scale: float) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for prm in model.parameters():
            prm.copy_(scale * torch.randn(prm.shape, generator=gen, dtype=prm.dtype))


# ------------------------------------------------------------- equivariance
def test_controller_is_permutation_equivariant(device):
    torch.manual_seed(0)
    n, batch = 12, 2
    G = nx.connected_watts_strogatz_graph(n, 4, 0.3, seed=2)
    ei = torch.as_tensor(np.array(list(G.edges)).T)
    ei = torch.cat([ei, ei.flip(0)], 1).to(device)
    w = torch.rand(ei.shape[1], dtype=torch.float64, device=device) + 0.5
    ctrl = StepController(hidden=16, hops=3, window=4).double().to(device)
    _randomize(ctrl, 1, 0.5)
    xf = torch.randn(batch, n, 7, dtype=torch.float64, device=device)
    gf = torch.randn(batch, 1, 4, dtype=torch.float64, device=device)
    blocks = torch.zeros(n, dtype=torch.long, device=device)
    out = ctrl(xf, gf, ei, w, blocks, 1)
    perm = torch.randperm(n, device=device)
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(n, device=device)
    out_p = ctrl(xf[:, perm], gf, inv[ei], w, blocks, 1)
    torch.testing.assert_close(out_p["node"], out["node"][:, perm])
    torch.testing.assert_close(out_p["scalar"], out["scalar"])
    torch.testing.assert_close(out_p["window"], out["window"])


@pytest.mark.parametrize("mode", ["scalar", "diagonal", "window", "window_jacobi"])
def test_solver_is_permutation_equivariant(device, mode):
    G = nx.random_geometric_graph(30, 0.35, seed=4)
    G = G.subgraph(max(nx.connected_components(G), key=len)).copy()
    G = nx.convert_node_labels_to_integers(G)
    n = G.number_of_nodes()
    rng = np.random.default_rng(1)
    mask = rng.random((2, n)) < 0.5
    mask[:, 0] = True
    y = rng.standard_normal((2, n)) * mask
    p = GraphInverseProblem.from_networkx(G, torch.as_tensor(y, device=device), mask=mask)
    perm = rng.permutation(n)
    Gp = nx.relabel_nodes(G, {int(perm[i]): i for i in range(n)})
    Gp = nx.Graph(Gp.subgraph(range(n)))
    H = nx.Graph()
    H.add_nodes_from(range(n))
    H.add_edges_from(Gp.edges(data=True))
    pp = GraphInverseProblem.from_networkx(
        H, torch.as_tensor(y[:, perm], device=device), mask=mask[:, perm]
    )
    model = UnrolledGraphGD(6, StepController(hidden=8, window=3), mode=mode).double()
    model = model.to(device)
    _randomize(model, 3, 0.5)
    with torch.no_grad():
        x = model(p).x
        xp = model(pp).x
    torch.testing.assert_close(xp, x[:, perm])


@pytest.mark.parametrize("mode", ["scalar", "diagonal", "window", "window_jacobi"])
def test_batch_of_graphs_of_different_sizes(device, mode):
    graphs = [
        nx.path_graph(7),
        nx.grid_2d_graph(4, 5),
        nx.connected_watts_strogatz_graph(15, 4, 0.2, seed=0),
    ]
    graphs = [nx.convert_node_labels_to_integers(g) for g in graphs]
    batch = Batch.from_data_list([from_networkx(g) for g in graphs])
    n = batch.num_nodes
    gen = torch.Generator().manual_seed(0)
    mask = torch.rand(2, n, generator=gen) < 0.5
    mask[:, batch.ptr[:-1]] = True
    y = (torch.randn(2, n, generator=gen, dtype=torch.float64) * mask).to(device)
    p = GraphInverseProblem.from_pyg(batch, y, mask=mask, lam=0.8)
    model = UnrolledGraphGD(6, StepController(hidden=8, window=3), mode=mode).double()
    model = model.to(device)
    _randomize(model, 5, 0.5)
    with torch.no_grad():
        out = model(p)
    assert out.x.shape == (2, n)
    for k, g in enumerate(graphs):
        s, e = int(batch.ptr[k]), int(batch.ptr[k + 1])
        q = GraphInverseProblem.from_networkx(g, y[:, s:e], mask=mask[:, s:e], lam=0.8)
        with torch.no_grad():
            ref = model(q).x
        torch.testing.assert_close(out.x[:, s:e], ref)


# ------------------------------------------------------------- gradients, training
@pytest.mark.parametrize("mode", ["scalar", "diagonal", "window", "window_jacobi"])
def test_gradcheck_wrt_data(device, mode):
    G = nx.cycle_graph(6)
    mask = torch.tensor([1, 0, 1, 1, 0, 1])
    model = (
        UnrolledGraphGD(
            4, StepController(hidden=4, hops=1, window=2), mode=mode, detach_features=False
        )
        .double()
        .to(device)
    )
    _randomize(model, 0, 0.3)

    def fn(y):
        p = GraphInverseProblem.from_networkx(G, y, mask=mask, lam=0.5)
        return model(p).x

    y = torch.randn(1, 6, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(fn, (y,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", ["energy", "objective"])
def test_training_with_fit_reduces_the_loss(device, kind, tmp_path):
    rng = np.random.default_rng(0)
    train = []
    for s in range(3):
        G = nx.random_geometric_graph(40, 0.3, seed=s)
        G = nx.convert_node_labels_to_integers(
            G.subgraph(max(nx.connected_components(G), key=len)).copy()
        )
        n = G.number_of_nodes()
        mask = rng.random((4, n)) < 0.5
        mask[:, 0] = True
        y = torch.as_tensor(rng.standard_normal((4, n)) * mask, device=device)
        train.append(GraphInverseProblem.from_networkx(G, y, mask=mask))
    model = UnrolledGraphGD(5, StepController(hidden=8, window=5), mode="window").double()
    model = model.to(device)
    with torch.no_grad():
        before = float(np.mean([float(graph_loss(model, p, kind)) for p in train]))
    hist = fit(model, lambda m, p: graph_loss(m, p, kind), train, epochs=8, lr=5e-3, progress=False)
    with torch.no_grad():
        after = float(np.mean([float(graph_loss(model, p, kind)) for p in train]))
    assert after < before
    assert len(hist.train_loss) == 8
    path = save_checkpoint(model, tmp_path / "g.pt")
    loaded = load_checkpoint(path, expected=UnrolledGraphGD).double().to(device)
    with torch.no_grad():
        torch.testing.assert_close(loaded(train[0]).x, model(train[0]).x)


def test_model_errors():
    p = GraphInverseProblem.from_networkx(nx.path_graph(4), torch.zeros(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="mode"):
        UnrolledGraphGD(3, mode="bogus")
    with pytest.raises(ValueError, match="'num_layers' >= 1"):
        UnrolledGraphGD(0)
    with pytest.raises(TypeError, match="StepController"):
        UnrolledGraphGD(3, controller=torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="dtype"):
        UnrolledGraphGD(3)(p)  # float32 model, float64 problem
    with pytest.raises(ValueError, match="x0"):
        UnrolledGraphGD(3).double()(p, torch.zeros(1, 5, dtype=torch.float64))
    with pytest.raises(TypeError, match="GraphInverseProblem"):
        UnrolledGraphGD(3).double()(torch.zeros(3))


@pytest.mark.parametrize("mode", ["scalar", "diagonal", "window"])
def test_heat_blur_with_mask_on_a_batch_of_graphs(device, mode):
    graphs = [nx.cycle_graph(9), nx.grid_2d_graph(3, 4)]
    graphs = [nx.convert_node_labels_to_integers(g) for g in graphs]
    batch = Batch.from_data_list([from_networkx(g) for g in graphs])
    n = batch.num_nodes
    gen = torch.Generator().manual_seed(1)
    mask = torch.rand(n, generator=gen) < 0.7
    y = (torch.randn(2, n, generator=gen, dtype=torch.float64) * mask).to(device)
    p = GraphInverseProblem.from_pyg(batch, y, mask=mask, operator="heat", tau=0.5, lam=0.3)
    model = UnrolledGraphGD(6, StepController(hidden=8, window=3), mode=mode).double()
    model = model.to(device)
    _randomize(model, 2, 0.5)
    with torch.no_grad():
        out = model(p)
    f = [p.objective(x).sum(-1) for x in out.iterates]
    ends = [0, 3, 6] if mode == "window" else range(7)
    for a, b in zip(list(ends)[:-1], list(ends)[1:], strict=True):
        assert bool((f[b] <= f[a] + 1e-12).all())
    assert float(p.relative_error(out.x).max()) < 1.0


def test_float32_problem_and_model(device):
    G = nx.grid_2d_graph(5, 5)
    gen = torch.Generator().manual_seed(0)
    mask = torch.rand(25, generator=gen) < 0.5
    mask[0] = True
    y = (torch.randn(3, 25, generator=gen) * mask).to(device)
    p = GraphInverseProblem.from_networkx(G, y, mask=mask)
    for mode in ("scalar", "diagonal", "window"):
        model = UnrolledGraphGD(8, StepController(hidden=8, window=4), mode=mode).to(device)
        with torch.no_grad():
            out = model(p)
        assert out.x.dtype == torch.float32
        f0, f1 = p.objective(out.iterates[0]), p.objective(out.x)
        assert bool((f1 < f0).all())
