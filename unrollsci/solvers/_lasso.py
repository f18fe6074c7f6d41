"""Classical lasso solvers: ISTA, FISTA, ADMM, AMP.

All minimize ``0.5 ||A x - y||^2 + lam ||x||_1`` for a batch of ``y: (batch, m)``
and stop on a residual relative to ``||A^T y||`` per batch entry.
"""

from __future__ import annotations

from typing import Any

import torch

from .._validation import check_nonnegative, check_positive
from ..operators import LinearOperator, gram
from ..prox import soft_threshold
from ._cg import cg
from ._common import check_stopping, prepare_lasso, row_norm, unbatch, unit_rows
from ._lasso_checks import _finite_residual, check_admm_claim, check_claim, norm_sq
from ._loop import run_until
from ._solution import Solution, finish
from ._starts import _check_damping, _prox, _step, _x0, amp_start, check_admm_dtype
from ._steps import admm_step, amp_step, fista_momentum, ista_step

__all__ = ["ista", "fista", "admm", "amp"]


def _scale(op: LinearOperator, y: torch.Tensor) -> torch.Tensor:
    s = row_norm(op.adjoint(y))
    return torch.clamp(s, min=torch.finfo(y.dtype).tiny)


def _inner_tol(dtype: torch.dtype, rho: float | torch.Tensor, lip: float, tol: float) -> float:
    """The relative tolerance of ADMM's CG x-update: ``min(1e-12, tol / 10)`` (so that the
    primal and dual residuals can reach a ``tol`` below ``1e-12``: they stalled at the
    x-update's error), or what ``dtype`` reaches on ``A^T A + rho I`` where that is more,
    ``2 eps kappa`` with the condition number ``kappa <= 1 + ||A||^2 / rho`` (float32:
    ``4.8e-7`` at the default ``rho = ||A||^2``; float64: ``8.9e-16``), so that CG does not
    report a tolerance below its dtype's rounding as a failure at every ADMM iteration."""
    r = float(rho.detach().min()) if isinstance(rho, torch.Tensor) else rho
    return max(min(1e-12, tol / 10), 2.0 * torch.finfo(dtype).eps * (1.0 + lip / r))


def _admm_residual(
    rho: float | torch.Tensor,
    lip: float,
    x: torch.Tensor,
    z: torch.Tensor,
    z_prev: torch.Tensor,
    scale: torch.Tensor,
) -> float:
    """ADMM's stopping residual: the largest over the batch of the primal residual
    ``max(rho, ||A||^2) ||x - z||`` and the dual residual ``rho ||z - z_prev||``, each
    relative to ``||A^T y||`` (``scale``; ``lip = ||A||^2``).

    Both are in the units of ``A^T y``, so scaling ``A`` by ``c`` and ``rho`` by ``c^2``
    (the same problem) leaves them unchanged. Their sum bounds the lasso KKT residual of
    ``z``: the z-update makes ``z`` the exact minimizer for a gradient perturbed by
    ``A^T A (z - x) - rho (z - z_prev)``. Evaluated in float64, so a float32 ``rho`` of
    ``1e-60`` or ``1e60`` neither underflows nor overflows."""
    if isinstance(rho, torch.Tensor):
        r = rho.detach().double().reshape(-1).cpu()
    else:
        r = torch.tensor([rho], dtype=torch.float64)
    s = scale.double().cpu()
    primal = torch.clamp(r, min=lip) * (row_norm(x - z).double().cpu() / s)
    dual = r * (row_norm(z - z_prev).double().cpu() / s)
    return max(primal.max().item(), dual.max().item())


def _amp_update(
    old: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    new: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    damping: float,
    scale: torch.Tensor,
    diverged: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Damp an AMP iteration ``(x, z, b) -> new`` and measure its relative change.

    Damping the Onsager coefficient too breaks the 2-cycles in which one entry toggles
    across the threshold because ``||x||_0 / m`` jumps by ``1 / m``. Returns the new
    ``(x, z, b)`` and ``max ||x_new - x|| / max(||x||, scale)``; raises ``ValueError``
    with ``diverged`` on NaN.
    """
    if damping:
        new = tuple((1 - damping) * a + damping * b for a, b in zip(new, old, strict=True))
    x_new, z_new, b_new = new
    x = old[0]
    denom = torch.maximum(row_norm(x), scale)
    r = (row_norm(x_new - x) / denom).max().item()
    if r != r:  # NaN: diverged
        raise ValueError(diverged)
    return x_new, z_new, b_new, r


def ista(
    op: Any,
    y: torch.Tensor,
    lam: float | torch.Tensor,
    *,
    step: float | None = None,
    x0: torch.Tensor | None = None,
    max_iter: int = 10_000,
    tol: float = 1e-10,
    throw: bool = False,
    prox: Any = None,
) -> Solution:
    """Iterative soft-thresholding for the lasso.

    ``x <- soft(x - t A^T(Ax - y), t lam)`` with ``t = 1 / ||A||^2`` by default.
    Stops when ``||x_{k+1} - x_k|| / t <= tol * ||A^T y||`` (the KKT residual).

    Args:
        op: ``LinearOperator`` (or matrix) with ``in_shape (n,)``, ``out_shape (m,)``.
        y: ``(batch, m)`` or ``(m,)`` data.
        lam: scalar or ``(batch,)`` regularization weight, ``>= 0``.
        step: step size, default ``1 / ||A||_2^2``; a scalar tensor that requires grad
            keeps its graph (``x`` is differentiable in it).
        x0: initial guess, default zero.
        max_iter, tol: stopping rule.
        throw: raise ``ConvergenceError`` instead of warning on non-convergence.
        prox: the thresholding step (:func:`unrollsci.prox.make_prox`): None or
            ``"soft"`` (the lasso), ``"nonneg"``, ``{"kind": "group", "group_size": g}``
            or ``{"kind": "group", "groups": labels}`` (group lasso),
            ``{"kind": "box", ...}``, a :class:`~unrollsci.prox.Prox` or a callable
            ``(v, threshold) -> x``; the solver then minimizes
            ``0.5 ||A x - y||^2 + lam R(x)`` for the prox's ``R``.

    Returns:
        Solution with ``x: (batch, n)`` (or ``(n,)``).

    Example:
        >>> import torch
        >>> from unrollsci.operators import MatrixOperator
        >>> A = MatrixOperator(torch.eye(3, dtype=torch.float64))
        >>> ista(A, torch.tensor([2.0, 0.5, -3.0], dtype=torch.float64), 1.0).x
        tensor([ 1.,  0., -2.], dtype=torch.float64)
    """
    op, y, lam_t, unbatched = prepare_lasso(op, y, lam)
    tol = check_stopping(tol, max_iter)
    prox_fn = _prox(prox, op)
    t = _step(op, step)
    t_f = float(t.detach()) if isinstance(t, torch.Tensor) else t  # checks, messages
    step_given = step is not None  # (the name 'step' is the iteration below)
    x = _x0(x0, y, op.in_shape[0], unbatched)
    scale = _scale(op, y)

    def step(x: torch.Tensor) -> tuple[torch.Tensor, float]:
        x_new = ista_step(op, x, y, t, t * lam_t, prox_fn)
        r = (row_norm(x_new - x) / t / scale).max().item()
        return x_new, _finite_residual("ista", r, t_f, dtype=y.dtype, step_given=step_given)

    x, k, residuals, converged = run_until(step, x, max_iter=max_iter, tol=tol)
    reason = ""
    if converged:
        converged, reason = check_claim(
            op, x, y, t_f, lam_t, prox_fn, scale, tol, residuals, step_given=step_given
        )
    return finish(
        "ista",
        unbatch(x, unbatched),
        k,
        residuals,
        converged,
        tol,
        max_iter,
        throw,
        {"step": t},
        hint="FISTA or ADMM converge faster.",
        reason=reason,
    )


def _dot_sign(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The sign of the row dot products ``sum(a * b)`` as ``(batch, 1)`` (detached), each
    factor divided by its largest entry first: the product of two differences of size
    1e-165 (or 1e160) would underflow to 0 (overflow to inf) and flip the answer."""
    return torch.sign((unit_rows(a)[1] * unit_rows(b)[1]).sum(-1, keepdim=True))


def fista(
    op: Any,
    y: torch.Tensor,
    lam: float | torch.Tensor,
    *,
    step: float | None = None,
    x0: torch.Tensor | None = None,
    max_iter: int = 10_000,
    tol: float = 1e-10,
    restart: bool = True,
    throw: bool = False,
    prox: Any = None,
) -> Solution:
    """FISTA (Beck & Teboulle 2009) for the lasso, with optional adaptive restart.

    Momentum ``v = x_k + beta_k (x_k - x_{k-1})``, then an ISTA step from ``v``.
    With ``restart=True`` the momentum is reset whenever it points uphill
    (O'Donoghue & Candes 2015 gradient scheme), which gives linear convergence on
    lasso problems with a sparse solution. Stopping rule and arguments (``prox`` included)
    as :func:`ista`.
    """
    op, y, lam_t, unbatched = prepare_lasso(op, y, lam)
    tol = check_stopping(tol, max_iter)
    prox_fn = _prox(prox, op)
    t_step = _step(op, step)
    t_f = float(t_step.detach()) if isinstance(t_step, torch.Tensor) else t_step  # checks, messages
    step_given = step is not None  # (the name 'step' is the iteration below)
    x = _x0(x0, y, op.in_shape[0], unbatched)
    x_prev = x
    scale = _scale(op, y)
    tk = torch.ones(y.shape[0], 1, dtype=y.dtype, device=y.device)

    def step(s: tuple[torch.Tensor, ...]) -> tuple[tuple[torch.Tensor, ...], float]:
        x, x_prev, tk = s
        t_next, beta = fista_momentum(tk)
        v = x + beta * (x - x_prev)
        x_new = ista_step(op, v, y, t_step, t_step * lam_t, prox_fn)
        r = (row_norm(x_new - v) / t_step / scale).max().item()
        r = _finite_residual("fista", r, t_f, dtype=y.dtype, step_given=step_given)
        if restart:
            uphill = _dot_sign(v - x_new, x_new - x) > 0
            t_next = torch.where(uphill, torch.ones_like(t_next), t_next)
        return (x_new, x, t_next), r

    (x, _, _), k, residuals, converged = run_until(
        step, (x, x_prev, tk), max_iter=max_iter, tol=tol
    )
    reason = ""
    if converged:
        converged, reason = check_claim(
            op, x, y, t_f, lam_t, prox_fn, scale, tol, residuals, step_given=step_given
        )
    return finish(
        "fista",
        unbatch(x, unbatched),
        k,
        residuals,
        converged,
        tol,
        max_iter,
        throw,
        {"step": t_step},
        reason=reason,
    )


def admm(
    op: Any,
    y: torch.Tensor,
    lam: float | torch.Tensor,
    *,
    rho: float | None = None,
    method: str = "auto",
    x0: torch.Tensor | None = None,
    max_iter: int = 10_000,
    tol: float = 1e-10,
    throw: bool = False,
    prox: Any = None,
) -> Solution:
    """ADMM for the lasso with the split ``x = z`` (Boyd et al. 2011, sec. 6.4).

    The x-update solves ``(A^T A + rho I) x = A^T y + rho (z - u)``: by a Cholesky
    factor computed once (``method="cholesky"``, for operators up to a few thousand
    unknowns) or by warm-started CG (``method="cg"``, matrix-free). ``"auto"`` picks
    Cholesky when ``n <= 4096``. Stops when the primal residual
    ``max(rho, ||A||^2) ||x - z||`` and the dual residual ``rho ||z - z_prev||`` are both
    ``<= tol * ||A^T y||``: both are in the units of ``A^T y`` (scaling ``A`` by ``c`` and
    ``rho`` by ``c^2`` gives the same iterations and verdict), and their sum bounds the
    KKT residual of ``z`` for an exact x-update. The x-update rounds (float32) or is a CG
    solve (relative tolerance ``min(1e-12, tol / 10)``, at least the dtype's reach), so a
    claimed convergence is checked: the KKT residual of ``z`` (as :func:`ista`'s, at
    ``t = 1 / ||A||^2``) in float64 must be ``<= 2 tol ||A^T y||``, else the solve is not
    converged (the tolerance is below what the x-updates reach).
    Returns the sparse iterate ``z``. Arguments not listed below are as in :func:`ista`.

    Args:
        rho: penalty, default ``||A||_2^2`` (balances the two terms of the x-update).
        method: ``"auto"``, ``"cholesky"`` or ``"cg"``.
        prox: the z-update's prox (``z = prox(x + u, lam / rho)``), as :func:`ista`.
    """
    op, y, lam_t, unbatched = prepare_lasso(op, y, lam)
    check_admm_dtype(y)
    tol = check_stopping(tol, max_iter)
    prox_fn = _prox(prox, op)
    if method not in ("auto", "cholesky", "cg"):
        raise ValueError(f"Expected method 'auto', 'cholesky' or 'cg' (got {method!r}).")
    n = op.in_shape[0]
    lip = norm_sq(op)
    if rho is None:
        rho = lip or 1.0
    if isinstance(rho, torch.Tensor) and rho.requires_grad:  # learned: keep the graph
        check_nonnegative("rho", rho.detach())
        if bool((rho.detach() == 0).any()):
            raise ValueError("Expected 'rho' > 0 (got 0).")
    else:
        rho = check_positive("rho", rho)
    if method == "auto":
        method = "cholesky" if n <= 4096 else "cg"
    aty = op.adjoint(y)
    shifted = gram(op, shift=rho)  # A^T A + rho I
    if method == "cholesky":
        # dense and differentiable in op's parameters and in a learned rho
        try:
            chol = torch.linalg.cholesky(shifted.to_dense(dtype=y.dtype, device=y.device))
        except torch.linalg.LinAlgError:
            r = float(rho.detach().max()) if isinstance(rho, torch.Tensor) else rho
            raise ValueError(
                f"Expected 'rho' large enough that A^T A + rho I is positive definite in "
                f"{y.dtype} (got rho={r:.3e}, below the rounding of ||A||^2 = "
                f"{lip:.3e}); leave rho at its default (||A||^2)."
            ) from None

        def x_solve(rhs: torch.Tensor) -> torch.Tensor:
            return torch.cholesky_solve(rhs.T, chol).T
    else:
        state = {"x": torch.zeros_like(aty)}
        inner_tol = _inner_tol(y.dtype, rho, lip, tol)

        def x_solve(rhs: torch.Tensor) -> torch.Tensor:  # (A^T A + rho I: symmetric, no probe)
            sol = cg(shifted, rhs, x0=state["x"], tol=inner_tol, max_iter=10 * n, check=False)
            # the warm start keeps its graph (the iterates from it are differentiated
            # through); a column that it already solves gets the derivative of the exact
            # x-update from cg (a zero one made dL/dlam 9% off at tol 1e-10, 0 at 1e-13)
            state["x"] = sol.x
            return sol.x

    z = _x0(x0, y, n, unbatched)
    u = torch.zeros_like(z)
    scale = _scale(op, y)

    def step(s: tuple[torch.Tensor, torch.Tensor]) -> tuple[tuple[torch.Tensor, ...], float]:
        z_prev, u = s
        x, z, u = admm_step(x_solve, aty, z_prev, u, rho, lam_t / rho, prox_fn)
        return (z, u), _admm_residual(rho, lip, x, z, z_prev, scale)

    (z, u), k, residuals, converged = run_until(step, (z, u), max_iter=max_iter, tol=tol)
    reason = ""
    if converged:
        converged, reason = check_admm_claim(
            op, z, y, lip, lam_t, prox_fn, scale, tol, residuals, method
        )
    return finish(
        "admm",
        unbatch(z, unbatched),
        k,
        residuals,
        converged,
        tol,
        max_iter,
        throw,
        {"rho": rho, "method": method},
        hint="A different rho (penalty) can speed ADMM up a lot.",
        reason=reason,
    )


def amp(
    op: Any,
    y: torch.Tensor,
    lam: float | torch.Tensor,
    *,
    x0: torch.Tensor | None = None,
    damping: float = 0.0,
    decay: float = 0.8,
    max_iter: int = 10_000,
    tol: float = 1e-10,
    throw: bool = False,
) -> Solution:
    """Approximate message passing for the lasso (Donoho, Maleki & Montanari 2009).

    ``z = y - A x + (||x||_0 / m) z_prev``, ``x = soft(x + A^T z, theta)`` with the
    Onsager term kept. The threshold is calibrated at every iteration as
    ``theta = lam / (1 - ||x||_0 / m)``, so every fixed point is exactly a lasso
    minimizer for ``lam`` (Bayati & Montanari 2012 calibration): there
    ``z = (y - A x) / (1 - b)`` and ``x = soft(x + A^T z, lam / (1 - b))`` is the lasso
    optimality condition ``A^T (y - A x) in lam d||x||_1``. The first iterations use a
    larger threshold (continuation), starting at ``||A^T y||_inf`` and multiplied by
    ``decay`` in ``[0, 1)`` after every iteration, so that the iterate does not fill up
    before the calibration is valid; it ends once the calibrated threshold is the
    larger. A warm start ``x0`` starts at its fixed-point residual
    ``z = (y - A x0) / (1 - ||x0||_0 / m)`` and the continuation at ``||A^T z||_inf``
    (``lam / (1 - b)`` at a lasso solution, which is kept: it stops at once; the cold
    continuation at ``x0 = 0``). AMP is designed for i.i.d. (sub-)Gaussian ``A`` with
    entries of variance ``1/m``; on other matrices it can diverge: then ``damping`` in
    ``[0, 1)`` (mixing with the previous iterate) helps, or use :func:`fista`.

    Stops at a fixed point of the calibrated iteration: when the iteration thresholded
    at ``lam / (1 - b)`` (not at the continuation threshold) for every batch entry and
    ``||x_{k+1} - x_k|| <= tol * max(||x_k||, ||A^T y||)``,
    ``||z_{k+1} - z_k|| <= tol * max(||z_k||, ||y||)`` and ``|b_{k+1} - b_k| <= tol``.
    ``residuals`` records the largest of the three. In low precision (float32) the iterates
    stop changing at its rounding: a claimed convergence is checked as :func:`ista`'s (the
    KKT residual in float64 must be ``<= tol ||A^T y||``), else not converged.
    """
    op, y, lam_t, unbatched = prepare_lasso(op, y, lam)
    tol = check_stopping(tol, max_iter)
    damping = _check_damping(damping)
    decay_f = check_positive("decay", decay, allow_zero=True)
    if not decay_f < 1.0:
        raise ValueError(
            f"Expected 0 <= decay < 1 (got {decay!r}): the continuation threshold must "
            "shrink to let the calibrated threshold lam / (1 - ||x||_0 / m) take over."
        )
    x = _x0(x0, y, op.in_shape[0], unbatched)
    scale = _scale(op, y)
    zscale = torch.clamp(row_norm(y), min=torch.finfo(y.dtype).tiny)
    # Continuation: the threshold starts at ||A^T y||_inf (a warm start: at what x0 calls
    # for, amp_start) and decays geometrically until the calibrated value lam / (1 - b)
    # takes over; without it the first iterates (x = 0, b = 0, theta = lam) keep almost
    # every entry and b exceeds 1.
    z, b, theta_cont = amp_start(op, x, y, x0 is not None)

    def step(s: tuple[torch.Tensor, ...]) -> tuple[tuple[torch.Tensor, ...], float, bool]:
        x, z_old, b_old, theta_cont = s
        theta_cal = lam_t / torch.clamp(1.0 - b_old, min=1e-3)
        # Only an iteration that used the calibrated threshold can end at a lasso solution
        # (an unchanged x = 0 under the continuation threshold is not one).
        calibrated = bool((theta_cal >= theta_cont).all())
        theta = torch.maximum(theta_cal, theta_cont)
        x, z, b, r = _amp_update(
            (x, z_old, b_old),
            amp_step(op, x, z_old, y, theta, b_old),
            damping,
            scale,
            "amp diverged (NaN). Use damping > 0 or fista/admm for this A.",
        )
        z_den = torch.maximum(row_norm(z_old), zscale)
        r_z = (row_norm(z - z_old) / z_den).max().item()
        r_b = (b - b_old).detach().abs().max().item()
        return (x, z, b, theta_cont * decay_f), max(r, r_z, r_b), calibrated

    (x, z, b, _), k, residuals, converged = run_until(
        step, (x, z, b, theta_cont), max_iter=max_iter, tol=tol
    )
    if converged and bool((b >= 1).any()):
        raise ValueError(
            "amp: the estimate has as many nonzeros as measurements (||x||_0 >= m), "
            "so the lasso solution is not unique for this lam. Increase lam."
        )
    reason = ""
    if converged and torch.finfo(y.dtype).eps > 1e-12 and (lip := norm_sq(op)) > 0:
        converged, reason = check_claim(  # low precision: iterates frozen by its rounding
            op, x, y, 1.0 / lip, lam_t, soft_threshold, scale, tol, residuals, step_given=False
        )
    return finish(
        "amp",
        unbatch(x, unbatched),
        k,
        residuals,
        converged,
        tol,
        max_iter,
        throw,
        {"damping": damping},
        hint="AMP needs i.i.d. Gaussian-like A; try damping=0.3 or fista.",
        reason=reason,
    )
