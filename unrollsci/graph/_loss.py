"""The training loss of :class:`UnrolledGraphGD`."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ._features import block_pow2
from ._problem import GraphInverseProblem
from ._pyg import is_pyg_data, problem_from_data

if TYPE_CHECKING:
    from ._model import UnrolledGraphGD

__all__ = ["graph_loss"]


def graph_loss(
    model: UnrolledGraphGD,
    problem: GraphInverseProblem,
    kind: str = "energy",
    *,
    penalty: float = 10.0,
) -> torch.Tensor:
    """Training loss of an unrolled solver on a problem (for ``unrollsci.train.fit``).

    ``problem``: a :class:`GraphInverseProblem` or a PyG ``Data``/``Batch`` (as ``forward``).

    * ``"energy"`` (supervised): mean over signals and graphs of ``log`` of the
      squared energy-norm relative error ``||x_K - x*||_H^2 / ||x*||_H^2`` to the
      exact solution (``problem.solve_exact()``, cached).
    * ``"objective"`` (unsupervised): mean of ``(f(x_K) - f(0)) / (0.5 ||A^T y||^2 /
      Lip)``. Since ``f(x) - f(x*) = 0.5 ||x - x*||_H^2`` it has the same minimizer
      as the energy loss but needs no solve. Both are invariant to the data's scale
      (computed on data scaled by a power of two per signal and graph).

    In window mode ``penalty`` times the model's certificate violation is added,
    so that training keeps a gradient when a window falls back to safe steps.

    Example:
        >>> from unrollsci.train import fit  # doctest: +SKIP
        >>> fit(model, lambda m, p: graph_loss(m, p), problems)  # doctest: +SKIP
    """
    if kind not in ("energy", "objective"):
        raise ValueError(f"Expected kind 'energy' or 'objective' (got {kind!r}).")
    if is_pyg_data(problem):
        problem = problem_from_data(problem)
    out = model(problem)
    pen = out.violation if out.violation is not None else 0.0
    if kind == "energy":
        err = problem.relative_error(out.x)
        return torch.log(err * err + 1e-30).mean() + penalty * pen
    # x, y and b = A^T y over a power of two per signal and block (b's largest entry): f is
    # quadratic in (x, y), so the ratio keeps its bits and nothing under- or overflows (an
    # absolute floor of 1e-30 on the scale shrank the loss of data below 1e-15 towards 0)
    b = problem.rhs()
    c = block_pow2(problem, b)
    x, y, b = out.x / c, problem.y.to(out.x.dtype) / c, b / c
    f0 = problem._objective(torch.zeros_like(x), y)
    scale = 0.5 * problem.segment_sum(b * b) / problem.lipschitz(model.lipschitz_method)
    scale = scale.clamp(min=torch.finfo(scale.dtype).tiny)  # 0 only for y = 0 (then x = 0)
    return ((problem._objective(x, y) - f0) / scale).mean() + penalty * pen
