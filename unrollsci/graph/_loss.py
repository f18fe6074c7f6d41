"""The training loss of :class:`UnrolledGraphGD`."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

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
      as the energy loss but needs no solve.

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
    f0 = problem.objective(torch.zeros_like(out.x))
    b = problem.rhs()
    scale = 0.5 * problem.segment_sum(b * b) / problem.lipschitz(model.lipschitz_method)
    return ((problem.objective(out.x) - f0) / scale.clamp(min=1e-30)).mean() + penalty * pen
