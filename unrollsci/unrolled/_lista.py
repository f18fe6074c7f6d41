"""LISTA and its coupled / analytic variants (unrolled ISTA)."""

from __future__ import annotations

import numbers
from typing import Any

import torch
from torch import nn

from ..solvers import ista_step
from ._base import UnrolledLasso, _PairOperator, support_selection_threshold

__all__ = ["LISTA", "LISTACP", "ALISTA", "analytic_weight"]


class LISTA(UnrolledLasso):
    """Learned ISTA (Gregor & LeCun 2010).

    ``x_1 = soft(W_e y, theta_1)``, ``x_{k+1} = soft(W_e y + S_k x_k, theta_{k+1})``
    with ``W_e: (n, m)``, ``S_k: (n, n)`` and thresholds ``theta_k > 0`` (softplus).
    ISTA is the special case ``W_e = t A^T``, ``S = I - t A^T A``, ``theta = t lam``
    (``t = 1 / ||A||^2``), which is the initialisation. ``A`` is densified once to
    initialise the matrices, so LISTA suits operators up to a few thousand unknowns.

    Args:
        operator: ``LinearOperator`` (or matrix) with ``in_shape (n,)``, ``out_shape (m,)``.
        num_layers: depth ``K >= 1``.
        lam: lasso weight of the initialising ISTA.
        tied: share ``W_e`` and ``S`` between layers (thresholds stay per layer).
        dtype: parameter dtype (default: the operator's dtype, else torch's default).
        prox: the thresholding step of every layer, applied with the learned thresholds
            (:func:`unrollsci.prox.make_prox`): None / ``"soft"`` (default), ``"nonneg"``,
            ``{"kind": "group", ...}``, ``{"kind": "box", ...}`` or a callable
            ``(v, threshold) -> x``; the untrained model then equals ISTA with that
            ``prox=``. Every model of the family takes it (LAMP and support selection:
            soft only).

    Example:
        >>> import torch
        >>> from unrollsci.operators import MatrixOperator
        >>> A = MatrixOperator(torch.randn(20, 40) / 20**0.5)
        >>> LISTA(A, 4, lam=0.1)(torch.randn(3, 20)).shape
        torch.Size([3, 40])
    """

    def __init__(
        self,
        operator: Any,
        num_layers: int,
        *,
        lam: float = 0.1,
        tied: bool = False,
        dtype: torch.dtype | None = None,
        prox: Any = None,
    ) -> None:
        super().__init__(operator, num_layers, lam=lam, dtype=dtype, prox=prox)
        self.tied = bool(tied)
        a = self._dense()
        t = 1.0 / self._lipschitz()
        we = (t * a.T).to(self.param_dtype)
        s = (torch.eye(self.n, dtype=torch.float64, device=a.device) - t * a.T @ a).to(
            self.param_dtype
        )
        n_we = 1 if self.tied else num_layers
        n_s = min(1, num_layers - 1) if self.tied else num_layers - 1
        self.W_e = nn.ParameterList([nn.Parameter(we.clone()) for _ in range(n_we)])
        self.S = nn.ParameterList([nn.Parameter(s.clone()) for _ in range(n_s)])
        # which layer owns each matrix (layer-wise training, copy_layer): S starts at layer 1
        self.W_e.first_layer, self.S.first_layer = 0, 1
        self.theta = self._positive(t * self.lam, num_layers)

    def _options(self) -> dict[str, Any]:
        return {"tied": self.tied}

    def _run(self, y: torch.Tensor, num_layers: int) -> list[torch.Tensor]:
        theta = self._pos(self.theta, y)
        prox = self.prox_fn
        xs: list[torch.Tensor] = []
        b = y @ self.W_e[0].T
        x = prox(b, theta[0])
        xs.append(x)
        for k in range(1, num_layers):
            if not self.tied:
                b = y @ self.W_e[k].T
            s = self.S[0 if self.tied else k - 1]
            x = prox(b + x @ s.T, theta[k])
            xs.append(x)
        return xs


class _SupportSelection:
    """Support-selection settings shared by :class:`LISTACP` and :class:`ALISTA`."""

    support_selection: bool
    ss_rate: float
    ss_max: float

    def _init_support_selection(self, enabled: bool, ss_rate: float, ss_max: float) -> None:
        for name, v in (("ss_rate", ss_rate), ("ss_max", ss_max)):
            if isinstance(v, bool) or not isinstance(v, numbers.Real):
                raise TypeError(f"Expected '{name}' to be a number (got {type(v).__name__}).")
        if not (0 <= ss_rate <= 1 and 0 <= ss_max <= 1):
            raise ValueError(f"Expected ss_rate, ss_max in [0, 1] (got {ss_rate}, {ss_max}).")
        if enabled:
            self._require_soft("support_selection=True")  # type: ignore[attr-defined]
        self.support_selection = bool(enabled)
        self.ss_rate, self.ss_max = float(ss_rate), float(ss_max)

    def _ss_options(self) -> dict[str, Any]:
        return {
            "support_selection": self.support_selection,
            "ss_rate": self.ss_rate,
            "ss_max": self.ss_max,
        }

    def _classical_overrides(self) -> dict[str, Any]:
        return {"support_selection": False}

    def _fraction(self, k: int) -> float:
        """Trusted-support share at layer ``k`` (0-based); 0 without support selection.

        Chen et al. 2018, sec. 3: the share grows linearly with depth (p^k = min(p k,
        p_max); their sparse-coding setting uses p = 1.2 %, p_max = 13 %).
        """
        return min(self.ss_rate * (k + 1), self.ss_max) if self.support_selection else 0.0


class LISTACP(_SupportSelection, UnrolledLasso):
    """LISTA with coupled weights, optionally with support selection (LISTA-CP / -CPSS).

    ``x_{k+1} = eta(x_k - W_k^T (A x_k - y), theta_k)`` (Chen et al. 2018): the
    ISTA step of :func:`unrollsci.solvers.ista_step` with ``t A^T`` replaced by a
    learned ``W_k^T`` (``W_k: (m, n)``, initialised to ``t A``). ``eta`` is soft
    thresholding, or with ``support_selection=True`` the support-selection
    threshold that leaves the largest ``min(ss_rate * k, ss_max)`` share of the
    entries unshrunk (:func:`support_selection_threshold`).

    Args:
        operator, num_layers, lam, dtype: as :class:`LISTA`.
        tied: one ``W`` for all layers.
        support_selection: use LISTA-CPSS thresholding (the untrained model then
            differs from ISTA by the unshrunk entries).
        ss_rate, ss_max: support-selection share per layer and its cap.

    Example:
        >>> import torch
        >>> from unrollsci.operators import MatrixOperator
        >>> A = MatrixOperator(torch.randn(20, 40) / 20**0.5)
        >>> LISTACP(A, 4, lam=0.1, support_selection=True)(torch.randn(3, 20)).shape
        torch.Size([3, 40])
    """

    def __init__(
        self,
        operator: Any,
        num_layers: int,
        *,
        lam: float = 0.1,
        tied: bool = False,
        support_selection: bool = False,
        ss_rate: float = 0.012,
        ss_max: float = 0.13,
        dtype: torch.dtype | None = None,
        prox: Any = None,
    ) -> None:
        super().__init__(operator, num_layers, lam=lam, dtype=dtype, prox=prox)
        self._init_support_selection(support_selection, ss_rate, ss_max)
        self.tied = bool(tied)
        t = 1.0 / self._lipschitz()
        w = (t * self._dense()).to(self.param_dtype)
        self.W = nn.ParameterList(
            [nn.Parameter(w.clone()) for _ in range(1 if self.tied else num_layers)]
        )
        self.W.first_layer = 0
        self.theta = self._positive(t * self.lam, num_layers)

    def _options(self) -> dict[str, Any]:
        return {"tied": self.tied, **self._ss_options()}

    def _run(self, y: torch.Tensor, num_layers: int) -> list[torch.Tensor]:
        theta = self._pos(self.theta, y)
        x = y.new_zeros(y.shape[0], self.n)
        xs = []
        for k in range(num_layers):
            pair = _PairOperator(self.operator, self.W[0 if self.tied else k])
            x = _thresholded_step(pair, x, y, 1.0, theta[k], self._fraction(k), self.prox_fn)
            xs.append(x)
        return xs


def _thresholded_step(
    op: Any,
    x: torch.Tensor,
    y: torch.Tensor,
    step: Any,
    threshold: torch.Tensor,
    fraction: float,
    prox: Any,
) -> torch.Tensor:
    """The classical ISTA step with ``prox``, with support selection when ``fraction > 0``
    (soft threshold only)."""
    if fraction <= 0:
        return ista_step(op, x, y, step, threshold, prox)
    v = ista_step(op, x, y, step, 0.0)  # gradient step only (soft threshold at 0 is identity)
    return support_selection_threshold(v, threshold, fraction)


def analytic_weight(a: torch.Tensor) -> torch.Tensor:
    """ALISTA's analytic weight: the ``W: (m, n)`` of least mutual coherence with ``A``.

    Solves ``min_W ||W^T A||_F^2`` subject to ``diag(W^T A) = 1`` (Liu et al. 2019,
    eq. 13; off-diagonal and full Frobenius norms differ by the fixed diagonal).
    The problem separates over columns: ``min ||A^T w_i||^2`` s.t. ``a_i^T w_i = 1``,
    whose Lagrange conditions give ``w_i = G^+ a_i / (a_i^T G^+ a_i)`` with
    ``G = A A^T``.

    Args:
        a: ``(m, n)`` matrix (computed in float64).

    Returns:
        ``(m, n)`` float64 weight with ``W^T A`` of unit diagonal.
    """
    a = a.to(torch.float64)
    g_pinv = torch.linalg.pinv(a @ a.T, hermitian=True)
    ga = g_pinv @ a
    denom = (a * ga).sum(0)
    if bool((denom.abs() <= 1e-12 * denom.abs().max().clamp_min(1e-300)).any()):
        raise ValueError(
            "A column of A lies outside the range of A A^T (zero column?): the analytic "
            "ALISTA weight does not exist."
        )
    return ga / denom


class ALISTA(_SupportSelection, UnrolledLasso):
    """Analytic LISTA (Liu, Chen, Wang & Yin 2019).

    ``x_{k+1} = eta(x_k - gamma_k W^T (A x_k - y), theta_k)`` where ``W`` is fixed
    (``weight="analytic"``: :func:`analytic_weight`, or ``weight="adjoint"``: ``W = A``,
    so that the layer is ISTA's step with ``gamma_k`` in place of ``1 / ||A||^2``) and
    only the per-layer step ``gamma_k > 0`` and threshold ``theta_k > 0`` are learned
    (``2 K`` parameters). ``W`` is a buffer, formed in float64 and rounded to the model's
    dtype; a dtype change (``model.double()``) forms it again from the operator. ``eta``
    uses support selection as in the paper unless ``support_selection=False``.

    Initialisation: ``gamma_k = 1 / ||W^T A||_2`` (``1 / ||A||^2`` for the adjoint
    weight) and ``theta_k = gamma_k lam``, so
    an untrained model with ``weight="adjoint"`` and no support selection equals
    ISTA, and with the analytic weight it equals the same iteration with fixed
    ``W`` (the "analytic" classical algorithm).

    Args:
        operator, num_layers, lam, dtype: as :class:`LISTA`.
        weight: ``"analytic"`` or ``"adjoint"``.
        support_selection, ss_rate, ss_max: as :class:`LISTACP`.

    Example:
        >>> import torch
        >>> from unrollsci.operators import MatrixOperator
        >>> A = MatrixOperator(torch.randn(20, 40) / 20**0.5)
        >>> ALISTA(A, 4, lam=0.1)(torch.randn(3, 20)).shape
        torch.Size([3, 40])
    """

    def __init__(
        self,
        operator: Any,
        num_layers: int,
        *,
        lam: float = 0.1,
        weight: str = "analytic",
        support_selection: bool = True,
        ss_rate: float = 0.012,
        ss_max: float = 0.13,
        dtype: torch.dtype | None = None,
        prox: Any = None,
    ) -> None:
        super().__init__(operator, num_layers, lam=lam, dtype=dtype, prox=prox)
        if weight not in ("analytic", "adjoint"):
            raise ValueError(f"Expected weight 'analytic' or 'adjoint' (got {weight!r}).")
        self._init_support_selection(support_selection, ss_rate, ss_max)
        self.weight_kind = weight
        a = self._dense()
        w = self._fixed_weight(a)
        if weight == "analytic":
            gamma = 1.0 / float(torch.linalg.matrix_norm(w.T @ a, ord=2))
        else:
            gamma = 1.0 / self._lipschitz()
        self.register_buffer("W", w.to(self.param_dtype))
        self.gamma = self._positive(gamma, num_layers)
        self.theta = self._positive(gamma * self.lam, num_layers)

    def _fixed_weight(self, a: torch.Tensor) -> torch.Tensor:
        """The fixed ``W`` in float64 from the dense float64 ``a``."""
        return analytic_weight(a) if self.weight_kind == "analytic" else a

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def,override]
        # nn.Module._apply backs .to()/.double()/.float(): on a dtype change W is formed
        # again from the operator (which keeps its dtype) in float64 and rounded once, not
        # cast from its previous rounding (float32 digits would stay after .double()).
        before = self._buffers.get("W")
        out = super()._apply(fn, recurse)
        if before is not None and self.W.dtype != before.dtype:
            self.W = self._fixed_weight(self._dense()).to(device=self.W.device, dtype=self.W.dtype)
        return out

    def _options(self) -> dict[str, Any]:
        return {"weight": self.weight_kind, **self._ss_options()}

    def _run(self, y: torch.Tensor, num_layers: int) -> list[torch.Tensor]:
        gamma = self._pos(self.gamma, y)
        theta = self._pos(self.theta, y)
        pair = _PairOperator(self.operator, self.W)
        x = y.new_zeros(y.shape[0], self.n)
        xs = []
        for k in range(num_layers):
            x = _thresholded_step(pair, x, y, gamma[k], theta[k], self._fraction(k), self.prox_fn)
            xs.append(x)
        return xs
