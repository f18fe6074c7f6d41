"""Error decomposition of an unrolled model against its classical algorithm."""

from __future__ import annotations

import math
from typing import Any

import torch

from .._validation import check_finite, check_tensor

__all__ = ["error_decomposition"]


def _rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float(a.pow(2).sum().sqrt() / ref.pow(2).sum().sqrt().clamp_min(1e-300))


def error_decomposition(
    model: Any, y: torch.Tensor, x_ref: torch.Tensor, *, classical: Any = None
) -> list[dict[str, float]]:
    """Split a model's error per layer into classical error and learned deviation.

    For layer ``k`` with model output ``x_k``, classical iterate ``c_k`` (``k``
    iterations of the algorithm the model unrolls, i.e. the untrained model) and
    reference ``x*`` (the ground truth or the lasso minimizer):

        x_k - x* = (c_k - x*) + (x_k - c_k)

    The triangle inequality bounds the model error by classical error plus learned
    deviation; the learned part helps when it cancels the classical error
    (``model < classical``). Norms are relative, ``sqrt(sum ||.||^2 / sum ||x*||^2)``
    over the batch.

    Args:
        model: an unrolled model (:class:`~unrollsci.unrolled.UnrolledLasso`).
        y: ``(batch, m)`` data.
        x_ref: ``(batch, n)`` reference.
        classical: model giving the classical iterates (default ``model.classical()``).

    Returns:
        One dict per layer: ``layer``, ``model`` (``||x_k - x*||``), ``classical``
        (``||c_k - x*||``), ``deviation`` (``||x_k - c_k||``), ``cosine`` (between
        the classical error and the deviation; ``-1`` means the learned part
        cancels the classical error) and ``model_db`` (NMSE of ``x_k`` in dB).

    Example:
        >>> import torch
        >>> from unrollsci.operators import MatrixOperator
        >>> A = MatrixOperator(torch.randn(20, 40) / 20**0.5)
        >>> from unrollsci.unrolled import LISTA
        >>> rows = error_decomposition(LISTA(A, 3, lam=0.1), torch.randn(2, 20), torch.randn(2, 40))
        >>> len(rows), sorted(rows[0])[:3]
        (3, ['classical', 'cosine', 'deviation'])
    """
    check_tensor("y", y, ndim=(2,))  # batched: a (m,) y would ask for an (m, n) x_ref
    check_tensor("x_ref", x_ref, ndim=(2,))
    check_finite("x_ref", x_ref)
    if classical is None:
        classical = model.classical()
    classical = classical.to(device=y.device)
    if tuple(x_ref.shape) != (y.shape[0], model.n):
        raise ValueError(
            f"Expected 'x_ref' of shape {(y.shape[0], model.n)} (got {tuple(x_ref.shape)})."
        )
    with torch.no_grad():
        _, xs = model(y, return_all=True)
        _, cs = classical(y, return_all=True)
    rows = []
    for k, (xk, ck) in enumerate(zip(xs, cs, strict=False), start=1):
        e_cl = ck - x_ref
        dev = xk - ck
        cos = float((e_cl * dev).sum() / (e_cl.norm() * dev.norm()).clamp_min(1e-300))
        rel = _rel(xk - x_ref, x_ref)
        rows.append(
            {
                "layer": k,
                "model": rel,
                "classical": _rel(e_cl, x_ref),
                "deviation": _rel(dev, x_ref),
                "cosine": cos,
                "model_db": 20.0 * math.log10(max(rel, 1e-300)),
            }
        )
    return rows
