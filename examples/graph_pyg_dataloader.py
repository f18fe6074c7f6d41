"""Train the certified graph solver from a torch_geometric DataLoader.

Each graph is a PyG ``Data`` with the observations ``y`` (num_nodes, signals), the observed
``mask`` (same shape) and ``lam``. ``CertifiedBounds`` stores each graph's certified
spectral bounds and exact solution on its ``Data`` once; the batches the loader builds carry
them, so no batch recomputes a Laplacian's spectrum or solves for x*.
"""

import torch
from torch_geometric.data import Data
from torch_geometric.loader import DataLoader
from torch_geometric.utils import from_scipy_sparse_matrix

import unrollsci.graph as ug

torch.manual_seed(0)
graphs = []
for seed in range(10):
    adj = (ug.sensor_graph if seed % 2 else ug.road_graph)(120 + 15 * seed, seed=seed)[0]
    p = ug.inpainting_problem(adj, 4, observed=0.3 + 0.1 * (seed % 6), seed=seed)
    edge_index, edge_weight = from_scipy_sparse_matrix(adj)
    data = Data(
        edge_index=edge_index,
        edge_weight=edge_weight.double(),
        y=p.y.t().contiguous(),  # (num_nodes, signals): PyG batches node attributes on dim 0
        mask=p.mask.t().bool().contiguous(),
        lam=1.0,
        num_nodes=adj.shape[0],
    )
    graphs.append(ug.CertifiedBounds()(data))  # once per graph

train, test = graphs[:8], graphs[8:]
loader = DataLoader(train, batch_size=4, shuffle=True)
model = ug.UnrolledGraphGD(10, ug.StepController(hidden=16, window=10), mode="window_jacobi")
model = model.double()
opt = torch.optim.Adam(model.parameters(), lr=1e-2)
for epoch in range(6):
    total = 0.0
    for batch in loader:
        opt.zero_grad()
        loss = ug.graph_loss(model, batch)  # log energy-norm error to x* (+ window penalty)
        loss.backward()
        opt.step()
        total += loss.detach().item()
    print(f"epoch {epoch}: mean train loss {total / len(loader):.3f}")

with torch.no_grad():
    for data in test:
        out = model(data)
        p = ug.problem_from_data(data)
        err = p.relative_error(out.x).mean().item()
        cert = torch.stack(out.certified).double().mean().item()
        print(f"held-out graph, {data.num_nodes} nodes: error {err:.4f}, learned roots {cert:.0%}")
