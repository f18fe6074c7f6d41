"""Demo section: CT reconstruction of a Shepp-Logan phantom (a few seconds)."""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import torch

from .._common import keep_caller_rng

__all__ = ["FIGURES", "run_demo"]

#: files ``run_demo`` writes into ``outdir`` (``unrollsci demo`` checks them beforehand).
FIGURES = ["ct_demo.png"]


def _scores(x_hat: torch.Tensor, x: torch.Tensor) -> tuple[list[float], list[float]]:
    """PSNR (data range 1); SSIM from scikit-image when it is installed, else NaN."""
    try:
        from ..ct import scores

        return scores(x_hat, x)
    except ImportError:
        mse = ((x_hat.detach() - x) ** 2).flatten(1).mean(1)
        psnr = (10 * torch.log10(1.0 / mse)).tolist()
        return psnr, [float("nan")] * len(psnr)


@keep_caller_rng
def run_demo(outdir: Path) -> list[dict[str, Any]]:
    """FBP, TV and a briefly trained UnrolledCT on noisy 64 x 64 random-ellipse phantoms.

    The network is trained for a few seconds on phantoms drawn from the same family as the
    8 held-out test phantoms (the setting of ``benchmarks/ct.py``, much shorter). Returns
    table rows (method, mean PSNR, mean SSIM, seconds per image) and writes ``ct_demo.png``.
    """
    from ..._validation import ConvergenceWarning
    from ...imaging import UnrolledCT, lipschitz_bound, tv_reconstruction
    from ...operators import Radon, fbp
    from ...train import fit
    from ..ct import make_data

    torch.manual_seed(0)
    size, angles, photons, n_test = 64, 30, 1e4, 8
    radon = Radon(size, angles)
    y, x, mask = make_data(n_test, size, radon, photons, seed=12345)  # held out
    images: dict[str, torch.Tensor] = {}
    seconds: dict[str, float] = {}

    t0 = time.perf_counter()
    images["FBP (hann)"] = fbp(y, radon, filter="hann")
    seconds["FBP (hann)"] = (time.perf_counter() - t0) / n_test
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        images["TV (Chambolle-Pock)"] = tv_reconstruction(y, radon, 5.0, max_iter=150, tol=1e-5).x
    seconds["TV (Chambolle-Pock)"] = (time.perf_counter() - t0) / n_test

    model = UnrolledCT(radon, n_layers=4, channels=8)

    def loss_fn(mdl: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        yb, xb, mb = batch
        return torch.mean((mdl(yb, mask=mb) - xb) ** 2)

    t0 = time.perf_counter()
    fit(
        model,
        loss_fn,
        lambda g: make_data(8, size, radon, photons, generator=g),
        epochs=1,
        steps_per_epoch=60,
        lr=3e-3,
        progress=False,
    )
    t_train = time.perf_counter() - t0
    name = "unrolled (4 layers, 60 steps)"
    t0 = time.perf_counter()
    with torch.no_grad():
        images[name] = model(y, mask=mask)
    seconds[name] = (time.perf_counter() - t0) / n_test
    bound = lipschitz_bound(model)
    rows = []
    for method, img in images.items():
        ps, ss = _scores(img, x)
        rows.append(
            {
                "method": method,
                "PSNR (dB)": sum(ps) / len(ps),
                "SSIM": sum(ss) / len(ss),
                "s / image": seconds[method],
            }
        )
    rows[-1]["note"] = f"trained {t_train:.1f} s; Lipschitz bound {bound:.3g}"
    x = x[:1]
    images = {k: v[:1] for k, v in images.items()}
    try:
        from .._common import new_figure, save_figure

        fig, axes = new_figure(1, 4, figsize=(12, 3.3))
        for ax, (name, img) in zip(axes, [("phantom", x), *images.items()], strict=True):
            ax.imshow(img[0].detach().cpu().numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_title(name, fontsize=9)
            ax.axis("off")
        fig.tight_layout()
        save_figure(fig, Path(outdir) / FIGURES[0], dpi=100)
    except ImportError:  # pragma: no cover - matplotlib is optional
        pass
    return rows
