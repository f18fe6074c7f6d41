"""The checks of a claimed ISTA / FISTA result (:mod:`._lasso`): iterates that stopped
changing are not taken for a converged answer in low precision or at a step too small to
move them, and non-finite iterates are refused."""

from __future__ import annotations

import math
import sys
from typing import Any

import torch

from ..operators import LinearOperator
from ._common import row_norm
from ._steps import ista_step


def norm_sq(op: LinearOperator) -> float:
    """``||A||^2`` as a Python float (0 for a zero operator).

    Raises ``ValueError`` when ``||A||`` is finite and nonzero but its square is not a
    normal float64 number (``||A||`` above about ``1.3e154`` overflows, below about
    ``1.5e-154`` underflows): the default step ``1 / ||A||^2`` or penalty ``||A||^2`` would
    be ``inf`` or 0 (an ``OverflowError``, or a nonzero operator called zero, before).
    """
    nrm = op.norm()
    lip = _square(nrm)
    if nrm > 0 and not sys.float_info.min <= lip < math.inf:
        raise ValueError(
            f"Expected ||A||^2 within the float range [{sys.float_info.min:.1e}, "
            f"{sys.float_info.max:.1e}] (got ||A|| = {nrm:.3e}, whose square is "
            f"{'above' if nrm > 1 else 'below'} it): the default step 1 / ||A||^2 (ADMM: "
            "the penalty ||A||^2) cannot be formed. Rescale A, y and lam: A / c, y / c and "
            "lam / c^2 (c = ||A||, say) have the same lasso solution x."
        )
    return lip


#: the refusal of a zero operator, whose default step ``1 / ||A||^2`` does not exist
ZERO_OPERATOR = "The operator is zero (||A|| = 0): the problem has no data term."


def nonzero_norm_sq(op: LinearOperator) -> float:
    """:func:`norm_sq`, refusing a zero operator (``||A|| = 0`` exactly) with
    :data:`ZERO_OPERATOR`: the ``||A||^2`` of a default step ``1 / ||A||^2``."""
    lip = norm_sq(op)
    if lip == 0:
        raise ValueError(ZERO_OPERATOR)
    return lip


def _square(v: float) -> float:
    """``v ** 2``, ``inf`` where that overflows (Python raises ``OverflowError``)."""
    try:
        return v**2
    except OverflowError:
        return math.inf


def _finite_residual(
    name: str, r: float, t: float, *, dtype: torch.dtype, step_given: bool
) -> float:
    """``r`` (a prox-gradient residual) if finite; a ``ValueError`` otherwise: the iterates
    overflowed or became NaN, which a step above ``2 / ||A||^2`` does (the loop would
    otherwise run to ``max_iter`` and return them). With the default step, the cause is
    ``||A||^2 = 1 / t`` outside ``dtype``'s range, and the message says so."""
    if not math.isfinite(r):
        fi = torch.finfo(dtype)
        lip = 1.0 / t if t > 0 else math.inf
        advice = "the step must be at most 2 / ||A||^2 (the default, 1 / ||A||^2, converges)."
        if not step_given and not fi.tiny <= lip <= fi.max:
            advice = (
                f"the step is the default 1 / ||A||^2, and ||A||^2 = {lip:.3e} is outside the "
                f"normal range of {fi.dtype} ({fi.tiny:.2e} to {fi.max:.2e}), where A^T A x "
                "over- or underflows: use float64 or rescale A (with y and lam)."
            )
        raise ValueError(
            f"{name} diverged (the iterates are not finite) with step {t:.3e}: {advice}"
        )
    return r


def _kkt64(
    op: LinearOperator, x: torch.Tensor, y: torch.Tensor, t: float, thr: torch.Tensor,
    prox_fn: Any, scale: float,
) -> float:  # fmt: skip
    """The KKT residual ``max ||prox-gradient step of x - x|| / t / scale`` in float64."""
    x64 = x.double()
    nxt = ista_step(op, x64, y.double(), t, thr.double(), prox_fn)
    return float((row_norm(nxt - x64) / t / scale).max())


def check_claim(
    op: LinearOperator,
    x: torch.Tensor,
    y: torch.Tensor,
    t: float,
    lam_t: torch.Tensor,
    prox_fn: Any,
    scale: float,
    tol: float,
    residuals: list[float],
    *,
    step_given: bool,
) -> tuple[bool, str]:
    """ISTA's and FISTA's claimed convergence (their residual is the change between
    iterates, which reads 0 once the iterates stop changing), checked where they can stop
    changing short of the minimizer; ``(converged, reason)``, and the last residual
    replaced by the one that failed.

    * Low precision: the KKT residual at ``t`` in float64 (float32 iterates stop at
      float32's rounding level, 1e-7 where tol asks 1e-10).
    * A user's step ``t`` below ``t0 = 1 / ||A||^2``: the residual at ``t0`` (float64);
      ``||G_t(x)||``, the prox-gradient mapping, is non-increasing in ``t`` for a convex
      regularizer, so a true convergence passes, but a step so small that ``t grad`` is
      below the iterates' rounding leaves them unchanged far from the minimizer.
    """
    if torch.finfo(x.dtype).eps > 1e-12:
        r = _kkt64(op, x, y, t, t * lam_t, prox_fn, scale)
        if r > tol:
            residuals[-1:] = [r]
            return False, (
                f"the iterates stopped changing in {x.dtype}, but the KKT residual of the "
                f"result (in float64) is {r:.3e}: the tolerance is below what {x.dtype} "
                "reaches on this problem. Loosen tol or solve in float64."
            )
    lip = _square(op.norm()) if step_given else 0.0
    if not (lip > 0 and t < 1.0 / lip):
        return True, ""
    t0 = 1.0 / lip
    r = _kkt64(op, x, y, t0, t0 * lam_t.double(), prox_fn, scale)
    if r <= max(tol, 64 * torch.finfo(torch.float64).eps):
        return True, ""
    residuals[-1:] = [r]
    return False, (
        f"the iterates stopped changing at step {t:.3e}, but their KKT residual at the step "
        f"1/||A||^2 = {t0:.3e} is {r:.3e}: a step this small no longer moves them in "
        f"{x.dtype}. Use a larger step (the default is 1/||A||^2)."
    )


def check_admm_claim(
    op: LinearOperator,
    z: torch.Tensor,
    y: torch.Tensor,
    lip: float,
    lam_t: torch.Tensor,
    prox_fn: Any,
    scale: torch.Tensor,
    tol: float,
    residuals: list[float],
    method: str,
) -> tuple[bool, str]:
    """ADMM's claimed convergence, checked: the KKT residual of ``z`` (as :func:`_kkt64`,
    at ``t = 1 / ||A||^2``, in float64) must be ``<= 2 tol``, the bound that the primal and
    dual residuals give for an exact x-update. The x-update's rounding (``eps kappa`` in
    float32, Cholesky or CG) or a CG x-update's tolerance broke it: 26 tol was claimed.
    ``(converged, reason)``, the last residual replaced by the KKT residual that failed."""
    if not lip > 0:  # A = 0: z = prox(0) at once, nothing to check
        return True, ""
    t = 1.0 / lip
    with torch.no_grad():
        r = _kkt64(op, z.detach(), y.detach(), t, t * lam_t.detach(), prox_fn, scale)
    if r <= 2.0 * tol:
        return True, ""
    residuals[-1:] = [r]
    if z.dtype != torch.float64:
        fix = " or solve in float64"
    else:
        fix = " or use method='cholesky'" if method == "cg" else ""
    return False, (
        f"the primal and dual residuals met it, but the KKT residual of z (in float64) is "
        f"{r:.3e} > 2 tol: the x-updates (method={method!r}) are not exact enough in "
        f"{z.dtype} to reach this tolerance on this problem. Loosen tol{fix}."
    )
