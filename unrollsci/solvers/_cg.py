"""(Preconditioned) conjugate gradient for batched SPD systems."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .._validation import (
    SYMMETRY_EPS_FACTOR,
    check_finite,
    check_positive,
    check_same_device,
    check_tensor,
)
from .._validation import check_symmetric as _check_symmetric
from ..operators import LinearOperator
from ..operators._base import check_real
from ._common import as_operator, check_signal, check_stopping
from ._solution import Solution, finish

__all__ = ["cg", "check_symmetric"]


def check_symmetric(a: Any, name: str = "A", *, rtol: float | None = None) -> None:
    """Raise ``ValueError`` if the matrix or operator ``a`` is not square and symmetric.

    Explicit matrices (dense or sparse torch tensors, scipy sparse matrices) are
    compared entrywise with their transpose by :func:`unrollsci._validation.check_symmetric`,
    the library's one rule: ``max|A - A^T| <= rtol * max|A|`` with ``rtol = 1000 eps(dtype)``
    by default. A ``LinearOperator`` is probed with two random vectors instead: it must
    satisfy ``|<Ax, y> - <x, Ay>| <= rtol (||Ax|| ||y|| + ||Ay|| ||x||)``, with the same
    default ``rtol``.
    """
    if isinstance(a, LinearOperator):
        if a.in_shape != a.out_shape:
            raise ValueError(
                f"Expected '{name}' to be square (got in_shape {a.in_shape}, out_shape "
                f"{a.out_shape})."
            )
        dt = a.dtype if a.dtype in (torch.float32, torch.float64) else torch.float64
        eps = torch.finfo(dt).eps
        gen = torch.Generator().manual_seed(1234)
        dev = a.device or torch.device("cpu")
        x = torch.randn((2, *a.in_shape), generator=gen, dtype=dt).to(dev)
        with torch.no_grad():
            ax = a(x)
        lhs = (ax[0] * x[1]).sum()
        rhs = (x[0] * ax[1]).sum()
        scale = ax[0].norm() * x[1].norm() + ax[1].norm() * x[0].norm()
        tol = rtol if rtol is not None else SYMMETRY_EPS_FACTOR * eps
        if float((lhs - rhs).abs()) > tol * float(scale):
            raise ValueError(
                f"Expected '{name}' to be symmetric: <Ax, y> - <x, Ay> = "
                f"{float(lhs - rhs):.3e} for random x, y (relative "
                f"{float((lhs - rhs).abs() / scale):.1e}). CG needs a symmetric positive "
                "definite operator; use a different solver for non-symmetric systems."
            )
        return
    if not isinstance(a, torch.Tensor) and not _is_scipy_sparse(a):
        raise TypeError(
            f"Expected '{name}' to be a LinearOperator, a torch tensor or a scipy sparse matrix "
            f"(got {type(a).__name__})."
        )
    _check_symmetric(a, name, rtol=rtol)


def _is_scipy_sparse(a: Any) -> bool:
    import scipy.sparse as sp

    return bool(sp.issparse(a))


def _norm(v: torch.Tensor) -> torch.Tensor:
    """Row norms of ``v`` (detached) without underflow or overflow of the squares."""
    v = v.detach()
    big = v.abs().amax(dim=-1)
    unit = v / torch.where(big > 0, big, torch.ones_like(big))[:, None]
    return big * torch.linalg.vector_norm(unit, dim=-1)


def _as_apply(m: Any, name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    if callable(m) and not isinstance(m, (torch.Tensor, LinearOperator)):
        return m
    return as_operator(m, name)


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
) -> Solution:
    """Conjugate gradient for ``A x = b`` with ``A`` symmetric positive definite.

    Batched over right-hand sides; each column gets its own step sizes and stops
    independently once ``||r|| <= max(tol * ||b||, atol)``, or once its (recursively
    updated) residual vanishes to working precision (``r^T r`` is exactly 0: ``||r||``
    below ``1e-154 ||b||`` in float64, ``1e-19 ||b||`` in float32), which counts as
    converged. So ``tol=0, atol=0`` runs until the residual is zero or ``max_iter``.
    Each column is solved scaled to ``||b|| = 1`` (the iterates are linear in ``b``),
    so tiny or huge right-hand sides do not underflow or overflow the CG scalars.

    Args:
        A: SPD ``LinearOperator``, dense ``(n, n)`` tensor, torch sparse tensor or
            scipy sparse matrix.
        b: ``(n,)`` or ``(batch, n)``.
        M: preconditioner approximating ``A^{-1}`` (as in scipy): anything ``A`` can
            be, or a callable ``r -> z`` on ``(batch, n)`` tensors. Must be SPD.
        x0: initial guess (warm start), same shape as ``b``.
        tol, atol: relative / absolute residual tolerance, ``>= 0`` and finite.
        max_iter: default ``10 * n``.
        check: verify that explicit ``A`` is square and symmetric before iterating.
        throw: raise ``ConvergenceError`` instead of warning on non-convergence.

    Raises:
        ValueError: non-square or non-symmetric ``A``; a direction with
            ``p^T A p <= 0`` (A not positive definite) or ``r^T M r <= 0`` (M not
            positive definite) met during the iteration; NaN/Inf in ``b``.

    Returns:
        Solution; ``residuals`` holds the max relative residual per iteration.

    Example:
        >>> import torch
        >>> A = torch.tensor([[4.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
        >>> cg(A, torch.tensor([1.0, 2.0], dtype=torch.float64)).x
        tensor([0.0909, 0.6364], dtype=torch.float64)
    """
    if check and not isinstance(A, LinearOperator):
        check_symmetric(A, "A")
    op = as_operator(A, "A")
    if op.in_shape != op.out_shape or len(op.in_shape) != 1:
        raise ValueError(
            f"Expected 'A' to be a square operator on vectors (got in_shape {op.in_shape}, "
            f"out_shape {op.out_shape})."
        )
    n = op.in_shape[0]
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
    tol = check_stopping(tol, 0 if max_iter is None else max_iter)
    atol = check_positive("atol", atol, allow_zero=True)
    precond = None if M is None else _as_apply(M, "M")
    if isinstance(precond, LinearOperator) and precond.in_shape != (n,):
        raise ValueError(f"Expected 'M' of size {n} x {n} (got in_shape {precond.in_shape}).")
    if max_iter is None:
        max_iter = 10 * n

    if x0 is not None:
        check_tensor("x0", x0, ndim=(1, 2))
        check_real("x0", x0)
        check_finite("x0", x0)
    x = b.new_zeros(b.shape) if x0 is None else (x0[None] if x0.dim() == 1 else x0)
    if x.shape != b.shape:
        raise ValueError(f"Expected 'x0' of shape {tuple(b.shape)} (got {tuple(x.shape)}).")
    tiny = torch.finfo(b.dtype).tiny
    bnorm = _norm(b)
    safe = torch.clamp(bnorm, min=tiny)
    r = b - op(x) if x0 is not None else b.clone()
    # Solve for (x, r) / s with s = ||b|| (or ||r0|| for b = 0): CG is linear in b, and
    # unit-size vectors keep r^T z and p^T A p clear of underflow and overflow.
    r0n = _norm(r)
    s = torch.where(bnorm > 0, bnorm, r0n)
    s = torch.where(s > 0, s, torch.ones_like(s))[:, None]
    x, r = x / s, r / s
    thresh = torch.maximum(tol * bnorm, torch.full_like(bnorm, atol)) / s[:, 0]
    z = precond(r) if precond is not None else r
    rz = torch.linalg.vecdot(r, z)[:, None]
    p = z
    residuals: list[float] = []
    rn = r.detach().norm(dim=-1)
    done = (rn <= thresh) | (rn == 0)
    k = 0
    converged = bool(done.all())
    if converged:
        residuals.append(float((rn * s[:, 0] / safe).max()))
    vdot = torch.linalg.vecdot
    while not converged and k < max_iter:
        k += 1
        ap = op(p)
        pap = vdot(p, ap)[:, None]
        active = ~done[:, None]
        bad = active & (pap.detach() <= 0)
        if bool(bad.any()):
            raise ValueError(
                f"cg: A is not positive definite: found a direction with p^T A p = "
                f"{float(pap[bad].min()):.3e} <= 0 at iteration {k}. CG needs an SPD matrix."
            )
        # Finished columns get alpha = 0 (x and r stay frozen) and beta = 0 (p stays bounded).
        one = torch.ones_like(pap)
        alpha = torch.where(active, rz / torch.where(active, pap, one), torch.zeros_like(pap))
        x = torch.addcmul(x, alpha, p)
        r = torch.addcmul(r, alpha, ap, value=-1.0)
        rd = r.detach()
        rn = torch.linalg.vector_norm(rd, dim=-1)
        residuals.append(float((rn * s[:, 0] / safe).max()))
        # A residual whose squared norm underflows to 0 is zero to working precision: the
        # next step would divide 0 by 0 (p^T A p = 0), which is not indefiniteness.
        vanished = vdot(rd, rd) == 0
        done = done | (rn <= thresh) | vanished
        if bool(done.all()):
            converged = True
            break
        if precond is not None:
            z = precond(r)
            rz_new = vdot(r, z)[:, None]
        else:
            z = r
            rz_new = vdot(r, r)[:, None]
        active = ~done[:, None]
        if precond is not None and bool((active & (rz_new.detach() <= 0)).any()):
            raise ValueError(
                f"cg: the preconditioner M is not positive definite (r^T M r <= 0 at "
                f"iteration {k})."
            )
        beta = torch.where(active, rz_new / torch.where(active, rz, one), torch.zeros_like(rz))
        p = torch.addcmul(z, beta, p)
        rz = torch.where(active, rz_new, rz)
    x = x * s
    rn = rn * s[:, 0]
    stats = {"residual_per_rhs": (rn / safe).cpu()}
    return finish(
        "cg",
        x[0] if unbatched else x,
        k,
        residuals,
        converged,
        tol,
        max_iter,
        throw,
        stats,
        hint="A preconditioner (M=...) reduces the iteration count.",
    )
