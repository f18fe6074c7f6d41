"""Group-sparse recovery: group-FISTA vs a trained block-LISTA, uneven groups, a checkpoint.

Run: ``python examples/group_sparse.py`` (well under a minute on one CPU core).
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

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
    fista_k = solvers.fista(op, y_test, lam, max_iter=K, tol=0, prox=prox).x
print(f"group-FISTA, {K} iterations: {nmse_db(fista_k, x_test):6.2f} dB")

# Block-LISTA: untrained it is K iterations of group-ISTA; train its SPD blocks and thresholds.
model = BlockLISTA(op, K, groups=labels, lam=lam)
print(f"block-LISTA, untrained:      {nmse_db(model(y_test).detach(), x_test):6.2f} dB")
opt = torch.optim.Adam(model.parameters(), lr=1e-2)
for _ in range(150):
    idx = torch.randint(0, len(x_train), (64,), generator=g)
    loss = (model(y_train[idx]) - x_train[idx]).pow(2).sum(-1).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
with torch.no_grad():
    trained = nmse_db(model(y_test), x_test)
print(f"block-LISTA, trained:        {trained:6.2f} dB")

# The group labels travel with the checkpoint (plain data); a callable prox would be refused.
with tempfile.TemporaryDirectory() as tmp:
    again = load_checkpoint(save_checkpoint(model, Path(tmp) / "block_lista.pt"))
    with torch.no_grad():
        assert torch.equal(again(y_test), model(y_test))
print("checkpoint round trip: same outputs")
