"""Train ALISTA and LISTA-CPSS on your own operator, compare with ISTA, save and reload.

Run: ``python examples/lista_basic.py`` (about a minute on one CPU core).
"""

from __future__ import annotations

import warnings

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
    with torch.no_grad():
        print(f"{name:11s} NMSE after {K} layers: {float(nmse_db(model(y_test), x_test)):6.1f} dB")

# 3. The classical algorithm with the same number of iterations.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", ConvergenceWarning)
    x_ista = solvers.ista(op, y_test, lam, max_iter=K, tol=0).x
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
