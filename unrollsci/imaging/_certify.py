"""Building blocks of the Lipschitz certificate (shared by the model and the bound)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from .._validation import check_count, check_device
from ..operators._radon import Radon
from ._fbp import fbp

__all__ = [
    "certified_divisor",
    "check_finite_tensors",
    "cnn_cap_for_target",
    "conv_operator_norm",
    "init_norm",
    "propagate_bound",
]


def conv_operator_norm(
    weight: torch.Tensor, image_size: int, *, method: str = "fft", n_iter: int = 200, seed: int = 0
) -> float:
    """Operator norm of the zero-padded "same" 2D convolution with ``weight`` on images.

    ``method="fft"`` (an upper bound): the zero-padded convolution on ``N x N``
    images is a compression (embed, circular convolution on ``M_h x M_w`` with
    ``M_h >= N + k_h - 1`` and ``M_w >= N + k_w - 1``, crop) of a circular convolution,
    whose norm is ``max_w sigma_max(K_hat(w))`` over the DFT frequencies of the
    ``(c_out, c_in)`` kernel matrix (Sedghi, Gupta & Long, ICLR 2019). Embedding
    and cropping have norm 1, so this bounds the norm from above. Each axis of the DFT
    grid is sized from its own kernel side, so non-square kernels are bounded too.

    ``method="power"``: power iteration on ``W^T W`` (a lower estimate that
    converges to the norm; padding ``(k_h // 2, k_w // 2)``).

    Args:
        weight: ``(c_out, c_in, k_h, k_w)`` (usually ``k_h = k_w = k``).
        image_size: ``N``.
    """
    if not isinstance(weight, torch.Tensor) or weight.dim() != 4:
        got = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise ValueError(f"Expected a conv weight of shape (c_out, c_in, k, k) (got {got}).")
    image_size = check_count("image_size", image_size)
    w = weight.detach().to(torch.float64)
    kh, kw = w.shape[-2:]
    if method == "fft":
        m = (image_size + kh, image_size + kw)  # per axis: no wrap-around for kh != kw
        # Real kernel: K(-w) = conj K(w), so half the frequencies suffice (rfft2).
        spec = torch.fft.rfft2(w, s=m).permute(2, 3, 0, 1)  # (m_h, m_w//2+1, c_out, c_in)
        gram = spec.mH @ spec if spec.shape[-1] <= spec.shape[-2] else spec @ spec.mH
        return float(torch.linalg.eigvalsh(gram)[..., -1].max().clamp(min=0).sqrt())
    if method != "power":
        raise ValueError(f"Expected method 'fft' or 'power' (got {method!r}).")
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(1, w.shape[1], image_size, image_size, generator=gen, dtype=torch.float64)
    u = u.to(w.device)
    est = 0.0
    for _ in range(n_iter):
        u = u / u.norm()
        v = F.conv2d(u, w, padding=(kh // 2, kw // 2))
        est = float(v.norm())
        u = F.conv_transpose2d(v, w, padding=(kh // 2, kw // 2))
    return est


def certified_divisor(w: torch.Tensor, bound: float, cap: float, size: int) -> torch.Tensor:
    """The divisor ``d`` (a scalar tensor of ``w``'s dtype and device) of the eval-mode
    weight ``w / d``: 1 where the FFT bound ``bound`` of ``w`` is below the cap, else at
    least ``bound / cap``, rounded up until the FFT bound of ``w / d``, computed as the
    certificate computes it, is ``<= cap``.

    The target is ``cap`` less a relative ``2^-30``: the float64 roundings of the
    certificate's own arithmetic (the product of the per-convolution caps, the layer
    recursion) stay below ``lipschitz_target``. A non-finite ``bound`` gives 1 (the
    caller refuses such weights).
    """
    one = torch.ones((), dtype=w.dtype, device=w.device)
    limit = cap * (1.0 - 2.0**-30)
    if not math.isfinite(bound) or bound <= limit:
        return one
    scale, bump = bound / limit, 2.0**-24
    while True:  # the FFT bound is linear in w: a few bumps of the rounding suffice
        d = torch.full((), scale, dtype=w.dtype, device=w.device)
        got = conv_operator_norm(w / d, size)
        if got <= limit or not math.isfinite(got):
            return d
        scale *= max(got / limit, 1.0 + bump)
        bump *= 2.0


def linear_norm(
    fn: Any,
    shape: tuple[int, ...],
    *,
    dtype: torch.dtype,
    device: Any,
    n_iter: int = 300,
    tol: float = 1e-9,
    seed: int = 0,
) -> float:
    """Norm of a linear map ``fn`` by power iteration on ``fn^T fn`` (adjoint by autograd,
    whatever the caller's grad mode: also under ``torch.no_grad()`` / ``inference_mode()``)."""
    device = check_device(device)
    gen = torch.Generator().manual_seed(seed)
    est = 0.0
    with torch.inference_mode(False), torch.enable_grad():
        u = torch.randn((1, *shape), generator=gen, dtype=dtype).to(device)
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


def init_norm(radon: Radon, init: str, filter: str, a: float, n_a: float, margin: float) -> float:
    """Lipschitz constant of the start ``x_0 = L y`` (before the 1-Lipschitz projection)."""
    if init == "fbp":
        dev = radon.angles.device
        return linear_norm(
            lambda v: fbp(v, radon, filter=filter),
            radon.out_shape,
            dtype=torch.float64,
            device=dev,
        ) * (1 + margin)
    if init == "adjoint":
        return n_a / a
    return 0.0


def propagate_bound(
    lx: float, s: float, n_a: float, a: float, lip_cnn: float, lip_dual: float = 0.0
) -> float:
    """Bound after one layer ``P(x - s g + CNN([x, g]))``, ``g = A^T(A x - y/a)``.

    Guarantee: if the state moves by at most ``lx`` per unit change of the sinogram, the
    next state moves by at most the returned value, for the joint state ``(x, h[, q])``
    with memory channels and a dual CNN alike (the derivation is in docs/ct.md, "The
    Lipschitz certificate"). ``lip_dual = 0`` gives the bound without a dual CNN.

    Args:
        lx: bound on the state per unit change of the sinogram.
        s: the layer's step size.
        n_a: bound on the scaled projector's norm.
        a: the scaling of the projector.
        lip_cnn: Lipschitz constant of the (primal) CNN on its concatenated channels.
        lip_dual: Lipschitz constant of the dual CNN (0 without one).

    Returns:
        The bound after the layer (a float).

    Example:
        >>> propagate_bound(1.0, 1.0, 1.0, 1.0, 0.0)  # plain gradient step, no CNN
        2.0
    """
    lg = n_a**2 * lx + n_a / a
    lin = max(1.0, abs(1.0 - s * n_a**2)) * lx + s * n_a / a
    rho = lip_dual * math.sqrt((n_a * lx + 1.0 / a) ** 2 + 1.0 / a**2 + lx**2)
    return lin + lip_cnn * math.hypot(lx, lg + n_a * rho) + max(1.0, s * n_a) * rho


def cnn_cap_for_target(
    target: float,
    l_init: float,
    n_layers: int,
    n_a: float,
    a: float,
    *,
    max_step: float = 2.0,
    dual: bool = False,
) -> float:
    """Largest per-layer CNN Lipschitz cap ``c`` whose certificate is ``<= target``.

    Uses the worst step in every layer (the bound is convex in ``s``, so the worst of
    ``0`` and ``max_step``; steps lie in (0, 2)), so the cap holds whatever steps
    training picks. Bisection on ``c`` (the bound grows with it). Valid with memory
    channels too (:func:`propagate_bound` bounds the joint state). With ``dual`` the
    dual CNN of every layer gets the same cap.
    """

    def bound(c: float) -> float:
        lx = l_init
        for _ in range(n_layers):
            lx = max(propagate_bound(lx, s, n_a, a, c, c if dual else 0.0) for s in (0.0, max_step))
        return lx

    floor = bound(0.0)
    if target <= floor:
        raise ValueError(
            f"Expected lipschitz_target > {floor:.4g}: the start and the gradient steps alone "
            f"already reach that bound (got {target})."
        )
    lo, hi = 0.0, 1.0
    while bound(hi) < target:
        lo, hi = hi, 2 * hi
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if bound(mid) <= target else (lo, mid)
    return lo


def check_finite_tensors(model: nn.Module, buffers: tuple[str, ...]) -> None:
    """Raise ``ValueError`` naming every parameter of ``model`` and every named buffer
    that holds NaN or Inf entries (with their counts)."""
    bad = []
    for name, t in (*model.named_parameters(), *((b, getattr(model, b)) for b in buffers)):
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            n_nan, n_inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
            bad.append(f"{name} ({n_nan} NaN and {n_inf} Inf of {t.numel()} entries)")
    if bad:
        raise ValueError(
            f"Expected finite weights in the {type(model).__name__} (got non-finite values "
            f"in {', '.join(bad)}); restore them, e.g. from a checkpoint, or lower the lr."
        )
