"""Shared machinery of the unrolled lasso networks.

Every model is ``Model(operator, num_layers, lam=..., **options)`` and maps
``y: (batch, m)`` to ``x: (batch, n)``. Layer ``k`` is one step of a classical
lasso algorithm whose constants (step, threshold, penalty, matrices) are
per-layer parameters initialised at their classical values, so an untrained
model equals ``num_layers`` iterations of the classical solver.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from .._validation import (
    check_batch,
    check_count,
    check_finite,
    check_model_dtype,
    check_positive,
    check_tensor,
    model_dtype,
)
from ..operators import LinearOperator
from ..prox import Prox, make_prox, soft_threshold
from ..solvers import as_operator
from ..solvers._lasso_checks import ZERO_OPERATOR, nonzero_norm_sq

__all__ = ["UnrolledLasso", "layer_lists", "softplus_inverse", "support_selection_threshold"]


def check_normal_range(dtype: torch.dtype, owner: str, **values: float) -> None:
    """Raise unless every value (``||A||^2``, the step ``1 / ||A||^2``, initial parameters),
    taken in float64, is a normal number of ``dtype``: cast to it, a step of 2.4e39 became
    Inf in float32 (``||A||`` of 2e-20) and ``A^T A v`` overflowed for ``||A||`` of 2e20, NaN
    outputs without a word. ``owner`` (a class name) is named in the message."""
    fi = torch.finfo(dtype)
    for name, value in values.items():
        if not fi.tiny <= value <= fi.max:
            fix = "" if dtype == torch.float64 else "use dtype=torch.float64 or "
            raise ValueError(
                f"Expected {name} within the normal range of {dtype} ({fi.tiny:.2e} to "
                f"{fi.max:.2e}) for {owner} (got {value:.3e}); {fix}rescale A (with y and lam)."
            )


def check_compute_dtype(model: Any) -> None:
    """Raise ``TypeError`` unless ``model.dtype`` is float32 or float64: the constructors
    refuse other dtypes, but ``model.half()`` after construction is not checked there."""
    if model.dtype not in (torch.float32, torch.float64):
        raise TypeError(
            f"Expected a model of dtype torch.float32 or torch.float64 (got {model.dtype}, "
            "converted after construction); convert it back with model.float() or "
            "model.double()."
        )


def layer_lists(model: nn.Module) -> list[tuple[nn.ParameterList, int, bool]]:
    """``(matrices, first, tied)`` for every non-empty ``nn.ParameterList`` of ``model``: its
    entry ``j`` is layer ``first + j``'s own matrix, or (``tied``) its one entry is shared by
    the layers from ``first`` on and belongs to layer ``first``, where it is first used.

    A model declares both: each list's ``first_layer`` attribute (LISTA's ``S`` starts at
    layer 1) and the model's ``tied`` flag. A list without ``first_layer`` ends at the last
    layer, and a single entry in a deeper model is a tied matrix of layer 0.
    """
    num = int(model.num_layers)  # type: ignore[arg-type]
    out = []
    for module in model.modules():
        if isinstance(module, nn.ParameterList) and len(module):
            first = getattr(module, "first_layer", None)
            if first is None:
                tied = len(module) == 1 and num > 1
                first = 0 if tied else num - len(module)
            else:
                tied = bool(getattr(model, "tied", False))
            out.append((module, int(first), tied))
    return out


def softplus_inverse(value: float | torch.Tensor) -> torch.Tensor:
    """Inverse of ``softplus``: ``v + log(1 - exp(-v))`` (stable for every ``v > 0``)."""
    v = torch.as_tensor(value, dtype=torch.float64)
    if bool((v <= 0).any()):
        raise ValueError(f"Expected a positive value to parameterize (got {value!r}).")
    return v + torch.log(-torch.expm1(-v))


def support_selection_threshold(
    v: torch.Tensor, threshold: torch.Tensor | float, fraction: float
) -> torch.Tensor:
    """Soft thresholding with support selection (Chen et al. 2018, LISTA-CPSS).

    The ``fraction * n`` largest-magnitude entries of each row of ``v: (batch, n)``
    that pass the threshold are trusted as support and kept unshrunk; the others
    are soft-thresholded. ``fraction = 0`` is plain soft thresholding.
    """
    n = v.shape[-1]
    count = int(math.floor(fraction * n))
    if count <= 0:
        return soft_threshold(v, threshold)
    mag = v.abs()
    kth = mag.topk(count, dim=-1).values[..., -1:]
    keep = (mag >= kth) & (mag > threshold)
    return torch.where(keep, v, soft_threshold(v, threshold))


class _PairOperator:
    """``A`` forward with a learned left matrix in place of the adjoint.

    Calls as ``A(x)`` (``mv``); ``adjoint(r)`` (``rmv``) returns ``W^T r`` (``r @ W`` for
    ``W: (m, n)``).
    Lets an unrolled layer call the classical step (``ista_step``, ``amp_step``) with
    ``A^T`` replaced by a learned ``W^T``.
    """

    def __init__(self, op: LinearOperator, weight: torch.Tensor) -> None:
        self.op, self.weight = op, weight

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)

    def adjoint(self, r: torch.Tensor) -> torch.Tensor:
        return r @ self.weight

    # the unchecked products the step functions use (LinearOperator.mv / rmv)
    def mv(self, x: torch.Tensor) -> torch.Tensor:
        return self.op.mv(x)

    rmv = adjoint


class ActiveLayersMixin:
    """``active_layers``: how many of a model's ``num_layers`` layers ``forward`` runs
    (layer-wise training grows it); checked to lie in ``1..num_layers``."""

    num_layers: int
    _active_layers: int

    @property
    def active_layers(self) -> int:
        """Number of layers ``forward`` runs (``1..num_layers``)."""
        return self._active_layers

    @active_layers.setter
    def active_layers(self, k: int) -> None:
        self._active_layers = check_count("active_layers", k, 1, high=self.num_layers)


class UnrolledLasso(ActiveLayersMixin, nn.Module):
    """Base class: validation, layer bookkeeping, checkpoint config.

    Subclasses implement ``_run(y, num_layers) -> list of (batch, n)`` (one entry
    per layer) and ``_options() -> dict`` (their extra constructor arguments).

    Attributes:
        num_layers: depth ``K``.
        active_layers: layers used by ``forward`` (``1..K``); the layer-wise
            schedule of :func:`unrollsci.train.fit` raises it stage by stage.
    """

    def __init__(
        self,
        operator: Any,
        num_layers: int,
        *,
        lam: float = 0.1,
        dtype: torch.dtype | None = None,
        prox: Any = None,
    ) -> None:
        super().__init__()
        op = as_operator(operator, "operator")
        if len(op.in_shape) != 1 or len(op.out_shape) != 1:
            raise ValueError(
                "Unrolled lasso models expect an operator on vectors, in_shape (n,) and "
                f"out_shape (m,) (got {op.in_shape} -> {op.out_shape}). Flatten signals first."
            )
        num_layers = check_count("num_layers", num_layers)
        lam_f = check_positive("lam", lam)
        self.operator = op
        self.num_layers = num_layers
        self._active_layers = num_layers
        self.lam = lam_f
        if dtype is None:
            dtype = op.dtype if op.dtype is not None else torch.get_default_dtype()
        if dtype not in (torch.float32, torch.float64):
            raise TypeError(f"Expected dtype torch.float32 or torch.float64 (got {dtype}).")
        self._init_dtype = dtype
        self.prox: Prox = make_prox(self._default_prox() if prox is None else prox, self.n)
        self._prox_given = prox is not None

    def _default_prox(self) -> Any:
        """The prox used when ``prox=None`` (soft thresholding; group models override)."""
        return "soft"

    @property
    def prox_fn(self) -> Any:
        """The thresholding step ``(v, threshold) -> x`` of every layer: the plain
        :func:`~unrollsci.prox.soft_threshold` for the default lasso prox (the same
        function, so the same bits, as before ``prox=`` existed), else :attr:`prox`."""
        return soft_threshold if self.prox.kind == "soft" else self.prox

    def _require_soft(self, feature: str) -> None:
        if self.prox.kind != "soft":
            raise ValueError(
                f"{feature} is defined for the soft threshold only (got prox {self.prox!r}); "
                "use prox=None or 'soft' with it."
            )

    # ------------------------------------------------------------------ sizes
    @property
    def m(self) -> int:
        """Number of measurements (rows of ``A``)."""
        return int(self.operator.out_shape[0])

    @property
    def n(self) -> int:
        """Signal length (columns of ``A``)."""
        return int(self.operator.in_shape[0])

    @property
    def dtype(self) -> torch.dtype:
        """The model's dtype: that of its learned constants (``model.double()`` changes it).

        Inputs must have it (:class:`~unrollsci.DtypeMismatchError` otherwise). Defaults
        at construction to the operator's dtype, or torch's default for an operator that
        holds no tensors.
        """
        return model_dtype(self, skip="operator.") or self._init_dtype

    @property
    def param_dtype(self) -> torch.dtype:
        """Alias of :attr:`dtype` (the name before the dtype rule was shared)."""
        return self.dtype

    # ------------------------------------------------------------- helpers
    def _dense(self) -> torch.Tensor:
        """``A`` as a dense float64 ``(m, n)`` matrix, a constant (detached: it initialises
        parameters and buffers)."""
        return self.operator.to_dense(dtype=torch.float64).detach()

    def _lipschitz(self) -> float:
        """``||A||^2``; a ``ValueError`` for a zero operator (``||A|| = 0`` exactly) and, from
        :func:`~unrollsci.solvers._lasso_checks.norm_sq`, for a nonzero ``||A||`` whose
        square is not a normal float64 number (an ``OverflowError``, or a nonzero operator
        called zero, before)."""
        return nonzero_norm_sq(self.operator)

    def _check_range(self, **values: float) -> None:
        """:func:`check_normal_range` in the model's dtype."""
        check_normal_range(self.param_dtype, type(self).__name__, **values)

    def _check_nonzero(self) -> None:
        """Raise for a zero operator, as :meth:`_lipschitz`, without its norm: ``A v`` for
        one seeded Gaussian ``v`` (zero with probability 0 unless ``A = 0``)."""
        gen = torch.Generator().manual_seed(0)
        v = torch.randn(1, self.n, generator=gen, dtype=self.param_dtype).to(self._device)
        with torch.no_grad():
            if not bool(self.operator.mv(v).any()):
                raise ValueError(ZERO_OPERATOR)

    def _positive(self, value: float, count: int) -> nn.Parameter:
        """``count`` parameters whose softplus equals ``value`` (positive by construction)."""
        full = torch.full((count,), float(value), dtype=torch.float64)
        return nn.Parameter(softplus_inverse(full).to(device=self._device, dtype=self.param_dtype))

    @property
    def _device(self) -> torch.device:
        """Where new parameters are created: the operator's device (CPU if it has none)."""
        return self.operator.device or torch.device("cpu")

    @staticmethod
    def _pos(raw: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``softplus(raw) + tiny``: positive for every raw value in every dtype (softplus
        alone is exactly 0 below about -104 in float32, -745 in float64); the same bits as
        ``softplus(raw)`` wherever that exceeds ``2^p`` tinies (``p`` the significand's
        bits: ``2e-31`` in float32, ``2e-292`` in float64), so for every ordinary raw value."""
        return F.softplus(raw) + torch.finfo(raw.dtype).tiny

    def _check_y(self, y: Any) -> tuple[torch.Tensor, bool]:
        check_compute_dtype(self)  # model.half() is not checked at construction
        check_tensor("y", y, ndim=(1, 2))
        unbatched = y.dim() == 1
        if unbatched:
            y = y[None]
        if y.shape[1] != self.m:
            raise ValueError(
                f"Expected 'y' of length {self.m} to match the operator's output "
                f"(got shape {tuple(y.shape)})."
            )
        check_batch("y", y)
        check_finite("y", y)
        check_model_dtype("measurements 'y'", y.dtype, self, data="y")
        return y, unbatched

    # -------------------------------------------------------------- forward
    def forward(
        self, y: torch.Tensor, *, return_all: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Run the ``active_layers`` first layers on ``y: (batch, m)`` (or ``(m,)``).

        Returns:
            ``x: (batch, n)``; with ``return_all=True`` the pair ``(x, xs)`` where
            ``xs[k]`` is the output of layer ``k + 1``.
        """
        y, unbatched = self._check_y(y)
        xs = self._run(y, self.active_layers)
        if unbatched:
            xs = [x[0] for x in xs]
        return (xs[-1], xs) if return_all else xs[-1]

    def _run(self, y: torch.Tensor, num_layers: int) -> list[torch.Tensor]:
        raise NotImplementedError

    # ------------------------------------------------------- layer-wise help
    @torch.no_grad()
    def copy_layer(self, src: int, dst: int) -> None:
        """Copy the learned constants of layer ``src`` into layer ``dst`` (0-based).

        Per-layer vectors (steps, thresholds) copy one entry, per-layer stacks
        ``(K, ...)`` (diagonal or block preconditioners) one slice, per-layer matrices
        (``nn.ParameterList`` of one entry per layer from its ``first_layer`` on:
        :func:`layer_lists`) copy the matrix; tied parameters are left alone. Used to
        warm-start a new layer in layer-wise training.
        """
        k = self.num_layers
        if not (0 <= src < k and 0 <= dst < k):
            raise ValueError(f"Expected layers in 0..{k - 1} (got src={src}, dst={dst}).")
        for module, first, tied in layer_lists(self):
            i, j = src - first, dst - first  # LISTA's S starts at layer 1
            if not tied and 0 <= i < len(module) and 0 <= j < len(module):
                module[j].copy_(module[i])
        for p in self.parameters(recurse=False):
            # per-layer vectors (K,) and per-layer stacks (K, ...) of the structured models
            if p.dim() >= 1 and p.shape[0] == k:
                p[dst] = p[src]

    # --------------------------------------------------------------- config
    def _options(self) -> dict[str, Any]:
        return {}

    def get_config(self) -> dict[str, Any]:
        """Constructor arguments that rebuild this model (used by checkpoints)."""
        return {
            "operator": self.operator,
            "num_layers": self.num_layers,
            "lam": self.lam,
            "dtype": self.param_dtype,
            "prox": self.prox.config() if self._prox_given else None,
            **self._options(),
        }

    def classical(self) -> UnrolledLasso:
        """An untrained copy: ``num_layers`` iterations of the classical algorithm."""
        cfg = self.get_config()
        cfg.update(self._classical_overrides())
        return type(self)(**cfg)

    def _classical_overrides(self) -> dict[str, Any]:
        return {}

    def extra_repr(self) -> str:
        extra = f", prox={self.prox!r}" if self._prox_given else ""
        return f"m={self.m}, n={self.n}, num_layers={self.num_layers}, lam={self.lam}{extra}"
