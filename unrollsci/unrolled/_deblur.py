"""Unrolled FISTA for images: learned convolutional steps and a learned analysis-shrinkage
prox, matrix-free and size-independent (train on crops, apply to large images)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from .._validation import (
    check_batch,
    check_count,
    check_finite,
    check_model_dtype,
    check_positive,
    check_tensor,
    model_dtype,
)
from ..operators._checks import check_real
from ..prox import soft_threshold
from ..solvers import as_operator, fista_momentum
from ..solvers._lasso_checks import nonzero_norm_sq
from ._base import ActiveLayersMixin, check_compute_dtype, check_normal_range

__all__ = ["UnrolledAnalysisFISTA", "haar_shrink"]


def _haar_filters(dtype: torch.dtype, device: Any = None) -> torch.Tensor:
    """The four 2x2 Haar filters ``(LL, LH, HL, HH)``, each ``+-1/4``: ``(4, 1, 2, 2)``.

    Applied at every pixel (undecimated, circular boundary) they form a Parseval frame:
    the analysis ``W`` satisfies ``W^T W = I``.
    """
    lo = torch.tensor([0.5, 0.5], dtype=torch.float64) * math.sqrt(2)
    hi = torch.tensor([0.5, -0.5], dtype=torch.float64) * math.sqrt(2)
    w = torch.stack([torch.outer(a, b) / 2 for a in (lo, hi) for b in (lo, hi)])
    return w[:, None].to(dtype=dtype, device=device)


def _analysis(u: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``(B, H, W)`` -> ``(B, C, H, W)``: correlation with each filter, circular boundary."""
    s = w.shape[-1]
    lo, hi = (s - 1) // 2, s - 1 - (s - 1) // 2
    return F.conv2d(F.pad(u[:, None], [lo, hi, lo, hi], mode="circular"), w)


def _synthesis(c: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The exact adjoint of :func:`_analysis` with filters ``w``: ``(B, C, H, W)`` -> ``(B, H, W)``
    (flipped filters on the mirrored circular padding, summed over channels)."""
    s = w.shape[-1]
    lo, hi = (s - 1) // 2, s - 1 - (s - 1) // 2
    wt = torch.flip(w, dims=(2, 3)).transpose(0, 1)  # (1, C, s, s)
    return F.conv2d(F.pad(c, [hi, lo, hi, lo], mode="circular"), wt)[:, 0]


def haar_shrink(x: torch.Tensor, threshold: float | torch.Tensor) -> torch.Tensor:
    """Undecimated Haar analysis shrinkage ``W^T soft(W x, threshold)`` of images.

    ``W`` is the single-level undecimated 2x2 Haar transform (circular boundary), a
    Parseval frame (``W^T W = I``, but ``W W^T != I``); the three detail bands are
    soft-thresholded (``D`` below keeps them), the low-pass band is kept. Since ``W`` is
    Parseval, ``haar_shrink(., t)`` is the proximal operator of the convex, TV-like
    penalty on 2x2 differences ``f_t(x) = min { t ||D (W x + z)||_1 + ||z||^2 / 2 :
    W^T z = 0 }``, but not of ``t R`` for one ``R``: ``f_t(x) = t^2 f_1(x / t)``. So
    FISTA (or ISTA) with a fixed step ``s <= 1 / ||A||^2`` and this prox at the threshold
    ``lam s`` (:func:`unrollsci.solvers.fista` with ``prox=``) converges, to the minimizer of
    ``0.5 ||A x - y||^2 + f_{lam s}(x) / s``, that is ``x = W^T c`` with ``c`` minimizing
    ``0.5 ||A W^T c - y||^2 + lam ||D c||_1 + ||(I - W W^T) c||^2 / (2 s)``: the problem
    depends on the step (smaller steps move it towards the analysis problem
    ``lam ||D W x||_1``).

    Args:
        x: images ``(batch, H, W)``, ``H, W >= 2``.
        threshold: a float ``>= 0`` or a tensor with one entry per image (any shape with
            ``batch`` elements, e.g. the ``(batch, 1)`` thresholds of
            :func:`unrollsci.solvers.fista`), or one entry in all.

    Returns:
        ``(batch, H, W)``; ``haar_shrink(x, 0)`` returns ``x`` (to rounding).

    Example:
        >>> import torch
        >>> x = torch.ones(1, 8, 8)
        >>> noisy = x + 0.01 * torch.randn(1, 8, 8, generator=torch.Generator().manual_seed(0))
        >>> bool((haar_shrink(noisy, 0.05) - x).norm() < 0.5 * (noisy - x).norm())
        True
    """
    check_tensor("x", x, ndim=(3,))
    check_real("x", x)
    if min(x.shape[-2:]) < 2:
        raise ValueError(f"Expected images of at least 2x2 (got shape {tuple(x.shape)}).")
    th = torch.as_tensor(threshold, dtype=x.dtype, device=x.device)
    if th.numel() not in (1, x.shape[0]):
        raise ValueError(
            f"Expected 'threshold' with 1 or {x.shape[0]} entries (got shape {tuple(th.shape)})."
        )
    if not bool((th >= 0).all()):  # NaN too
        raise ValueError(f"Expected 'threshold' >= 0 (got {th.flatten()[:4].tolist()}).")
    th = th.reshape(-1, 1, 1, 1)
    w = _haar_filters(x.dtype, x.device)
    c = _analysis(x, w)
    detail = torch.tensor([False, True, True, True], device=x.device).view(1, 4, 1, 1)
    # a select, not th * band: an infinite threshold zeroes the details and keeps the
    # low-pass band (0 * inf was NaN there)
    return _synthesis(soft_threshold(c, torch.where(detail, th, torch.zeros_like(th))), w)


def _threshold_grid(thresholds: Any) -> list[float]:
    """:meth:`UnrolledAnalysisFISTA.warm_start`'s candidate thresholds, sorted, with 0."""
    if thresholds is None:
        return [0.0, *torch.logspace(-4, math.log10(0.3), 16, dtype=torch.float64).tolist()]
    try:
        if isinstance(thresholds, (str, bytes)):
            raise TypeError
        items = list(thresholds)
    except TypeError:
        got = repr(thresholds)
        got = got if len(got) <= 60 else got[:57] + "..."
        raise TypeError(
            "Expected 'thresholds' to be a non-empty sequence of numbers >= 0 (got "
            f"{type(thresholds).__name__} {got})."
        ) from None
    if not items:
        raise ValueError("Expected 'thresholds' to hold at least one value (got none).")
    grid = [check_positive(f"thresholds[{i}]", t, allow_zero=True) for i, t in enumerate(items)]
    return sorted({0.0, *grid})


def _min_norm_solve(gram: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """The minimum-norm solution of the normal equations ``gram t = rhs`` on every device
    (eigenvalues up to ``n eps`` times the largest count as zero, ``lstsq``'s ``rcond``): for
    a singular ``gram`` ``lstsq``'s pivoted QR returned taps that did not minimize the error.
    Through the eigenvectors, not ``pinv(gram) @ rhs``, it is as accurate as ``lstsq``."""
    lam, vec = torch.linalg.eigh(gram)
    keep = lam > lam.max() * (gram.shape[0] * torch.finfo(gram.dtype).eps)
    coef = torch.where(keep, (vec.T @ rhs) / torch.where(keep, lam, 1.0), 0.0)
    return vec @ coef


def _check_overflow(finite: bool) -> None:
    """The warm start's sums of squares overflow for data near the dtype's largest values."""
    if not finite:
        raise ValueError(
            "Expected finite least-squares sums and training errors in warm_start (got Inf "
            "or NaN: squares of 'x' or 'y' overflow); rescale x and y (and lam with them)."
        )


class UnrolledAnalysisFISTA(ActiveLayersMixin, nn.Module):
    """Unrolled FISTA for images with learned convolutional steps and a learned
    analysis-shrinkage prox; matrix-free and independent of the image size.

    Layer ``k`` (from ``x_0 = x_{-1} = 0``)::

        v       = x_k + beta_k (x_k - x_{k-1})
        g       = v - P_k * A^T (A v - y)                       (P_k: p x p filter)
        x_{k+1} = g + D_k^T (soft(E_k g, theta_k) - E_k g)     (E_k, D_k: C filters s x s)

    ``E_k`` (analysis) and ``D_k`` (synthesis) are banks of ``channels`` small filters
    applied at every pixel (circular boundary), ``theta_k`` one threshold per channel.
    With ``D_k = E_k`` a Parseval frame the last line is ``E_k^T soft(E_k g)``.
    Untrained, the first four channels of ``E_k = D_k`` are the undecimated Haar frame
    (:func:`haar_shrink`: thresholds ``lam / L`` on the detail bands, 0 on the low-pass),
    the other channels have small random analysis filters and zero synthesis filters (so
    they change nothing until trained), ``P_k = delta / L`` and ``beta_k`` is FISTA's
    momentum, ``L = ||A||^2``: the model **equals** ``num_layers`` iterations of FISTA
    with step ``1/L`` and the prox :func:`haar_shrink`. :func:`unrollsci.solvers.fista`
    takes vector operators only, so that reference is ``fista(flat, y.reshape(batch, -1),
    lam, max_iter=num_layers, tol=0, restart=False, prox=prox)`` with the operator
    flattened, ``flat = ReshapeOperator(out_shape, (m,)) @ A @ ReshapeOperator((H * W,),
    (H, W))`` (:class:`unrollsci.operators.ReshapeOperator`, ``m`` the output size), and
    ``prox(v, t) = haar_shrink(v.reshape(-1, H, W), t).reshape(v.shape)``; its ``x``
    is the model's output flattened. Only ``A`` and ``A^T`` are applied and every learned
    tensor is a filter, so a model trained on small images applies to larger ones
    (:meth:`for_operator`).

    Args:
        operator: a linear operator on images, ``in_shape (H, W)`` (any ``out_shape``),
            e.g. :class:`unrollsci.operators.Convolution`.
        num_layers: unrolled iterations ``K``.
        lam: weight of the classical problem the model starts from: FISTA at step ``1/L``
            with the prox :func:`haar_shrink` at threshold ``lam / L`` tends to ``x = W^T c``,
            ``c`` minimizing ``0.5 ||A W^T c - y||^2 + lam ||D c||_1 + (L / 2)
            ||(I - W W^T) c||^2`` (see :func:`haar_shrink`: not ``lam`` times a penalty of
            ``x`` alone, it depends on ``L = ||A||^2``).
        channels: filters per layer ``C >= 4`` (the first four start as Haar).
        filter_size: size ``s >= 2`` of the analysis / synthesis filters.
        precond_size: odd size ``p`` of the step filters ``P_k`` (1: a scalar step).
        dtype: float32 or float64 (default: the operator's, else torch's default).
        seed: seed of the random initial analysis filters of channels ``5..C``.

    Example:
        >>> import torch
        >>> from unrollsci.operators import Convolution
        >>> A = Convolution(torch.ones(3, 3) / 9, (16, 16))
        >>> model = UnrolledAnalysisFISTA(A, 4, lam=0.01)
        >>> model(torch.rand(2, 16, 16)).shape
        torch.Size([2, 16, 16])
    """

    def __init__(
        self,
        operator: Any,
        num_layers: int,
        *,
        lam: float = 0.01,
        channels: int = 8,
        filter_size: int = 3,
        precond_size: int = 1,
        dtype: torch.dtype | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        op = as_operator(operator, "operator")
        if len(op.in_shape) != 2:
            raise ValueError(
                f"Expected an operator on images, in_shape (H, W) (got {op.in_shape})."
            )
        num_layers, channels, filter_size, precond_size, seed = (
            check_count(name, value, low)
            for name, value, low in (
                ("num_layers", num_layers, 1),
                ("channels", channels, 4),
                ("filter_size", filter_size, 2),
                ("precond_size", precond_size, 1),
                ("seed", seed, 0),
            )
        )
        if precond_size % 2 == 0:
            raise ValueError(f"Expected an odd precond_size (got {precond_size}).")
        if filter_size > min(op.in_shape):
            raise ValueError(
                f"Expected filter_size <= the image size {op.in_shape} (got {filter_size})."
            )
        lam_f = check_positive("lam", lam)
        if dtype is None:
            dtype = op.dtype if op.dtype is not None else torch.get_default_dtype()
        if dtype not in (torch.float32, torch.float64):
            raise TypeError(f"Expected dtype torch.float32 or torch.float64 (got {dtype}).")
        self.operator = op
        self.num_layers, self.lam, self.seed = num_layers, lam_f, seed
        self.channels, self.filter_size, self.precond_size = channels, filter_size, precond_size
        self._active_layers = num_layers
        lip = nonzero_norm_sq(op)  # also a ValueError where the square over/underflows
        # the step 1 / ||A||^2 cast to float32 was Inf (||A|| of 1e-20) or subnormal (1e20)
        check_normal_range(dtype, type(self).__name__, **{"||A||^2": lip, "1/||A||^2": 1 / lip})
        k, c, s, p = num_layers, channels, filter_size, precond_size
        f64 = torch.float64
        step = torch.zeros(k, p, p, dtype=f64)
        step[:, p // 2, p // 2] = 1.0 / lip
        t, beta = torch.ones((), dtype=f64), []
        for _ in range(k):
            t, b = fista_momentum(t)
            beta.append(b)
        gen = torch.Generator().manual_seed(seed)
        analysis = torch.randn(k, c, s, s, generator=gen, dtype=f64) * (0.1 / s)
        synthesis = torch.zeros(k, c, s, s, dtype=f64)
        haar = _haar_filters(f64)[:, 0]
        analysis[:, :4] = 0.0
        analysis[:, :4, :2, :2] = haar
        synthesis[:, :4, :2, :2] = haar
        threshold = torch.full((k, c), lam_f / lip, dtype=f64)
        threshold[:, 0] = 0.0  # the low-pass band is not thresholded
        device = op.device or torch.device("cpu")

        def par(v: torch.Tensor) -> nn.Parameter:
            return nn.Parameter(v.to(device=device, dtype=dtype))

        self.step = par(step)
        self.momentum = par(torch.stack(beta))
        self.analysis = par(analysis)
        self.synthesis = par(synthesis)
        self.threshold = par(threshold)

    # ------------------------------------------------------------------ properties
    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the learned filters; inputs must have it."""
        return model_dtype(self, skip="operator.") or torch.get_default_dtype()

    # --------------------------------------------------------------------- forward
    def _check_y(self, y: Any) -> tuple[torch.Tensor, bool]:
        check_compute_dtype(self)  # model.half() is not checked at construction
        out_shape = tuple(self.operator.out_shape)
        check_tensor("y", y)
        unbatched = tuple(y.shape) == out_shape
        if unbatched:
            y = y[None]
        if tuple(y.shape[1:]) != out_shape:
            raise ValueError(
                f"Expected 'y' of shape (batch, {', '.join(map(str, out_shape))}) or "
                f"{out_shape} to match the operator's output (got shape {tuple(y.shape)})."
            )
        check_batch("y", y)
        check_finite("y", y)
        check_model_dtype("measurements 'y'", y.dtype, self, data="y")
        return y, unbatched

    def forward(
        self, y: torch.Tensor, *, return_all: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Run the ``active_layers`` first layers on ``y: (batch, *out_shape)``.

        Returns:
            ``x: (batch, H, W)``; with ``return_all=True`` the pair ``(x, xs)``, ``xs[k]``
            the output of layer ``k + 1``.
        """
        y, unbatched = self._check_y(y)
        x = y.new_zeros(y.shape[0], *self.operator.in_shape)
        x_prev = x
        xs = []
        for k in range(self._active_layers):
            v = x + self.momentum[k] * (x - x_prev)
            g = v - self._step_filter(k, self._gradient(k, v, y))
            x_prev, x = x, self._shrink(k, g, self.threshold[k])
            xs.append(x)
        if unbatched:
            xs = [z[0] for z in xs]
        return (xs[-1], xs) if return_all else xs[-1]

    def _gradient(self, k: int, v: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``A^T (A v - y)``; layer 1 starts at ``v = 0`` and needs no product with ``A``."""
        op = self.operator
        return op.rmv(-y) if k == 0 else op.rmv(op.mv(v) - y)

    def _step_filter(
        self, k: int, r: torch.Tensor, step: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``P_k * r`` (a scalar step when ``precond_size == 1``); ``step``: the ``(p, p)``
        filter to use instead of ``P_k``."""
        p = self.precond_size
        step = self.step[k] if step is None else step
        if p == 1:
            return step[0, 0] * r
        return F.conv2d(r[:, None], step[None, None], padding=p // 2)[:, 0]

    def _shrink(self, k: int, g: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
        """``g + D_k^T (soft(E_k g, theta) - E_k g) = g - D_k^T clip(E_k g, -theta, theta)``."""
        c = _analysis(g, self.analysis[k][:, None])
        th = threshold.clamp_min(0).view(1, -1, 1, 1)
        return g - _synthesis(torch.minimum(torch.maximum(c, -th), th), self.synthesis[k][:, None])

    @torch.no_grad()
    def warm_start(
        self,
        y: torch.Tensor,
        x: torch.Tensor,
        *,
        thresholds: Sequence[float] | None = None,
        batch_size: int = 16,
    ) -> list[float]:
        """Data-driven initialization before end-to-end training: layer by layer, the step
        filter ``P_k`` that minimizes the training MSE of ``g`` (a linear least-squares
        problem in the ``precond_size^2`` filter taps, solved in closed form through its
        normal equations in float64: their minimum-norm solution, a minimizer also when they
        are singular, e.g. with fewer training pixels than taps), then the detail thresholds
        of the four Haar channels picked on ``thresholds`` by training MSE after the
        shrinkage. Momentum is set to 0. The inputs are checked before anything changes: an
        error leaves the model as it was.

        Guarantee: the training MSE never increases from one layer to the next when the
        channels beyond the four Haar ones have zero synthesis filters (as built):
        ``P_k = 0`` with a zero threshold reproduces the previous layer's output and is
        among the candidates. The analysis / synthesis filters are left as they are.

        Args:
            y: training measurements ``(N, *out_shape)``.
            x: the matching images ``(N, H, W)``.
            thresholds: candidate detail thresholds, a non-empty sequence of finite numbers
                ``>= 0`` (default ``0`` and 16 values from ``1e-4`` to ``0.3``, geometric);
                ``0`` is always a candidate.
            batch_size: images per chunk when accumulating the normal equations.

        Returns:
            The training MSE after each layer.

        Example:
            >>> import torch
            >>> from unrollsci.operators import Convolution
            >>> A = Convolution(torch.ones(3, 3) / 9, (12, 12))
            >>> x = torch.rand(8, 12, 12)
            >>> model = UnrolledAnalysisFISTA(A, 3, precond_size=3)
            >>> mse = model.warm_start(A(x), x)
            >>> mse[2] <= mse[1] <= mse[0]
            True
        """
        y, _ = self._check_y(y)
        check_tensor("x", x, ndim=(3,))
        if tuple(x.shape) != (y.shape[0], *self.operator.in_shape):
            raise ValueError(
                f"Expected 'x' of shape {(y.shape[0], *self.operator.in_shape)} to match 'y' "
                f"(got shape {tuple(x.shape)})."
            )
        check_model_dtype("images 'x'", x.dtype, self, data="x")
        check_finite("x", x)
        grid = _threshold_grid(thresholds)
        batch_size = check_count("batch_size", batch_size)
        # every result goes to a copy, assigned at the end: an error leaves the model as it was
        steps, thresh = self.step.detach().clone(), self.threshold.detach().clone()
        p, n = self.precond_size, y.shape[0]
        chunks = [slice(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
        v = torch.zeros_like(x)
        history = []
        for k in range(self.num_layers):
            grads = [self._gradient(k, v[c], y[c]) for c in chunks]
            gram = torch.zeros(p * p, p * p, dtype=torch.float64, device=x.device)
            rhs = torch.zeros(p * p, dtype=torch.float64, device=x.device)
            for c, r in zip(chunks, grads, strict=True):
                # columns: the p x p neighbourhoods of r (zero padding), as conv2d reads them
                cols = F.unfold(r[:, None], p, padding=p // 2).transpose(1, 2).reshape(-1, p * p)
                cols = cols.double()
                gram += cols.T @ cols
                rhs += cols.T @ (v[c] - x[c]).reshape(-1).double()
            _check_overflow(bool(torch.isfinite(gram).all() and torch.isfinite(rhs).all()))
            taps = _min_norm_solve(gram, rhs)
            steps[k] = taps.reshape(p, p).to(steps.dtype)
            g = torch.cat(
                [
                    v[c] - self._step_filter(k, r, steps[k])
                    for c, r in zip(chunks, grads, strict=True)
                ]
            )
            if float((g - x).pow(2).mean()) > float((v - x).pow(2).mean()):
                steps[k] = 0.0  # rounding in the normal equations; keep the previous output
                g = v.clone()
            th = thresh[k].clone()
            best = None
            for t in grid:
                th[1:4] = t
                out = torch.cat([self._shrink(k, g[c], th) for c in chunks])
                err = float((out - x).pow(2).mean())
                if best is None or err < best[0]:
                    best = (err, t, out)
            assert best is not None
            _check_overflow(math.isfinite(best[0]))
            thresh[k, 1:4] = best[1]
            v = best[2]
            history.append(best[0])
        self.step.copy_(steps)
        self.threshold.copy_(thresh)
        self.momentum.zero_()
        return history

    # ---------------------------------------------------------------------- config
    def get_config(self) -> dict[str, Any]:
        """Constructor arguments that rebuild this model (used by checkpoints)."""
        return {
            "operator": self.operator,
            "num_layers": self.num_layers,
            "lam": self.lam,
            "channels": self.channels,
            "filter_size": self.filter_size,
            "precond_size": self.precond_size,
            "dtype": self.dtype,
            "seed": self.seed,
        }

    def for_operator(self, operator: Any) -> UnrolledAnalysisFISTA:
        """A copy of this model (same learned filters) on another operator on images,
        e.g. the same blur on larger images: the model was trained on crops, and every
        learned tensor is a filter, so it applies unchanged.

        Example:
            >>> import torch
            >>> from unrollsci.operators import Convolution
            >>> h = torch.ones(3, 3) / 9
            >>> small = UnrolledAnalysisFISTA(Convolution(h, (8, 8)), 2)
            >>> big = small.for_operator(Convolution(h, (32, 32)))
            >>> big(torch.rand(1, 32, 32)).shape
            torch.Size([1, 32, 32])
        """
        cfg = self.get_config()
        cfg["operator"] = operator
        new = type(self)(**cfg)
        with torch.no_grad():
            for name, param in self.named_parameters(recurse=False):
                getattr(new, name).copy_(param)
        new.active_layers = self.active_layers
        return new

    def extra_repr(self) -> str:
        return (
            f"in_shape={tuple(self.operator.in_shape)}, num_layers={self.num_layers}, "
            f"lam={self.lam}, channels={self.channels}, filter_size={self.filter_size}, "
            f"precond_size={self.precond_size}"
        )
