"""``unrollsci bench lista``: the problem, the classical curves and the training.

The reporting, merging and ``main`` are in :mod:`.lista`.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from typing import Any

import torch

from ._common import keep_caller_rng

# name -> (class name, options, supervised?)
MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "LISTA": ("LISTA", {}),
    "LISTA-CP": ("LISTACP", {}),
    "LISTA-CPSS": ("LISTACP", {"support_selection": True}),
    "ALISTA": ("ALISTA", {}),
    "UnrolledFISTA": ("UnrolledFISTA", {}),
    "ADMM-Net": ("ADMMNet", {}),
    # the paper's threshold s_k ||z_k|| / sqrt(m) (Borgerding et al. 2017); s = 1.1 is the
    # best fixed multiple of the untrained AMP here (16 iterations: 1.0 -29.9, 1.1 -31.0,
    # 1.2 -30.9, 1.4 -28.2 dB noiseless). The calibrated lasso threshold floored at
    # lam / (1 - b) stalled LAMP at -17 dB and made layers 13-16 worse.
    "LAMP": ("LAMP", {"threshold": "residual", "scale_init": 1.1}),
    # one B shared by all layers (the default of Chen et al.'s reimplementation, whose
    # noiseless LAMP curve the papers show); staged runs only (--models LAMP-tied)
    "LAMP-tied": ("LAMP", {"threshold": "residual", "scale_init": 1.1, "tied": True}),
    # LAMP with the Bernoulli-Gaussian MMSE shrinkage, initialised at Bayes AMP with the
    # true prior of the benchmark (rho = p = 0.1, sigma_x = 1)
    "LAMP-BG": ("LAMP", {"denoiser": "bg", "rho": 0.1, "sigma_x": 1.0}),
}
# models a run without --models leaves out (their rows come from staged runs)
NOT_DEFAULT = ("LAMP-tied",)
# classical curves (no training): drawn dashed, left out of "best learned"
CLASSICAL = ("ISTA", "FISTA", "AMP", "BG-AMP")


def make_problem(m: int, n: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(m, n)`` i.i.d. Gaussian matrix with unit-norm columns."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(m, n, generator=g, dtype=torch.float64)
    return (a / a.norm(dim=0)).to(dtype)


def sample(
    a: torch.Tensor, batch: int, p: float, snr_db: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``(y, x)``: ``x`` Bernoulli(p) x N(0,1), ``y = A x + noise`` at ``snr_db``."""
    m, n = a.shape
    x = torch.randn(batch, n, generator=generator, dtype=a.dtype)
    x = x * (torch.rand(batch, n, generator=generator, dtype=a.dtype) < p)
    y = x @ a.T
    if math.isfinite(snr_db):
        sigma = y.norm(dim=1, keepdim=True) / math.sqrt(m) * 10 ** (-snr_db / 20)
        y = y + sigma * torch.randn(batch, m, generator=generator, dtype=a.dtype)
    return y, x


def oracle_nmse_db(a: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> float:
    """NMSE of least squares on the true support (the noise-limited floor)."""
    a64, y64, x64 = a.double(), y.double(), x.double()
    err, ref = 0.0, 0.0
    for i in range(x64.shape[0]):
        s = x64[i] != 0
        est = torch.zeros_like(x64[i])
        if bool(s.any()):
            est[s] = torch.linalg.lstsq(a64[:, s], y64[i][:, None]).solution[:, 0]
        err += float((est - x64[i]).pow(2).sum())
        ref += float(x64[i].pow(2).sum())
    return 10 * math.log10(max(err, 1e-300) / ref)


def _nmse(x: torch.Tensor, x_true: torch.Tensor) -> float:
    from ..losses import nmse_db

    return float(nmse_db(x.double(), x_true.double()))


def _classical(op: Any, y: torch.Tensor, x: torch.Tensor, lam: float, k_max: int, p: float) -> dict:
    from .. import solvers
    from .._validation import ConvergenceWarning

    out: dict[str, list[float]] = {name: [] for name in CLASSICAL}
    y64 = y.double()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for k in range(1, k_max + 1):
            out["ISTA"].append(_nmse(solvers.ista(op, y64, lam, max_iter=k, tol=0).x, x))
            out["FISTA"].append(
                _nmse(solvers.fista(op, y64, lam, max_iter=k, tol=0, restart=False).x, x)
            )
            out["AMP"].append(_nmse(solvers.amp(op, y64, lam, max_iter=k, tol=0).x, x))
            # Bayes AMP with the true prior (not a lasso solver: no lam)
            out["BG-AMP"].append(
                _nmse(solvers.bg_amp(op, y64, p, sigma_x=1.0, max_iter=k, tol=0).x, x)
            )
    return out


def kkt_stage_lam(stage: int, num_layers: int, lam: float, lam_start: float | None) -> float:
    """Lasso weight of the KKT loss at layer-wise stage ``stage`` (``1..num_layers``).

    ``lam_start`` None: ``lam`` at every stage. Else a continuation (homotopy): the
    weight falls geometrically from ``lam_start`` at stage 1 to ``lam`` at the last
    stage, so the first layers aim at a sparser lasso solution, reachable in few
    layers, and the full network at the lasso solution with weight ``lam``.
    """
    if lam_start is None or num_layers <= 1:
        return lam
    if not (lam > 0 and lam_start > 0):
        raise ValueError(f"Expected lam > 0 and lam_start > 0 (got {lam}, {lam_start}).")
    frac = (num_layers - stage) / (num_layers - 1)
    return float(lam * (lam_start / lam) ** frac)


def _train(
    model: Any,
    name: str,
    a: torch.Tensor,
    cfg: dict,
    snr: float,
    seed: int,
    val: tuple[torch.Tensor, torch.Tensor],
    loss_kind: str,
    lam_kkt: float,
    progress: bool,
) -> dict:
    from ..losses import kkt_residual, mse
    from ..train import fit

    p = cfg["p"]

    def sampler(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return sample(a, cfg["batch"], p, snr, gen)

    op = model.operator
    if loss_kind == "kkt":
        # the residual's step t, in units of 1 / ||A||^2 (any t > 0 vanishes exactly at
        # the lasso solutions), and the power of the residual that is averaged
        step = cfg.get("kkt_step", 1.0) / op.norm() ** 2
        power = cfg.get("kkt_power", 2)
        lam_start = cfg.get("lam_kkt_start")

        def loss_fn(mdl: Any, batch: Any) -> torch.Tensor:
            y, _ = batch
            lam = kkt_stage_lam(mdl.active_layers, mdl.num_layers, lam_kkt, lam_start)
            return kkt_residual(op, mdl(y), y, lam, step=step).pow(power).mean()
    else:

        def loss_fn(mdl: Any, batch: Any) -> torch.Tensor:
            y, x = batch
            return mse(mdl(y), x)

    def warm_start(mdl: Any, stage: int) -> None:
        # a new layer starts from the trained constants of the layer below it
        if stage >= 2:
            mdl.copy_layer(stage - 2, stage - 1)

    budget = dict(cfg["budget"].get(name, cfg["budget"]["default"]))
    if cfg.get("stage_epochs") is not None:
        budget["epochs"] = cfg["stage_epochs"]
    cpu0 = time.process_time()
    hist = fit(
        model,
        loss_fn,
        sampler,
        val_data=val,
        schedule="layerwise",
        stage_epochs=budget["epochs"],
        steps_per_epoch=budget["steps"],
        lr=budget["lr"],
        lr_decay=budget["decay"],
        seed=seed,
        progress=progress,
        stage_hook=warm_start,
    )
    return {
        "train_seconds": hist.seconds,
        "cpu_seconds": time.process_time() - cpu0,
        "final_val_loss": hist.val_loss[-1] if hist.val_loss else None,
        "budget": budget,
    }


def _full_config() -> dict:
    return {
        "m": 250,
        "n": 500,
        "p": 0.1,
        "K": 16,
        "snr_db": [math.inf, 40.0],
        "n_test": 1000,
        "n_val": 256,
        "batch": 64,
        "lam": 0.1,
        # KKT-loss LISTA (test NMSE at 16 layers, LISTA budget): lam 0.003 +0.8 dB (a small
        # lam blinds the KKT residual to sparsity), 0.1 -9.85, 0.2 -8.71 dB; 1-epoch-per-stage
        # trials: 0.03 -0.2, 0.05 -3.1, 0.1 -4.8, 0.15 -5.3, 0.2 -5.8 dB
        "lam_kkt": 0.1,
        "lam_kkt_start": None,
        # the residual's step t = kkt_step / ||A||^2 and the loss mean(|r|^kkt_power):
        # chosen by validation NMSE (256 vectors, layer-wise budget of LISTA, lam 0.1):
        # t = 1/L with |r|^2 (the old default) -9.9 dB on test; with |r|: t = 3/L -13.24,
        # 10/L -13.95, 30/L -11.13 dB (validation). A larger t leaves small off-support
        # entries almost unpenalized (r_i = x_i / t) and weighs the gradient condition on
        # the support more; |r| instead of |r|^2 keeps hard vectors from dominating.
        "kkt_step": 10.0,
        "kkt_power": 1,
        "seed": 0,
        "budget": {
            # layer-wise: per stage `epochs` x `steps` Adam steps (fresh batches), lr
            # multiplied by `decay` after every epoch; ALISTA and LISTA-CPSS, the two
            # models that reach low NMSE, get the longest training.
            "default": {"epochs": 3, "steps": 60, "lr": 5e-4, "decay": 0.5},
            "LISTA": {"epochs": 3, "steps": 100, "lr": 5e-4, "decay": 0.5},
            "ALISTA": {"epochs": 6, "steps": 150, "lr": 5e-3, "decay": 0.5},
            "LISTA-CPSS": {"epochs": 4, "steps": 150, "lr": 5e-4, "decay": 0.5},
            "UnrolledFISTA": {"epochs": 3, "steps": 60, "lr": 5e-3, "decay": 0.5},
            "ADMM-Net": {"epochs": 3, "steps": 60, "lr": 5e-3, "decay": 0.5},
            # a small lr: the untrained model (Bayes AMP) is already near the floor at
            # 40 dB, and larger steps on the 16 matrices B_k add error there
            "LAMP-BG": {"epochs": 6, "steps": 100, "lr": 2e-4, "decay": 0.5},
        },
    }


def _quick_config() -> dict:
    cfg = _full_config()
    cfg.update({"m": 30, "n": 60, "K": 3, "n_test": 50, "n_val": 32, "batch": 16})
    cfg["budget"] = {"default": {"epochs": 1, "steps": 3, "lr": 1e-3, "decay": 0.5}}
    cfg.update({"val_every": 5, "patience": 10, "max_steps": 10})  # --staged
    return cfg


# The staged layer-wise schedule (unrollsci.train.fit_layerwise) of Chen et al. 2018: base
# lr, then 0.2 and 0.02 of it, each stage until validation stops improving; the thresholds
# and steps are softplus-parameterized (a log scale), so they get `vector_lr` times the rate
# to move by the relative amounts a raw threshold moves at the base rate. `share` splits the
# time budget of a run between the models it trains.
# Optional keys: `batch_scale` (training batch = cfg["batch"] times it, default 1),
# `new_layer_stage`, `lr_decays` and `decay_rate` (as fit_layerwise), and `resume`: the options that
# replace these when training continues from a checkpoint (`--resume`).
STAGED: dict[str, dict[str, Any]] = {
    # untied LISTA (16 full W_e and S_k): the schedule of LISTA-CP (Chen et al. 2018 train
    # it the same way)
    "LISTA": {
        "lam": 0.4,
        "lr": 5e-4,
        "vector_lr": 20.0,
        "share": 1.0,
        "resume": {"new_layer_stage": False, "lr_decays": (0.2, 0.04)},
    },
    "ALISTA": {
        "lam": 0.4,
        # not layer by layer (the greedy new-layer stage is myopic for ALISTA's 2 constants
        # a layer: docs/lista_accuracy.md): the constants start at the best schedule
        # gamma_k = g, theta_k = t0 r^(k-1) on the validation set (`schedule_init`), then
        # all 32 are trained at once for the last layer's log NMSE, plus 0.1 x the mean of
        # every layer's (keeps the curve non-increasing), on batches of 256
        "init": "schedule",
        "start_layer": "last",
        "new_layer_stage": False,
        "lr_decays": (1.0, 0.2),
        "loss": "log",
        "depth_weight": 0.1,
        "batch_scale": 4,
        "lr": 1e-2,
        "vector_lr": 1.0,
        "share": 1.0,
        # continuing at the last layer: all 32 constants at once, trained for the output of
        # layer 16 (a greedy new-layer stage is myopic: docs/lista_accuracy.md)
        "resume": {"lr": 1e-3, "new_layer_stage": False, "lr_decays": (1.0, 0.2)},
    },
    "LISTA-CP": {
        "lam": 0.4,
        "lr": 5e-4,
        "vector_lr": 20.0,
        "share": 1.0,
        # continuing at the last layer: all layers at once at 1e-4, then 2e-5 (at 5e-4 the
        # continued training lost 0.3 dB in 150 steps; at 1e-4 it gained 0.3 dB)
        "resume": {"new_layer_stage": False, "lr_decays": (0.2, 0.04)},
    },
    "LISTA-CPSS": {
        "lam": 0.4,
        "lr": 5e-4,
        "vector_lr": 20.0,
        "share": 1.0,
        "resume": {"new_layer_stage": False, "lr_decays": (0.2, 0.04)},
    },
    "LAMP": {
        "lam": 0.1,
        "lr": 5e-4,
        "vector_lr": 20.0,
        "share": 1.0,
        "resume": {"new_layer_stage": False, "lr_decays": (1.0, 0.2)},
    },
}
# the tied LAMP: in Chen et al.'s code every layer's variables include the shared B, so B
# is trained with each new layer at the base rate: here all layers at lr, then 0.2 and 0.02
# of it (noiseless validation at 16 layers -48.55 dB; LAMP's schedule, which trains B only
# with layer 1 at lr and leaves a one-number new-layer stage, gave -47.95 dB)
STAGED["LAMP-tied"] = {
    **STAGED["LAMP"],
    "new_layer_stage": False,
    "lr_decays": (1.0, 0.2, 0.02),
}


# the schedule keys `bench lista --staged ... --set KEY=VALUE` may replace, and their types
SCHEDULE_KEYS: dict[str, Any] = {
    "lr": float,
    "vector_lr": float,
    "batch_scale": float,
    "lr_decays": lambda text: tuple(float(v) for v in text.split(",")),
    "new_layer_stage": lambda text: {"true": True, "false": False}[text.lower()],
    "loss": str,
    "depth_weight": float,
}


@keep_caller_rng
def train_staged(
    name: str,
    a: torch.Tensor,
    cfg: dict,
    snr: float,
    val: tuple[torch.Tensor, torch.Tensor],
    time_budget: float,
    checkpoint: Any = None,
    log: Any = print,
    resume: Any = None,
    start_layer: int | None = None,
    freeze_below: int = 0,
    decay_rate: float | None = None,
    overrides: dict[str, Any] | None = None,
    wall_clock: bool = False,
) -> tuple[Any, dict]:
    """Build model ``name`` and train it with :func:`unrollsci.train.fit_layerwise`.

    ``time_budget`` is in CPU seconds of this process (wall seconds with ``wall_clock``: a
    run that must end by a given time on a loaded machine). With ``resume`` (a checkpoint
    saved by this function) the model is loaded from it and its training continues from
    layer ``start_layer`` (default: the last) with the schedule's ``resume`` options;
    ``info`` then counts the earlier training's seconds in its totals and keeps its record;
    ``freeze_below`` layers keep their constants (:func:`unrollsci.train.fit_layerwise`);
    ``decay_rate`` (default: the schedule's, else 1) decays the rates of earlier layers.
    ``overrides`` replaces schedule keys (applied last; those of :data:`SCHEDULE_KEYS`). A
    fresh model whose schedule has ``init="schedule"`` (ALISTA) starts at
    :func:`schedule_init`; ``start_layer="last"`` trains all layers at once for the last.

    Returns ``(model, info)`` with the per-layer validation curve, steps, times and
    whether the curve is non-increasing. With ``checkpoint`` (a path) the model is saved
    there with :func:`unrollsci.train.save_checkpoint`, ``info`` as its ``extra``.
    """
    from .. import unrolled
    from ..operators import MatrixOperator
    from ..train import fit_layerwise, load_checkpoint, save_checkpoint

    if name not in STAGED:
        raise ValueError(f"No staged schedule for {name!r}; choose from {sorted(STAGED)}.")
    opts = dict(STAGED[name])
    cls_name, kwargs = MODELS[name]
    torch.manual_seed(cfg["seed"])
    before: dict[str, Any] = {}
    if resume is not None:
        model = load_checkpoint(resume, expected=getattr(unrolled, cls_name))
        if model.num_layers != cfg["K"] or model.n != a.shape[1] or model.m != a.shape[0]:
            raise ValueError(f"{resume}: not a {cfg['K']}-layer model of this problem.")
        before = torch.load(resume, weights_only=True).get("extra") or {}
        opts.update(opts.get("resume", {}))
    else:
        model = getattr(unrolled, cls_name)(MatrixOperator(a), cfg["K"], lam=opts["lam"], **kwargs)
    if decay_rate is not None:
        opts["decay_rate"] = float(decay_rate)
    for key, value in (overrides or {}).items():
        if key not in SCHEDULE_KEYS:
            raise ValueError(f"Unknown schedule key {key!r}; choose from {sorted(SCHEDULE_KEYS)}.")
        opts[key] = value
    first = 1 if resume is None else int(start_layer or cfg["K"])
    init_info = None
    if resume is None and opts.get("init") == "schedule":
        init_info = schedule_init(model, val)
        log(f"[{name} snr {snr:g}] schedule init: {init_info}", flush=True)
    if resume is None and opts.get("start_layer") == "last":
        first = cfg["K"]

    batch = int(cfg["batch"] * opts.get("batch_scale", 1))

    def sampler(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return sample(a, batch, cfg["p"], snr, gen)

    load0 = os.getloadavg() if hasattr(os, "getloadavg") else None
    cpu0, t0 = time.process_time(), time.perf_counter()
    hist = fit_layerwise(
        model,
        sampler,
        val,
        lr=opts["lr"],
        vector_lr=opts["vector_lr"],
        decay_rate=float(opts.get("decay_rate", 1.0)),
        new_layer_stage=bool(opts.get("new_layer_stage", True)),
        lr_decays=tuple(opts.get("lr_decays", (0.2, 0.02))),
        val_every=cfg.get("val_every", 50),
        patience=cfg.get("patience", 1000),
        max_steps=cfg.get("max_steps", 20_000),
        time_budget=time_budget,
        start_layer=first,
        freeze_below=freeze_below,
        loss=str(opts.get("loss", "nmse")),
        depth_weight=float(opts.get("depth_weight", 0.0)),
        # CPU seconds by default: the budget does not shrink under load
        clock=time.perf_counter if wall_clock else time.process_time,
        seed=cfg["seed"],
        log=lambda line: log(f"[{name} snr {snr:g}] {line}", flush=True),
    )
    info = {
        "model": name,
        "snr_db": str(snr),
        "val_curve_db": hist.curve_db,
        "val_layer_db_when_trained": hist.layer_db,
        "monotone": hist.monotone,
        "steps_per_layer": hist.steps,
        "train_seconds": time.perf_counter() - t0,
        "cpu_seconds": time.process_time() - cpu0,
        "threads": torch.get_num_threads(),
        "schedule": {k: v for k, v in opts.items() if k not in ("share", "resume")},
        "time_budget": time_budget,
        "budget_clock": "wall" if wall_clock else "cpu",
        # the machine is shared: its 1/5/15-minute load averages at the start and the end
        "load_average": [load0, os.getloadavg() if hasattr(os, "getloadavg") else None],
    }
    if init_info is not None:
        info["schedule_init"] = init_info
    if resume is not None:  # totals include the training the checkpoint had
        info["resumed_at_layer"] = first
        info["frozen_layers"] = freeze_below
        info["before_resume"] = before
        for key in ("train_seconds", "cpu_seconds"):
            info[key] += float(before.get(key, 0.0))
    if checkpoint is not None:
        save_checkpoint(model, checkpoint, extra=info)
    return model, info


def schedule_init(
    model: Any,
    val: tuple[torch.Tensor, torch.Tensor],
    gammas: tuple[float, ...] = (0.85, 0.9, 0.95, 1.0),
    theta_scales: tuple[float, ...] = (1.0, 1.5, 2.0, 3.0),
    ratios: tuple[float, ...] = (0.7, 0.75, 0.8, 0.85),
) -> dict[str, Any]:
    """Start an ALISTA model at the best three-number schedule on the validation set.

    Every ``gamma_k = g`` and ``theta_k = s lam r^(k - 1)`` (``W`` has unit diagonal, so
    ``g = 1`` is the step of Liu et al.'s initialisation; the threshold falls
    geometrically as the error does) over the grid ``gammas x theta_scales x ratios``;
    kept: the lowest last-layer validation NMSE among the non-increasing curves (any
    curve if none is). Forward passes only. Returns the choice and its validation curve.
    """
    from ..train import layer_nmse_db
    from ..unrolled._base import softplus_inverse

    k = int(model.num_layers)
    best: dict[str, Any] | None = None
    for g in gammas:
        for s in theta_scales:
            for r in ratios:
                theta = [s * model.lam * r**j for j in range(k)]
                _set_constants(model, [g] * k, theta, softplus_inverse)
                curve = layer_nmse_db(model, *val)
                ok = all(b <= a for a, b in zip(curve, curve[1:], strict=False))
                key = (not ok, curve[-1])
                if best is None or key < best["key"]:
                    best = {"key": key, "gamma": g, "theta_scale": s, "ratio": r, "curve": curve}
    assert best is not None
    theta = [best["theta_scale"] * model.lam * best["ratio"] ** j for j in range(k)]
    _set_constants(model, [best["gamma"]] * k, theta, softplus_inverse)
    return {
        "gamma": best["gamma"],
        "theta_scale": best["theta_scale"],
        "ratio": best["ratio"],
        "val_curve_db": best["curve"],
    }


def _set_constants(model: Any, gamma: list[float], theta: list[float], inv: Any) -> None:
    with torch.no_grad():
        for param, values in ((model.gamma, gamma), (model.theta, theta)):
            raw = inv(torch.tensor(values, dtype=torch.float64))
            param.copy_(raw.to(param.dtype))
