"""Train the certified graph solver from a torch_geometric DataLoader.

Each graph is a PyG ``Data`` with the observations ``y`` (num_nodes, signals), the observed
``mask`` (same shape) and ``lam``. ``CertifiedBounds`` stores each graph's certified
spectral bounds and exact solution on its ``Data`` once; the batches the loader builds carry
them, so no batch recomputes a Laplacian's spectrum or solves for x*.

The figure shows the mean training loss per epoch, and the energy-norm error to the exact
minimizer after each layer on the two held-out graphs (mean over their eight signals) next
to conjugate gradients and Jacobi-preconditioned conjugate gradients (scipy) on the same
systems from the same start. Pass a path to save it:
``python examples/graph_pyg_dataloader.py FIGURE.png`` (the docs gallery keeps the figure
left open at exit).
"""

import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

# unrollsci.graph first: it imports torch_geometric with the deprecation notice that PyG's
# own import prints on newer torch (its torch.jit.script calls) silenced
import unrollsci.graph as ug

# isort: split
from torch_geometric.data import Data
from torch_geometric.loader import DataLoader
from torch_geometric.utils import from_scipy_sparse_matrix

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
losses = []
for epoch in range(6):
    total = 0.0
    for batch in loader:
        opt.zero_grad()
        loss = ug.graph_loss(model, batch)  # log energy-norm error to x* (+ window penalty)
        loss.backward()
        opt.step()
        total += loss.detach().item()
    losses.append(total / len(loader))
    print(f"epoch {epoch}: mean train loss {total / len(loader):.3f}")


def cg_iterates(p, num_iters, jacobi):
    """(Jacobi-preconditioned) CG iterates from x0 = 0 for every signal of ``p``, stacked."""
    per_signal = []
    for b in range(p.batch_size):
        H, rhs = p.hessian_scipy(b), p.rhs()[b].numpy()
        xs = [np.zeros_like(rhs)]
        M = sp.diags(1.0 / H.diagonal()) if jacobi else None
        cb = lambda xk, xs=xs: xs.append(xk.copy())  # noqa: E731
        spla.cg(H, rhs, rtol=1e-14, maxiter=num_iters, M=M, callback=cb)
        per_signal.append(xs + [xs[-1]] * (num_iters + 1 - len(xs)))  # pad if it stops early
    return [torch.from_numpy(np.stack(xk)) for xk in zip(*per_signal, strict=True)]


curves = {"learned (window_jacobi)": [], "conjugate gradients": [], "Jacobi-PCG": []}
with torch.no_grad():
    for data in test:
        out = model(data)
        p = ug.problem_from_data(data)
        err = p.relative_error(out.x).mean().item()
        cert = torch.stack(out.certified).double().mean().item()
        print(f"held-out graph, {data.num_nodes} nodes: error {err:.4f}, learned roots {cert:.0%}")
        num_iters = len(out.iterates) - 1
        runs = [out.iterates, cg_iterates(p, num_iters, False), cg_iterates(p, num_iters, True)]
        for curve, xs in zip(curves.values(), runs, strict=True):
            curve.append(torch.stack([p.relative_error(x).flatten() for x in xs], dim=1))

fig, (ax_loss, ax_err) = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
ax_loss.plot(range(len(losses)), losses, "C0o-")
ax_loss.set(
    xlabel="epoch",
    ylabel="mean train loss (log energy-norm error + penalty)",
    title="Training from the DataLoader",
)
ax_loss.grid(alpha=0.3)
for (name, curve), style in zip(curves.items(), ("C3o-", "ks--", "C0^:"), strict=True):
    errs = torch.cat(curve)  # (signals of all held-out graphs, layers + 1)
    ax_err.semilogy(range(errs.shape[1]), errs.mean(0), style, label=name)
    print(f"{name:24s} mean held-out error after {errs.shape[1] - 1}: {errs.mean(0)[-1]:.4f}")
ax_err.set(
    xlabel="layer / iteration",
    ylabel="||x_k - x*||_H / ||x*||_H (mean)",
    title="Held-out graphs: energy-norm error to x*",
)
ax_err.grid(alpha=0.3)
ax_err.legend()
# Only a figure path: under runpy (e.g. from pytest) sys.argv holds the runner's arguments.
if len(sys.argv) == 2 and Path(sys.argv[1]).suffix in {".png", ".svg", ".pdf"}:
    fig.savefig(sys.argv[1], dpi=100)
