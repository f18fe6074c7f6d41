"""The one (preconditioned) conjugate-gradient recurrence of unrollsci, and how it is
differentiated.

Every CG in the library runs :func:`pcg_iterate`: :func:`unrollsci.solvers.cg` (batched,
stop rules, breakdown and indefiniteness checks), :func:`unrollsci.precond.unrolled_pcg`
(fixed number of steps, back-propagated into a learned preconditioner) and the QEq charge
solve of :mod:`unrollsci.chem` (projected onto ``sum(q) = Q``, and its adjoint solve). What
differs between them is passed in: the mat-vec, the preconditioner (a projected one for
chem), the inner product ``r^T z``, a ``monitor`` that records residuals and says which
columns are done, and what to do with a direction of non-positive curvature.

How a solve is differentiated is the ``grad`` argument of :func:`differentiate` (the idea of
optimistix's ``adjoint=``):

* ``"unrolled"``: autograd records every step; the gradient is the exact derivative of the
  returned iterate (memory O(iterations)).
* ``"implicit"``: the iteration runs without a graph; the returned solution carries the
  implicit-function backward of ``A x = b`` (A symmetric): one adjoint solve
  ``v = A^{-1} g`` gives ``dL/db = v`` and ``dL/dA = -v x^T``, and for an operator with
  parameters ``theta``, ``dL/dtheta = -v^T d(A(theta) x)/dtheta`` by a vector-Jacobian
  product of its mat-vec (memory O(1) in the iterations). This is the derivative of the
  exact solution, evaluated at the returned one.
* ``"detached"``: no gradient flows through the solution.

The first-order solvers (ista, fista, admm, amp, bg_amp, gradient_descent) share the other
loop here, :func:`run_until`: a step ``state -> (state, residual)`` repeated until the
residual meets the tolerance or the budget ends, with the residual history recorded once.
Their step functions (``ista_step``, ``fista_momentum``, ``admm_step``, ``amp_step``, ...)
are the ones the unrolled networks call layer by layer.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch

from .._threads import torch_serial

__all__ = [
    "GRAD_MODES",
    "PCGState",
    "differentiate",
    "implicit_solution",
    "pcg_iterate",
    "run_until",
]

#: the differentiation modes of :func:`differentiate`
GRAD_MODES = ("unrolled", "implicit", "detached")

Vec = torch.Tensor
MatVec = Callable[[Vec], Vec]


@dataclass
class PCGState:
    """What a monitor sees after iteration ``k`` (``k = 0``: the start).

    ``x``: iterate, ``r = b - A x``: residual, ``z = M r``: preconditioned residual,
    ``rz``: ``r^T z`` (shape ``(..., 1)``), all with the vectors along the last dimension.
    """

    k: int
    x: Vec
    r: Vec
    z: Vec
    rz: Vec


def _dot(u: Vec, v: Vec) -> Vec:
    return torch.linalg.vecdot(u, v).unsqueeze(-1)


def pcg_iterate(
    matvec: MatVec,
    x: Vec,
    r: Vec,
    *,
    max_iter: int,
    precond: MatVec | None = None,
    inner: Callable[[Vec, Vec], Vec] | None = None,
    monitor: Callable[[PCGState], bool | Vec] | None = None,
    not_spd: Callable[[str, int, float], Exception] | None = None,
    finite: bool = False,
) -> tuple[Vec, Vec, int, bool]:
    """Preconditioned CG from the iterate ``x`` with residual ``r = b - A x``.

    The vectors lie along the last dimension; leading dimensions are independent systems
    (each with its own step sizes). The recurrence::

        z = M r; p = z
        repeat: alpha = r^T z / p^T A p; x += alpha p; r -= alpha A p; z = M r
                beta = r_new^T z_new / r^T z; p = z + beta p

    It is differentiable by autograd when its inputs are (``"unrolled"``); run it under
    ``torch.no_grad()`` for the other modes (see :func:`differentiate`).

    Args:
        matvec: ``v -> A v``, A symmetric (positive definite on the space the iterates
            live in).
        x, r: start and its residual ``b - A x``.
        max_iter: iteration limit (with no ``monitor``: exactly this many steps).
        precond: ``r -> M r`` (symmetric positive (semi-)definite), default identity. A
            projected preconditioner ``P M P^T`` keeps every iterate in an affine subspace
            (chem's ``sum(q) = Q``) when ``x`` starts in it.
        inner: ``(r, z) -> r^T z`` (shape ``(..., 1)``), for a mathematically equal but
            better-conditioned formula (chem: ``(D z)^T z`` without the cancellation of
            the projected-out component of ``r``).
        monitor: called with the :class:`PCGState` at the start and after every step;
            returns ``True`` to stop, or a bool tensor (the batch shape) of the systems
            now done. With a tensor, done systems are frozen (``alpha = beta = 0``, ``x``
            and ``r`` kept) while the others go on; the loop ends when all are done.
            Residual histories and stop rules live in the monitor.
        not_spd: ``None``: no checks (no host synchronisation; the divisors are clamped
            at the smallest normal number so that a vanished residual gives a zero step,
            as in fixed-length unrolled training). Otherwise a direction with
            ``p^T A p <= 0`` or a residual with ``r^T z < 0`` in a system not yet done
            raises ``not_spd(which, k, value)`` with ``which`` ``"A"`` or ``"M"`` (the
            latter only with a ``precond``); an ``r^T z`` that is exactly 0 in a system
            the monitor did not stop also raises (``M r = 0`` with ``r != 0``: M
            singular).
        finite: with ``not_spd``, a non-finite ``p^T A p`` or ``r^T z`` (NaN or Inf from
            A, M or an overflow) is a breakdown too: it raises ``not_spd(which, k, value)``
            with that value (:func:`unrollsci.solvers.cg`; with several systems an Inf is
            caught one iteration later, as the NaN it makes of the residual, or at once at
            the last iteration). ``False``:
            the loop goes on and the caller reports a non-finite result itself (chem).

    Returns:
        ``(x, r, iterations, converged)``; ``converged``: the monitor stopped every system
        (always ``False`` without a monitor).
    """
    with _serial_for(precond, r):
        return _pcg_loop(matvec, x, r, max_iter, precond, inner, monitor, not_spd, finite)


def _serial_for(precond: Any, r: Vec) -> AbstractContextManager[None]:
    """torch single-threaded inside the loop (:func:`unrollsci._threads.torch_serial`) when
    the preconditioner is a serial host kernel (``serial_host = True``: PyAMG's cycle) and
    the vectors are on the CPU."""
    return torch_serial(getattr(precond, "serial_host", False) and r.device.type == "cpu")


def _pcg_loop(
    matvec: MatVec,
    x: Vec,
    r: Vec,
    max_iter: int,
    precond: MatVec | None,
    inner: Callable[[Vec, Vec], Vec] | None,
    monitor: Callable[[PCGState], bool | Vec] | None,
    not_spd: Callable[[str, int, float], Exception] | None,
    finite: bool = False,
) -> tuple[Vec, Vec, int, bool]:
    """The body of :func:`pcg_iterate`."""
    dot = _dot if inner is None else inner  # r^T z only; p^T A p is always _dot
    tiny = torch.finfo(r.dtype).tiny
    z = r if precond is None else precond(r)
    rz = dot(r, z)
    flag = monitor(PCGState(0, x, r, z, rz)) if monitor is not None else False
    # A flag tensor for one system is a plain stop flag: nothing to freeze, the loop ends.
    masked = isinstance(flag, torch.Tensor) and flag.numel() > 1
    done = flag if masked else None
    finished = bool(flag.all()) if masked else bool(flag)
    check_m = not_spd is not None and precond is not None  # r^T r >= 0 needs no check
    if not finished and check_m:
        _check_rz(rz, done, 0, not_spd, finite)
    p = z
    k = 0
    while not finished and k < max_iter:
        k += 1
        ap = matvec(p)
        pap = _dot(p, ap)
        active = None if done is None else ~done[..., None]
        if not_spd is None:
            den = pap.clamp_min(tiny)
        else:
            if active is None and pap.numel() == 1:  # one system: one host read
                value = float(pap.detach())
                if _breaks(value, finite):
                    raise not_spd("A", k, value)
            else:
                bad = _breaks_t(pap.detach(), finite, last=k == max_iter)
                if active is not None:
                    bad = bad & active
                if bool(bad.any()):
                    raise not_spd("A", k, float(pap.detach()[bad].min()))
            den = pap
        if active is None:
            alpha = rz / den
        else:  # done systems: alpha = 0 keeps x and r frozen
            alpha = torch.where(active, rz / torch.where(active, den, 1.0), 0.0)
        x = torch.addcmul(x, alpha, p)
        r = torch.addcmul(r, alpha, ap, value=-1.0)
        z = r if precond is None else precond(r)
        rz_new = dot(r, z)
        if monitor is not None:
            flag = monitor(PCGState(k, x, r, z, rz_new))
            if masked:
                done = done | flag
                finished = bool(done.all())
            else:
                finished = bool(flag)
            if finished:
                break
        if check_m:
            _check_rz(rz_new, done, k, not_spd, finite, last=k == max_iter)
        if done is None:
            beta = rz_new / (rz if not_spd is not None else rz.clamp_min(tiny))
            rz = rz_new
        else:  # done systems: beta = 0 keeps p bounded, r^T z kept
            active = ~done[..., None]
            beta = torch.where(active, rz_new / torch.where(active, rz, 1.0), 0.0)
            rz = torch.where(active, rz_new, rz)
        p = torch.addcmul(z, beta, p)
    return x, r, k, finished


def _breaks(value: float, finite: bool) -> bool:
    """A curvature or ``r^T z`` that ends the iteration: ``<= 0``, or (``finite``) not
    a finite positive number (NaN, which every comparison lets through, or Inf)."""
    return not 0 < value < math.inf if finite else value <= 0


def _breaks_t(v: Vec, finite: bool, last: bool = False) -> Vec:
    """:func:`_breaks` elementwise, but only NaN among the non-finite values before the
    ``last`` iteration (one comparison fewer per iteration): an Inf curvature makes the next
    residual NaN (``0 * inf``), which the next check catches; at the last iteration no check
    follows, so Inf is caught there."""
    if not finite:
        return v <= 0
    return ~((v > 0) & (v < math.inf)) if last else ~(v > 0)


def _check_rz(
    rz: Vec,
    done: Vec | None,
    k: int,
    not_spd: Callable[..., Exception],
    finite: bool = False,
    last: bool = False,
) -> None:
    if done is None and rz.numel() == 1:  # one system: one host read
        value = float(rz.detach())
        if _breaks(value, finite):
            raise not_spd("M", k, value)
        return
    bad = _breaks_t(rz.detach(), finite, last)
    if done is not None:
        bad = bad & ~done[..., None]
    if bool(bad.any()):
        raise not_spd("M", k, float(rz.detach()[bad].min()))


class _AdjointSolve(torch.autograd.Function):
    """Forward: zeros (the residual of the solution, to be added to it). Backward: the
    adjoint solve ``v = A^{-1} g`` of the incoming gradient ``g``.

    Second derivatives (``create_graph=True``) would need ``v`` and the solution as
    differentiable functions of the operator, which this backward does not provide: it
    raises instead of returning wrong numbers (a Hessian-vector product of ``cg(A(theta),
    b, grad="implicit")`` was wrong in every entry). The one exception is exact: an incoming
    gradient with no component in the solution's space (``||A v|| <= 1e-4 ||g||``, e.g. the
    energy of a constrained minimum, whose gradient in the charges is the multiplier times
    the constraint's normal), where ``v`` is zero and stays zero nearby, so nothing is
    dropped (QEq energy Hessians, force losses)."""

    @staticmethod
    def forward(  # noqa: D102
        ctx: Any, residual: Vec, solve: Callable[[Vec], Vec], matvec: MatVec
    ) -> Vec:
        ctx.solve, ctx.matvec = solve, matvec
        return torch.zeros_like(residual)

    @staticmethod
    def backward(ctx: Any, g: Vec) -> tuple[Vec, None, None]:  # noqa: D102
        create_graph = torch.is_grad_enabled()
        with torch.no_grad():
            v = ctx.solve(g)
            if create_graph:
                big = float(torch.linalg.vector_norm(ctx.matvec(v)))
                if not big <= 1e-4 * float(torch.linalg.vector_norm(g)):
                    raise NotImplementedError(
                        "Second derivatives through grad='implicit' are not supported (the "
                        "adjoint solve is not differentiable): use grad='unrolled' for "
                        "create_graph=True, Hessians and losses on gradients."
                    )
        return v, None, None


def implicit_solution(
    x: Vec,
    b: Vec,
    matvec: MatVec,
    adjoint: Callable[[Vec], Vec],
    needs_grad: bool | None = None,
) -> Vec:
    """``x`` (the same values) carrying the implicit-function backward of ``A x = b``.

    Returns ``x + S(b - A x)`` with ``x`` detached and ``S`` zero in the forward pass and
    ``g -> adjoint(g) = A^{-1} g`` in the backward, so that autograd gives ``dL/db = v``
    and, through ``matvec`` (recorded once, at ``x``), ``dL/dtheta = -v^T d(A x)/dtheta``
    for every tensor ``theta`` that ``matvec`` depends on (``dL/dA = -v x^T`` for a
    matrix), with ``v = A^{-1} dL/dx``. A symmetric; ``adjoint`` runs without a graph.
    On a constraint subspace (chem) ``adjoint`` solves there, and ``b - A x`` is the
    residual of the unconstrained equations (its component normal to the subspace, the
    Lagrange multiplier term, meets ``v`` at zero). ``needs_grad=False`` (the caller knows
    that neither ``b`` nor the operator requires grad) skips the extra mat-vec.
    """
    x = x.detach()
    if not torch.is_grad_enabled() or needs_grad is False:
        return x
    residual = b - matvec(x)
    if not residual.requires_grad:
        return x
    return x + _AdjointSolve.apply(residual, adjoint, matvec)


def differentiate(
    grad: str,
    solve: Callable[[], tuple[Vec, Any]],
    *,
    b: Vec | None = None,
    matvec: MatVec | None = None,
    adjoint: Callable[[Vec, Any], Vec] | None = None,
    needs_grad: bool | None = None,
) -> tuple[Vec, Any]:
    """Run ``solve() -> (x, info)`` in differentiation mode ``grad`` (:data:`GRAD_MODES`).

    ``"unrolled"``: ``solve`` runs with autograd recording. ``"detached"``: under
    ``torch.no_grad()``. ``"implicit"``: under ``torch.no_grad()``, then ``x`` gets
    :func:`implicit_solution` for ``A x = b`` with ``matvec`` (differentiable) and the
    adjoint solve ``g -> adjoint(g, info) = A^{-1} g`` (``info``: what the forward solve
    returned besides ``x``, e.g. its operator and preconditioner).
    """
    if grad not in GRAD_MODES:
        raise ValueError(f"Expected grad in {GRAD_MODES} (got {grad!r}).")
    if grad == "unrolled":
        return solve()
    with torch.no_grad():
        x, info = solve()
    if grad == "implicit":
        if b is None or matvec is None or adjoint is None:
            raise TypeError("grad='implicit' needs b, matvec and adjoint.")
        x = implicit_solution(x, b, matvec, lambda g: adjoint(g, info), needs_grad)
    return x, info


def run_until(
    step: Callable[[Any], tuple[Any, float] | tuple[Any, float, bool]],
    state: Any,
    *,
    max_iter: int,
    tol: float,
) -> tuple[Any, int, list[float], bool]:
    """Repeat ``state, r = step(state)`` until ``r <= tol`` or ``max_iter`` steps.

    ``step`` may return a third value, ``may_stop``: ``False`` means this iterate cannot be
    reported as converged whatever its residual (AMP under its continuation threshold).

    Returns:
        ``(state, iterations, residuals, converged)``; ``residuals[k-1]`` is the residual
        after step ``k``.
    """
    residuals: list[float] = []
    for k in range(1, max_iter + 1):
        out = step(state)
        state, r = out[0], out[1]
        residuals.append(r)
        if r <= tol and (len(out) < 3 or out[2]):
            return state, k, residuals, True
    return state, max_iter, residuals, False
