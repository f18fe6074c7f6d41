"""Lipschitz certificate of an :class:`UnrolledCT` network, and an adversarial check of it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812

from ..operators._radon import fbp
from ._unrolled import UnrolledCT

__all__ = ["lipschitz_bound", "LipschitzCertificate", "conv_operator_norm", "empirical_lipschitz"]


def conv_operator_norm(
    weight: torch.Tensor, image_size: int, *, method: str = "fft", n_iter: int = 200, seed: int = 0
) -> float:
    """Operator norm of the zero-padded "same" 2D convolution with ``weight`` on images.

    ``method="fft"`` (an upper bound): the zero-padded convolution on ``N x N``
    images is a compression (embed, circular convolution on ``M x M`` with
    ``M >= N + k - 1``, crop) of a circular convolution, whose norm is
    ``max_w sigma_max(K_hat(w))`` over the ``M x M`` DFT frequencies of the
    ``(c_out, c_in)`` kernel matrix (Sedghi, Gupta & Long, ICLR 2019). Embedding
    and cropping have norm 1, so this bounds the norm from above.

    ``method="power"``: power iteration on ``W^T W`` (a lower estimate that
    converges to the norm).

    Args:
        weight: ``(c_out, c_in, k, k)``.
        image_size: ``N``.
    """
    w = weight.detach().to(torch.float64)
    k = w.shape[-1]
    if method == "fft":
        m = image_size + k
        spec = torch.fft.fft2(w, s=(m, m))  # (c_out, c_in, m, m)
        return float(torch.linalg.matrix_norm(spec.permute(2, 3, 0, 1), ord=2).max())
    if method != "power":
        raise ValueError(f"Expected method 'fft' or 'power' (got {method!r}).")
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(1, w.shape[1], image_size, image_size, generator=gen, dtype=torch.float64)
    u = u.to(w.device)
    est = 0.0
    for _ in range(n_iter):
        u = u / u.norm()
        v = F.conv2d(u, w, padding=k // 2)
        est = float(v.norm())
        u = F.conv_transpose2d(v, w, padding=k // 2)
    return est


def _linear_norm(
    fn: Any,
    shape: tuple[int, ...],
    *,
    dtype: torch.dtype,
    device: Any,
    n_iter: int = 300,
    tol: float = 1e-9,
    seed: int = 0,
) -> float:
    """Norm of a linear map ``fn`` by power iteration on ``fn^T fn`` (adjoint by autograd)."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn((1, *shape), generator=gen, dtype=dtype).to(device)
    est = 0.0
    for _ in range(n_iter):
        u = (u / u.norm()).requires_grad_(True)
        v = fn(u)
        (g,) = torch.autograd.grad(v, u, grad_outputs=v.detach())
        new = math.sqrt(float((g * u).sum().detach().clamp(min=0)))
        u = g.detach()
        if abs(new - est) <= tol * new:
            est = new
            break
        est = new
    return est


@dataclass
class LipschitzCertificate:
    """An upper bound on ``||f(y1) - f(y2)|| / ||y1 - y2||`` and how it was built."""

    bound: float
    init: float
    radon_norm: float
    layers: list[dict[str, float]] = field(default_factory=list)

    def __float__(self) -> float:
        return self.bound


def lipschitz_bound(
    model: UnrolledCT, *, margin: float = 1e-2, details: bool = False
) -> float | LipschitzCertificate:
    """Certified Lipschitz constant of ``model`` with respect to the sinogram (Euclidean norms).

    Built from the layers with the composition, sum and product rules:

    * ``x_0 = P_M(L y)`` with ``L`` linear (FBP, ``A^T / a^2`` or 0): ``L_0 = ||L||``
      (power iteration);
    * ``g = A^T (A x - y / a)`` with ``A = radon / a``: ``L_g <= n^2 L_x + n / a``,
      with ``n = ||radon|| / a`` (power iteration value times ``1 + margin``);
    * ``x - s g`` is ``(I - s A^T A) x + s A^T y / a``: ``<= max(1, |1 - s n^2|) L_x + s n / a``;
    * the CNN (LeakyReLU is 1-Lipschitz) on ``[x, g]``: ``<= prod_i ||W_i|| * sqrt(L_x^2 + L_g^2)``,
      each ``||W_i||`` an FFT upper bound (:func:`conv_operator_norm`);
    * the support projection ``P_M`` is 1-Lipschitz, for any mask.

    The two power-iteration norms (of the projector and of the FBP map) converge
    from below; ``margin`` inflates them (default 1%) to stay on the safe side.

    Args:
        model: a (trained) :class:`UnrolledCT`.
        margin: relative inflation of power-iteration estimates.
        details: return a :class:`LipschitzCertificate` (per-layer terms) instead of a float.
    """
    if not isinstance(model, UnrolledCT):
        raise TypeError(f"Expected an UnrolledCT model (got {type(model).__name__}).")
    radon = model.radon
    a = float(model.radon_norm)
    dev = model.mask.device
    with torch.no_grad():
        n_a = radon.norm(recompute=True) * (1 + margin) / a
    if model.init == "fbp":
        l_init = _linear_norm(
            lambda v: fbp(v, radon, filter=model.filter),
            radon.out_shape,
            dtype=torch.float64,
            device=dev,
        ) * (1 + margin)
    elif model.init == "adjoint":
        l_init = n_a / a
    else:
        l_init = 0.0
    size = radon.image_size
    was = model.training
    model.eval()
    layers = []
    lx = l_init
    with torch.no_grad():
        steps = model.step_sizes().double()
        for k in range(model.active_layers):
            block, s = model.layer(k)
            s = float(steps[0 if model.tied else k])
            lip_cnn = 1.0
            for conv in block.convs:
                lip_cnn *= conv_operator_norm(conv.weight(), size)
            lg = n_a**2 * lx + n_a / a
            lin = max(1.0, abs(1.0 - s * n_a**2)) * lx + s * n_a / a
            lx = lin + lip_cnn * math.hypot(lx, lg)
            layers.append({"step": s, "cnn": lip_cnn, "bound": lx})
    model.train(was)
    cert = LipschitzCertificate(bound=lx, init=l_init, radon_norm=a * n_a, layers=layers)
    return cert if details else cert.bound


def empirical_lipschitz(
    model: torch.nn.Module,
    y: torch.Tensor,
    *,
    steps: int = 100,
    lr: float = 1e-2,
    radius: float = 1e-2,
    seed: int = 0,
    mask: torch.Tensor | None = None,
) -> float:
    """Largest ratio ``||f(y1) - f(y2)|| / ||y1 - y2||`` found by gradient ascent.

    Starts from ``y1 = y``, ``y2 = y + radius * ||y|| * n`` (random ``n`` of unit
    norm) for each sinogram in the batch and moves both by Adam on the log-ratio.
    The result is a lower bound on the true Lipschitz constant; a certificate
    must be at least as large.

    Args:
        model: maps ``(batch, ...)`` sinograms to images.
        y: starting sinograms ``(batch, n_angles, n_det)``.
        steps, lr: Adam iterations and learning rate (relative to ``||y||``).
        radius: initial relative distance between the two inputs.
    """
    gen = torch.Generator().manual_seed(seed)
    scale = y.reshape(y.shape[0], -1).norm(dim=1).clamp(min=1e-12)
    shape = (-1,) + (1,) * (y.dim() - 1)
    noise = torch.randn(y.shape, generator=gen, dtype=y.dtype).to(y.device)
    noise = noise / noise.reshape(y.shape[0], -1).norm(dim=1).reshape(shape)
    y1 = y.detach().clone().requires_grad_(True)
    y2 = (y.detach() + radius * scale.reshape(shape) * noise).requires_grad_(True)
    opt = torch.optim.Adam([y1, y2], lr=lr * float(scale.mean()) / math.sqrt(y[0].numel()))
    best = 0.0
    was = model.training
    model.eval()
    kwargs = {} if mask is None else {"mask": mask}
    for _ in range(steps):
        opt.zero_grad()
        num = (model(y1, **kwargs) - model(y2, **kwargs)).reshape(y.shape[0], -1).norm(dim=1)
        den = (y1 - y2).reshape(y.shape[0], -1).norm(dim=1).clamp(min=1e-30)
        ratio = num / den
        best = max(best, float(ratio.detach().max()))
        (-torch.log(ratio.clamp(min=1e-30)).sum()).backward()
        opt.step()
    model.train(was)
    return best
