"""PyG Data/Batch input to UnrolledGraphGD: same result as the equivalent GraphInverseProblem,
bounds cached per graph by CertifiedBounds, and a DataLoader training loop that learns."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch_geometric.data import Batch, Data
from torch_geometric.loader import DataLoader
from torch_geometric.utils import from_scipy_sparse_matrix

from unrollsci.graph import (
    CertifiedBounds,
    GraphInverseProblem,
    StepController,
    UnrolledGraphGD,
    graph_loss,
    inpainting_problem,
    problem_from_data,
    road_graph,
    sensor_graph,
)


def _data(adj, signals: int, seed: int, lam: float = 1.0) -> tuple[Data, GraphInverseProblem]:
    p = inpainting_problem(adj, signals, seed=seed, lam=lam)
    ei, ew = from_scipy_sparse_matrix(adj)
    d = Data(
        edge_index=ei,
        edge_weight=ew.double(),
        y=p.y.t().contiguous(),
        mask=p.mask.t().bool().contiguous(),
        lam=lam,
        num_nodes=adj.shape[0],
    )
    return d, p


def _graphs(count: int, seed: int = 0) -> list[tuple[Data, GraphInverseProblem]]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        n = int(rng.integers(40, 120))
        adj = sensor_graph(n, k=4, seed=i)[0] if i % 2 else road_graph(n, seed=i)[0]
        out.append(_data(adj, 3, seed=100 + i))
    return out


@pytest.mark.parametrize("mode", ["scalar", "diagonal", "window", "window_jacobi"])
def test_data_input_equals_the_graph_inverse_problem(mode):
    (d, p), (d2, p2) = _graphs(2)
    torch.manual_seed(0)
    model = UnrolledGraphGD(6, StepController(hidden=8, window=3), mode=mode).double()
    with torch.no_grad():
        ref = model(p).x
        torch.testing.assert_close(model(d).x, ref, rtol=1e-12, atol=1e-12)
        # a Batch of two graphs: block-diagonal, each block as its own problem
        out = model(Batch.from_data_list([d, d2])).x
    n = d.num_nodes
    torch.testing.assert_close(out[:, :n], ref, rtol=1e-10, atol=1e-12)
    with torch.no_grad():
        torch.testing.assert_close(out[:, n:], model(p2).x, rtol=1e-10, atol=1e-12)


def test_certified_bounds_are_cached_on_the_data_and_reused(monkeypatch):
    graphs = _graphs(3)
    prepared = [CertifiedBounds()(d) for d, _ in graphs]
    batch = Batch.from_data_list(prepared)
    fresh = GraphInverseProblem.from_pyg(
        batch, batch.y.t(), mask=batch.mask.t(), lam=1.0
    )  # computes everything itself
    ref = (fresh.lipschitz(), fresh.lambda_min_bound(), *fresh.jacobi_interval())
    import unrollsci.graph._spectral as spectral

    def fail(*a, **k):
        raise AssertionError("a spectral bound was recomputed")

    monkeypatch.setattr(spectral, "spectrum_mask", fail)
    monkeypatch.setattr(spectral, "gershgorin_np", fail)
    cached = problem_from_data(batch)
    got = (cached.lipschitz(), cached.lambda_min_bound(), *cached.jacobi_interval())
    for a, b in zip(got, ref, strict=True):
        torch.testing.assert_close(a, b)
    monkeypatch.undo()
    torch.testing.assert_close(cached.solve_exact(), fresh.solve_exact())


def test_dataloader_batch_trains_the_graph_model():
    data = [CertifiedBounds()(d) for d, _ in _graphs(8, seed=1)]
    loader = DataLoader(
        data, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    torch.manual_seed(0)
    model = UnrolledGraphGD(8, StepController(hidden=16, window=8), mode="window_jacobi").double()
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    fixed = Batch.from_data_list(data)

    def full_loss() -> float:
        with torch.no_grad():
            return float(graph_loss(model, fixed))

    before = full_loss()
    for _ in range(6):
        for batch in loader:
            opt.zero_grad()
            loss = graph_loss(model, batch)
            loss.backward()
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            assert grads and any(float(g.abs().sum()) > 0 for g in grads)
            opt.step()
    assert full_loss() < before - 0.05


def test_bad_pyg_input():
    (d, _), (d2, _) = _graphs(2)
    model = UnrolledGraphGD(3, StepController(hidden=4)).double()
    bad = d.clone()
    del bad.y
    with pytest.raises(ValueError, match="data.y"):
        model(bad)
    bad = d.clone()
    bad.y = bad.y.t()
    with pytest.raises(ValueError, match="num_nodes first"):
        model(bad)
    other = d2.clone()
    other.lam = 2.0
    with pytest.raises(ValueError, match="one lam"):
        model(Batch.from_data_list([d, other]))
    with pytest.raises(ValueError, match="not a Batch"):
        CertifiedBounds()(Batch.from_data_list([d, d2]))
    with pytest.raises(TypeError, match="PyG Data"):
        model("graph")


def test_batched_python_float_lam_is_read_as_given():
    """PyG batches ``Data(lam=0.7)`` as a float32 tensor: the float64 problem was solved with
    lam = 0.699999988 (silently); now with 0.7, and a warning says so. A float64 ``lam``
    tensor or an exactly representable float32 (1.0, 0.5) gives no warning."""
    from unrollsci import UnrollsciWarning

    adj = sensor_graph(30, seed=3)[0]
    d, p = _data(adj, 2, seed=4, lam=0.7)
    batch = Batch.from_data_list([d, d])
    assert batch.lam.dtype == torch.float32
    with pytest.warns(UnrollsciWarning, match=r"read 0\.699999988\d* as 0\.7"):
        q = problem_from_data(batch)
    assert q.lam == 0.7
    exact = Batch.from_data_list(
        [d.clone().update({"lam": torch.tensor([0.7], dtype=torch.float64)})] * 2
    )
    assert problem_from_data(exact).lam == 0.7
    torch.testing.assert_close(
        q.solve_exact(), problem_from_data(exact).solve_exact(), rtol=0, atol=0
    )
    d1, _ = _data(adj, 2, seed=4, lam=0.5)
    assert problem_from_data(Batch.from_data_list([d1, d1])).lam == 0.5  # no warning: exact
