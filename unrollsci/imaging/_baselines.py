"""Classical CT baselines: TV-regularized (Chambolle-Pock) and Tikhonov (CG) reconstruction."""

from __future__ import annotations

from typing import Any

import torch

from .._validation import (
    as_bool_mask,
    check_batch,
    check_count,
    check_finite,
    check_like,
    check_positive,
    check_tensor,
)
from ..operators import ReshapeOperator, gram
from ..operators._radon import Radon
from ..prox import project_support
from ..solvers import Solution, cg
from ..solvers._common import row_norm
from ..solvers._solution import finish
from ._noise import _hyper

__all__ = ["tv_reconstruction", "tikhonov_reconstruction", "gradient2d", "divergence2d"]


def gradient2d(x: torch.Tensor) -> torch.Tensor:
    """Forward differences ``(batch, H, W)`` -> ``(batch, 2, H, W)`` (zero at the far edge).

    Args:
        x: images ``(batch, H, W)``.

    Example:
        >>> import torch
        >>> gradient2d(torch.zeros(2, 8, 8)).shape
        torch.Size([2, 2, 8, 8])
    """
    gx = torch.zeros((*x.shape[:-2], 2, *x.shape[-2:]), dtype=x.dtype, device=x.device)
    gx[..., 0, :-1, :] = x[..., 1:, :] - x[..., :-1, :]
    gx[..., 1, :, :-1] = x[..., :, 1:] - x[..., :, :-1]
    return gx


def divergence2d(p: torch.Tensor) -> torch.Tensor:
    """``-gradient2d^T``: divergence of ``p: (batch, 2, H, W)`` -> ``(batch, H, W)``.

    Args:
        p: vector fields ``(batch, 2, H, W)``.
    """
    p0, p1 = p[..., 0, :, :], p[..., 1, :, :]
    d = torch.zeros_like(p0)
    d[..., :-1, :] += p0[..., :-1, :]
    d[..., 1:, :] -= p0[..., :-1, :]
    d[..., :, :-1] += p1[..., :, :-1]
    d[..., :, 1:] -= p1[..., :, :-1]
    return d


def _check_problem(y: torch.Tensor, radon: Any, mask: Any) -> torch.Tensor | None:
    if not isinstance(radon, Radon):
        raise TypeError(f"Expected 'radon' to be a Radon operator (got {type(radon).__name__}).")
    check_tensor("y", y, ndim=(3,))
    if tuple(y.shape[1:]) != radon.out_shape:
        raise ValueError(
            f"Expected sinograms 'y' of shape (batch, {radon.n_angles}, {radon.n_detectors}) "
            f"(got shape {tuple(y.shape)})."
        )
    check_batch("y", y)
    check_finite("y", y)
    if mask is None:
        return None
    if (
        not isinstance(mask, torch.Tensor)
        or tuple(mask.shape[-2:]) != radon.in_shape
        or (mask.dim() == 3 and mask.shape[0] != y.shape[0])
        or mask.dim() not in (2, 3)
    ):
        got = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(
            f"Expected 'mask' of shape {radon.in_shape} or (batch, {radon.image_size}, "
            f"{radon.image_size}) (got {got})."
        )
    return as_bool_mask(mask).to(device=y.device)


def _check_iters(tol: Any, max_iter: Any) -> None:
    check_positive("tol", tol, allow_zero=True)
    check_count("max_iter", max_iter)


def tv_reconstruction(
    y: torch.Tensor,
    radon: Radon,
    lam: float,
    *,
    max_iter: int = 500,
    tol: float = 1e-4,
    nonneg: bool = True,
    mask: torch.Tensor | None = None,
    x0: torch.Tensor | None = None,
    throw: bool = False,
) -> Solution:
    """Total-variation reconstruction by the Chambolle-Pock primal-dual algorithm.

    Solves ``min_x 1/2 ||A x - y||^2 + lam * TV(x)`` subject to ``x >= 0`` (if
    ``nonneg``) and ``x = 0`` outside ``mask`` (if given), with the isotropic
    ``TV(x) = sum_ij ||(grad x)_ij||_2``. Internally ``A`` is scaled by ``1/||A||``
    so that the primal and dual steps ``tau = sigma = 0.99 / 3`` satisfy
    ``tau sigma ||K||^2 < 1`` for ``K = [A / ||A||; grad]`` (``||grad||^2 <= 8``)
    (Chambolle & Pock, J. Math. Imaging Vis. 40, 2011, algorithm 1).

    Args:
        y: sinograms ``(batch, n_angles, n_det)``.
        radon: the projector.
        lam: TV weight (>= 0), in the units of the objective above.
        max_iter, tol: stop when ``||x_k - x_{k-1}|| <= tol ||x_k||`` for every sample.
        nonneg, mask: constraints (``mask`` ``(N, N)`` or ``(batch, N, N)``).
        x0: warm start ``(batch, N, N)``.
        throw: raise instead of warning when ``max_iter`` is reached.

    Returns:
        Solution with ``x`` ``(batch, N, N)``.

    Example:
        >>> from unrollsci.imaging import Radon, shepp_logan
        >>> op = Radon(32, 30)
        >>> sol = tv_reconstruction(op(shepp_logan(32)[None]), op, lam=0.01, tol=0.05)
        >>> sol.x.shape
        torch.Size([1, 32, 32])
    """
    m = _check_problem(y, radon, mask)
    lam = _hyper("lam", lam, allow_zero=True)
    _check_iters(tol, max_iter)
    if x0 is not None:
        check_tensor("x0", x0, ndim=(3,))
        want = (y.shape[0], *radon.in_shape)
        if tuple(x0.shape) != want:
            raise ValueError(f"Expected 'x0' of shape {want} (got {tuple(x0.shape)}).")
        check_like("x0", x0, "y", y)
        check_finite("x0", x0)
    a = radon.norm()
    ys = y / a
    lam_s = lam / a**2
    tau = sigma = 0.99 / 3.0
    x = (
        torch.zeros(y.shape[0], *radon.in_shape, dtype=y.dtype, device=y.device)
        if x0 is None
        else x0.clone()
    )
    xbar = x.clone()
    p = torch.zeros_like(y)
    q = torch.zeros(y.shape[0], 2, *radon.in_shape, dtype=y.dtype, device=y.device)
    residuals: list[float] = []
    converged = False
    it = 0
    with torch.no_grad():
        while it < max_iter:
            it += 1
            p = (p + sigma * (radon.mv(xbar) / a - ys)) / (1 + sigma)
            q = q + sigma * gradient2d(xbar)
            qn = torch.hypot(q[:, :1], q[:, 1:])  # no squares: float32 data of 1e-20
            q = q / torch.clamp(qn / max(lam_s, 1e-300), min=1.0)
            x_new = x - tau * (radon.rmv(p) / a - divergence2d(q))
            if nonneg:
                x_new = torch.relu(x_new)
            if m is not None:
                x_new = project_support(x_new, m)
            # relative change with norms that neither underflow nor overflow; a zero
            # iterate has converged only if it did not move
            change = row_norm((x_new - x).reshape(x.shape[0], -1))
            size = row_norm(x_new.reshape(x.shape[0], -1))
            rel = torch.where(size > 0, change / torch.where(size > 0, size, 1.0), 0.0)
            rel = torch.where((size > 0) | (change == 0), rel, torch.inf)
            xbar = 2 * x_new - x
            x = x_new
            residuals.append(float(rel.max()))
            if residuals[-1] <= tol:
                converged = True
                break
    return finish(
        "tv_reconstruction",
        x,
        it,
        residuals,
        converged,
        tol,
        max_iter,
        throw,
        stats={"lam": lam, "tau": tau, "sigma": sigma, "radon_norm": a},
    )


def tikhonov_reconstruction(
    y: torch.Tensor,
    radon: Radon,
    lam: float,
    *,
    tol: float = 1e-6,
    max_iter: int = 500,
    throw: bool = False,
) -> Solution:
    """``argmin_x ||A x - y||^2 + lam ||x||^2`` by conjugate gradient on the normal equations.

    Args:
        y: sinograms ``(batch, n_angles, n_det)``.
        radon: the projector.
        lam: ridge weight (> 0).

    Returns:
        Solution with ``x`` ``(batch, N, N)``.

    Example:
        >>> from unrollsci.imaging import Radon, shepp_logan
        >>> op = Radon(32, 30)
        >>> tikhonov_reconstruction(op(shepp_logan(32)[None]), op, lam=1.0).x.shape
        torch.Size([1, 32, 32])
    """
    _check_problem(y, radon, None)
    lam = _hyper("lam", lam, allow_zero=False)
    _check_iters(tol, max_iter)
    # A^T A + lam I on flattened images (what CG expects)
    normal = gram(radon @ ReshapeOperator((radon.image_size**2,), radon.in_shape), float(lam))
    rhs = radon.rmv(y).reshape(y.shape[0], -1)
    # symmetric by construction: no probe (check=False)
    sol = cg(normal, rhs, tol=tol, max_iter=max_iter, throw=throw, check=False)
    sol.x = sol.x.reshape(y.shape[0], *radon.in_shape)
    return sol
