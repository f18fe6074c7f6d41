"""Certified steps for one window of the window modes of :class:`UnrolledGraphGD`.

The controller proposes the roots of the window's residual polynomial as fractions of the
certified interval ``[lo, hi]``; :func:`window_steps` keeps them where
:func:`certify_window` proves the contraction ``q <= q_max`` and otherwise walks down a
fixed list of other candidates, ending at steps whose certificate holds for any weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..solvers._chebyshev import chebyshev_roots
from ._controller import certify_window

__all__ = ["WindowSteps", "window_steps"]


@dataclass
class WindowSteps:
    """The steps of one window and where they came from (all ``(batch, blocks)`` but
    ``steps``, ``(batch, blocks, w)``)."""

    steps: torch.Tensor
    q: torch.Tensor  # certified contraction of the steps run
    t_used: torch.Tensor  # 1: learned roots, 0.5 / 0.25: pulled to Chebyshev, 0 / -1: safe
    backup: torch.Tensor  # bool: the backup controller's learned roots
    violation: torch.Tensor  # differentiable penalty (training aid), a scalar

    @property
    def learned(self) -> torch.Tensor:
        return self.t_used == 1.0


def equal_steps_certificate(
    s: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, w: int
) -> torch.Tensor:
    """Proven bound on ``max |1 - s lam|^w`` over ``[lo, hi]`` for ``w`` equal steps ``s``.

    The factor is linear in ``lam``, so its modulus is largest at an end: the maximum is
    ``max(|1 - s lo|, |1 - s hi|)^w`` exactly. Evaluated in float64 with the rounding of
    each operation added (a few units of ``eps`` on the base, ``2 w eps`` relative on the
    power), it is a proof, and below one whenever ``0 < lo`` and ``s hi < 2`` (far enough
    from the rounding level): the grid certificate's Markov allowance (a factor up to
    1.004) cannot prove that once the maximum is within 0.4% of one, i.e. on problems with
    ``hi / lo`` above about ``250 w``.
    """
    eps = torch.finfo(torch.float64).eps
    with torch.no_grad():
        s64, a, b = s.detach().double(), lo.detach().double(), hi.detach().double()
        base = torch.maximum((1.0 - s64 * a).abs(), (1.0 - s64 * b).abs())
        base = base + 4.0 * eps * torch.clamp(s64 * b, min=1.0)
        return base**w * (1.0 + 2.0 * w * eps)


def _safe_steps(
    like: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, span: torch.Tensor, cheb: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The Chebyshev roots of ``[lo, hi]`` or ``w`` steps ``1/hi``, whichever has the
    smaller certificate: ``(steps, q, t_used (0 or -1))``."""
    tiny = torch.finfo(like.dtype).tiny
    cheb_steps = 1.0 / (lo[..., None] + span * cheb).clamp(min=tiny)
    lip_steps = (1.0 / hi)[..., None].expand_as(like)
    q_cheb = certify_window(cheb_steps, lo, hi).to(lo.dtype)
    q_lip = equal_steps_certificate(1.0 / hi, lo, hi, like.shape[-1])
    q_lip = torch.minimum(q_lip, certify_window(lip_steps, lo, hi)).to(lo.dtype)
    use_cheb = q_cheb <= q_lip
    steps = torch.where(use_cheb[..., None], cheb_steps, lip_steps)
    t_used = torch.where(use_cheb, torch.zeros_like(lo), torch.full_like(lo, -1.0))
    return steps, torch.minimum(q_cheb, q_lip), t_used


def _violation(z: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, q_max: float) -> torch.Tensor:
    """Soft, differentiable measure of how far the roots ``sigmoid(z)`` are from the
    certified set (training aid only; the guarantee comes from the fallback). A NaN logit
    (an overflow inside the controller at large but finite weights, where the window falls
    back to safe steps) is read as 0, as the scalar and diagonal modes read it: the penalty
    stays finite (it was NaN, and so the loss, while the solver's output was finite)."""
    z = torch.nan_to_num(z, nan=0.0)
    tiny = torch.finfo(z.dtype).tiny
    roots = lo[..., None] + (hi - lo)[..., None] * torch.sigmoid(z)
    lam = lo[..., None] + (hi - lo)[..., None] * torch.linspace(
        0, 1, 257, dtype=z.dtype, device=z.device
    )
    poly = torch.prod(1.0 - lam[..., None, :] / roots[..., :, None].clamp(min=tiny), -2)
    return torch.relu(poly.abs().amax(-1) - 0.97 * q_max).mean()


def window_steps(
    z: torch.Tensor,
    lo: torch.Tensor,
    hi: torch.Tensor,
    q_max: float,
    backup: Callable[[], torch.Tensor] | None = None,
) -> WindowSteps:
    """Certified steps for one window from the logits ``z: (batch, blocks, w)``.

    Per graph and signal, the first candidate whose certificate is ``<= q_max`` runs:

    1. the learned roots ``lo + (hi - lo) sigmoid(z)`` (the common case: then nothing
       else is evaluated);
    2. the backup controller's learned roots, from the logits ``backup()`` (called only
       if some learned roots of step 1 failed; ``None``: no backup);
    3. the roots of step 1 pulled half and three quarters of the way to the Chebyshev
       roots of ``[lo, hi]``;
    4. the safe steps: the Chebyshev roots of ``[lo, hi]`` or ``w`` steps ``1/hi``,
       whichever has the smaller certificate (``< 1`` whenever ``lo > 0``: the equal
       steps' is proved at the interval's ends, :func:`equal_steps_certificate`).
    """
    wk = z.shape[-1]
    tiny = torch.finfo(z.dtype).tiny
    cheb = chebyshev_roots(wk, dtype=z.dtype, device=z.device)
    span = (hi - lo)[..., None]

    def candidate(frac: torch.Tensor, t: float) -> tuple[torch.Tensor, torch.Tensor]:
        roots = lo[..., None] + span * (cheb + t * (frac - cheb))
        cand = 1.0 / roots.clamp(min=tiny)
        return cand, certify_window(cand, lo, hi).to(lo.dtype)

    frac = torch.sigmoid(z)
    cand, qc = candidate(frac, 1.0)
    no_backup = torch.zeros_like(lo, dtype=torch.bool)
    if bool((qc <= q_max).all()):
        steps, q, t_used, used_backup = cand, qc, torch.ones_like(lo), no_backup
    else:
        steps, q, t_used = cand, qc, torch.zeros_like(lo)  # every entry set below
        done = torch.zeros_like(lo, dtype=torch.bool)
        used_backup = no_backup
        tries: list[tuple[Callable[[], torch.Tensor], float, bool]] = [(lambda: frac, 1.0, False)]
        if backup is not None:
            tries.append((lambda: torch.sigmoid(backup()[..., :wk]), 1.0, True))
        tries += [(lambda: frac, 0.5, False), (lambda: frac, 0.25, False)]
        for i, (get, t, is_backup) in enumerate(tries):
            if bool(done.all()):
                break
            if i > 0:
                cand, qc = candidate(get(), t)
            take = ~done & (qc <= q_max)
            steps = torch.where(take[..., None], cand, steps)
            q = torch.where(take, qc, q)
            t_used = torch.where(take, torch.full_like(t_used, t), t_used)
            if is_backup:
                used_backup = take
            done = done | take
        if not bool(done.all()):
            safe, q_safe, t_safe = _safe_steps(cand, lo, hi, span, cheb)
            steps = torch.where(done[..., None], steps, safe)
            q = torch.where(done, q, q_safe)
            t_used = torch.where(done, t_used, t_safe)
    if torch.is_grad_enabled() and z.requires_grad:
        violation = _violation(z, lo, hi, q_max)
    else:
        violation = z.new_zeros(())
    return WindowSteps(steps, q, t_used, used_backup, violation)
