"""Data, scoring and the two settings of ``unrollsci bench ct`` (split from ``ct.py``), and
the Jacobian-norm estimate of ``unrollsci bench ct_certified``.

``PRESETS`` holds the defaults of each image size: the 64 x 64 benchmark (30 angles,
``I0 = 1e4`` photons per detector bin, attenuation 1 across the image width) and the
256 x 256 low-dose setting, whose noise follows LoDoPaB-CT (Leuschner et al., Sci. Data 8,
109, 2021): ``I0 = 4096`` photons per detector bin, and intensity 1 is ``mu_max = 81.35858
/ m`` over a 26 cm field of view, so intensity 1 across the whole image width attenuates by
``exp(-21.15)`` (``pixel_size = 21.15 / N`` in :func:`~unrollsci.imaging.poisson_noise`);
180 angles over 180 degrees, 0.7 views per detector bin, the order of clinical scanners
(about 1,000 views per rotation for 700-900 detector channels), where LoDoPaB-CT samples
1,000 views for 513 bins.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch

SEEDS = {"val": 1_000_001, "test": 2_000_003, "train": 7}

#: mu_max (1/m) times the field of view (m) of LoDoPaB-CT: the line integral, in units of
#: attenuation, of intensity 1 across the whole image width.
LODOPAB_ATTENUATION = 81.35858 * 0.26

#: defaults per image size (``--size``); other sizes take those of 64.
PRESETS: dict[int, dict[str, Any]] = {
    64: {
        "angles": 30,
        "photons": 1e4,
        "attenuation": None,  # poisson_noise's default pixel_size 1 / n_det: 1 across the image
        "n_test": 100,
        "n_val": 32,
        "batch": 8,
        "pool": 512,
        "pool_refresh": 2,
        "tv_lams": [1.0, 2.0, 3.0, 5.0, 8.0],
        "epoch_steps": 25,
        "lipschitz_steps": 100,
        "repeats": 1,
    },
    256: {
        "angles": 180,
        "photons": 4096.0,
        "attenuation": LODOPAB_ATTENUATION,
        "n_test": 16,  # the matrix-free kernel is fastest on batches of 16 float32 images
        "n_val": 16,
        "batch": 16,
        "pool": 64,
        "pool_refresh": 4,
        "tv_lams": [50.0, 100.0, 200.0],  # around the best of a 100-iteration scan (5-160)
        "epoch_steps": 10,
        "lipschitz_steps": 10,
        "repeats": 1,
    },
}


def pixel_size(attenuation: float | None, size: int) -> float | None:
    """``mu`` of :func:`~unrollsci.imaging.poisson_noise`: ``attenuation / size`` (None: its
    default ``1 / n_det``)."""
    return None if attenuation is None else attenuation / size


def cosine_factor(elapsed: float, total: float, floor: float) -> float:
    """Cosine decay over a time budget: ``max(floor, (1 + cos(pi min(1, elapsed/total))) / 2)``."""
    t = min(1.0, max(0.0, elapsed / total))
    return max(floor, 0.5 * (1.0 + math.cos(math.pi * t)))


def make_data(
    n: int,
    size: int,
    radon: Any,
    photons: float,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    pixel_size: float | None = None,
) -> tuple[torch.Tensor, ...]:
    """``(sinograms, images, masks)`` of ``n`` noisy random-ellipse phantoms (``pixel_size``:
    ``mu`` of :func:`~unrollsci.imaging.poisson_noise`, None for its default)."""
    from ..imaging import poisson_noise, random_ellipses

    gen = generator if generator is not None else torch.Generator().manual_seed(seed or 0)
    x, m = random_ellipses(n, size, generator=gen, return_support=True)
    y = poisson_noise(radon(x), photons, pixel_size=pixel_size, generator=gen)
    return y, x, m


def dihedral(img: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Apply symmetry ``k[i]`` in 0..7 of the square to ``img[i]`` (``(n, N, N)``).

    ``k % 4`` quarter turns, then a transpose if ``k >= 4``: the 8 elements of the
    dihedral group D4 about the array centre ``(N - 1) / 2``, where the phantom grid is
    symmetric (:func:`~unrollsci.imaging.radon_symmetries` reflects about the rotation
    centre ``N // 2`` instead, to map sinograms exactly).
    """
    out = torch.empty_like(img)
    for j in range(8):
        sel = k == j
        if bool(sel.any()):
            t = torch.rot90(img[sel], j % 4, dims=(-2, -1))
            out[sel] = t.transpose(-2, -1) if j >= 4 else t
    return out


class PhantomPool:
    """Training batches for the CT benchmark from a slowly refreshed pool of phantoms.

    Rendering ellipses costs about a third of a training step at batch 8. The pool
    holds ``size`` phantoms; every batch replaces ``refresh`` of them (at random) by
    new ones, then draws ``batch`` pool entries, each in a random one of the 8
    symmetries of the square, and simulates fresh Poisson noise on their sinograms.

    The symmetries do not change the distribution: :func:`random_ellipses` draws the
    body centre from a square symmetric about the origin, every tilt uniformly, both
    semi-axes from the same range, and places the inner ellipses at uniform angles
    in the body's frame, so a flip or a transpose of a phantom is a phantom the
    generator draws with the same density (flip x: ``(x0, phi, t) -> (-x0, pi - phi,
    pi - t)``; transpose: swap the axes and centre coordinates, ``phi -> pi - phi``,
    ``t -> pi/2 - t``), and the pixel grid is symmetric too. Each phantom lives for
    about ``size / refresh`` batches.
    """

    def __init__(
        self,
        radon: Any,
        photons: float,
        batch: int,
        size: int = 512,
        refresh: int = 2,
        pixel_size: float | None = None,
    ) -> None:
        if size < batch or refresh < 1:
            raise ValueError(
                f"Expected pool size >= batch and refresh >= 1 (got {size}, {batch}, {refresh})."
            )
        self.radon, self.photons, self.batch = radon, photons, batch
        self.size, self.refresh, self.pixel_size = size, refresh, pixel_size
        self.x: torch.Tensor | None = None
        self.m: torch.Tensor | None = None

    def _phantoms(self, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        from ..imaging import random_ellipses

        chunks = [  # chunks of 32: rendering hundreds at once is slower (memory traffic)
            random_ellipses(
                min(32, n - i), self.radon.image_size, generator=gen, return_support=True
            )
            for i in range(0, n, 32)
        ]
        return torch.cat([c[0] for c in chunks]), torch.cat([c[1] for c in chunks])

    def __call__(self, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
        from ..imaging import poisson_noise

        if self.x is None or self.m is None:
            self.x, self.m = self._phantoms(self.size, gen)
        else:
            idx = torch.randperm(self.size, generator=gen)[: self.refresh]
            self.x[idx], self.m[idx] = self._phantoms(self.refresh, gen)
        pick = torch.randint(self.size, (self.batch,), generator=gen)
        sym = torch.randint(8, (self.batch,), generator=gen)
        x, m = dihedral(self.x[pick], sym), dihedral(self.m[pick], sym)
        y = poisson_noise(self.radon(x), self.photons, pixel_size=self.pixel_size, generator=gen)
        return y, x, m


def scores(x_hat: torch.Tensor, x: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-image PSNR and SSIM (data range 1) from scikit-image."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    ps, ss = [], []
    for a, b in zip(x_hat.detach().cpu().double().numpy(), x.cpu().double().numpy(), strict=True):
        ps.append(float(peak_signal_noise_ratio(b, a.clip(-1, 2), data_range=1.0)))
        ss.append(float(structural_similarity(b, a, data_range=1.0)))
    return ps, ss


def _tv(y: torch.Tensor, radon: Any, lam: float, m: torch.Tensor, iters: int) -> Any:
    from .._validation import ConvergenceWarning
    from ..imaging import tv_reconstruction

    with warnings.catch_warnings():  # a fixed iteration budget; convergence is reported
        warnings.simplefilter("ignore", ConvergenceWarning)
        return tv_reconstruction(y, radon, lam, mask=m, max_iter=iters, tol=1e-5)


def jacobian_norm(model: Any, y: torch.Tensor, mask: torch.Tensor, iters: int = 30) -> float:
    """Largest local Jacobian norm of ``model`` over the sinograms ``y`` (power iteration on
    ``J^T J`` per sinogram with forward- and reverse-mode products): a lower bound on the
    Lipschitz constant, like the adversarial ratio."""
    best = 0.0
    gen = torch.Generator().manual_seed(0)
    for i in range(y.shape[0]):
        yi, mi = y[i : i + 1], mask[i : i + 1]

        def f(s: torch.Tensor, _m: torch.Tensor = mi) -> torch.Tensor:
            return model(s, mask=_m)

        v = torch.randn(yi.shape, generator=gen, dtype=yi.dtype)
        est = 0.0
        for _ in range(iters):
            v = v / v.norm()
            _, jv = torch.autograd.functional.jvp(f, yi, v)
            _, v = torch.autograd.functional.vjp(f, yi, jv)
            est = float(jv.norm())
        best = max(best, est)
    return best
