"""Group-sparse recovery: group-FISTA vs a trained block-LISTA, uneven groups, a checkpoint.

The figure shows the test NMSE per layer (block-LISTA untrained and trained, group-FISTA
per iteration) and, for one test signal, the norm of each group recovered after K layers /
iterations next to the true one.

Run: ``python examples/group_sparse.py [FIGURE.png]`` (well under a minute on one CPU core;
the figure is saved only when a path is given; the docs gallery keeps the figure left open
at exit).
"""

from __future__ import annotations

import sys
import tempfile
import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from unrollsci import ConvergenceWarning, solvers
from unrollsci.operators import MatrixOperator
from unrollsci.train import load_checkpoint, save_checkpoint
from unrollsci.unrolled import BlockLISTA

torch.manual_seed(0)
m, n, K, lam = 40, 80, 8, 0.05

# Groups of any sizes: one integer label per entry (here 16 groups of 3 to 7 entries).
sizes = [3, 7, 4, 6, 5, 5, 3, 7, 4, 6, 5, 5, 3, 7, 4, 6]
labels = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
g = torch.Generator().manual_seed(0)
op = MatrixOperator(torch.randn(m, n, generator=g) / m**0.5)


def draw(count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Signals with 2 active groups (N(0, 1) entries) and noiseless measurements."""
    active = torch.rand(count, len(sizes), generator=g).argsort(1)[:, :2]
    mask = torch.zeros(count, len(sizes)).scatter_(1, active, 1.0)[:, labels]
    x = torch.randn(count, n, generator=g) * mask
    return x, op(x)


def nmse_db(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float(10 * torch.log10((x - ref).pow(2).sum() / ref.pow(2).sum()))


x_train, y_train = draw(2000)
x_test, y_test = draw(500)
prox = {"kind": "group", "groups": labels}

# Classical: K iterations of group-FISTA (the same prox in every solver: ista, fista, admm).
with warnings.catch_warnings():
    warnings.simplefilter("ignore", ConvergenceWarning)
    fista_iters = [
        solvers.fista(op, y_test, lam, max_iter=k, tol=0, prox=prox).x for k in range(1, K + 1)
    ]
fista_k = fista_iters[-1]
print(f"group-FISTA, {K} iterations: {nmse_db(fista_k, x_test):6.2f} dB")

# Block-LISTA: untrained it is K iterations of group-ISTA; train its SPD blocks and thresholds.
model = BlockLISTA(op, K, groups=labels, lam=lam)
print(f"block-LISTA, untrained:      {nmse_db(model(y_test).detach(), x_test):6.2f} dB")
with torch.no_grad():
    untrained_layers = model(y_test, return_all=True)[1]
opt = torch.optim.Adam(model.parameters(), lr=1e-2)
for _ in range(150):
    idx = torch.randint(0, len(x_train), (64,), generator=g)
    loss = (model(y_train[idx]) - x_train[idx]).pow(2).sum(-1).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
with torch.no_grad():
    trained = nmse_db(model(y_test), x_test)
    trained_layers = model(y_test, return_all=True)[1]
print(f"block-LISTA, trained:        {trained:6.2f} dB")

# The group labels travel with the checkpoint (plain data); a callable prox would be refused.
with tempfile.TemporaryDirectory() as tmp:
    again = load_checkpoint(save_checkpoint(model, Path(tmp) / "block_lista.pt"))
    with torch.no_grad():
        assert torch.equal(again(y_test), model(y_test))
print("checkpoint round trip: same outputs")


def group_norms(x: torch.Tensor) -> torch.Tensor:
    return torch.zeros(len(sizes), dtype=x.dtype).index_add_(0, labels, x.pow(2)).sqrt()


fig, (ax_k, ax_x) = plt.subplots(
    1, 2, figsize=(12, 4.2), width_ratios=(1, 1.3), layout="constrained"
)
layers = range(1, K + 1)
for xs, style, name in [
    (fista_iters, "k--o", "group-FISTA"),
    (untrained_layers, "C0:s", "block-LISTA, untrained (group-ISTA)"),
    (trained_layers, "C3-D", "block-LISTA, trained"),
]:
    ax_k.plot(layers, [float(nmse_db(x, x_test)) for x in xs], style, ms=4, label=name)
ax_k.set(xlabel="layer / iteration k", ylabel="test NMSE (dB)", xticks=list(layers))
ax_k.set_title(f"{m} x {n} Gaussian operator, lam = {lam}")
ax_k.grid(alpha=0.3)
ax_k.legend()
width = 0.27
for shift, x_hat, color, name in [
    (-width, x_test[0], "C7", "true"),
    (0.0, fista_k[0], "k", f"group-FISTA, {K} iterations"),
    (width, trained_layers[-1][0], "C3", f"block-LISTA, {K} layers"),
]:
    heights = group_norms(x_hat).detach().numpy()  # numpy for matplotlib
    ax_x.bar(torch.arange(len(sizes)).numpy() + shift, heights, width, color=color, label=name)
ax_x.set(xlabel="group (sizes 3 to 7)", ylabel="group norm ||x_g||", xticks=range(len(sizes)))
ax_x.set_title("Test signal 1: norm of each group, recovered vs true")
ax_x.legend()
# Only a figure path: under runpy (e.g. from pytest) sys.argv holds the runner's arguments.
if len(sys.argv) == 2 and Path(sys.argv[1]).suffix in {".png", ".svg", ".pdf"}:
    fig.savefig(sys.argv[1], dpi=100)
