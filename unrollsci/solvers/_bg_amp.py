"""Bayes (MMSE) AMP for a Bernoulli-Gaussian prior."""

from __future__ import annotations

import math
from typing import Any

import torch

from ._common import check_stopping, prepare_lasso, unbatch
from ._lasso import _amp_update, _check_damping, _scale, _x0
from ._loop import run_until
from ._solution import Solution, finish
from ._steps import bg_amp_step

__all__ = ["bg_amp", "check_prior"]


def bg_amp(
    op: Any,
    y: torch.Tensor,
    rho: float,
    *,
    sigma_x: float = 1.0,
    x0: torch.Tensor | None = None,
    damping: float = 0.0,
    max_iter: int = 10_000,
    tol: float = 1e-10,
    throw: bool = False,
) -> Solution:
    """Approximate message passing with the MMSE denoiser of a Bernoulli-Gaussian prior.

    Not a lasso solver: it estimates ``x`` from ``y = A x + w`` (Gaussian ``w``) under
    the prior ``x_i ~ (1 - rho) delta_0 + rho N(0, sigma_x^2)`` i.i.d. (Bayes-optimal AMP,
    Donoho, Maleki & Montanari 2010; the "BG" shrinkage of Borgerding, Schniter & Rangan
    2017). Iteration (:func:`unrollsci.solvers.bg_amp_step`):
    ``z = y - A x + b z_prev``, ``tau = ||z||^2 / m`` (the effective noise variance,
    which includes the measurement noise, so no noise level is needed),
    ``x = E[x | x + A^T z]`` for that prior with noise variance ``tau``
    (:func:`unrollsci.solvers.bg_denoise`), and the Onsager coefficient
    ``b = (n / m) mean_i d x_i / d r_i`` from the exact derivative of the denoiser.
    Like :func:`amp` it needs i.i.d. (sub-)Gaussian ``A`` with columns of unit norm
    (entries of variance ``1/m``); ``damping`` in ``[0, 1)`` mixes every new iterate
    (``x``, ``z``, ``b``) with the previous one.

    Stops when ``||x_{k+1} - x_k|| <= tol * max(||x_k||, ||A^T y||)``.

    Args:
        op: ``LinearOperator`` (or matrix) with ``in_shape (n,)``, ``out_shape (m,)``.
        y: ``(batch, m)`` or ``(m,)`` data.
        rho: prior probability that an entry is nonzero, in ``(0, 1)``.
        sigma_x: standard deviation of the nonzero entries, ``> 0`` and a normal number
            of ``y``'s dtype. The iteration runs in units of ``sigma_x`` (on
            ``y / sigma_x``), so scaling ``y`` and ``sigma_x`` together scales ``x`` and
            nothing else, in float32 as in float64.
        x0: initial guess, default zero.
        damping, max_iter, tol, throw: as :func:`amp`.

    Returns:
        Solution with ``x: (batch, n)`` (or ``(n,)``), the posterior mean after the last
        iteration; ``stats["tau"]`` holds the last effective noise variance per entry.
    """
    op, y, _, unbatched = prepare_lasso(op, y, 0.0)  # the same checks on op and y
    rho_f, sigma_f = check_prior(rho, sigma_x)
    _check_sigma_range(sigma_f, y.dtype)
    tol = check_stopping(tol, max_iter)
    damping = _check_damping(damping)
    m = op.out_shape[0]
    # In units of sigma_x (AMP is equivariant: y / s gives x / s, z / s, the same b): the
    # prior's variance is 1, so sigma_x**2 cannot overflow, and the denoiser's floor on the
    # noise level (an absolute number) is relative to sigma_x.
    x = _x0(x0, y, op.in_shape[0], unbatched) / sigma_f
    y = y / sigma_f
    z = torch.zeros_like(y)
    b = y.new_zeros(y.shape[0], 1)
    scale = _scale(op, y)

    def step(s: tuple[torch.Tensor, ...]) -> tuple[tuple[torch.Tensor, ...], float]:
        x, z, b = s
        x, z, b, r = _amp_update(
            (x, z, b),
            bg_amp_step(op, x, z, y, b, rho_f, 1.0),
            damping,
            scale,
            "bg_amp diverged (NaN). Use damping > 0 for this A.",
        )
        return (x, z, b), r

    (x, z, b), k, residuals, converged = run_until(step, (x, z, b), max_iter=max_iter, tol=tol)
    # tau = ||z||^2 / m in the caller's units
    tau = ((z.detach() * sigma_f).square().sum(-1) / m) if k else y.new_zeros(y.shape[0])
    return finish(
        "bg_amp",
        unbatch(x * sigma_f, unbatched),
        k,
        residuals,
        converged,
        tol,
        max_iter,
        throw,
        {"damping": damping, "tau": unbatch(tau, unbatched)},
        hint="AMP needs i.i.d. Gaussian-like A; try damping=0.3.",
    )


def _check_sigma_range(sigma: float, dtype: torch.dtype) -> None:
    """``sigma_x`` must be a normal number of the data's dtype: bg_amp divides ``y`` by it."""
    fi = torch.finfo(dtype)
    if not fi.tiny <= sigma <= fi.max:
        raise ValueError(
            f"Expected 'sigma_x' within the range of {dtype} ({fi.tiny:.2e} to {fi.max:.2e}; "
            f"got {sigma!r})."
        )


def check_prior(rho: Any, sigma_x: Any) -> tuple[float, float]:
    """Validate the Bernoulli-Gaussian prior parameters."""
    try:
        rho_f, sigma_f = float(rho), float(sigma_x)
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"Expected 'rho' and 'sigma_x' to be numbers (got {rho!r}, {sigma_x!r})."
        ) from err
    if not 0.0 < rho_f < 1.0:
        raise ValueError(f"Expected 0 < rho < 1 (got {rho!r}).")
    if not (math.isfinite(sigma_f) and sigma_f > 0):
        raise ValueError(f"Expected 'sigma_x' > 0 and finite (got {sigma_x!r}).")
    return rho_f, sigma_f
