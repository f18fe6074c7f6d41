"""Training a learned preconditioner: :func:`make_batches` and :func:`fit_preconditioner`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._validation import check_count, check_positive
from ..operators import SparseOperator
from ._graph import SystemBatch
from ._learned import LearnedPreconditioner
from ._pcg import _steps_to_tol, pcg_loss
from ._sparse import check_spd_input

__all__ = ["make_batches", "fit_preconditioner"]


def _check_adaptive_tol(adaptive_tol: Any) -> float | None:
    """``adaptive_tol``: None or a finite number > 0 (a tolerance <= 0 or NaN is never
    reached: every system would silently get ``max_steps`` steps)."""
    if adaptive_tol is None:
        return None
    return check_positive("adaptive_tol", adaptive_tol)


def make_batches(
    model: LearnedPreconditioner,
    matrices: Sequence[Any],
    *,
    n_rhs: int = 4,
    seed: int = 0,
    adaptive_tol: float | None = None,
    max_steps: int = 50,
) -> list[SystemBatch]:
    """Training data for :func:`unrollsci.train.fit`: one batch per matrix.

    Right-hand sides are standard normal (seeded); exact solutions come from a sparse
    direct solve (for the energy-norm loss).

    Args:
        adaptive_tol: if given, each system gets its own unroll length: the number of PCG
            steps the model's *current* (e.g. untrained = base) preconditioner needs to
            bring the relative energy error below ``adaptive_tol`` (at most
            ``max_steps``), so that easy and hard systems of one family are trained at the
            same error level instead of easy ones at round-off. None, or a finite
            number > 0.
        max_steps: the largest unroll length ``adaptive_tol`` may give, an integer >= 1.
        n_rhs: right-hand sides per matrix, an integer >= 1.
    """
    return _make_batches(
        model,
        matrices,
        "matrices",
        n_rhs=n_rhs,
        seed=seed,
        adaptive_tol=adaptive_tol,
        max_steps=max_steps,
    )


def _make_batches(
    model: LearnedPreconditioner,
    matrices: Sequence[Any],
    name: str,
    *,
    n_rhs: int,
    seed: int,
    adaptive_tol: float | None,
    max_steps: int,
) -> list[SystemBatch]:
    """:func:`make_batches`, its errors naming ``f"{name}[k]"`` (e.g. ``val_matrices[1]``)."""
    import scipy.sparse.linalg as spla

    n_rhs = check_count("n_rhs", n_rhs)
    max_steps = check_count("max_steps", max_steps)
    adaptive_tol = _check_adaptive_tol(adaptive_tol)

    rng = np.random.default_rng(seed)
    dev = next(model.parameters()).device
    out = []
    for k, m in enumerate(matrices):
        a = check_spd_input(m, f"{name}[{k}]")
        model._check_size(a, f"{name}[{k}]")
        g = model.prepare(a)
        b = rng.standard_normal((n_rhs, a.shape[0]))
        lu = spla.splu(a.tocsc())
        x = np.stack([lu.solve(bi) for bi in b])
        if np.any((x * b).sum(-1) <= 0):
            raise ValueError(
                f"{name}[{k}] is not positive definite: b^T A^{{-1}} b <= 0 for a random b."
            )
        batch = SystemBatch(
            g, SparseOperator(a).to(dev), torch.from_numpy(b).to(dev), torch.from_numpy(x).to(dev)
        )
        if adaptive_tol is not None:
            batch.steps = _steps_to_tol(model, batch, adaptive_tol, max_steps)
        out.append(batch)
    return out


def fit_preconditioner(
    model: LearnedPreconditioner,
    matrices: Sequence[Any],
    *,
    steps: int = 10,
    loss: str = "energy",
    n_rhs: int = 4,
    val_matrices: Sequence[Any] | None = None,
    epochs: int = 15,
    lr: float = 2e-3,
    seed: int = 0,
    restarts: int = 1,
    progress: bool = False,
    keep_base_if_better: bool = True,
    adaptive_tol: float | None = None,
    **fit_kwargs: Any,
) -> Any:
    """Train ``model`` on a list of matrices with the shared :func:`unrollsci.train.fit`.

    Args:
        model: the preconditioner to train (in place).
        matrices: training matrices (scipy / torch sparse SPD).
        steps, loss: see :func:`pcg_loss`.
        n_rhs: random right-hand sides per matrix.
        val_matrices: validation matrices; ``fit`` keeps the weights of the best
            validation epoch.
        restarts: train from this many initial weights (the model's own, then
            ``model.reset_parameters(seed + r)`` for ``r = 1, ...``) and keep the run with
            the best validation loss. Needs ``val_matrices``. Different initial weights
            land in different minima; selecting by validation loss guards against an
            unlucky one (measured spread: ``docs/precond.md``, "Reproducibility").
        keep_base_if_better: with validation matrices, also score the weights before
            training (the base factor, e.g. IC(0)) and keep them when no epoch beat
            them, so that training cannot make the preconditioner worse on the
            validation systems (``history.kept_initial`` says whether this happened).
        adaptive_tol: per-system unroll lengths, see :func:`make_batches` (``steps`` is
            then only the default for systems without one).
        epochs, lr, seed, progress, **fit_kwargs: passed to ``fit``; all are checked
            before the training systems are built. ``checkpoint=path`` saves the kept
            model (after restarts and ``keep_base_if_better``) in one file, written by
            rank 0 only; with ``restarts=1`` it also holds fit's training state, so that
            ``resume=path`` continues the run (on any number of processes).
            ``batch_size=k`` trains on ``k`` systems per step (their losses averaged);
            under torch.distributed each process builds the batches and trains on its
            share of the ``k`` systems of every step (see :func:`unrollsci.train.fit`).

    Returns:
        the training :class:`~unrollsci.train.History` of the kept run (plus
        ``initial_val`` and ``kept_initial`` when validation matrices are given, and
        ``restart_vals``, the best validation loss of every restart, and ``restart``,
        the index of the kept one).
    """
    from ..train import fit, is_main_process, save_checkpoint
    from ..train._args import check_fit_call
    from ..train._state import copy_state, replace_model

    restarts = check_count("restarts", restarts)
    if not isinstance(model, LearnedPreconditioner):
        raise TypeError(f"Expected a LearnedPreconditioner to train (got {type(model).__name__}).")
    if isinstance(matrices, (str, bytes)) or not isinstance(matrices, Sequence):
        raise TypeError(
            "Expected 'matrices' to be a list of sparse SPD matrices "
            f"(got {type(matrices).__name__})."
        )
    if val_matrices is not None and (
        isinstance(val_matrices, (str, bytes)) or not isinstance(val_matrices, Sequence)
    ):
        raise TypeError(
            "Expected 'val_matrices' to be None or a list of sparse SPD matrices "
            f"(got {type(val_matrices).__name__})."
        )
    has_val = val_matrices is not None and len(val_matrices) > 0
    if restarts > 1 and not has_val:
        raise ValueError("restarts > 1 selects by validation loss: pass val_matrices.")
    if len(matrices) == 0:
        raise ValueError(
            "Expected at least one training matrix (got an empty 'matrices'): every "
            "epoch would see no batch."
        )
    for name, value in (("epochs", epochs), ("n_rhs", n_rhs), ("steps", steps)):
        check_count(name, value)
    check_positive("lr", lr)
    adaptive_tol = _check_adaptive_tol(adaptive_tol)
    checkpoint = fit_kwargs.pop("checkpoint", None)
    if checkpoint is not None and Path(checkpoint).is_dir():
        raise IsADirectoryError(
            f"Expected 'checkpoint' to be a file path, but {checkpoint} is a directory."
        )
    if restarts > 1 and fit_kwargs.get("resume") is not None:
        raise ValueError("resume= continues one training run: it needs restarts=1.")
    if restarts == 1 and checkpoint is not None:
        fit_kwargs["checkpoint"] = checkpoint  # fit writes the training state as well
    if "val_data" in fit_kwargs:
        raise TypeError(
            "Expected validation systems as val_matrices (got val_data= among the fit "
            "arguments): fit_preconditioner builds fit's val_data from val_matrices."
        )
    loss_fn = pcg_loss(steps, loss, seed)
    # fit's arguments (a typo, patience=0, ...) before the costly systems are built
    check_fit_call(
        "fit_preconditioner",
        model,
        loss_fn,
        val_data=None,
        epochs=epochs,
        lr=lr,
        seed=seed,
        progress=progress,
        **{"checkpoint": checkpoint, **fit_kwargs},
    )
    tol = adaptive_tol if loss != "frobenius" else None
    kw = {"n_rhs": n_rhs, "adaptive_tol": tol, "max_steps": 50}
    data = _make_batches(model, matrices, "matrices", seed=seed, **kw)
    val = (
        _make_batches(model, val_matrices, "val_matrices", seed=seed + 1, **kw) if has_val else None
    )
    init_state, init_val = None, None
    if val is not None and keep_base_if_better:
        init_state = copy_state(model.state_dict())
        with torch.no_grad():
            init_val = float(np.mean([float(loss_fn(model, b)) for b in val]))
    best_hist, best_state, vals = None, None, []
    for r in range(restarts):
        if r:
            model.reset_parameters(seed + r)
        hist = fit(
            model,
            loss_fn,
            data,
            val_data=val,
            epochs=epochs,
            lr=lr,
            seed=seed,
            progress=progress,
            **fit_kwargs,
        )
        vals.append(hist.best_val if val is not None else hist.train_loss[-1])
        if best_hist is None or vals[-1] < min(vals[:-1]):
            best_hist = hist
            if restarts > 1:
                best_state = copy_state(model.state_dict())
    hist = best_hist
    if best_state is not None:
        model.load_state_dict(best_state)
    hist.restart_vals, hist.restart = vals, int(np.argmin(vals))
    if init_state is not None and init_val is not None:
        hist.initial_val = init_val
        hist.kept_initial = not hist.best_val < init_val
        if hist.kept_initial:
            model.load_state_dict(init_state)
    if checkpoint is not None and restarts == 1:
        if getattr(hist, "kept_initial", False):
            replace_model(checkpoint, model)  # the kept weights, with fit's training state
    elif checkpoint is not None:
        if is_main_process():
            save_checkpoint(model, checkpoint)  # the kept weights, not the last restart's
        _barrier()
    return hist


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
