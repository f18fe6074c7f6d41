"""Train ALISTA and LISTA-CPSS on your own operator, compare with ISTA, save and reload.

The figure shows the test NMSE after each layer of the trained models next to ISTA after
the same number of iterations.

Run: ``python examples/lista_basic.py [FIGURE.png]`` (about a minute on one CPU core; the
figure is saved only when a path is given; the docs gallery keeps the figure left open at
exit).
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from unrollsci import solvers
from unrollsci._validation import ConvergenceWarning
from unrollsci.losses import kkt_residual, mse, nmse_db
from unrollsci.operators import MatrixOperator
from unrollsci.train import fit, load_checkpoint
from unrollsci.unrolled import ALISTA, LISTA, LISTACP, error_decomposition

torch.manual_seed(0)
m, n, K, lam = 64, 128, 10, 0.05

# 1. The measurement operator: any LinearOperator works; here a Gaussian matrix.
g = torch.Generator().manual_seed(0)
A = torch.randn(m, n, generator=g)
A = A / A.norm(dim=0)
op = MatrixOperator(A)


def draw(batch: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse signals x (10 % nonzero) and noiseless measurements y = A x."""
    x = torch.randn(batch, n, generator=gen) * (torch.rand(batch, n, generator=gen) < 0.1)
    return x @ A.T, x


y_test, x_test = draw(500, torch.Generator().manual_seed(1))
val = draw(200, torch.Generator().manual_seed(2))


def supervised(model, batch):
    y, x = batch
    return mse(model(y), x)


# 2. Train two models layer by layer on fresh synthetic batches.
trained = {}
for name, model, lr in [
    ("ALISTA", ALISTA(op, K, lam=lam), 5e-3),
    ("LISTA-CPSS", LISTACP(op, K, lam=lam, support_selection=True), 1e-3),
]:
    fit(
        model,
        supervised,
        lambda gen: draw(64, gen),
        val_data=val,
        schedule="layerwise",
        stage_epochs=3,
        steps_per_epoch=40,
        lr=lr,
        lr_decay=0.5,
        progress=False,
        stage_hook=lambda mdl, k: mdl.copy_layer(k - 2, k - 1) if k >= 2 else None,
        checkpoint=f"/tmp/{name}.pt",
    )
    trained[name] = model
    with torch.no_grad():
        print(f"{name:11s} NMSE after {K} layers: {float(nmse_db(model(y_test), x_test)):6.1f} dB")

# 3. The classical algorithm with the same number of iterations (and each smaller number,
# for the figure).
with warnings.catch_warnings():
    warnings.simplefilter("ignore", ConvergenceWarning)
    ista_k = [solvers.ista(op, y_test, lam, max_iter=k, tol=0).x for k in range(1, K + 1)]
x_ista = ista_k[-1]
print(f"ISTA        NMSE after {K} iterations: {float(nmse_db(x_ista, x_test)):6.1f} dB")

# 4. Reload without the training script; split the error layer by layer.
alista = load_checkpoint("/tmp/ALISTA.pt", expected=ALISTA)
for row in error_decomposition(alista, y_test, x_test)[-3:]:
    print(
        "layer {layer}: model {model:.2e}, classical {classical:.2e}, "
        "learned deviation {deviation:.2e}".format(**row)
    )

# 5. Unsupervised: train LISTA on the lasso KKT residual, no ground truth needed.
# Any step t > 0 gives a residual that vanishes exactly at the lasso solution; a large
# one (10 / ||A||^2) and the mean of the residual (not of its square) train better
# (docs/unrolled.md, LISTA benchmark).
lista = LISTA(op, K, lam=lam)
step = 10.0 / op.norm() ** 2
fit(
    lista,
    lambda mdl, y: kkt_residual(op, mdl(y), y, lam, step=step).mean(),
    lambda gen: draw(64, gen)[0],
    epochs=5,
    steps_per_epoch=40,
    lr=5e-4,
    progress=False,
)
with torch.no_grad():
    res = kkt_residual(op, lista(y_test), y_test, lam).mean()
print(
    f"KKT-trained LISTA: mean KKT residual {float(res):.2e}, "
    f"NMSE {float(nmse_db(lista(y_test).detach(), x_test)):.1f} dB (the lasso optimum "
    "itself is biased by lam)"
)

# 6. NMSE per layer: the learned models against ISTA with as many iterations.
layers = range(1, K + 1)
fig, ax = plt.subplots(figsize=(6.5, 4.2), layout="constrained")
ax.plot(layers, [float(nmse_db(x, x_test)) for x in ista_k], "k--o", ms=4, label="ISTA")
trained["LISTA (KKT loss)"] = lista
for (name, model), marker in zip(trained.items(), "sD^", strict=True):
    with torch.no_grad():
        _, xs = model(y_test, return_all=True)
    ax.plot(layers, [float(nmse_db(x, x_test)) for x in xs], marker=marker, ms=4, label=name)
ax.set(xlabel="layer / iteration k", ylabel="test NMSE (dB)", xticks=list(layers))
ax.set_title(f"Sparse recovery, {m} x {n} Gaussian operator, lam = {lam}")
ax.grid(alpha=0.3)
ax.legend()
# Only a figure path: under runpy (e.g. from pytest) sys.argv holds the runner's arguments.
if len(sys.argv) == 2 and Path(sys.argv[1]).suffix in {".png", ".svg", ".pdf"}:
    fig.savefig(sys.argv[1], dpi=100)
