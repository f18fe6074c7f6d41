"""Staged layer-wise training of unrolled sparse-recovery networks: :func:`fit_layerwise`.

The schedule of the LISTA literature (Borgerding et al. 2017, Chen et al. 2018, Liu et al.
2019): layer ``k`` is added to the ``k - 1`` trained layers, first its own constants are
trained at a base rate, then all layers at the base rate times ``0.2`` and ``0.02``; every
stage draws fresh batches and ends when the validation NMSE of layer ``k`` has not improved
for ``patience`` steps. :func:`unrollsci.train.fit` stays the general loop (epochs, any
loss, distributed); this one is specific to models with ``return_all`` (the unrolled lasso
family) and adds the guarantee that deeper is never worse on the validation set.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..unrolled._base import layer_lists
from ._checks import _check_grad_mode, _check_pair
from ._gradcheck import check_finite_grads
from ._state import copy_state

__all__ = ["LayerwiseHistory", "fit_layerwise", "layer_nmse_db"]


@dataclass
class LayerwiseHistory:
    """What :func:`fit_layerwise` did.

    Attributes:
        curve_db: validation NMSE (dB) of every layer of the final model.
        layer_db: validation NMSE (dB) of layer ``k`` right after layer ``k`` was trained.
        steps: optimizer steps per layer (all its stages).
        stages: one dict per stage: layer, lr, steps, best validation NMSE (dB) and
            whether it stopped on ``patience`` (else on ``max_steps`` or the time budget).
        monotone: the final ``curve_db`` is non-increasing in depth.
        seconds: wall-clock time of the training.
    """

    curve_db: list[float] = field(default_factory=list)
    layer_db: list[float] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    stages: list[dict[str, Any]] = field(default_factory=list)
    monotone: bool = True
    seconds: float = 0.0


def layer_nmse_db(
    model: nn.Module, y: torch.Tensor, x: torch.Tensor, chunk: int = 1000
) -> list[float]:
    """NMSE (dB) of every active layer on ``(y, x)``: ``10 log10(sum ||x_k - x||^2 / sum ||x||^2)``.

    Evaluated without gradients in float64 sums, ``chunk`` samples at a time.

    Example:
        >>> import torch
        >>> from unrollsci.operators import MatrixOperator
        >>> from unrollsci.unrolled import ALISTA
        >>> A = MatrixOperator(torch.randn(20, 40, dtype=torch.float64) / 20**0.5)
        >>> x = torch.zeros(8, 40, dtype=torch.float64); x[:, :3] = 1.0
        >>> len(layer_nmse_db(ALISTA(A, 3), A(x), x))
        3
    """
    _check_pair("(y, x)", y, x)
    was_training = model.training
    model.eval()
    err: torch.Tensor | None = None
    ref = 0.0
    try:
        with torch.no_grad():
            for i in range(0, y.shape[0], chunk):
                yc, xc = y[i : i + chunk], x[i : i + chunk]
                _, xs = model(yc, return_all=True)
                e = torch.stack([(xk - xc).double().pow(2).sum() for xk in xs])
                err = e if err is None else err + e
                ref += float(xc.double().pow(2).sum())
    finally:  # also when the model raises (a dtype mismatch): the user's mode back
        model.train(was_training)
    assert err is not None
    return [10.0 * math.log10(max(float(v), 1e-300) / max(ref, 1e-300)) for v in err]


def _layer_params(model: nn.Module, layer: int) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """``(own, vectors)`` of 0-based ``layer``: the per-layer matrices of that layer (and the
    tied matrices first used there: :func:`~unrollsci.unrolled._base.layer_lists`) with the
    global parameters, and the per-layer vectors and stacks ``(K, ...)`` whose row ``layer``
    is its own (the others are masked in the new-layer stage)."""
    k = int(model.num_layers)
    own: list[nn.Parameter] = []
    in_lists: set[int] = set()
    for module, first, tied in layer_lists(model):
        for j, p in enumerate(module):
            in_lists.add(id(p))
            if (first if tied else first + j) == layer and p.requires_grad:
                own.append(p)
    vectors = [
        p
        for p in model.parameters()
        if id(p) not in in_lists and p.requires_grad and p.dim() >= 1 and p.shape[0] == k
    ]
    others = [
        p
        for p in model.parameters()
        if id(p) not in in_lists and p.requires_grad and not (p.dim() >= 1 and p.shape[0] == k)
    ]
    return own + others, vectors


def _layer_matrices(model: nn.Module, layer: int) -> list[nn.Parameter]:
    """The per-layer matrices (untied ``nn.ParameterList`` entries) of 0-based ``layer``."""
    out: list[nn.Parameter] = []
    for module, first, tied in layer_lists(model):
        if not tied and 0 <= layer - first < len(module):
            out.append(module[layer - first])
    return out


def _decay_factors(model: nn.Module, k: int, decay_rate: float) -> dict[int, Any]:
    """Rate multipliers of the all-layer stages at layer ``k`` (1-based): layer ``j``'s
    constants (0-based ``j < k``) get ``decay_rate ** (k - 1 - j)``: a float per untied
    per-layer matrix, a ``(K, 1, ...)`` tensor per per-layer vector or stack (one factor a
    row). Parameters of neither kind (tied matrices, globals) are not decayed."""
    num = int(model.num_layers)

    def factor(j: int) -> float:
        return float(decay_rate) ** max(k - 1 - j, 0)

    out: dict[int, Any] = {}
    in_lists: set[int] = set()
    for module, first, tied in layer_lists(model):
        for j, p in enumerate(module):
            in_lists.add(id(p))
            if not tied:
                out[id(p)] = factor(first + j)
    for p in model.parameters():
        if id(p) not in in_lists and p.dim() >= 1 and p.shape[0] == num:
            rows = torch.tensor([factor(j) for j in range(num)], dtype=p.dtype, device=p.device)
            out[id(p)] = rows.reshape((num,) + (1,) * (p.dim() - 1))
    return out


def _stage_loss(
    xs: Sequence[torch.Tensor],
    x: torch.Tensor,
    k: int,
    kind: str = "nmse",
    depth_weight: float = 0.0,
) -> torch.Tensor:
    """The training loss of :func:`fit_layerwise` at layer ``k`` (1-based).

    ``e_j = sum ||xs[j] - x||^2 / sum ||x||^2`` over the batch (layer ``j + 1``'s relative
    error), ``l_j = e_j`` (``kind="nmse"``) or ``log e_j`` (``kind="log"``); the loss is
    ``l_{k-1} + depth_weight * mean(l_0 .. l_{k-1})``.
    """
    ref = x.pow(2).sum().clamp_min(1e-30)
    tiny = torch.finfo(x.dtype).tiny

    def one(j: int) -> torch.Tensor:
        e = (xs[j] - x).pow(2).sum() / ref
        return torch.log(e.clamp_min(tiny)) if kind == "log" else e

    value = one(k - 1)
    if depth_weight:
        value = value + depth_weight * torch.stack([one(j) for j in range(k)]).mean()
    return value


def fit_layerwise(
    model: nn.Module,
    sampler: Callable[[torch.Generator], tuple[torch.Tensor, torch.Tensor]],
    val_data: tuple[torch.Tensor, torch.Tensor],
    *,
    lr: float = 5e-4,
    lr_decays: Sequence[float] = (0.2, 0.02),
    vector_lr: float | None = None,
    decay_rate: float = 1.0,
    new_layer_stage: bool = True,
    val_every: int = 50,
    patience: int = 1000,
    max_steps: int = 20_000,
    time_budget: float | None = None,
    warm_start: bool = True,
    start_layer: int = 1,
    freeze_below: int = 0,
    loss: str = "nmse",
    depth_weight: float = 0.0,
    seed: int = 0,
    log: Callable[[str], Any] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> LayerwiseHistory:
    """Train an unrolled network layer by layer with the staged schedule of the LISTA papers.

    For ``k = 1..K``: ``model.active_layers = k``; layer ``k`` starts from the trained
    constants of layer ``k - 1`` (``model.copy_layer``, when ``warm_start``); then the
    stages run, each with a fresh Adam: (1) layer ``k``'s own constants only at ``lr``
    (when ``new_layer_stage``), (2) all layers at ``lr * d`` for each ``d`` of
    ``lr_decays``, layer ``j``'s constants at that rate times ``decay_rate ** (k - j)``
    (Chen et al. 2018's ``decay_rate``; 1: no decay). The loss is the squared error of
    layer ``k``'s output relative to ``||x||^2`` of the batch (the NMSE of Chen et al.
    2018); every step draws a fresh batch ``sampler(generator)``. Every ``val_every``
    steps, and after a stage's last step, the NMSE of all layers is measured on
    ``val_data`` (so a stage shorter than ``val_every`` keeps its steps); a stage ends after
    ``patience`` steps without a better layer-``k`` NMSE, after ``max_steps``, or when its
    share of ``time_budget`` is used.

    Guarantee: a stage keeps the best validated state among those whose per-layer
    validation curve is non-increasing up to layer ``k`` (a ``k``-layer model never
    worse than its ``k - 1``-layer prefix); the state it started from counts when it
    qualifies. If no state qualifies, the one with the longest non-increasing prefix of
    the curve is kept (then the best at layer ``k``), so the prefix earlier stages secured
    is never broken, and ``history.monotone`` is False (reported, not hidden).

    Args:
        model: an unrolled model with ``num_layers``, settable ``active_layers``,
            ``copy_layer`` and ``forward(y, return_all=True)`` (the
            :class:`~unrollsci.unrolled.UnrolledLasso` family).
        sampler: ``generator -> (y, x)``, a fresh training batch per call.
        val_data: fixed ``(y, x)`` validation set.
        lr: base learning rate (Adam).
        lr_decays: factors of ``lr`` of the all-layer stages.
        vector_lr: learning rate multiplier of the per-layer vectors and stacks
            ``(K, ...)`` (thresholds, steps, diagonal and block preconditioners; mostly
            softplus-parameterized, so a step changes them by a relative amount), in every
            stage; default 1.
        decay_rate: in the all-layer stages of layer ``k``, the learning rate of layer
            ``j``'s constants (its untied matrices and its rows of the per-layer vectors and
            stacks)
            is multiplied by ``decay_rate ** (k - j)``: each trained layer's rate is
            multiplied by ``decay_rate`` after every new layer (Chen et al. 2018 use 0.3).
            Their code multiplies the gradients instead, which Adam's normalization undoes
            (up to its ``eps``); here the rate itself is decayed (exactly: Adam's moments
            do not depend on the rate). In ``(0, 1]``; default 1 (no decay).
        new_layer_stage: train the new layer alone first.
        val_every, patience, max_steps: validation interval and stopping rules, in steps.
        time_budget: seconds for the whole training, shared out to layer ``k`` in
            proportion to ``k`` (its cost per step); None: no limit.
        warm_start: start layer ``k`` from layer ``k - 1``.
        start_layer: the first layer trained (1-based): ``start_layer > 1`` continues the
            training of a model whose first ``start_layer - 1`` layers are trained (e.g.
            loaded from a checkpoint; its layer ``start_layer`` is not warm-started, and
            ``history.steps`` and ``layer_db`` cover the trained layers only).
        freeze_below: the first ``freeze_below`` layers keep their constants in every
            stage (their per-layer matrices and rows of the per-layer vectors and stacks
            get no updates; shared parameters still train). With ``start_layer``, it lets a
            continued training leave alone early layers whose validation curve is nearly
            flat, where any change would break the non-increasing guarantee.
        loss: ``"nmse"`` (default): the batch's relative squared error of layer ``k``;
            ``"log"``: its logarithm, so every batch's gradient is relative to its own
            error level (deep noiseless layers reach errors of ``1e-7`` and below).
        depth_weight: ``w >= 0``; adds ``w`` times the mean of the same loss over layers
            ``1..k``, so that training for layer ``k`` also pulls the earlier layers down
            (with ``start_layer = K`` and ``new_layer_stage=False``: all layers trained at
            once for the last, the earlier ones kept useful). Default 0.
        seed: seeds the batch generator.
        log: called with one line per stage (e.g. ``print``).
        clock: the clock of ``time_budget`` (default wall time; ``time.process_time``
            budgets this process's CPU time, independent of other load on the machine).

    Returns:
        :class:`LayerwiseHistory` (the model is trained in place, all layers active).

    Raises:
        ValueError: called under ``torch.no_grad()`` or ``torch.inference_mode()`` (no
            gradient to train on; as :func:`~unrollsci.train.fit`), before anything changes.

    Example:
        >>> import torch
        >>> from unrollsci.operators import MatrixOperator
        >>> from unrollsci.unrolled import ALISTA
        >>> g0 = torch.Generator().manual_seed(0)
        >>> A = torch.randn(20, 40, generator=g0) / 20**0.5
        >>> def draw(g):
        ...     x = torch.randn(16, 40, generator=g) * (torch.rand(16, 40, generator=g) < 0.1)
        ...     return x @ A.T, x
        >>> model = ALISTA(MatrixOperator(A), 3, lam=0.1)
        >>> hist = fit_layerwise(model, draw, draw(g0), lr=1e-2, max_steps=20, val_every=10)
        >>> hist.monotone, len(hist.curve_db)
        (True, 3)
    """
    from .._validation import check_count, check_positive

    for name in ("num_layers", "active_layers", "copy_layer"):
        if not hasattr(model, name):
            raise TypeError(
                f"fit_layerwise needs a layered model with {name!r} (the unrolled lasso "
                f"family); {type(model).__name__} has none."
            )
    if not callable(sampler):
        raise TypeError(f"Expected sampler to be callable (got {type(sampler).__name__}).")
    if not (isinstance(val_data, (tuple, list)) and len(val_data) == 2):
        raise TypeError("Expected val_data to be a pair (y, x) of tensors.")
    for vname, t in zip(("val_data[0] (y)", "val_data[1] (x)"), val_data, strict=True):
        if (
            isinstance(t, torch.Tensor)
            and t.is_floating_point()
            and not bool(torch.isfinite(t).all())
        ):
            # a NaN validation curve would pick no layer and still report a finished run
            raise ValueError(f"Expected finite {vname} (got NaN or Inf).")
    _check_pair("val_data", *val_data, model=model)  # before any step: no bare torch error
    check_positive("lr", lr)
    if isinstance(lr_decays, (str, bytes)) or not hasattr(lr_decays, "__iter__"):
        raise TypeError(
            f"Expected 'lr_decays' to be a sequence of factors, e.g. (0.2, 0.02) "
            f"(got {lr_decays!r})."
        )
    for d in lr_decays:
        check_positive("lr_decays entries", d)
    if vector_lr is not None:
        check_positive("vector_lr", vector_lr)
    if not isinstance(decay_rate, (int, float)) or isinstance(decay_rate, bool):
        raise TypeError(f"Expected decay_rate to be a number (got {type(decay_rate).__name__}).")
    if not 0.0 < float(decay_rate) <= 1.0:
        raise ValueError(f"Expected decay_rate in (0, 1] (got {decay_rate}).")
    check_count("val_every", val_every)
    check_count("patience", patience)
    check_count("max_steps", max_steps)
    check_count("start_layer", start_layer)
    check_count("freeze_below", freeze_below, 0)
    if loss not in ("nmse", "log"):
        raise ValueError(f"Expected loss 'nmse' or 'log' (got {loss!r}).")
    if isinstance(depth_weight, bool) or not isinstance(depth_weight, (int, float)):
        raise TypeError(
            f"Expected depth_weight to be a number (got {type(depth_weight).__name__})."
        )
    if not (math.isfinite(depth_weight) and depth_weight >= 0):
        raise ValueError(f"Expected depth_weight >= 0 and finite (got {depth_weight}).")
    if time_budget is not None:
        check_positive("time_budget", time_budget)
    _check_grad_mode("fit_layerwise")  # as fit: a clear ValueError, not torch's from backward
    y_val, x_val = val_data
    num = int(model.num_layers)
    if start_layer > num:
        raise ValueError(f"Expected start_layer in 1..{num} (got {start_layer}).")
    if freeze_below >= start_layer and freeze_below > 0:
        raise ValueError(
            f"Expected freeze_below < start_layer (got {freeze_below} >= {start_layer}): "
            "a frozen layer cannot be trained."
        )
    frozen_mats = {id(p) for j in range(freeze_below) for p in _layer_matrices(model, j)}
    gen = torch.Generator().manual_seed(seed)
    hist = LayerwiseHistory()
    t0 = time.perf_counter()
    spent = 0.0
    say = log if log is not None else (lambda _line: None)
    vmul = 1.0 if vector_lr is None else float(vector_lr)

    def score(curve: list[float], k: int) -> tuple[int, float]:
        """(length of the non-increasing prefix of the curve, capped at k; layer k's NMSE)."""
        run = next((j for j in range(1, k) if not curve[j] <= curve[j - 1]), k)
        return run, curve[k - 1]

    active_before = model.active_layers
    try:
        for k in range(start_layer, num + 1):
            model.active_layers = k
            if warm_start and k >= 2 and k > start_layer:
                model.copy_layer(k - 2, k - 1)
            layer_t0 = clock()
            layer_budget = None
            if time_budget is not None:
                remaining_weight = sum(range(k, num + 1))
                layer_budget = max(time_budget - spent, 0.0) * k / remaining_weight
            own, vectors = _layer_params(model, k - 1)
            stages: list[tuple[float, bool]] = []
            if new_layer_stage:
                stages.append((lr, True))
            stages += [(lr * d, False) for d in lr_decays]
            layer_steps = 0
            for si, (stage_lr, only_new) in enumerate(stages):
                if only_new:
                    mats, vecs = own, vectors
                else:  # per-layer vectors and stacks (K, ...): row mask, row decay, vector_lr
                    vec_ids = {id(p) for p in vectors}
                    trained = [p for p in model.parameters() if p.requires_grad]
                    vecs = [p for p in trained if id(p) in vec_ids]
                    mats = [p for p in trained if id(p) not in vec_ids and id(p) not in frozen_mats]
                row_decay: list[tuple[nn.Parameter, torch.Tensor]] = []
                if decay_rate != 1.0 and not only_new:
                    fac = _decay_factors(model, k, decay_rate)
                    groups = [{"params": [p], "lr": stage_lr * fac.get(id(p), 1.0)} for p in mats]
                    if vecs:
                        groups.append({"params": vecs, "lr": stage_lr * vmul})
                    row_decay = [(p, fac[id(p)]) for p in vecs if id(p) in fac]
                else:
                    groups = [
                        g
                        for g in (
                            {"params": mats, "lr": stage_lr},
                            {"params": vecs, "lr": stage_lr * vmul},
                        )
                        if g["params"]
                    ]
                if not groups:
                    continue
                frozen = []
                if only_new or frozen_mats:  # skip gradients of matrices not trained
                    keep = {id(p) for p in mats + vecs}
                    frozen = [
                        p for p in model.parameters() if p.requires_grad and id(p) not in keep
                    ]
                    for p in frozen:
                        p.requires_grad_(False)
                try:  # its finally unfreezes, also when the stage's set-up raises
                    opt = torch.optim.Adam(groups)
                    stage_deadline = None
                    if layer_budget is not None:
                        used = clock() - layer_t0
                        stage_deadline = clock() + (layer_budget - used) / (len(stages) - si)
                    curve = layer_nmse_db(model, y_val, x_val)
                    best_run, best = score(curve, k)
                    best_ok = best_run == k
                    best_state = copy_state(model.state_dict())
                    since, steps, by_patience = 0, 0, False
                    while steps < max_steps:
                        y, x = sampler(gen)
                        _, xs = model(y, return_all=True)
                        value = _stage_loss(xs, x, k, loss, depth_weight)
                        opt.zero_grad(set_to_none=True)
                        value.backward()
                        if only_new or freeze_below:
                            for p in vecs:
                                if p.grad is not None:
                                    mask = torch.ones_like(p.grad)
                                    if only_new:
                                        mask.zero_()
                                        mask[k - 1] = 1
                                    mask[:freeze_below] = 0  # zero gradients: Adam never moves them
                                    p.grad.mul_(mask)
                        if not math.isfinite(float(value.detach())):
                            raise FloatingPointError(
                                f"Training loss became {float(value.detach())} at layer {k}; "
                                "lower lr."
                            )
                        check_finite_grads(model, 0, steps, where=f"layer {k}, step {steps}")
                        if row_decay:  # Adam's step of row j, scaled by its factor
                            prev = [p.detach().clone() for p, _ in row_decay]
                            opt.step()
                            with torch.no_grad():
                                for (p, f), p0 in zip(row_decay, prev, strict=True):
                                    p.copy_(p0 + (p - p0) * f)
                        else:
                            opt.step()
                        steps += 1
                        since += 1
                        if steps % val_every == 0 or steps == max_steps:  # (its last step)
                            curve = layer_nmse_db(model, y_val, x_val)
                            run, val = score(curve, k)
                            # a longer non-increasing prefix first (k: the state qualifies), then
                            # layer k's NMSE: a stage where no state qualifies never breaks the
                            # prefix the earlier stages secured (the start state counts)
                            if (-run, val) < (-best_run, best):
                                best, best_run, best_ok, since = val, run, run == k, 0
                                best_state = copy_state(model.state_dict())
                            if since >= patience:
                                by_patience = True
                                break
                            if stage_deadline is not None and clock() > stage_deadline:
                                break
                finally:
                    for p in frozen:
                        p.requires_grad_(True)
                model.load_state_dict(best_state)
                layer_steps += steps
                hist.stages.append(
                    {
                        "layer": k,
                        "lr": stage_lr,
                        "only_new": only_new,
                        "steps": steps,
                        "best_db": best,
                        "monotone": best_ok,
                        "by_patience": by_patience,
                    }
                )
                say(
                    f"layer {k:2d} stage {si} lr {stage_lr:.1e}{' (new)' if only_new else ''}: "
                    f"{steps} steps, val {best:.2f} dB{'' if best_ok else ' (NOT monotone)'}"
                    f"{' [patience]' if by_patience else ''} t={time.perf_counter() - t0:.0f}s"
                )
            spent += clock() - layer_t0
            hist.steps.append(layer_steps)
            hist.layer_db.append(layer_nmse_db(model, y_val, x_val)[k - 1])
    except BaseException:  # the model at its depth as it came (frozen weights: above)
        model.active_layers = active_before
        raise
    model.active_layers = num
    hist.curve_db = layer_nmse_db(model, y_val, x_val)
    hist.monotone = all(hist.curve_db[j] <= hist.curve_db[j - 1] for j in range(1, num))
    hist.seconds = time.perf_counter() - t0
    return hist
