"""Lipschitz certificate of an :class:`UnrolledCT` network, and an adversarial check of it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .._validation import (
    check_batch,
    check_count,
    check_finite,
    check_positive,
    check_tensor,
)
from ._certify import conv_operator_norm, init_norm, propagate_bound
from ._ridge import ConvexRidgeCT
from ._unrolled import UnrolledCT

__all__ = ["lipschitz_bound", "LipschitzCertificate", "conv_operator_norm", "empirical_lipschitz"]


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
    model: UnrolledCT | ConvexRidgeCT, *, margin: float = 1e-2, details: bool = False
) -> float | LipschitzCertificate:
    """Certified Lipschitz constant of ``model`` with respect to the sinogram (Euclidean norms).

    Built layer by layer with the composition, sum and product rules (start map, gradient
    step, CNN through the FFT bounds of its convolutions, 1-Lipschitz support projection),
    for any support mask, with memory channels and a dual CNN alike; the derivation is in
    docs/ct.md, "The Lipschitz certificate". For a :class:`ConvexRidgeCT` it returns
    that model's own certificate (:meth:`ConvexRidgeCT.lipschitz_bound`; ``margin`` is
    the model's). The two power-iteration norms (of the
    projector and of the FBP map) converge from below, so ``margin`` inflates them.

    Guarantee: ``||model(y1) - model(y2)|| <= bound * ||y1 - y2||`` for all sinograms (in
    exact arithmetic, given the power-iteration norms within ``margin``).

    Args:
        model: a (trained) :class:`UnrolledCT`.
        margin: relative inflation of power-iteration estimates (default 1%).
        details: return a :class:`LipschitzCertificate` (per-layer terms) instead of a float.

    Returns:
        The bound (a float), or a :class:`LipschitzCertificate` with ``details=True``.

    Example:
        >>> import torch
        >>> from unrollsci.imaging import Radon, UnrolledCT
        >>> model = UnrolledCT(Radon(16, 12), n_layers=2, channels=4, lipschitz_target=5.0)
        >>> lipschitz_bound(model) <= 5.0
        True
    """
    if isinstance(model, ConvexRidgeCT):  # its own, structure-exploiting certificate
        return model.lipschitz_bound(details=details)
    if not isinstance(model, UnrolledCT):
        raise TypeError(
            f"Expected an UnrolledCT or ConvexRidgeCT model (got {type(model).__name__})."
        )
    margin = check_positive("margin", margin, allow_zero=True)
    model.check_finite_weights()  # a NaN weight gave a NaN bound, silently
    radon = model.radon
    a = float(model.radon_norm)
    with torch.no_grad():
        n_a = radon.norm(recompute=True) * (1 + margin) / a
    l_init = init_norm(radon, model.init, model.filter, a, n_a, margin)
    was = model.training
    model.eval()
    layers = []
    lx = l_init
    try:
        with torch.no_grad():
            steps = model.step_sizes().double()
            for k in range(model.active_layers):
                block, s = model.layer(k)
                s = float(steps[0 if model.tied else k])
                lip_cnn = block.lipschitz()
                dual = model.dual_layer(k)
                lip_dual = 0.0 if dual is None else dual.lipschitz()
                lx = propagate_bound(lx, s, n_a, a, lip_cnn, lip_dual)
                # bound on the state (x, h[, q])
                layers.append({"step": s, "cnn": lip_cnn, "dual_cnn": lip_dual, "bound": lx})
    finally:
        model.train(was)
    if math.isnan(lx):
        raise ValueError("Expected a finite Lipschitz bound (got NaN from finite weights).")
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
    check_tensor("y", y)
    if y.dim() < 2:
        raise ValueError(f"Expected 'y' of shape (batch, ...) (got shape {tuple(y.shape)}).")
    check_batch("y", y)
    check_finite("y", y)
    steps = check_count("steps", steps)
    check_positive("lr", lr)
    check_positive("radius", radius)
    with torch.inference_mode(False), torch.enable_grad():  # an ascent on the inputs, in any mode
        return _ascent(model, y, steps, lr, radius, seed, mask)


def _ascent(
    model: torch.nn.Module,
    y: torch.Tensor,
    steps: int,
    lr: float,
    radius: float,
    seed: int,
    mask: torch.Tensor | None,
) -> float:
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
    try:
        for _ in range(steps):
            num = (model(y1, **kwargs) - model(y2, **kwargs)).reshape(y.shape[0], -1)
            den = (y1 - y2).reshape(y.shape[0], -1).norm(dim=1).clamp(min=1e-30)
            ratio = num.norm(dim=1) / den
            best = max(best, float(ratio.detach().max()))
            # gradients of the two inputs only: the model's parameters (and any .grad a
            # caller computed for them) are left as they were
            obj = -torch.log(ratio.clamp(min=1e-30)).sum()
            y1.grad, y2.grad = torch.autograd.grad(obj, [y1, y2])
            opt.step()
    finally:
        model.train(was)
    return best
