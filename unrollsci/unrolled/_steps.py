"""Unrolled FISTA, ADMM-Net and LAMP: classical steps with per-layer learned constants."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..solvers import admm_step, amp_step, fista_momentum, ista_step
from ._base import UnrolledLasso, _PairOperator

__all__ = ["UnrolledFISTA", "ADMMNet", "LAMP"]


class UnrolledFISTA(UnrolledLasso):
    """FISTA with learned per-layer step, threshold and momentum.

    ``v_k = x_k + beta_k (x_k - x_{k-1})``, ``x_{k+1} = soft(v_k - t_k A^T(A v_k - y), theta_k)``
    (the step is :func:`unrollsci.solvers.ista_step`). Initialised at FISTA
    without restart: ``t_k = 1 / ||A||^2``, ``theta_k = t_k lam`` and ``beta_k``
    from the Nesterov sequence (:func:`unrollsci.solvers.fista_momentum`).
    Matrix-free: only ``A`` and ``A^T`` are applied.

    Args:
        operator, num_layers, lam, dtype: as :class:`LISTA`.
        learn_momentum: learn ``beta_k`` (unconstrained real; otherwise fixed).
    """

    def __init__(
        self,
        operator: Any,
        num_layers: int,
        *,
        lam: float = 0.1,
        learn_momentum: bool = True,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(operator, num_layers, lam=lam, dtype=dtype)
        self.learn_momentum = bool(learn_momentum)
        t = 1.0 / self._lipschitz()
        self.step = self._positive(t, num_layers)
        self.theta = self._positive(t * self.lam, num_layers)
        betas, tk = [], 1.0
        for _ in range(num_layers):
            tk, beta = fista_momentum(tk)
            betas.append(beta)
        beta_t = torch.tensor(betas, dtype=torch.float64).to(self._device, self.param_dtype)
        if self.learn_momentum:
            self.beta = nn.Parameter(beta_t)
        else:
            self.register_buffer("beta", beta_t)

    def _options(self) -> dict[str, Any]:
        return {"learn_momentum": self.learn_momentum}

    def _run(self, y: torch.Tensor, num_layers: int) -> list[torch.Tensor]:
        step = self._pos(self.step, y)
        theta = self._pos(self.theta, y)
        beta = self.beta.to(y.dtype)
        x = x_prev = y.new_zeros(y.shape[0], self.n)
        xs = []
        for k in range(num_layers):
            # beta_0 = 0 in FISTA; layer 0 starts from x = x_prev, so beta_0 has no effect.
            v = x + beta[k] * (x - x_prev) if k else x
            x_prev, x = x, ista_step(self.operator, v, y, step[k], theta[k])
            xs.append(x)
        return xs


class ADMMNet(UnrolledLasso):
    """ADMM for the lasso with learned per-layer penalty and threshold (ADMM-Net style).

    Layer ``k`` is :func:`unrollsci.solvers.admm_step` with penalty ``rho_k > 0``
    and threshold ``theta_k > 0``: ``x = (A^T A + rho_k I)^{-1}(A^T y + rho_k (z - u))``,
    ``z = soft(x + u, theta_k)``, ``u = u + x - z``; the output is ``z``.
    Initialised at classical ADMM: ``rho = ||A||^2`` (the :func:`unrollsci.solvers.admm`
    default) and ``theta = lam / rho``. The x-update uses an eigendecomposition of
    ``A^T A`` computed once (``A`` densified), so every ``rho_k`` is solved exactly
    and differentiably; suits ``n`` up to a few thousand.

    Args:
        operator, num_layers, lam, dtype: as :class:`LISTA`.
        rho: initial penalty (default ``||A||^2``).
    """

    def __init__(
        self,
        operator: Any,
        num_layers: int,
        *,
        lam: float = 0.1,
        rho: float | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(operator, num_layers, lam=lam, dtype=dtype)
        rho0 = self._lipschitz() if rho is None else float(rho)
        if not rho0 > 0:
            raise ValueError(f"Expected 'rho' > 0 (got {rho!r}).")
        self.rho_init = None if rho is None else rho0
        a = self._dense()
        evals, evecs = torch.linalg.eigh(a.T @ a)
        self.register_buffer("gram_evals", evals.clamp_min(0).to(self.param_dtype))
        self.register_buffer("gram_evecs", evecs.to(self.param_dtype))
        self.rho = self._positive(rho0, num_layers)
        self.theta = self._positive(self.lam / rho0, num_layers)

    def _options(self) -> dict[str, Any]:
        return {"rho": self.rho_init}

    def _run(self, y: torch.Tensor, num_layers: int) -> list[torch.Tensor]:
        rho = self._pos(self.rho, y)
        theta = self._pos(self.theta, y)
        evals = self.gram_evals.to(y.dtype)
        v = self.gram_evecs.to(y.dtype)
        aty = self.operator.adjoint(y)
        z = y.new_zeros(y.shape[0], self.n)
        u = torch.zeros_like(z)
        xs = []
        for k in range(num_layers):

            def x_solve(rhs: torch.Tensor, r: torch.Tensor = rho[k]) -> torch.Tensor:
                return ((rhs @ v) / (evals + r)) @ v.T

            _, z, u = admm_step(x_solve, aty, z, u, rho[k], theta[k])
            xs.append(z)
        return xs


class LAMP(UnrolledLasso):
    """Learned AMP (Borgerding, Schniter & Rangan 2017) that keeps the Onsager term.

    Layer ``k`` is :func:`unrollsci.solvers.amp_step` with ``A^T`` replaced by a
    learned ``B_k = W_k^T`` (``W_k: (m, n)``, initialised to ``A``) and threshold
    ``theta_k = s_k * max(lam / (1 - b_k), d^k ||A^T y||_inf)``: the calibrated
    threshold of :func:`unrollsci.solvers.amp` (with its continuation decay ``d``)
    scaled by a learned ``s_k > 0`` (initialised to 1). The Onsager coefficient
    ``b_k = ||x_k||_0 / m`` is recomputed at every layer, as in AMP. An untrained
    model equals ``amp(A, y, lam, decay=d, damping=0, max_iter=K)``.

    Args:
        operator, num_layers, lam, dtype: as :class:`LISTA`.
        decay: continuation decay of the first thresholds (as :func:`unrollsci.solvers.amp`).
        learn_matrix: learn ``B_k`` per layer (LAMP "untied"); else ``B = A^T`` and
            only the threshold scales are learned.
        scale_init: initial ``s_k``. With 1 (classical AMP) the first threshold equals
            ``||A^T y||_inf``, so layer 1 outputs exactly 0 and its parameters get no
            gradient; a value slightly below 1 (e.g. 0.95) lets training use layer 1.
    """

    def __init__(
        self,
        operator: Any,
        num_layers: int,
        *,
        lam: float = 0.1,
        decay: float = 0.8,
        learn_matrix: bool = True,
        scale_init: float = 1.0,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(operator, num_layers, lam=lam, dtype=dtype)
        if not scale_init > 0:
            raise ValueError(f"Expected scale_init > 0 (got {scale_init!r}).")
        self.scale_init = float(scale_init)
        if not 0 <= decay < 1:
            raise ValueError(f"Expected 0 <= decay < 1 (got {decay}).")
        self.decay = float(decay)
        self.learn_matrix = bool(learn_matrix)
        if self.learn_matrix:
            w = self._dense().to(self.param_dtype)
            self.W = nn.ParameterList([nn.Parameter(w.clone()) for _ in range(num_layers)])
        self.scale = self._positive(self.scale_init, num_layers)

    def _options(self) -> dict[str, Any]:
        return {
            "decay": self.decay,
            "learn_matrix": self.learn_matrix,
            "scale_init": self.scale_init,
        }

    def _classical_overrides(self) -> dict[str, Any]:
        return {"scale_init": 1.0}

    def _run(self, y: torch.Tensor, num_layers: int) -> list[torch.Tensor]:
        scale = self._pos(self.scale, y)
        x = y.new_zeros(y.shape[0], self.n)
        z = torch.zeros_like(y)
        b = y.new_zeros(y.shape[0], 1)
        theta_cont = self.operator.adjoint(y).detach().abs().amax(-1, keepdim=True)
        xs = []
        for k in range(num_layers):
            theta = torch.maximum(self.lam / torch.clamp(1.0 - b, min=1e-3), theta_cont)
            theta_cont = theta_cont * self.decay
            op = _PairOperator(self.operator, self.W[k]) if self.learn_matrix else self.operator
            x, z, b = amp_step(op, x, z, y, scale[k] * theta, b)
            xs.append(x)
        return xs
