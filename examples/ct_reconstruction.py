"""Parallel-beam CT: FBP, TV and a physics-based unrolled network with a certificate.

The figure shows one test phantom and its FBP, TV and unrolled reconstructions side by
side, each with its PSNR, and the unrolled network's absolute error.

Run: python examples/ct_reconstruction.py [FIGURE.png]   (about a minute on one CPU core;
the figure is saved only when a path is given; the docs gallery keeps the figure left open
at exit)
"""

import sys
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from unrollsci.imaging import (
    Radon,
    UnrolledCT,
    empirical_lipschitz,
    fbp,
    lipschitz_bound,
    poisson_noise,
    random_ellipses,
    tv_reconstruction,
)
from unrollsci.train import fit

torch.manual_seed(0)
radon = Radon(64, 30)  # 64 x 64 images, 30 angles over 180 degrees


def make(n, generator):
    """Noisy low-dose sinograms, images and their support masks (patient boundary)."""
    x, mask = random_ellipses(n, 64, generator=generator, return_support=True)
    return poisson_noise(radon(x), photons=1e4, generator=generator), x, mask


y_test, x_test, m_test = make(16, torch.Generator().manual_seed(123))


def psnr(x_hat, x):
    mse = ((x_hat - x) ** 2).flatten(1).mean(1)
    return float((10 * torch.log10(1 / mse)).mean())


x_fbp = fbp(y_test, radon, filter="hann")
print(f"FBP (hann)  {psnr(x_fbp, x_test):.2f} dB")
tv = tv_reconstruction(y_test, radon, lam=5.0, mask=m_test, max_iter=500, tol=1e-4)
print(f"TV          {psnr(tv.x, x_test):.2f} dB  ({tv.iterations} iterations)")

model = UnrolledCT(radon, n_layers=5, channels=16)  # FBP start, 5 learned-gradient layers


def loss_fn(model, batch):
    y, x, mask = batch
    return torch.mean((model(y, mask=mask) - x) ** 2)


fit(model, loss_fn, lambda g: make(8, g), epochs=4, steps_per_epoch=50, lr=2e-3, progress=False)
with torch.no_grad():
    x_net = model(y_test, mask=m_test)
print(f"unrolled    {psnr(x_net, x_test):.2f} dB")
print("outside the support exactly zero:", bool((x_net[~m_test] == 0).all()))
print(
    f"Lipschitz certificate {lipschitz_bound(model):.3g} >= "
    f"adversarial ratio {empirical_lipschitz(model, y_test[:2], steps=30):.3g}"
)

fig, axes = plt.subplots(1, 5, figsize=(15, 3.4), layout="constrained")
i = 0  # the first test image
shown = [("phantom", x_test), ("FBP (hann)", x_fbp), ("TV", tv.x), ("unrolled", x_net)]
for ax, (name, img) in zip(axes, shown, strict=False):
    ax.imshow(img[i].squeeze().detach().numpy(), cmap="gray", vmin=0, vmax=1)
    label = "" if img is x_test else f"\n{psnr(img[i : i + 1], x_test[i : i + 1]):.1f} dB"
    ax.set_title(name + label)
err = axes[4].imshow((x_net - x_test)[i].squeeze().abs().detach().numpy(), cmap="magma")
axes[4].set_title("|unrolled - phantom|")
fig.colorbar(err, ax=axes[4], fraction=0.046)
for ax in axes:
    ax.set_axis_off()
# Only a figure path: under runpy (e.g. from pytest) sys.argv holds the runner's arguments.
if len(sys.argv) == 2 and Path(sys.argv[1]).suffix in {".png", ".svg", ".pdf"}:
    fig.savefig(sys.argv[1], dpi=100)
