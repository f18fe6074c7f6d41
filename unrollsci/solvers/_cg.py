"""(Preconditioned) conjugate gradient for batched SPD systems."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .._validation import (
    SYMMETRY_EPS_FACTOR,
    ConvergenceWarning,
    check_finite,
    check_like,
    check_positive,
    check_same_device,
    check_tensor,
)
from .._validation import check_symmetric as _check_symmetric
from ..operators import LinearOperator
from ..operators._base import check_real
from ._cg_inputs import as_apply as _as_apply  # (was defined here)
from ._cg_inputs import refuse_scipy_operator
from ._common import as_operator, check_signal, check_stopping, pow2_above, row_norm
from ._loop import GRAD_MODES, PCGState, differentiate, implicit_solution, pcg_iterate
from ._solution import Solution, finish
from ._starts import scale_for_cg

__all__ = ["cg", "check_symmetric"]


def check_symmetric(a: Any, name: str = "A", *, rtol: float | None = None) -> None:
    """Raise ``ValueError`` if the matrix or operator ``a`` is not square and symmetric.

    Explicit matrices (dense or sparse torch tensors, scipy sparse matrices) are
    compared entrywise with their transpose by :func:`unrollsci._validation.check_symmetric`,
    the library's one rule: ``max|A - A^T| <= rtol * max|A|`` with ``rtol = 1000 eps(dtype)``
    by default. A ``LinearOperator`` is probed with two random vectors instead: it must
    satisfy ``|<Ax, y> - <x, Ay>| <= rtol (||Ax|| ||y|| + ||Ay|| ||x||)``, with the same
    default ``rtol``. A NaN or Inf entry (or product) is refused with ``ValueError``, a bool
    matrix with ``TypeError``.
    """
    if isinstance(a, LinearOperator):
        dt = a.dtype if a.dtype in (torch.float32, torch.float64) else torch.float64
        _probe_symmetric(a, name, rtol, dt, a.device or torch.device("cpu"))
        return
    refuse_scipy_operator(a, name)
    if not isinstance(a, torch.Tensor) and not _is_scipy_sparse(a):
        raise TypeError(
            f"Expected '{name}' to be an unrollsci LinearOperator, a torch tensor or a scipy "
            f"sparse matrix (got {type(a).__name__})."
        )
    if a.dtype in (torch.bool, np.bool_):
        raise TypeError(f"Expected '{name}' to have a numeric dtype (got {a.dtype}).")
    _check_symmetric(a, name, rtol=rtol)


def _probe_symmetric(
    a: LinearOperator, name: str, rtol: float | None, dt: torch.dtype, dev: torch.device
) -> None:
    """:func:`check_symmetric`'s two-vector probe of an operator, in ``dt`` on ``dev``
    (:func:`cg` probes in its right-hand side's dtype and on its device)."""
    if a.in_shape != a.out_shape:
        raise ValueError(
            f"Expected '{name}' to be square (got in_shape {a.in_shape}, out_shape {a.out_shape})."
        )
    eps = torch.finfo(dt).eps
    gen = torch.Generator().manual_seed(1234)
    x = torch.randn((2, *a.in_shape), generator=gen, dtype=dt).to(dev)
    with torch.no_grad():
        ax = a(x)
    lhs = (ax[0] * x[1]).sum()
    rhs = (x[0] * ax[1]).sum()
    scale = ax[0].norm() * x[1].norm() + ax[1].norm() * x[0].norm()
    tol = rtol if rtol is not None else SYMMETRY_EPS_FACTOR * eps
    if not (math.isfinite(float(lhs - rhs)) and math.isfinite(float(scale))):
        raise ValueError(
            f"Expected '{name}' to give finite products (got NaN or Inf in A x for random "
            "x: A x is not finite); its symmetry cannot be checked."
        )
    if not float((lhs - rhs).abs()) <= tol * float(scale):
        raise ValueError(
            f"Expected '{name}' to be symmetric: <Ax, y> - <x, Ay> = "
            f"{float(lhs - rhs):.3e} for random x, y (relative "
            f"{float((lhs - rhs).abs() / scale):.1e}). CG needs a symmetric positive "
            "definite operator; use a different solver for non-symmetric systems."
        )


def _is_scipy_sparse(a: Any) -> bool:
    import scipy.sparse as sp

    return bool(sp.issparse(a))


def cg(
    A: Any,  # noqa: N803 - matrix notation
    b: torch.Tensor,
    *,
    M: Any = None,  # noqa: N803
    x0: torch.Tensor | None = None,
    tol: float = 1e-10,
    atol: float = 0.0,
    max_iter: int | None = None,
    check: bool = True,
    throw: bool = False,
    grad: str = "unrolled",
    adjoint_tol: float | None = None,
) -> Solution:
    """Conjugate gradient for ``A x = b`` with ``A`` symmetric positive definite.

    Batched over right-hand sides; each column gets its own step sizes and stops
    independently once ``||r|| <= max(tol * ||b||, atol)``, or once its (recursively
    updated) residual vanishes to working precision (``r^T r`` of the system scaled to
    ``||b|| = 1`` underflows below the smallest normal number: ``||r||`` below
    ``1.5e-154 ||b||`` in float64, ``1.1e-19 ||b||`` in float32; or, preconditioned,
    ``|r^T M r|`` within a factor ``1/eps`` of underflow once ``||r|| <= eps ||b||``),
    which counts as converged. So ``tol=0, atol=0`` runs until the residual is zero or
    ``max_iter`` (``converged=True`` then means that CG's updated residual vanished; float64
    reports that one, not the true one). A column with ``b = 0`` returns ``x = 0``
    (whatever ``x0``). Wherever ``tol`` or ``atol`` is positive a claimed convergence is
    checked against the true residual ``b - A x`` (one more product), CG restarted from it
    twice at most; still above the target (the tolerance is below what the dtype reaches
    on this system), the solve is not converged. The target of the scaled system,
    ``max(tol, atol / ||b||)``, is formed in float64, so it cannot underflow in ``b``'s dtype.
    Each column is solved scaled to ``||b|| = 1`` (the iterates are linear in ``b``),
    so tiny or huge right-hand sides do not underflow or overflow the CG scalars.
    The iteration is the library's one CG recurrence
    (:func:`unrollsci.solvers._loop.pcg_iterate`).

    Args:
        A: SPD ``LinearOperator``, dense ``(n, n)`` tensor, torch sparse tensor or
            scipy sparse matrix.
        b: ``(n,)`` or ``(batch, n)``.
        M: preconditioner approximating ``A^{-1}`` (as in scipy): anything ``A`` can
            be, or a callable ``r -> z`` on ``(batch, n)`` tensors returning ``r``'s
            shape, dtype and device (checked on its first call). Must be SPD.
        x0: initial guess (warm start), same shape, dtype and device as ``b``.
        tol, atol: relative / absolute residual tolerance, ``>= 0`` and finite.
        max_iter: default ``10 * n``.
        check: verify that ``A`` is square and symmetric before iterating (an operator
            by :func:`check_symmetric`'s two-vector probe, in ``b``'s dtype on its device:
            one product with two columns).
        throw: raise ``ConvergenceError`` instead of warning on non-convergence.
        grad: how autograd sees the returned ``x``:
            ``"unrolled"`` (default, as before this argument existed): through every
            iteration, the exact derivative of the returned iterate, also with respect to
            ``M`` and ``x0`` (memory grows with the iterations); a column solved at its
            start (``b = 0``, or an ``x0`` that meets the tolerance) runs no iteration and
            gets, where ``b`` or ``A`` requires grad, the derivative of the exact solution
            as with ``"implicit"`` (``A^{-1}`` for ``b``; nothing to ``M`` or ``x0``);
            ``"implicit"``: one adjoint CG solve ``v = A^{-1} g`` in the backward gives
            ``dL/db = v`` and ``dL/dA = -v x^T`` (through the mat-vec of ``A``, so any
            tensor a ``LinearOperator`` is built from gets its gradient); the derivative
            of the exact solution, O(1) memory, nothing flows to ``M`` or ``x0``;
            ``"detached"``: ``x`` carries no gradient.
        adjoint_tol: relative tolerance of the adjoint solve of ``grad="implicit"`` (and
            of the columns solved at their start with ``"unrolled"``; default ``tol``; the
            same ``atol``, ``M`` and ``max_iter``; a non-converged adjoint solve warns).

    Raises:
        ValueError: non-square, empty (``n = 0``) or non-symmetric ``A`` (an operator
            whose probe gives NaN or Inf too); a direction
            with ``p^T A p <= 0`` (A not positive definite) or ``r^T M r <= 0`` (M not
            positive definite) met during the iteration, or either of them NaN or Inf
            (A or M produced a non-finite value); NaN/Inf in ``b``; an unknown ``grad``.
        TypeError: ``x0`` of another dtype or device than ``b``; a callable ``M``
            returning another dtype or device, or raising on its first call with a torch
            tensor (a function on numpy arrays); a ``scipy.sparse.linalg.LinearOperator``
            as ``A`` or ``M`` (cg works on torch tensors: pass the unrollsci operator).

    Returns:
        Solution; ``residuals`` holds the max relative residual per iteration.

    Example:
        >>> import torch
        >>> A = torch.tensor([[4.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
        >>> cg(A, torch.tensor([1.0, 2.0], dtype=torch.float64)).x
        tensor([0.0909, 0.6364], dtype=torch.float64)
    """
    if grad not in GRAD_MODES:
        raise ValueError(f"Expected grad in {GRAD_MODES} (got {grad!r}).")
    refuse_scipy_operator(A, "A")
    if check and not isinstance(A, LinearOperator):
        check_symmetric(A, "A")
    op = as_operator(A, "A")
    if op.in_shape != op.out_shape or len(op.in_shape) != 1:
        raise ValueError(
            f"Expected 'A' to be a square operator on vectors (got in_shape {op.in_shape}, "
            f"out_shape {op.out_shape})."
        )
    n = op.in_shape[0]
    if n == 0:
        raise ValueError("Expected 'A' of size at least 1 x 1 (got 0 x 0): no unknowns.")
    check_tensor("b", b, ndim=(1, 2))
    check_real("b", b)
    if b.dim() == 2:
        check_signal("b", b)
    unbatched = b.dim() == 1
    if unbatched:
        b = b[None]
    if b.shape[1] != n:
        raise ValueError(f"Expected 'b' of length {n} to match A (got shape {tuple(b.shape)}).")
    check_finite("b", b)
    if op.device is not None:
        check_same_device(A=torch.empty(0, device=op.device), b=b)
    if check and isinstance(A, LinearOperator):  # two products, in b's dtype, on its device
        dt = b.dtype if b.dtype in (torch.float32, torch.float64) else torch.float64
        _probe_symmetric(A, "A", None, dt, b.device)
    tol = check_stopping(tol, 0 if max_iter is None else max_iter)
    atol = check_positive("atol", atol, allow_zero=True)
    if adjoint_tol is not None:  # inf would end the adjoint solve at v = 0: a zero gradient
        adjoint_tol = check_positive("adjoint_tol", adjoint_tol, allow_zero=True)
    precond = None if M is None else _as_apply(M, "M")
    if isinstance(precond, LinearOperator) and (precond.in_shape, precond.out_shape) != (
        (n,),
        (n,),
    ):
        raise ValueError(
            f"Expected 'M' of size {n} x {n} (got in_shape {precond.in_shape}, out_shape "
            f"{precond.out_shape})."
        )
    if max_iter is None:
        max_iter = 10 * n
    if x0 is not None:
        check_tensor("x0", x0, ndim=(1, 2))
        check_real("x0", x0)
        check_like("x0", x0, "b", b)
        check_finite("x0", x0)
        x0 = x0[None] if x0.dim() == 1 else x0
        if x0.shape != b.shape:
            raise ValueError(f"Expected 'x0' of shape {tuple(b.shape)} (got {tuple(x0.shape)}).")

    def run(rhs: torch.Tensor, start: torch.Tensor | None, rtol: float) -> _Run:
        return _run(op, rhs, start, precond, rtol, atol, max_iter)

    def adjoint(g: torch.Tensor, _: _Run) -> torch.Tensor:
        out = run(g, None, tol if adjoint_tol is None else adjoint_tol)
        if not out.converged:
            warnings.warn(
                f"cg: the adjoint solve of grad='implicit' reached max_iter={max_iter} with "
                f"residual {out.residuals[-1]:.3e}; gradients are approximate.",
                ConvergenceWarning,
                stacklevel=2,
            )
        return out.x

    def forward() -> tuple[torch.Tensor, _Run]:
        out = run(b, x0, tol)
        return out.x, out

    x, res = differentiate(grad, forward, b=b, matvec=op, adjoint=adjoint)
    if grad == "unrolled" and torch.is_grad_enabled() and bool(res.start_done.any()):
        x = _solved_at_start(x, b, op, lambda g: adjoint(g, res), res.start_done)
    stats = {"residual_per_rhs": res.per_rhs}
    return finish(
        "cg",
        x[0] if unbatched else x,
        res.iterations,
        res.residuals,
        res.converged,
        tol,
        max_iter,
        throw,
        stats,
        hint="A preconditioner (M=...) reduces the iteration count.",
        reason=(
            f"the true residual b - A x stays above it after CG's updated residual met it "
            f"(twice restarted from the true one): the tolerance is below what {b.dtype} "
            "reaches on this system. Loosen tol or "
            + ("solve in float64." if b.dtype != torch.float64 else "precondition A better.")
            if res.stalled
            else ""
        ),
    )


@dataclass
class _Run:
    x: torch.Tensor
    iterations: int
    residuals: list[float]
    converged: bool
    per_rhs: torch.Tensor
    stalled: bool = False  # stopped early: the true residual stays above the target
    start_done: torch.Tensor | None = None  # the columns that met the stop rule at k = 0


def _solved_at_start(
    x: torch.Tensor,
    b: torch.Tensor,
    op: LinearOperator,
    adjoint: Callable[[torch.Tensor], torch.Tensor],
    done: torch.Tensor,
) -> torch.Tensor:
    """``x`` with the implicit-function backward of ``A x = b`` (:func:`implicit_solution`,
    as ``grad="implicit"``) on the columns ``done`` at the start of an unrolled solve.

    Such a column (``b = 0``, or a warm start that meets the tolerance) runs no iteration,
    so its unrolled graph holds no path to ``b`` or ``A``: the gradient was 0 (or ``x``
    did not require grad), while the returned ``x`` solves the system and its derivative is
    ``A^{-1}``. Where neither ``b`` nor ``A`` requires grad, ``x`` is returned unchanged.
    """
    idx = torch.nonzero(done).squeeze(1)
    fixed = implicit_solution(x.index_select(0, idx), b.index_select(0, idx), op, adjoint)
    if not fixed.requires_grad:
        return x
    return x.index_copy(0, idx, fixed)


def _not_spd(which: str, k: int, value: float) -> ValueError:
    if not math.isfinite(value):
        what = "p^T A p" if which == "A" else "r^T M r"
        return ValueError(
            f"cg broke down at iteration {k}: {what} = {value} is not finite. Expected A "
            "and the preconditioner M to give finite products; check them for NaN or Inf "
            "(e.g. a zero on the diagonal of a Jacobi preconditioner)."
        )
    if which == "A":
        return ValueError(
            f"cg: A is not positive definite: found a direction with p^T A p = "
            f"{value:.3e} <= 0 at iteration {k}. CG needs an SPD matrix."
        )
    return ValueError(
        f"cg: the preconditioner M is not positive definite (r^T M r <= 0 at iteration {k})."
    )


def _run(
    op: LinearOperator,
    b: torch.Tensor,
    x0: torch.Tensor | None,
    precond: Callable[[torch.Tensor], torch.Tensor] | None,
    tol: float,
    atol: float,
    max_iter: int,
) -> _Run:
    """cg's stop rules and scaling around the shared recurrence, on ``(batch, n)``."""
    tiny = torch.finfo(b.dtype).tiny
    # |r^T z| below this is zero to working precision: one more step would divide two
    # underflowed products (reported as indefiniteness before; tol=0 reached it)
    eps = torch.finfo(b.dtype).eps
    floor = tiny / eps
    bnorm = row_norm(b)
    safe = torch.clamp(bnorm, min=tiny)
    if x0 is not None and bool((bnorm == 0).any()):  # b = 0: x = 0 exactly, whatever x0
        x0 = torch.where((bnorm == 0)[:, None], torch.zeros_like(x0), x0)
    x = b.new_zeros(b.shape) if x0 is None else x0
    r = b - op(x) if x0 is not None else b.clone()
    # Solve for (x, r) / s with s = ||b|| (or ||r0||: scale_for_cg): CG is linear in b,
    # and unit-size vectors keep r^T z and p^T A p clear of underflow and overflow.
    s, thresh, reach, extra = scale_for_cg(bnorm, row_norm(r), tol, atol)
    x, r = x / s, r / s
    rel = s[:, 0] / safe
    residuals: list[float] = []
    last: list[torch.Tensor] = []
    start: list[torch.Tensor] = []
    unit: list[torch.Tensor] = []  # a rescaled restart's scale: its residuals times it
    plain = precond is None

    def monitor(st: PCGState) -> torch.Tensor:
        rd = st.r.detach()
        rn = torch.linalg.vector_norm(rd, dim=-1)
        target = thresh if not unit else thresh / unit[0].to(thresh.dtype)
        target = torch.maximum(target, reach)  # the same threshold but for warm columns
        rn_full = rn if not unit else rn * unit[0]
        last[:] = [rn_full]
        # A residual whose squared norm underflows (below the smallest normal number: the
        # system is scaled to ||b|| = 1, so ||r|| < sqrt(tiny) ||b||) is zero to working
        # precision: the next step would divide subnormal or zero products (p^T A p = 0
        # is not indefiniteness).
        rr = st.rz.detach()[:, 0] if plain else torch.linalg.vecdot(rd, rd)
        # preconditioned: r^T M r underflows before r^T r does (an underflow, not M)
        gone = (rn <= eps) & (st.rz.detach()[:, 0].abs() <= floor) & (not plain)
        done = (rn.to(thresh.dtype) <= target) | (rr < tiny) | gone
        if not start:  # the first call: the columns solved by their start (no iteration)
            start.append(done)
        if st.k > 0 or bool(done.all()):  # the start is recorded only when it is the answer
            residuals.append(float((rn_full * rel).max()))
        return done

    # op.mv: b was validated once by cg; the loop's products skip the per-call checks
    x, r, k, converged = pcg_iterate(
        op.mv,
        x,
        r,
        max_iter=max_iter,
        precond=precond,
        monitor=monitor,
        not_spd=_not_spd,
        finite=True,
    )
    stalled = False
    if converged:
        # CG's updated residual drifts from the true b - A x by rounding: in float32 it ends
        # far below it (cond 10, tol 1e-10: 5e-11 claimed, 3e-7 true), in float64 on an
        # ill-conditioned system too (cond 1e10: 7e-11 claimed, 2e-8 true). At a claimed
        # convergence the true residual is checked (one mat-vec) and CG restarted from it,
        # twice at most; still above the target, the solve is not converged (the tolerance
        # is below what the dtype reaches on this system)
        x, k, converged = _true_residual_restarts(
            op,
            b / s,
            x,
            k,
            thresh,
            max_iter,
            precond,
            monitor,
            last,
            rel,
            residuals,
            report=eps > 1e-12,
            extra=extra,
            unit=unit,
        )
        stalled = not converged
    per_rhs = (last[0] * s[:, 0] / safe).cpu()
    return _Run(x * s, k, residuals, converged, per_rhs, stalled, start[0])


def _true_residual_restarts(
    op: LinearOperator,
    b: torch.Tensor,
    x: torch.Tensor,
    k: int,
    thresh: torch.Tensor,
    max_iter: int,
    precond: Callable[[torch.Tensor], torch.Tensor] | None,
    monitor: Callable[[PCGState], torch.Tensor],
    last: list[torch.Tensor],
    rel: torch.Tensor,
    residuals: list[float],
    report: bool,
    extra: int,
    unit: list[torch.Tensor],
) -> tuple[torch.Tensor, int, bool]:
    """:func:`_run`'s check of a claimed convergence against the true residual ``b - A x``
    (scaled system), with at most two restarts of CG from it.

    With ``report=False`` (float64) a check passed at once leaves the reported residuals
    CG's own (the solve is then exactly as without the check); once it fails, they are the
    true ones, as always with ``report=True``. Not converged, each column returns the
    checked iterate of the smallest true residual (a restart can end above it).

    ``extra > 0`` (a warm start far from the solution, :func:`_run`): ``extra`` restarts
    more, each solving for the correction with its residual scaled to about 1 (a power of
    two, set in ``unit`` for the monitor), as the first solve is scaled to its start's
    residual: in the system's scale the correction's products underflowed.
    """
    best = best_rn = None
    for attempt in range(3 + extra):
        rt = b - op.mv(x)
        # scale-free where b / s is small (extra): the squares of its residual underflowed
        rn = row_norm(rt) if extra else torch.linalg.vector_norm(rt.detach(), dim=-1)
        # checked wherever a tolerance is asked (thresh > 0: tol or atol > 0, in float64)
        ok = not bool(((rn.to(thresh.dtype) > thresh) & (thresh > 0)).any())
        if report or attempt > 0 or not ok:
            last[:] = [rn]
            residuals[-1:] = [float((rn * rel).max())]
        if ok:
            return x, k, True
        if best is None or best_rn is None:
            best, best_rn = x, rn
        else:
            better = rn < best_rn
            best = torch.where(better[:, None], x, best)
            best_rn = torch.where(better, rn, best_rn)
        if attempt == 2 + extra or k >= max_iter:
            break
        # rescaled (extra): the correction d of x + c d, solved at size ~1
        c = pow2_above(rn)[:, None] if extra else None
        unit[:] = [] if c is None else [c[:, 0]]
        x1, _, used, _ = pcg_iterate(  # not converged: k reached max_iter, checked next
            op.mv,
            x if c is None else torch.zeros_like(x),
            rt if c is None else rt / c,
            max_iter=max_iter - k,
            precond=precond,
            monitor=monitor,
            not_spd=_not_spd,
            finite=True,
        )
        x = x1 if c is None else x + c * x1
        unit[:] = []
        k += used
    assert best is not None and best_rn is not None
    last[:] = [best_rn]
    residuals[-1:] = [float((best_rn * rel).max())]
    return best, k, False
