"""The training loop: :func:`fit` and :func:`iterate_batches` (checks: :mod:`._args`,
:mod:`._checks`)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._checks import (  # noqa: F401
    _check_data,
    _check_factor,
    _check_file_path,
    _check_loss,
    _check_resume_epochs,
    _check_resume_stages,
)
from ._data import Batch, History, LossFn, StepMean, _evaluate, iterate_batches  # noqa: F401
from ._gradcheck import check_finite_grads


def fit(
    model: nn.Module,
    loss_fn: LossFn,
    train_data: Any,
    *,
    val_data: Any = None,
    epochs: int = 100,
    lr: float = 1e-3,
    batch_size: int | None = None,
    steps_per_epoch: int | None = None,
    schedule: str = "end_to_end",
    stage_epochs: int | None = None,
    patience: int | None = None,
    seed: int = 0,
    weight_decay: float = 0.0,
    clip_grad: float | None = None,
    lr_decay: float = 1.0,
    lr_factor: Callable[[int], float] | None = None,
    stage_hook: Callable[[nn.Module, int], None] | None = None,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 1,
    resume: str | Path | None = None,
    progress: bool = True,
    callback: Callable[[int, float, float | None], Any] | None = None,
    distributed: bool | None = None,
    mixed_precision: str | None = None,
) -> History:
    """Train ``model`` by Adam on ``loss_fn(model, batch)``, on one process or data-parallel.

    Args:
        model: any ``nn.Module``. For ``schedule="layerwise"`` it must have an
            integer attribute ``num_layers`` and a settable ``active_layers``: stage
            ``k`` trains the first ``k`` layers (all parameters of layers ``< k``
            stay trainable, as in the greedy LISTA-CPSS / ALISTA training).
        loss_fn: ``(model, batch) -> scalar tensor``, the *mean* over the samples of the
            batch (so that a batch split across processes gives the same loss).
        train_data: tensors, an iterable of batches, or a sampler (see
            :func:`iterate_batches`).
        val_data: same forms; evaluated after each epoch without gradients.
        epochs: epochs (per stage for the layer-wise schedule unless ``stage_epochs``).
        schedule: ``"end_to_end"`` (default: all layers together) or ``"layerwise"``
            (stage ``k`` trains the first ``k`` layers; see ``model``).
        stage_epochs: layer-wise schedule only: epochs per stage (default ``epochs``).
        lr, weight_decay: Adam settings. A fresh optimizer starts every stage.
        batch_size: the *global* batch: samples per step for tensors and samplers
            (:func:`iterate_batches`); for an iterable of batches (a list of graphs,
            systems, a DataLoader), the number of batches per step, their losses
            averaged (default 1). Under torch.distributed each process gets its share of
            every global batch, so the result does not depend on the number of processes.
        steps_per_epoch: batches drawn from a sampler per epoch (a sampler only).
        patience: stop a stage after this many epochs without improvement of the
            validation loss (of the training loss without ``val_data``); the best
            weights (by that loss) are restored.
        seed: seeds the data order and torch's global generator (dropout): with ``seed``
            on one process and rank 0, with a stream derived from ``(seed, rank)`` on the
            other ranks, so that their rows get independent dropout masks.
        clip_grad: clip the gradient norm to this value.
        lr_decay: multiply the learning rate by this factor after every epoch
            (restarting from ``lr`` at each layer-wise stage); 1 keeps it constant.
            Decaying steps let Adam settle to the low errors sparse coding needs.
        lr_factor: a schedule ``lr_factor(step) -> float``, called before every
            optimizer step with the number of optimizer steps taken so far (counted
            over all epochs and layer-wise stages, starting at 0). That step uses
            ``lr * lr_decay**epoch_in_stage * lr_factor(step)``. The factor must be
            finite and ``>= 0`` (else ``ValueError``). It may also read a clock, e.g.
            a cosine decay over a wall-clock budget (under torch.distributed rank 0's
            value is used on every rank). None keeps the factor at 1.
        stage_hook: layer-wise schedule only: called as ``stage_hook(model, k)``
            before stage ``k`` trains (e.g. to warm-start layer ``k`` from layer
            ``k - 1`` with :meth:`unrollsci.unrolled.UnrolledLasso.copy_layer`).
        checkpoint: path of one checkpoint file (:func:`save_checkpoint`), written by
            rank 0 only, every ``checkpoint_every`` epochs and at the end: the model
            (the final, best-restored one at the end) and the training state that
            ``resume`` needs.
        checkpoint_every: epochs between checkpoint writes.
        resume: a checkpoint written by ``fit(checkpoint=...)``: continue that run (on
            any number of processes) with the same arguments, and ``val_data`` and
            ``lr_factor`` given or not as then (else ``ValueError``; ``callback`` may
            change, e.g. be left out to continue a run it halted).
            The result equals an uninterrupted run (the model continues at the depth
            ``active_layers`` it trained at; every rank's torch generator state is
            saved; a rank beyond the checkpoint's world size starts a fresh stream derived
            from ``(seed, rank, epoch)``). ``epochs`` may be larger than
            before (the run goes on, as an uninterrupted run with the larger ``epochs``),
            except for the layer-wise schedule without ``stage_epochs`` once a stage has
            finished: ``epochs`` is then the length of every stage, and the finished
            stages had the old one, so a changed ``epochs`` raises ``ValueError``.
        progress: show a tqdm progress bar on stderr (rank 0 only; none when
            ``sys.stderr`` is None or closed).
        callback: called as ``callback(epoch, train_loss, val_loss)`` on every rank,
            with the same (reduced) losses; returning True ends the training (rank 0's
            answer counts on every rank).
        distributed: None (default): data-parallel when launched by ``torchrun`` with
            ``WORLD_SIZE > 1`` (the process group is initialized here, NCCL for a CUDA
            model, else gloo) or when a process group of several processes is already
            initialized. True: data-parallel on any initialized group or torchrun launch,
            one process included. False: never. The model is wrapped in
            ``DistributedDataParallel``; losses are reduced over the ranks for reporting,
            early stopping and learning-rate decisions, which are the same on every rank.
        mixed_precision: None, ``"bf16"`` (bfloat16 autocast) or ``"fp16"`` (float16
            autocast with a gradient scaler), for the CNN / GNN layers of a float32
            model only (see :mod:`unrollsci.train._precision`); the iterations, clamps,
            certificates and SPD constructions stay in the working precision.

    Returns:
        History of losses per epoch (of the whole run, also when resumed); an epoch's
        ``train_loss`` weights every step by its samples (see :class:`History`).

    Raises:
        FloatingPointError: a NaN/Inf training or validation loss, or a NaN/Inf gradient
            (naming the parameters; not under ``"fp16"``, whose scaler skips such steps).

    Example:
        >>> import torch
        >>> from unrollsci.train import fit
        >>> model = torch.nn.Linear(3, 1)
        >>> x = torch.randn(32, 3, generator=torch.Generator().manual_seed(0))
        >>> loss = lambda m, b: (m(b) - b.sum(1, keepdim=True)).pow(2).mean()
        >>> hist = fit(model, loss, x, epochs=3, batch_size=8, progress=False)
        >>> len(hist.train_loss)
        3
    """
    from ._args import check_data_options, check_fit_args, given_args, progress_bar
    from ._distributed import counted_steps, run_callback, setup, wrap
    from ._precision import grad_scaler
    from ._precision import mixed_precision as low_precision
    from ._resume import apply_resume, check_resume
    from ._same_args import check_same_args, data_size
    from ._state import (
        copy_state,
        decode_optimizer,
        encode_optimizer,
        rank_rng_states,
        save_fit_checkpoint,
        seed_rank_rng,
    )

    low, stages = check_fit_args(
        model,
        loss_fn,
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        steps_per_epoch=steps_per_epoch,
        schedule=schedule,
        stage_epochs=stage_epochs,
        patience=patience,
        seed=seed,
        weight_decay=weight_decay,
        clip_grad=clip_grad,
        lr_decay=lr_decay,
        lr_factor=lr_factor,
        stage_hook=stage_hook,
        checkpoint=checkpoint,
        checkpoint_every=checkpoint_every,
        resume=resume,
        callback=callback,
        distributed=distributed,
        mixed_precision=mixed_precision,
    )
    check_data_options(train_data, steps_per_epoch)
    per_stage = stage_epochs if stage_epochs is not None else epochs
    _check_data("train_data", train_data, per_stage * len(stages))
    if val_data is not None:
        _check_data("val_data", val_data, per_stage * len(stages))
    args = {
        "seed": seed,
        "lr": lr,
        "batch_size": batch_size,
        "steps_per_epoch": steps_per_epoch,
        "schedule": schedule,
        "stage_epochs": stage_epochs,
        "weight_decay": weight_decay,
        "lr_decay": lr_decay,
        "clip_grad": clip_grad,
        "patience": patience,
        "mixed_precision": mixed_precision,
        # which optional inputs were given (a resume: val_data, lr_factor as then)
        **given_args(val_data=val_data, lr_factor=lr_factor, callback=callback),
    }
    saved: dict[str, Any] | None = None
    undo: Callable[[], None] | None = None
    if resume is not None:  # every check first: a refused resume leaves the model as it was
        saved, resumed, depth = check_resume(
            resume,
            model,
            args,
            per_stage,
            len(stages) > 1,
            "stage_epochs" if stage_epochs is not None else "epochs",
        )
        undo = apply_resume(resume, model, resumed, depth)  # (undone if it fails)
    try:
        ctx = setup(distributed, model)
        check_same_args(  # every rank the same: else diverging replicas or a deadlock
            ctx,
            {
                **args,  # (with "val_data given", "callback given", "lr_factor given")
                "epochs": epochs,
                "checkpoint_every": checkpoint_every,
                "layer-wise stages": len(stages),
                "checkpoint given": checkpoint is not None,
                "resumed at epoch": None if saved is None else int(saved["epoch"]),
                # data of another size on some rank: its steps would not match (a deadlock)
                "train_data size": data_size(train_data, steps_per_epoch),
                "val_data size": data_size(val_data, steps_per_epoch),
            },
        )
    except BaseException:  # a refused run leaves the model as it came in
        if undo is not None:
            undo()
        raise
    gen = torch.Generator().manual_seed(seed)
    if saved is not None:
        gen.set_state(saved["generator"])
    seed_rank_rng(seed, ctx, saved)  # each rank its own stream (dropout masks)
    val_gen_seed = seed + 10_007
    hist = History()
    hist.world_size = ctx.world
    start_stage, start_epoch = 0, 0
    if saved is not None:
        for key, value in saved["history"].items():
            setattr(hist, key, list(value) if isinstance(value, (list, tuple)) else value)
        hist.resumed_from_epoch = int(saved["epoch"])
        start_stage, start_epoch = int(saved["stage_index"]), int(saved["epoch_in_stage"])
    t0 = time.perf_counter() - hist.seconds
    track_best = val_data is not None or patience is not None
    epoch_counter = int(saved["epoch"]) if saved else 0
    step_counter = int(saved["step"]) if saved else 0
    bar = None
    if progress and ctx.main:  # (none when stderr is None or closed)
        bar = progress_bar(
            per_stage * len(stages),
            min(epoch_counter, per_stage * len(stages)),
            f"fit {type(model).__name__}",
        )

    def state_now(si: int, e_in_stage: int, stopped: bool, opt: Any, scaler: Any, bk: dict) -> dict:
        return {
            "version": 1,
            "args": args,
            "per_stage_epochs": per_stage,
            "stage_index": si,
            "epoch_in_stage": e_in_stage,
            "stopped": stopped,
            "epoch": epoch_counter,
            "step": step_counter,
            "epoch_lr": bk["epoch_lr"],
            "best": bk["best"],
            "bad": bk["bad"],
            "best_state": bk["best_state"],
            "optimizer": encode_optimizer(opt.state_dict()),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "generator": gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            "torch_rng_ranks": rank_rng_states(ctx),  # (a collective: every rank is here)
            "history": {
                "train_loss": hist.train_loss,
                "val_loss": hist.val_loss,
                "stage": hist.stage,
                "best_val": hist.best_val,
                "best_epoch": hist.best_epoch,
                "stopped_early": hist.stopped_early,
                "seconds": time.perf_counter() - t0,
            },
            "weights": None,
            "world_size": ctx.world,
        }

    # a model with its own precision switch is saved with its own setting, not the
    # training's low precision (a checkpoint written mid-run loaded as a bfloat16 model)
    own = model.precision if isinstance(getattr(type(model), "precision", None), property) else None

    def write(state: dict) -> None:
        if checkpoint is None or not ctx.main:
            return
        now = None if own is None else model.precision
        if own is not None:
            model.precision = own
        try:
            save_fit_checkpoint(checkpoint, model, state)
        finally:
            if own is not None:
                model.precision = now

    halted = False
    final_state: dict | None = None
    depth_before = getattr(model, "active_layers", None)
    mode_before = model.training
    try:
        with low_precision(model, low):
            for si, stage in enumerate(stages):
                if si < start_stage:
                    continue
                resuming = saved is not None and si == start_stage
                if stage:
                    model.active_layers = stage
                    if stage_hook is not None and not resuming:
                        stage_hook(model, stage)
                opt = torch.optim.Adam(
                    [p for p in model.parameters() if p.requires_grad],
                    lr=lr,
                    weight_decay=weight_decay,
                )
                scaler = grad_scaler(low, model)
                # lr * lr_decay**epoch_in_stage, by repeated products as before
                bk: dict[str, Any] = {
                    "best": math.inf,
                    "best_state": None,
                    "bad": 0,
                    "epoch_lr": lr,
                }
                e0, stopped = 0, False
                if resuming:
                    assert saved is not None
                    opt.load_state_dict(decode_optimizer(saved["optimizer"]))
                    if scaler is not None and saved.get("scaler"):
                        scaler.load_state_dict(saved["scaler"])
                    for key in bk:
                        bk[key] = saved[key]
                    e0, stopped = start_epoch, bool(saved["stopped"])
                engine = wrap(model, loss_fn, ctx)
                e = e0
                while e < per_stage and not stopped and not halted:
                    model.train()
                    mean = StepMean()
                    for parts, weights, size in counted_steps(
                        train_data, batch_size, gen, steps_per_epoch, ctx
                    ):
                        opt.zero_grad(set_to_none=True)
                        loss = engine(parts, weights)
                        value = float(loss.detach())
                        if ctx.enabled:
                            value = ctx.all_sum([value])[0]  # (weighted: the global mean)
                        if not math.isfinite(value):
                            raise FloatingPointError(
                                f"Training loss became {value} at epoch "
                                f"{epoch_counter}; lower lr or check the data."
                            )
                        if scaler is not None:
                            scaler.scale(loss).backward()
                        else:  # (float16: the scaler skips steps of inf/NaN gradients itself)
                            loss.backward()
                            check_finite_grads(model, epoch_counter, step_counter)
                        if clip_grad is not None:
                            if scaler is not None:
                                scaler.unscale_(opt)
                            nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
                        if lr_factor is not None:
                            factor = _check_factor(lr_factor(step_counter), step_counter)
                            factor = ctx.from_main([factor])[0] if ctx.enabled else factor
                            for group in opt.param_groups:
                                group["lr"] = bk["epoch_lr"] * factor
                        if scaler is not None:
                            scaler.step(opt)
                            scaler.update()
                        else:
                            opt.step()
                        step_counter += 1
                        mean.add(value, size)
                    if mean.count == 0:
                        raise ValueError(
                            f"Epoch {epoch_counter} saw no training batch: train_data "
                            f"({type(train_data).__name__}) yielded nothing. An exhausted "
                            "generator or iterator, or an empty dataset, is the likely "
                            "cause; pass a list of batches, tensors, a DataLoader, or a "
                            "sampler with steps_per_epoch >= 1."
                        )
                    train_loss = mean.value()
                    val_loss = None
                    if val_data is not None:
                        val_loss = _evaluate(
                            model,
                            loss_fn,
                            val_data,
                            torch.Generator().manual_seed(val_gen_seed),
                            steps_per_epoch,
                            ctx,
                        )
                    if ctx.enabled:  # every rank decides on rank 0's numbers
                        shared = ctx.from_main(
                            [train_loss, math.nan if val_loss is None else val_loss]
                        )
                        train_loss = shared[0]
                        val_loss = None if val_loss is None else shared[1]
                    if val_loss is not None and not math.isfinite(val_loss):
                        # else it reads as a normal early stop with no best weights
                        raise FloatingPointError(
                            f"Validation loss became {val_loss} at epoch {epoch_counter}; "
                            "check the validation data (NaN or Inf in it?) or lower lr."
                        )
                    hist.train_loss.append(train_loss)
                    hist.stage.append(stage)
                    if val_loss is not None:
                        hist.val_loss.append(val_loss)
                    score = val_loss if val_loss is not None else train_loss
                    if score < bk["best"]:
                        bk["best"], bk["bad"] = score, 0
                        if track_best:
                            bk["best_state"] = copy_state(model.state_dict())
                        if stage == stages[-1]:
                            hist.best_val, hist.best_epoch = score, epoch_counter
                    else:
                        bk["bad"] += 1
                    halted = run_callback(callback, ctx, epoch_counter, train_loss, val_loss)
                    epoch_counter += 1
                    e += 1
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(
                            stage=stage or "-",
                            loss=f"{train_loss:.3e}",
                            val=f"{val_loss:.3e}" if val_loss is not None else "-",
                        )
                    bk["epoch_lr"] *= lr_decay
                    for group in opt.param_groups:
                        group["lr"] = bk["epoch_lr"]
                    if patience is not None and bk["bad"] >= patience:
                        hist.stopped_early = stopped = True
                        if bar is not None:
                            bar.update(per_stage - e)
                    if checkpoint is not None:
                        state = state_now(si, e, stopped, opt, scaler, bk)
                        final_state = state
                        if (
                            epoch_counter % checkpoint_every == 0
                            or e == per_stage
                            or stopped
                            or halted
                        ):
                            write(state)
                if halted:
                    hist.stopped_early = True
                if bk["best_state"] is not None and track_best:
                    if final_state is not None:
                        final_state["weights"] = copy_state(model.state_dict())
                    model.load_state_dict(bk["best_state"])
                if halted:
                    break
    except BaseException:  # the model at the depth and train/eval mode it came in
        if stages[-1]:
            model.active_layers = depth_before
        model.train(mode_before)
        raise
    finally:
        if bar is not None:
            bar.close()
    if stages[-1] and not halted:
        model.active_layers = stages[-1]
    hist.seconds = time.perf_counter() - t0
    if checkpoint is not None:
        if final_state is None:  # resumed a finished run: nothing trained, keep its state
            assert saved is not None
            final_state = dict(saved)
        final_state["history"]["seconds"] = hist.seconds
        write(final_state)
        ctx.barrier()  # the file exists on every rank's return
    return hist
