"""ADMM-Net: unrolled ADMM with learned penalties, thresholds and (optionally) a learned
x-update solve."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .._validation import check_count
from ..solvers import admm_step
from ..solvers._common import pow2_above
from ..solvers._loop import pcg_iterate

__all__ = ["ADMMNet"]

from ._base import UnrolledLasso

_X_UPDATES = ("exact", "cg", "learned")
_EXACT_MAX_N = 20_000  # 3.2 GB for A^T A in float64


def _pow2_scale(x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Per system (row), the power of two ``s`` just above the largest entry of the CG
    start ``x`` and residual ``r`` (1 for zero rows), detached. CG from ``(x / s, r / s)``
    takes the same steps scaled by ``1 / s`` (its step sizes are ratios of quadratic
    forms), and a power of two scales exactly: the same bits at ordinary scales, and inner
    products that cannot overflow for large data (``|y|`` of ``1e20`` in float32). The
    x-update runs CG on the correction from ``x = 0``, so ``s`` follows the residual alone
    (the warm start is ``O(|x|)`` but its residual ``O(||A||^2 |x|)``: scaled by the
    larger, CG stalled in float32 at ``||A||`` of ``2e-8``)."""
    top = torch.maximum(
        x.detach().abs().amax(-1, keepdim=True), r.detach().abs().amax(-1, keepdim=True)
    )
    return pow2_above(top)


class ADMMNet(UnrolledLasso):
    """ADMM for the lasso with learned per-layer penalty and threshold (ADMM-Net style).

    Layer ``k`` is :func:`unrollsci.solvers.admm_step` with penalty ``rho_k > 0``
    and threshold ``theta_k > 0``: ``x = (A^T A + rho_k I)^{-1}(A^T y + rho_k (z - u))``,
    ``z = prox(x + u, theta_k)``, ``u = u + x - z``; the output is ``z``.
    Initialised at classical ADMM: ``rho = ||A||^2`` (the :func:`unrollsci.solvers.admm`
    default) and ``theta = lam / rho``. The penalties are floored at ``eps ||A||^2``
    (``eps`` the dtype's machine epsilon; :meth:`penalties`), so the x-update stays
    nonsingular for any raw parameter value (an ``m < n`` operator with ``rho_k = 0``
    would make it singular).

    The x-update solve (``x_update``):

    * ``"exact"`` (the default): an eigendecomposition of ``A^T A`` computed once (the
      ``n x n`` matrix assembled from ``A^T A`` applied to blocks of unit vectors), so every
      ``rho_k`` is solved exactly and differentiably; ``O(n^3)`` setup and ``O(n^2)``
      per solve, for ``n`` up to about ``10^4``. Untrained, the model equals
      :func:`unrollsci.solvers.admm`.
    * ``"cg"``: ``cg_steps`` unrolled conjugate-gradient steps on
      ``(A^T A + rho_k I) x = rhs``, warm-started from the previous layer's ``x`` (zero at
      layer 1). Matrix-free (only ``A`` and ``A^T``): no ``n x n`` matrix is formed.
    * ``"learned"``: as ``"cg"`` with a learned per-layer diagonal preconditioner
      ``M_k = diag(softplus(m_k))`` (SPD by construction), i.e. ``cg_steps`` PCG steps:
      a learned approximation of the solve, trained end to end with the rest. Initialised
      at a constant diagonal, for which PCG takes the same steps as CG, so an untrained
      ``"learned"`` model equals the ``"cg"`` one (to rounding).

    Args:
        operator, num_layers, lam, dtype: as :class:`LISTA`.
        rho: initial penalty (default ``||A||^2``).
        x_update: ``"exact"``, ``"cg"`` or ``"learned"``.
        cg_steps: CG steps per layer of ``"cg"`` / ``"learned"`` (default 5).
        prox: the z-update's prox (:func:`unrollsci.prox.make_prox`; default soft).

    Example:
        >>> import torch
        >>> from unrollsci.operators import MatrixOperator
        >>> A = MatrixOperator(torch.randn(20, 40) / 20**0.5)
        >>> ADMMNet(A, 4, lam=0.1)(torch.randn(3, 20)).shape
        torch.Size([3, 40])
        >>> ADMMNet(A, 4, lam=0.1, x_update="learned", cg_steps=3)(torch.randn(3, 20)).shape
        torch.Size([3, 40])
    """

    def __init__(
        self,
        operator: Any,
        num_layers: int,
        *,
        lam: float = 0.1,
        rho: float | None = None,
        x_update: str = "exact",
        cg_steps: int | None = None,
        dtype: torch.dtype | None = None,
        prox: Any = None,
    ) -> None:
        super().__init__(operator, num_layers, lam=lam, dtype=dtype, prox=prox)
        if x_update not in _X_UPDATES:
            raise ValueError(f"Expected x_update 'exact', 'cg' or 'learned' (got {x_update!r}).")
        if cg_steps is not None:
            if x_update == "exact":
                raise ValueError("'cg_steps' is an option of x_update='cg' or 'learned'.")
            cg_steps = check_count("cg_steps", cg_steps)
        self.x_update = x_update
        self.cg_steps = cg_steps
        # ||A||^2 (raises for a zero operator): the default rho and the scale of rho's floor
        self._norm_sq = self._lipschitz()
        rho0 = self._norm_sq if rho is None else float(rho)
        if not (math.isfinite(rho0) and rho0 > 0):
            raise ValueError(f"Expected 'rho' > 0 and finite (got {rho!r}).")
        self.rho_init = None if rho is None else rho0
        # a default rho below the normal range became softplus + tiny: silently wrong
        self._check_range(**{"||A||^2": self._norm_sq, "1/||A||^2": 1.0 / self._norm_sq})
        if x_update == "exact":
            if self.n > _EXACT_MAX_N:
                raise ValueError(
                    f"x_update='exact' eigendecomposes the dense n x n matrix A^T A (n = "
                    f"{self.n}: {8 * self.n**2 / 1e9:.0f} GB in float64, O(n^3) time); it is "
                    f"offered up to n = {_EXACT_MAX_N}. Use x_update='cg' or 'learned' "
                    "(matrix-free)."
                )
            if not self.operator.cacheable_norm:
                raise ValueError(
                    "x_update='exact' eigendecomposes A^T A once, which cannot follow an "
                    "operator with trainable state (and passes it no gradient); use "
                    "x_update='cg' or 'learned'."
                )
            empty = torch.empty(0, dtype=self.param_dtype, device=self._device)
            self.register_buffer("gram_evals", empty)
            self.register_buffer("gram_evecs", empty.clone())
            self._gram_key: Any = None
            self._refresh_gram()
        elif x_update == "learned":
            # constant diagonal 1 / (||A||^2 + rho): PCG with it takes CG's steps
            m0 = 1.0 / (self._norm_sq + rho0)
            full = self._positive(m0, num_layers * self.n).detach()
            self.precond = nn.Parameter(full.reshape(num_layers, self.n))
        self.rho = self._positive(rho0, num_layers)
        self.theta = self._positive(self.lam / rho0, num_layers)

    def _refresh_gram(self) -> None:
        """(Re)compute the eigendecomposition of ``A^T A`` when the operator changed since it
        was computed (its tensors' identity and version: an in-place edit of the matrix, a
        loaded state, a move) or the model's dtype did (``model.double()`` casts the buffers:
        a float32 eigendecomposition would stay accurate to float32 only), so the x-update
        never solves with a stale ``A^T A``."""
        key = (self.operator._norm_key(), self.param_dtype)
        if key == self._gram_key:
            return
        # kept across calls: never an inference tensor (a first forward under
        # torch.inference_mode() would otherwise break every later autograd call)
        with torch.inference_mode(False):
            evals, evecs = torch.linalg.eigh(self._gram())
            dev = self._device
            self.gram_evals = evals.clamp_min(0).to(device=dev, dtype=self.param_dtype)
            self.gram_evecs = evecs.to(device=dev, dtype=self.param_dtype)
        self._gram_key = key

    def _gram(self, chunk: int = 128) -> torch.Tensor:
        """``A^T A`` as a dense float64 ``(n, n)`` matrix, assembled ``chunk`` columns at a
        time from ``A^T A e_j`` (never the ``(m, n)`` matrix nor a whole identity batch)."""
        n, op = self.n, self.operator
        dev = self._device
        gram = torch.empty(n, n, dtype=torch.float64, device=dev)
        with torch.no_grad():
            for j in range(0, n, chunk):
                cols = torch.zeros(min(chunk, n - j), n, dtype=torch.float64, device=dev)
                cols[:, j : j + cols.shape[0]].fill_diagonal_(1.0)
                gram[:, j : j + cols.shape[0]] = op.rmv(op.mv(cols)).T
        return (gram + gram.T) / 2  # symmetric to rounding; exactly, for eigh

    def _options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {"rho": self.rho_init}
        if self.x_update != "exact":
            opts.update(x_update=self.x_update, cg_steps=self.cg_steps)
        return opts

    def extra_repr(self) -> str:
        extra = "" if self.x_update == "exact" else f", x_update={self.x_update!r}"
        return super().extra_repr() + extra

    def penalties(self) -> torch.Tensor:
        """The per-layer penalties ``rho_k = max(softplus(raw_k), eps ||A||^2)``, ``(K,)``
        (``eps`` the dtype's machine epsilon, ``||A||^2`` from construction): positive for
        any raw value, so ``A^T A + rho_k I`` stays nonsingular in the working precision
        (its eigenvalues are at least ``eps ||A||^2``); above the floor, ``softplus(raw_k)``
        bit for bit."""
        floor = torch.finfo(self.rho.dtype).eps * self._norm_sq
        return torch.clamp_min(self._pos(self.rho, self.rho), floor)

    def _run(self, y: torch.Tensor, num_layers: int) -> list[torch.Tensor]:
        rho = self.penalties()
        theta = self._pos(self.theta, y)
        prox = self.prox_fn
        op = self.operator
        aty = op.rmv(y)
        z = y.new_zeros(y.shape[0], self.n)
        u = torch.zeros_like(z)
        xs = []
        if self.x_update == "exact":
            self._refresh_gram()
            evals, v = self.gram_evals, self.gram_evecs
        else:
            steps = 5 if self.cg_steps is None else self.cg_steps
            warm = {"x": torch.zeros_like(z)}
            precond = self._pos(self.precond, y) if self.x_update == "learned" else None
        for k in range(num_layers):
            if self.x_update == "exact":

                def x_solve(rhs: torch.Tensor, r: torch.Tensor = rho[k]) -> torch.Tensor:
                    return ((rhs @ v) / (evals + r)) @ v.T

            else:

                def x_solve(
                    rhs: torch.Tensor, r: torch.Tensor = rho[k], k: int = k
                ) -> torch.Tensor:
                    def matvec(p: torch.Tensor) -> torch.Tensor:
                        return op.rmv(op.mv(p)) + r * p

                    x0 = warm["x"]
                    m = None if precond is None else (lambda q, d=precond[k]: d * q)
                    # CG on the correction x - x0 from 0, its residual in units of itself
                    res = rhs - matvec(x0)
                    start = torch.zeros_like(x0)
                    s = _pow2_scale(start, res)
                    dx, _, _, _ = pcg_iterate(matvec, start, res / s, max_iter=steps, precond=m)
                    x = x0 + dx * s
                    warm["x"] = x
                    return x

            _, z, u = admm_step(x_solve, aty, z, u, rho[k], theta[k], prox)
            xs.append(z)
        return xs
