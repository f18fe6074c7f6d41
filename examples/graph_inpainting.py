"""Inpaint a smooth signal on a networkx graph with a learned, certified unrolled solver."""

import networkx as nx
import scipy.sparse as sp
import torch

import unrollsci.graph as ug
from unrollsci.train import fit

# Train the step controller on random sensor graphs (50% observed nodes, noisy data).
train = [ug.inpainting_problem(ug.sensor_graph(300, seed=s)[0], 4, seed=s) for s in range(3)]
model = ug.UnrolledGraphGD(10, ug.StepController(hidden=16, window=10), mode="window").double()
fit(model, ug.graph_loss, train, epochs=15, progress=False)

# A new graph (a 30 x 30 grid) and signal: observe half of the nodes, with noise.
G = nx.grid_2d_graph(30, 30)
x_true = ug.smooth_signal(sp.csr_matrix(nx.to_scipy_sparse_array(G)), 1, seed=7)
gen = torch.Generator().manual_seed(0)
mask = torch.rand(900, generator=gen) < 0.5
y = (x_true + 0.1 * torch.randn(1, 900, generator=gen, dtype=torch.float64)) * mask
problem = ug.GraphInverseProblem.from_networkx(G, y, mask=mask, lam=1.0)

with torch.no_grad():
    out = model(problem)
print(f"error to the exact minimizer after 10 layers: {problem.relative_error(out.x).item():.3f}")
print(f"relative error to the true signal: {((out.x - x_true).norm() / x_true.norm()).item():.3f}")
print(f"every window certified: {all(bool(c.all()) for c in out.certified)}")
