"""One iteration of each lasso algorithm, shared by the classical solvers and the
unrolled networks (so the two cannot drift apart).

Lasso convention: ``min_x 0.5 ||A x - y||^2 + lam ||x||_1``. Every step takes
batched tensors ``x: (batch, n)``, ``y: (batch, m)`` and broadcastable
step/threshold tensors, and is differentiable in all of them. The steps use the
operator's unchecked products (``op.mv`` / ``op.rmv``): the solver or network that calls
them validates its inputs once, at its public entry. ``bg_amp_step`` is
the exception to the lasso convention: one iteration of Bayes (MMSE) AMP for a
Bernoulli-Gaussian prior.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from .._validation import check_finite, check_like, check_positive_param, check_tensor
from ..operators import LinearOperator
from ..operators._base import check_real
from ..prox import make_prox, soft_threshold
from ._common import prepare_lasso, scaled_row_norm

__all__ = [
    "ista_step",
    "fista_momentum",
    "admm_step",
    "amp_step",
    "bg_amp_step",
    "bg_denoise",
    "lasso_objective",
    "lasso_kkt_residual",
]


def ista_step(
    op: LinearOperator,
    x: torch.Tensor,
    y: torch.Tensor,
    step: torch.Tensor | float,
    threshold: torch.Tensor | float,
    prox: Callable[[torch.Tensor, Any], torch.Tensor] = soft_threshold,
) -> torch.Tensor:
    """``prox(x - step * A^T (A x - y), threshold)``; ISTA uses ``threshold = step * lam``.

    ``prox`` is soft thresholding by default (the lasso), or any ``(v, threshold) -> x``,
    e.g. a :class:`unrollsci.prox.Prox` (group, non-negative, box).
    """
    return prox(x - step * op.rmv(op.mv(x) - y), threshold)


def fista_momentum(t: float | torch.Tensor) -> tuple[Any, Any]:
    """Nesterov/FISTA sequence: returns ``(t_next, beta)`` with
    ``t_next = (1 + sqrt(1 + 4 t^2)) / 2`` and ``beta = (t - 1) / t_next``.

    The one implementation of the sequence (:func:`unrollsci.solvers.fista`,
    :func:`unrollsci.solvers.gradient_descent` with Nesterov momentum and
    :class:`unrollsci.unrolled.UnrolledFISTA` all use it). ``t`` is a Python float
    (then so are the results) or a tensor, e.g. one ``t`` per batch entry as FISTA with
    restart keeps; starting from ``t = 1`` gives ``beta = 0, 1/t_2, ...``. The float path
    is the correctly rounded float64 recurrence; the tensor path uses ``torch.sqrt``,
    which on some CPU builds is 1 ulp off (e.g. at ``t_12``), so the two sequences can
    differ in the last bit.
    """
    if isinstance(t, torch.Tensor):
        t_next = 0.5 * (1.0 + torch.sqrt(1.0 + 4.0 * t * t))
    else:
        t_next = 0.5 * (1.0 + (1.0 + 4.0 * t * t) ** 0.5)
    return t_next, (t - 1.0) / t_next


def admm_step(
    x_solve,  # callable: rhs (batch, n) -> (A^T A + rho I)^{-1} rhs
    aty: torch.Tensor,
    z: torch.Tensor,
    u: torch.Tensor,
    rho: torch.Tensor | float,
    threshold: torch.Tensor | float,
    prox: Callable[[torch.Tensor, Any], torch.Tensor] = soft_threshold,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One scaled-form ADMM iteration for the lasso split ``x = z``.

    ``x = (A^T A + rho I)^{-1} (A^T y + rho (z - u))``, ``z = prox(x + u, lam / rho)``,
    ``u = u + x - z``; ADMM uses ``threshold = lam / rho``; ``prox`` as :func:`ista_step`.
    """
    x = x_solve(aty + rho * (z - u))
    z = prox(x + u, threshold)
    u = u + x - z
    return x, z, u


def amp_step(
    op: LinearOperator,
    x: torch.Tensor,
    z: torch.Tensor,
    y: torch.Tensor,
    threshold: torch.Tensor | float,
    onsager: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One AMP iteration with the Onsager correction.

    ``z = y - A x + onsager * z_prev``, then ``x_next = soft(x + A^T z, threshold)``.
    Returns ``(x_next, z, onsager_next)`` where ``onsager_next = ||x_next||_0 / m``
    (the average derivative of the soft threshold, times ``n / m``).
    """
    m = y.shape[-1]
    z = y - op.mv(x) + onsager * z
    pseudo = x + op.rmv(z)
    x_next = soft_threshold(pseudo, threshold)
    b = (pseudo.abs() > threshold).sum(dim=-1, keepdim=True).to(x.dtype) / m
    return x_next, z, b


def bg_denoise(
    r: torch.Tensor,
    tau: torch.Tensor | float,
    rho: torch.Tensor | float | None,
    sigma2: torch.Tensor | float,
    *,
    rho_logit: torch.Tensor | float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MMSE denoiser of a Bernoulli-Gaussian variable and its derivative.

    Model: ``x ~ (1 - rho) delta_0 + rho N(0, sigma2)`` and ``r = x + N(0, tau)``.
    Returns ``(E[x | r], d E[x | r] / d r)``, elementwise. With ``c = sigma2 / (sigma2 + tau)``
    and ``q = c r^2 / tau``, the posterior probability that ``x != 0`` is
    ``pi = sigmoid(logit(rho) - log(1 + sigma2 / tau) / 2 + q / 2)`` (the log posterior
    odds of the two Gaussian marginals ``N(0, sigma2 + tau)`` and ``N(0, tau)``), the
    posterior mean is ``pi c r`` and its derivative ``c pi (1 + (1 - pi) q)`` (the
    posterior variance over ``tau``). Computed in the log-odds domain: finite for any
    finite ``r``, for ``tau`` down to 0 (floored at ``tiny ** (1/4)`` of the dtype:
    ``3e-10`` in float32, ``1e-77`` in float64) and
    ``rho`` in ``(0, 1)``, in float32 and float64, and differentiable in every argument.
    ``rho_logit = log(rho / (1 - rho))`` may be given instead of ``rho`` (pass
    ``rho=None``): a learned prior stays finite and differentiable for any logit.
    """
    dtype = r.dtype
    tiny = torch.finfo(dtype).tiny ** 0.25  # 1/tau^2 (in the gradient) stays finite
    tau = torch.as_tensor(tau, dtype=dtype, device=r.device).clamp_min(tiny)
    return _bg_denoise_std(r, tau.sqrt(), rho, sigma2, rho_logit)


def _bg_denoise_std(
    r: torch.Tensor,
    std: torch.Tensor,
    rho: torch.Tensor | float | None,
    sigma2: torch.Tensor | float,
    rho_logit: torch.Tensor | float | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`bg_denoise` given the noise's standard deviation ``std = sqrt(tau)``: ``tau``
    itself is never formed, so data whose variance overflows (``|r|`` near the square root
    of the dtype's largest number) still give the finite estimate."""
    dtype = r.dtype
    big = math.sqrt(torch.finfo(dtype).max)
    if (rho is None) == (rho_logit is None):
        raise ValueError("Give exactly one of 'rho' and 'rho_logit'.")
    if rho_logit is None:
        rho_logit = torch.logit(torch.as_tensor(rho, dtype=dtype, device=r.device))
    rho_logit = torch.as_tensor(rho_logit, dtype=dtype, device=r.device)
    sigma2 = torch.as_tensor(sigma2, dtype=dtype, device=r.device)
    std = std.clamp_min(torch.finfo(dtype).tiny ** 0.125)
    ratio = std * (std / sigma2)  # tau / sigma2 (inf when tau overflows: c = 0)
    c = 1.0 / (1.0 + ratio)  # sigma2 / (sigma2 + tau)
    # q is clamped so that (1 - pi) * q is 0 * finite (not 0 * inf) when r^2 / tau overflows
    q = (c * (r / std).square()).clamp(max=big)
    log_odds = rho_logit - 0.5 * torch.log1p(1.0 / ratio) + 0.5 * q
    pi = torch.sigmoid(log_odds)
    pi_off = torch.sigmoid(-log_odds)  # 1 - pi without cancellation
    return pi * c * r, c * pi * (1.0 + pi_off * q)


def bg_amp_step(
    op: LinearOperator,
    x: torch.Tensor,
    z: torch.Tensor,
    y: torch.Tensor,
    onsager: torch.Tensor,
    rho: torch.Tensor | float | None,
    sigma2: torch.Tensor | float,
    tau_scale: torch.Tensor | float = 1.0,
    *,
    rho_logit: torch.Tensor | float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One iteration of Bayes (MMSE) AMP for a Bernoulli-Gaussian prior.

    ``z = y - A x + onsager * z_prev``, ``tau = tau_scale * ||z||^2 / m`` (the effective
    noise variance of the pseudo-data, per batch entry), ``r = x + A^T z`` and
    ``x_next = E[x | r]`` under ``(1 - rho) delta_0 + rho N(0, sigma2)`` with noise
    variance ``tau`` (:func:`bg_denoise`). Returns ``(x_next, z, onsager_next)`` with
    ``onsager_next = (n / m) mean_i d x_next_i / d r_i``. The classical algorithm uses
    ``tau_scale = 1``; learned AMP (LAMP) learns it per layer. ``rho_logit`` as in
    :func:`bg_denoise`.
    """
    m = y.shape[-1]
    z = y - op.mv(x) + onsager * z
    # sqrt(tau) = sqrt(tau_scale / m) ||z||, the norm scale-free (its square may overflow)
    norm = scaled_row_norm(z, keepdim=True)
    pseudo = x + op.rmv(z)
    std = (tau_scale / m) ** 0.5 * norm
    x_next, deriv = _bg_denoise_std(pseudo, std, rho, sigma2, rho_logit)
    b = deriv.sum(dim=-1, keepdim=True) / m
    return x_next, z, b


def _check_lasso_point(op: Any, x: Any, y: Any, lam: Any) -> LinearOperator:
    """The checks of :func:`lasso_objective` and :func:`lasso_kkt_residual` (those of
    :func:`unrollsci.losses.kkt_residual`): ``(A, y, lam)`` as the solvers check them
    (shapes, finite, ``lam >= 0`` a scalar or of shape ``(batch,)``), and ``x`` real,
    finite, of ``y``'s dtype and device, ``(batch, n)`` for ``y: (batch, m)`` or ``(n,)``
    for ``y: (m,)``: a ``y`` of another batch size no longer broadcasts against ``x``, and a
    negative ``lam`` no longer gives a negative objective. Returns the operator."""
    op, y2, _, _ = prepare_lasso(op, y, lam)
    check_tensor("x", x, ndim=(1, 2))
    check_real("x", x)
    check_finite("x", x)
    check_like("x", x, "y", y)
    n = op.in_shape[0]
    want = (y2.shape[0], n) if y.dim() == 2 else (n,)
    if tuple(x.shape) != want:
        raise ValueError(
            f"Expected 'x' of shape {want} for 'y' of shape {tuple(y.shape)} and an operator "
            f"with {n} inputs (got {tuple(x.shape)})."
        )
    return op


def lasso_objective(
    op: LinearOperator, x: torch.Tensor, y: torch.Tensor, lam: torch.Tensor | float
) -> torch.Tensor:
    """``0.5 ||A x - y||^2 + lam ||x||_1`` per batch entry, shape ``(batch,)`` (``(1,)`` for
    one problem, ``x: (n,)`` and ``y: (m,)``).

    Checked as :func:`unrollsci.losses.kkt_residual` checks its inputs: ``x: (batch, n)``
    for ``y: (batch, m)`` (same dtype and device, finite), ``lam >= 0`` a scalar or of
    shape ``(batch,)``; ``ValueError`` / ``TypeError`` otherwise.
    """
    op = _check_lasso_point(op, x, y, lam)
    if y.dim() == 1:  # one problem: the operator's products take a batch
        x, y = x[None], y[None]
    lam_t = torch.as_tensor(lam, dtype=x.dtype, device=x.device).reshape(-1)
    return 0.5 * (op(x) - y).pow(2).sum(-1) + lam_t * x.abs().sum(-1)


def lasso_kkt_residual(
    op: LinearOperator,
    x: torch.Tensor,
    y: torch.Tensor,
    lam: torch.Tensor | float,
    step: float | torch.Tensor,
    prox: Any = soft_threshold,
) -> torch.Tensor:
    """Fixed-point (KKT) residual ``||x - prox(x - t A^T(Ax - y), t lam)|| / t`` per batch entry.

    Zero exactly at minimizers of ``0.5 ||Ax - y||^2 + lam R(x)`` (the lasso for the
    default soft threshold; ``R`` of the prox otherwise); ``t`` is any positive step
    (``1 / ||A||^2`` is natural; a number, or a scalar tensor that requires grad, which
    keeps its gradient). ``prox`` takes what the solvers' ``prox=`` takes
    (:func:`unrollsci.prox.make_prox`: None or ``"soft"``, ``"nonneg"``, a dict, a
    :class:`~unrollsci.prox.Prox` or a callable). The norm is scale-free (each row divided
    by its largest magnitude first): the residual of ``(A, s x, s y, s lam)`` is ``s`` times
    that of ``(A, x, y, lam)`` down to the dtype's smallest numbers, with its gradient.
    ``x``, ``y`` and ``lam`` are checked as in :func:`lasso_objective`; a step that is not
    positive and finite is a ``ValueError`` (it gave negative or NaN residuals).
    """
    op = _check_lasso_point(op, x, y, lam)
    step = check_positive_param("step", step)
    if prox is not soft_threshold:
        p = make_prox(prox, op.in_shape[0])
        prox = soft_threshold if p.kind == "soft" else p
    lam_t = torch.as_tensor(lam, dtype=x.dtype, device=x.device).reshape(-1, 1)
    return scaled_row_norm(x - ista_step(op, x, y, step, step * lam_t, prox)) / step
