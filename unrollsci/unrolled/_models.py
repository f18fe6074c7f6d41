"""Unrolled FISTA and LAMP: classical steps with per-layer learned constants (ADMM-Net:
:mod:`._admm`, re-exported here for old imports)."""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch
from torch import nn

from ..prox import soft_threshold
from ..solvers import amp_step, bg_amp_step, fista_momentum, ista_step
from ..solvers._bg_amp import _check_sigma_range, check_prior
from ._admm import ADMMNet
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

    Example:
        >>> import torch
        >>> from unrollsci.operators import MatrixOperator
        >>> A = MatrixOperator(torch.randn(20, 40) / 20**0.5)
        >>> UnrolledFISTA(A, 4, lam=0.1)(torch.randn(3, 20)).shape
        torch.Size([3, 40])
    """

    def __init__(
        self,
        operator: Any,
        num_layers: int,
        *,
        lam: float = 0.1,
        learn_momentum: bool = True,
        dtype: torch.dtype | None = None,
        prox: Any = None,
    ) -> None:
        super().__init__(operator, num_layers, lam=lam, dtype=dtype, prox=prox)
        self.learn_momentum = bool(learn_momentum)
        lip = self._lipschitz()
        t = 1.0 / lip
        self._check_range(**{"||A||^2": lip, "1/||A||^2": t})
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
        beta = self.beta
        prox = self.prox_fn
        x = x_prev = y.new_zeros(y.shape[0], self.n)
        xs = []
        for k in range(num_layers):
            # beta_0 = 0 in FISTA; layer 0 starts from x = x_prev, so beta_0 has no effect.
            v = x + beta[k] * (x - x_prev) if k else x
            x_prev, x = x, ista_step(self.operator, v, y, step[k], theta[k], prox)
            xs.append(x)
        return xs


class LAMP(UnrolledLasso):
    """Learned AMP (Borgerding, Schniter & Rangan 2017) that keeps the Onsager term.

    ``denoiser="soft"`` (LAMP with soft thresholding, the default): layer ``k`` is
    :func:`unrollsci.solvers.amp_step` with ``A^T`` replaced by a
    learned ``B_k = W_k^T`` (``W_k: (m, n)``, initialised to ``A``) and threshold
    ``theta_k = s_k * max(lam / (1 - b_k), d^k ||A^T y||_inf)``: the calibrated
    threshold of :func:`unrollsci.solvers.amp` (with its continuation decay ``d``)
    scaled by a learned ``s_k > 0`` (initialised to 1). The Onsager coefficient
    ``b_k = ||x_k||_0 / m`` is recomputed at every layer, as in AMP. An untrained
    model equals ``amp(A, y, lam, decay=d, damping=0, max_iter=K)``.

    ``threshold="residual"`` (with the soft denoiser) is the threshold of the paper
    (Borgerding et al. 2017, eq. 23): ``theta_k = s_k ||z_k||_2 / sqrt(m)``, a learned
    multiple of the estimated noise level of the pseudo-data, where ``z_k`` is the
    Onsager-corrected residual of layer ``k``. It follows the error down as the layers
    converge, which the calibrated threshold, floored at ``lam / (1 - b_k)``, cannot:
    with it the trained network stalls near the lasso solution (and, noiseless, its
    deeper layers can get worse). Initialise ``scale_init`` at about 1.1 (the best fixed
    multiple for i.i.d. Gaussian ``A`` at sampling ratio 0.5 and 10 % nonzeros).

    ``denoiser="bg"`` (LAMP with the Bernoulli-Gaussian MMSE shrinkage, "LAMP-bg" of
    the paper): layer ``k`` is :func:`unrollsci.solvers.bg_amp_step` with ``B_k``
    as above, the prior ``(1 - rho_k) delta_0 + rho_k N(0, sigma_k^2)`` and the noise
    variance ``s_k ||z||^2 / m``; learned per layer: ``B_k``, ``rho_k`` (through its
    logit), ``sigma_k > 0`` and ``s_k > 0``. The Onsager coefficient is the exact mean
    derivative of the shrinkage. An untrained model equals
    ``bg_amp(A, y, rho, sigma_x=sigma_x, damping=0, max_iter=K)``; ``lam`` and
    ``decay`` are not used.

    Args:
        operator, num_layers, lam, dtype: as :class:`LISTA`.
        decay: continuation decay of the first thresholds (as :func:`unrollsci.solvers.amp`;
            soft denoiser only).
        learn_matrix: learn ``B_k`` per layer (LAMP "untied"); else ``B = A^T`` and
            only the scalar constants are learned.
        tied: with ``learn_matrix``, one learned ``B`` shared by all layers (LAMP
            "tied", the default of Chen et al.'s reimplementation), initialised to
            ``A^T`` as the untied ones; the scalar constants stay per layer. Default
            ``False`` (one ``B_k`` per layer).
        scale_init: initial ``s_k`` (scale of the threshold, or of the noise variance
            with ``denoiser="bg"``). With the soft denoiser and 1 (classical AMP) the
            first threshold equals ``||A^T y||_inf``, so layer 1 outputs exactly 0 and
            its parameters get no gradient; a value slightly below 1 (e.g. 0.95) lets
            training use layer 1.
        denoiser: ``"soft"`` or ``"bg"``.
        threshold: soft denoiser only: ``"calibrated"`` (default, classical AMP's
            threshold above) or ``"residual"`` (the paper's ``s_k ||z_k|| / sqrt(m)``).
        rho, sigma_x: initial prior of ``denoiser="bg"`` (default 0.1 and 1.0): the
            probability of a nonzero entry, in ``(0, 1)``, and the standard deviation
            of the nonzero entries, ``> 0`` and a normal number of the model's dtype.
            Only valid with ``denoiser="bg"``. The layers run in units of this
            ``sigma_x`` (on ``y / sigma_x``, as :func:`unrollsci.solvers.bg_amp`), so
            scaling ``y`` and ``sigma_x`` together scales ``x`` and nothing else.

    Example:
        >>> import torch
        >>> from unrollsci.operators import MatrixOperator
        >>> A = MatrixOperator(torch.randn(20, 40) / 20**0.5)
        >>> LAMP(A, 4, lam=0.1)(torch.randn(3, 20)).shape
        torch.Size([3, 40])
        >>> LAMP(A, 4, denoiser="bg", rho=0.1)(torch.randn(3, 20)).shape
        torch.Size([3, 40])
        >>> LAMP(A, 4, threshold="residual", scale_init=1.1)(torch.randn(3, 20)).shape
        torch.Size([3, 40])
        >>> len(LAMP(A, 4, threshold="residual", tied=True).W)  # one B for the 4 layers
        1
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
        denoiser: str = "soft",
        rho: float | None = None,
        sigma_x: float | None = None,
        threshold: str = "calibrated",
        tied: bool = False,
        dtype: torch.dtype | None = None,
        prox: Any = None,
    ) -> None:
        super().__init__(operator, num_layers, lam=lam, dtype=dtype, prox=prox)
        self._require_soft("LAMP (its Onsager term is the soft threshold's divergence)")
        self._check_nonzero()  # a zero operator raises, as in the other models
        if not isinstance(tied, bool):
            raise TypeError(f"Expected tied a bool (got {type(tied).__name__}).")
        if tied and not learn_matrix:
            raise ValueError("tied=True shares a learned B: it needs learn_matrix=True.")
        self.tied = tied
        if denoiser not in ("soft", "bg"):
            raise ValueError(f"Expected denoiser 'soft' or 'bg' (got {denoiser!r}).")
        if threshold not in ("calibrated", "residual"):
            raise ValueError(f"Expected threshold 'calibrated' or 'residual' (got {threshold!r}).")
        if threshold == "residual" and denoiser != "soft":
            raise ValueError("threshold='residual' is an option of denoiser='soft' only.")
        self.threshold = threshold
        self.denoiser = denoiser
        if denoiser == "soft" and (rho is not None or sigma_x is not None):
            raise ValueError("'rho' and 'sigma_x' are options of denoiser='bg' only.")
        if not (isinstance(scale_init, (int, float)) and 0 < scale_init < float("inf")):
            raise ValueError(f"Expected a finite scale_init > 0 (got {scale_init!r}).")
        self.scale_init = float(scale_init)
        if isinstance(decay, bool) or not isinstance(decay, numbers.Real):
            raise TypeError(f"Expected 'decay' to be a number (got {type(decay).__name__}).")
        if not 0 <= decay < 1:
            raise ValueError(f"Expected 0 <= decay < 1 (got {decay}).")
        self.decay = float(decay)
        self.learn_matrix = bool(learn_matrix)
        if self.learn_matrix:
            w = self._dense().to(self.param_dtype)
            count = 1 if self.tied else num_layers
            self.W = nn.ParameterList([nn.Parameter(w.clone()) for _ in range(count)])
            self.W.first_layer = 0
        self.scale = self._positive(self.scale_init, num_layers)
        if denoiser == "bg":
            self.rho_init, self.sigma_x_init = check_prior(
                0.1 if rho is None else rho, 1.0 if sigma_x is None else sigma_x
            )
            _check_sigma_range(self.sigma_x_init, self.param_dtype)
            logit = math.log(self.rho_init / (1.0 - self.rho_init))
            self.rho_logit = nn.Parameter(
                torch.full((num_layers,), logit, dtype=self.param_dtype, device=self._device)
            )
            self.sigma = self._positive(self.sigma_x_init, num_layers)

    def _options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {
            "decay": self.decay,
            "learn_matrix": self.learn_matrix,
            "scale_init": self.scale_init,
            "denoiser": self.denoiser,
        }
        if self.threshold != "calibrated":  # older checkpoints have no such key
            opts["threshold"] = self.threshold
        if self.tied:  # nor this one
            opts["tied"] = True
        if self.denoiser == "bg":
            opts.update(rho=self.rho_init, sigma_x=self.sigma_x_init)
        return opts

    def _classical_overrides(self) -> dict[str, Any]:
        return {} if self.threshold == "residual" else {"scale_init": 1.0}

    def extra_repr(self) -> str:
        extra = ", tied=True" if self.tied else ""
        if self.denoiser == "bg":  # rho_init and sigma_x_init exist only then
            extra += f", denoiser='bg', rho={self.rho_init}, sigma_x={self.sigma_x_init}"
        return super().extra_repr() + extra

    def _layer_op(self, k: int) -> Any:
        """The operator of layer ``k``: ``A`` with ``B_k`` (or the tied ``B``) as adjoint."""
        if not self.learn_matrix:
            return self.operator
        return _PairOperator(self.operator, self.W[0 if self.tied else k])

    def _run(self, y: torch.Tensor, num_layers: int) -> list[torch.Tensor]:
        if self.denoiser == "bg":
            return self._run_bg(y, num_layers)
        if self.threshold == "residual":
            return self._run_residual(y, num_layers)
        scale = self._pos(self.scale, y)
        x = y.new_zeros(y.shape[0], self.n)
        z = torch.zeros_like(y)
        b = y.new_zeros(y.shape[0], 1)
        # with its graph, as the classical amp (detached, dL/dy was 1-33% off)
        theta_cont = self.operator.adjoint(y).abs().amax(-1, keepdim=True)
        xs = []
        for k in range(num_layers):
            theta = torch.maximum(self.lam / torch.clamp(1.0 - b, min=1e-3), theta_cont)
            theta_cont = theta_cont * self.decay
            op = self._layer_op(k)
            x, z, b = amp_step(op, x, z, y, scale[k] * theta, b)
            xs.append(x)
        return xs

    def _run_residual(self, y: torch.Tensor, num_layers: int) -> list[torch.Tensor]:
        """Soft LAMP with the paper's threshold ``s_k ||z_k|| / sqrt(m)`` (the AMP step of
        :func:`unrollsci.solvers.amp_step`, its threshold read off the residual it forms)."""
        scale = self._pos(self.scale, y)
        x = y.new_zeros(y.shape[0], self.n)
        z = torch.zeros_like(y)
        b = y.new_zeros(y.shape[0], 1)
        root_m = math.sqrt(self.m)
        xs = []
        for k in range(num_layers):
            op = self._layer_op(k)
            z = y - op.mv(x) + b * z
            pseudo = x + op.rmv(z)
            # ||z|| scale-free, as the BG path: the squares of |y| ~ 1e20 overflow float32
            # (theta = inf, a zero output) and those of 1e-20 lose digits to subnormals
            top = z.detach().abs().amax(dim=-1, keepdim=True)
            top = torch.where(top > 0, top, torch.ones_like(top))
            theta = scale[k] * (top * (z / top).norm(dim=-1, keepdim=True)) / root_m
            x = soft_threshold(pseudo, theta)
            b = (pseudo.abs() > theta).sum(dim=-1, keepdim=True).to(x.dtype) / self.m
            xs.append(x)
        return xs

    def _run_bg(self, y: torch.Tensor, num_layers: int) -> list[torch.Tensor]:
        # In units of the construction's sigma_x, as bg_amp: AMP is equivariant (y / s gives
        # x / s, z / s, the same b), so the denoiser's absolute floor on the noise level is
        # relative to sigma_x and sigma_k**2 stays in range (float32 data of 1e-8 or 1e20)
        unit = self.sigma_x_init
        scale = self._pos(self.scale, y)
        sigma2 = (self._pos(self.sigma, y) / unit).square()
        logit = self.rho_logit
        y = y / unit
        x = y.new_zeros(y.shape[0], self.n)
        z = torch.zeros_like(y)
        b = y.new_zeros(y.shape[0], 1)
        xs = []
        for k in range(num_layers):
            op = self._layer_op(k)
            x, z, b = bg_amp_step(op, x, z, y, b, None, sigma2[k], scale[k], rho_logit=logit[k])
            xs.append(x * unit)
        return xs
