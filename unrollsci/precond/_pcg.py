"""Preconditioned CG unrolled for training: :func:`unrolled_pcg`, the loss, unroll lengths.

The library's one CG recurrence (:func:`unrollsci.solvers._loop.pcg_iterate`, also behind
:func:`unrollsci.solvers.cg`), run for a fixed number of steps with no stopping test, so that
the error after them can be back-propagated into the preconditioner.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from .._validation import check_count
from ..solvers._common import pow2_above, row_norm
from ..solvers._loop import PCGState, pcg_iterate
from ._graph import SystemBatch
from ._sparse import lower_matvec

if TYPE_CHECKING:  # annotations only: importing the model loads torch_geometric
    from ._learned import LearnedPreconditioner

__all__ = ["unrolled_pcg", "pcg_loss"]


def _steps_to_tol(
    model: LearnedPreconditioner, batch: SystemBatch, tol: float, max_steps: int
) -> int:
    """PCG steps the model's current preconditioner needs for energy error <= tol."""
    A = batch.op  # noqa: N806
    den = (batch.x * batch.b).sum(-1)

    def energy_error_small(st: PCGState) -> bool:
        if st.k == 0:
            return False
        e = st.x - batch.x
        return float(((e * A(e)).sum(-1) / den).max()) <= tol

    with torch.no_grad():
        m = model.from_graph(batch.graph)
        _, _, k, reached = pcg_iterate(
            A,
            torch.zeros_like(batch.b),
            batch.b,
            max_iter=max_steps,
            precond=m,
            monitor=energy_error_small,
        )
    return max(k, 2) if reached else max_steps


def unrolled_pcg(
    op: Callable[[torch.Tensor], torch.Tensor],
    b: torch.Tensor,
    M: Callable[[torch.Tensor], torch.Tensor],  # noqa: N803
    steps: int,
) -> torch.Tensor:
    """``steps`` iterations of preconditioned CG from ``x0 = 0``, differentiable throughout.

    The library's one CG recurrence (:func:`unrollsci.solvers._loop.pcg_iterate`, also
    behind :func:`unrollsci.solvers.cg`) in its ``"unrolled"`` mode, with no stopping
    test and no definiteness checks (no host synchronisation; a vanished residual gives
    zero steps), so that the loss after a fixed number of steps can be back-propagated
    into ``M``.

    Each row of ``b`` is divided by a power of two near its norm before the iteration
    and the result multiplied back, so ``r^T z`` and ``p^T A p`` neither underflow nor
    overflow for tiny or huge ``b`` (as in :func:`unrollsci.solvers.cg`). With linear
    ``op`` and ``M`` the iterates are homogeneous of degree 1 in ``b`` and a power of two
    scales exactly: at ordinary scales the values are those of the unscaled iteration bit
    for bit, and the gradients (in ``b`` and in the parameters of ``M`` and ``op``) are
    the same.

    Args:
        op: ``x -> A x`` on ``(batch, n)``.
        b: ``(batch, n)``.
        M: ``r -> z ~ A^{-1} r``.
        steps: number of PCG iterations, an int ``>= 0``.

    Returns:
        ``x_steps: (batch, n)``.
    """
    steps = check_count("steps", steps, 0)
    s = _pow2_row_scale(b)
    x, _, _, _ = pcg_iterate(op, torch.zeros_like(b), b / s, max_iter=int(steps), precond=M)
    return x * s


def _pow2_row_scale(b: torch.Tensor) -> torch.Tensor:
    """``2^e`` per row of ``b`` (shape ``(..., 1)``, detached) with ``||b_row|| / 2^e`` in
    ``[0.5, 1)``; 1 for a zero row or a non-finite norm."""
    norm = row_norm(b)
    return pow2_above(torch.where(torch.isfinite(norm), norm, torch.zeros_like(norm)))[..., None]


def pcg_loss(
    steps: int = 20, loss: str = "energy", seed: int = 0
) -> Callable[[LearnedPreconditioner, SystemBatch], torch.Tensor]:
    """Loss function ``(model, batch) -> scalar`` for :func:`unrollsci.train.fit`.

    Args:
        steps: unrolled PCG iterations.
        loss: ``"energy"``: ``log mean ||x_k - x*||_A^2 / ||x*||_A^2``;
            ``"residual"``: ``log mean ||b - A x_k||^2 / ||b||^2``;
            ``"frobenius"``: sketched ``log mean ||(L L^T - A) z||^2 / ||A z||^2`` with
            random ``z`` (no PCG; ``kind="inverse"`` uses ``||(G G^T A - I) z||``).
        seed: seed of the sketching vectors. ``z`` (standard normal, one per right-hand
            side) is drawn per system from ``seed`` and a digest of the system's matrix:
            the same on every call, process and resume, so the loss of given weights on
            a given system is one number (validation losses compare weights, a resumed
            run equals an uninterrupted one, any number of processes gives the same
            run). ``z`` does not depend on the weights and differs between systems, so
            ``||(L L^T - A) z||^2`` is still an unbiased estimate of ``||L L^T - A||_F^2``
            (in expectation over ``seed``, or over the systems of a family).
    """
    if loss not in ("energy", "residual", "frobenius"):
        raise ValueError(f"Expected loss 'energy', 'residual' or 'frobenius' (got {loss!r}).")
    if steps < 1:
        raise ValueError(f"Expected steps >= 1 (got {steps}).")

    def fn(model: LearnedPreconditioner, batch: SystemBatch) -> torch.Tensor:
        m = model.from_graph(batch.graph)
        A = batch.op  # noqa: N806
        if loss == "frobenius":
            if batch.graph.perm is not None:
                raise ValueError(
                    "loss='frobenius' compares L L^T with A entry-wise; it is not "
                    "implemented for a reordered matrix (use loss='energy' or 'residual')."
                )
            if model.kind in ("poly", "amg"):
                raise ValueError(f"loss='frobenius' needs a factor; kind={model.kind!r} has none.")
            z = _sketch(batch, seed)
            az = A(z)
            if model.kind == "inverse":
                res = m(az) - z
                return torch.log((res.square().sum(-1) / z.square().sum(-1)).mean())
            v = m.values
            llz = lower_matvec(m.pattern, v, lower_matvec(m.pattern, v, z, transpose=True))
            # (for kind="block", L is the block factor on its in-block pattern, so the same
            # sparse product gives blockdiag(L_b L_b^T) z)
            return torch.log(((llz - az).square().sum(-1) / az.square().sum(-1)).mean())
        xk = unrolled_pcg(A, batch.b, m, batch.steps or steps)
        if loss == "energy":
            e = xk - batch.x
            num = (e * A(e)).sum(-1)
            den = (batch.x * batch.b).sum(-1)
        else:
            num = (batch.b - A(xk)).square().sum(-1)
            den = batch.b.square().sum(-1)
        return torch.log((num / den).mean())

    return fn


def _sketch(batch: SystemBatch, seed: int) -> torch.Tensor:
    """Standard normal ``z`` of ``batch.b``'s shape, dtype and device, from a generator
    seeded by ``seed`` and a SHA-256 digest of the system's matrix (its CSR structure and
    float64 values; kept in ``batch.graph.cache``), so each system has its own ``z``,
    the same on every call."""
    import hashlib

    key = batch.graph.cache.get("sketch_digest")
    if key is None:
        a = batch.op.matrix
        h = hashlib.sha256(repr(tuple(a.shape)).encode())
        for t in (a.crow_indices(), a.col_indices()):
            h.update(t.detach().to("cpu", torch.int64).numpy().tobytes())
        h.update(a.values().detach().to("cpu", torch.float64).numpy().tobytes())
        key = batch.graph.cache["sketch_digest"] = h.digest()
    s = hashlib.sha256(f"{int(seed)}:".encode() + key).digest()
    gen = torch.Generator().manual_seed(int.from_bytes(s[:8], "big") >> 1)
    return torch.randn(batch.b.shape, generator=gen, dtype=batch.b.dtype).to(batch.b.device)
