"""Image deblurring at 256^2 (``unrollsci bench deblur``): issue 20.

Problem: random-ellipse phantoms (:func:`unrollsci.imaging.random_ellipses`, values in
[0, 1]) blurred by a Gaussian (``Convolution``, zero boundary) plus white noise at
``snr`` dB (relative to the blurred image's RMS). PSNR with peak 1.

Classical: FISTA (no restart, step ``1/||A||^2``, from zero) with the prox
:func:`unrollsci.unrolled.haar_shrink` (undecimated Haar analysis shrinkage, a TV-like
convex penalty), ``lam`` picked on a grid by the validation PSNR after ``fista_iters``
iterations. Its iterations are the library's step functions (``ista_step``,
``fista_momentum``), the loop of :func:`unrollsci.solvers.fista` without the stopping test.

Learned: :class:`unrollsci.unrolled.UnrolledAnalysisFISTA` (``K`` layers, learned
``precond_size^2`` step filters, ``channels`` analysis / synthesis filters and thresholds
per layer), starting from FISTA with the picked ``lam``, trained with Adam on phantoms of
``train_size^2`` (the model is made only of filters, so it applies to 256^2 unchanged) on the
per-layer losses weighted by the squared depth, for ``steps`` steps or ``train_seconds``,
whichever comes first, keeping the weights of the best validation PSNR (at full size).
Before training (``warm_start``, on by default) the step filters and the Haar thresholds are
initialized layer by layer in closed form on the training set
(:meth:`UnrolledAnalysisFISTA.warm_start`: least-squares step filters, thresholds on a grid);
the PSNR of that initialization is reported too.

Reported on held-out 256^2 phantoms: FISTA-1000's PSNR ``P``; the first FISTA iteration
whose PSNR reaches ``P`` and its wall time; the first model layer whose PSNR reaches ``P``
and the wall time of a forward pass through that many layers. The model's time and
FISTA's time to ``P`` are timed round robin in one process (median of ``repeats``);
FISTA-1000's time is the sum of its steps in the traced run (the PSNR evaluation is not
timed). CPU, one thread, one batch of all test images; the machine is shared (load
average in the JSON).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from typing import Any

import torch

from .._argtypes import float_arg, positive_int_arg
from ..train._state import copy_state
from ._common import (
    figure_path,
    keep_caller_rng,
    markdown_table,
    new_figure,
    output_dir_arg,
    parse_bench_args,
    save_figure,
    write_results,
    write_text,
)

__all__ = ["main", "psnr", "blur_operator"]


def blur_operator(size: int, sigma: float, kernel: int) -> Any:
    """Gaussian blur (normalised ``kernel x kernel``, std ``sigma`` px) on ``size^2`` images."""
    from ..operators import Convolution

    r = torch.arange(kernel, dtype=torch.float32) - (kernel - 1) / 2
    h = torch.exp(-(r[:, None] ** 2 + r[None] ** 2) / (2 * sigma**2))
    return Convolution(h / h.sum(), (size, size))


def psnr(x: torch.Tensor, ref: torch.Tensor) -> float:
    """Mean over images of ``10 log10(1 / MSE)`` (peak 1)."""
    mse = (x - ref).pow(2).mean(dim=(-2, -1)).clamp_min(1e-30)
    return float((-10.0 * torch.log10(mse)).mean())


def _data(op: Any, count: int, size: int, snr: float, seed: int) -> tuple[Any, Any]:
    from ..imaging import random_ellipses

    x = random_ellipses(count, size, seed=seed)
    with torch.no_grad():
        y = op(x)
    rms = y.pow(2).mean(dim=(-2, -1), keepdim=True).sqrt()
    noise = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed + 7))
    return x, y + rms * 10 ** (-snr / 20) * noise


def fista_trace(
    op: Any, y: torch.Tensor, x: torch.Tensor, lam: float, iters: int
) -> tuple[list[float], list[float], torch.Tensor]:
    """FISTA with :func:`haar_shrink`: PSNR after each iteration and the cumulative wall
    time of the iterations (PSNR evaluation excluded)."""
    from ..solvers import fista_momentum, ista_step
    from ..unrolled import haar_shrink

    step = 1.0 / op.norm() ** 2
    xk = torch.zeros_like(y)
    x_prev, t = xk, torch.ones(())
    ps, ts, total = [], [], 0.0
    with torch.no_grad():
        for _ in range(iters):
            t0 = time.perf_counter()
            t, beta = fista_momentum(t)
            v = xk + beta * (xk - x_prev)
            x_prev, xk = xk, ista_step(op, v, y, step, step * lam, haar_shrink)
            total += time.perf_counter() - t0
            ts.append(total)
            ps.append(psnr(xk, x))
    return ps, ts, xk


def _fista_run(op: Any, y: torch.Tensor, lam: float, iters: int) -> torch.Tensor:
    from ..solvers import fista_momentum, ista_step
    from ..unrolled import haar_shrink

    step = 1.0 / op.norm() ** 2
    xk = torch.zeros_like(y)
    x_prev, t = xk, torch.ones(())
    for _ in range(iters):
        t, beta = fista_momentum(t)
        v = xk + beta * (xk - x_prev)
        x_prev, xk = xk, ista_step(op, v, y, step, step * lam, haar_shrink)
    return xk


def _train(model: Any, cfg: dict[str, Any], val: tuple[Any, Any, Any], log: Any) -> dict:
    """Adam on depth-weighted per-layer MSE over ``train_size^2`` phantoms."""
    op_small = model.operator
    xt, yt = _data(op_small, cfg["n_train"], cfg["train_size"], cfg["snr"], cfg["seed"] + 1)
    big_op, xv, yv = val
    gen = torch.Generator().manual_seed(cfg["seed"])
    opt = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
    k = model.num_layers
    weights = torch.arange(1, k + 1, dtype=torch.float32) ** 2

    warm = None
    if cfg.get("warm_start", False):
        t_ws = time.perf_counter()
        mse = model.warm_start(yt, xt)
        warm = {"train_mse_by_layer": mse, "seconds": time.perf_counter() - t_ws}
        with torch.no_grad():
            _, xs = model.for_operator(big_op)(yv, return_all=True)
        warm["val_psnr_db_by_layer"] = [psnr(z, xv) for z in xs]
        log(f"  warm start: training PSNR by layer {[round(-10 * math.log10(e), 2) for e in mse]}")

    def val_psnr() -> float:
        with torch.no_grad():
            return psnr(model.for_operator(big_op)(yv), xv)

    best, best_step = val_psnr(), 0
    best_state = copy_state(model.state_dict())
    history = [(0, best)]
    t0 = time.perf_counter()
    step = 0
    while step < cfg["steps"] and time.perf_counter() - t0 < cfg["train_seconds"]:
        step += 1
        idx = torch.randint(0, xt.shape[0], (cfg["batch"],), generator=gen)
        _, xs = model(yt[idx], return_all=True)
        losses = torch.stack([(z - xt[idx]).pow(2).mean() for z in xs])
        loss = (weights * losses).sum() / weights.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % cfg["eval_every"] == 0:
            v = val_psnr()
            history.append((step, v))
            log(f"  step {step}: loss {loss.item():.3e}, validation PSNR {v:.2f} dB")
            if v > best:
                best, best_step, best_state = v, step, copy_state(model.state_dict())
    model.load_state_dict(best_state)
    return {
        "steps_done": step,
        "train_s": time.perf_counter() - t0,
        "best_step": best_step,
        "val_psnr_db": best,
        "history": history,
        "warm_start": warm,
    }


@keep_caller_rng
def run(cfg: dict[str, Any], log: Any) -> dict[str, Any]:
    from ..unrolled import UnrolledAnalysisFISTA

    size = cfg["size"]
    op = blur_operator(size, cfg["sigma"], cfg["kernel"])
    xv, yv = _data(op, cfg["n_val"], size, cfg["snr"], cfg["seed"] + 2)
    xe, ye = _data(op, cfg["n_test"], size, cfg["snr"], cfg["seed"] + 3)
    iters = cfg["fista_iters"]
    # 1. FISTA: lam on the grid by validation PSNR after `iters` iterations
    val_scores = {}
    for lam in cfg["lams"]:
        with torch.no_grad():
            val_scores[lam] = psnr(_fista_run(op, yv, lam, iters), xv)
        log(f"  FISTA-{iters} lam={lam}: validation PSNR {val_scores[lam]:.2f} dB")
    lam = max(val_scores, key=val_scores.get)
    # 2. FISTA on the test images, traced
    ps, ts, _ = fista_trace(op, ye, xe, lam, iters)
    target = ps[-1]
    reach = next(i for i, p in enumerate(ps) if p >= target)  # exists: the last one
    fista = {
        "lam": lam,
        "validation_psnr_db": {str(k): v for k, v in val_scores.items()},
        "psnr_db": target,
        "time_s": ts[-1],
        "iterations_to_target": reach + 1,
        "time_to_target_traced_s": ts[reach],
        "peak_psnr_db": max(ps),
        "peak_iteration": ps.index(max(ps)) + 1,
        "psnr_by_iteration": {
            str(i): ps[i - 1] for i in (1, 2, 5, 10, 20, 50, 100, 200, 500) if i <= iters
        },
    }
    log(f"  FISTA-{iters}: {target:.2f} dB, reached at iteration {reach + 1}")
    # 3. the model, trained on small phantoms, applied at full size
    small = blur_operator(cfg["train_size"], cfg["sigma"], cfg["kernel"])
    torch.manual_seed(cfg["seed"])
    model = UnrolledAnalysisFISTA(
        small,
        cfg["K"],
        lam=lam,
        channels=cfg["channels"],
        filter_size=cfg["filter_size"],
        precond_size=cfg["precond_size"],
    )
    train = _train(model, cfg, (op, xv, yv), log)
    big = model.for_operator(op)
    big.eval()
    with torch.no_grad():
        _, xs = big(ye, return_all=True)
    layer_psnr = [psnr(z, xe) for z in xs]
    k_reach = next((k + 1 for k, p in enumerate(layer_psnr) if p >= target), None)
    res: dict[str, Any] = {
        "config": cfg,
        "fista": fista,
        "train": train,
        "model": {
            "psnr_db_by_layer": layer_psnr,
            "layers_to_target": k_reach,
            "params": sum(p.numel() for p in model.parameters()),
        },
        "load_average_start": list(os.getloadavg()),
    }
    # 4. timing, round robin: model to the target (or all K layers), FISTA to the target
    k_time = k_reach if k_reach is not None else cfg["K"]
    big.active_layers = k_time
    times: dict[str, list[float]] = {"model": [], "fista": []}
    with torch.no_grad():
        big(ye)  # warm-up
        for _ in range(cfg["repeats"]):
            t0 = time.perf_counter()
            big(ye)
            times["model"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            _fista_run(op, ye, lam, reach + 1)
            times["fista"].append(time.perf_counter() - t0)
    t_model = statistics.median(times["model"])
    t_fista = statistics.median(times["fista"])
    res["model"]["time_s"] = t_model
    res["model"]["timed_layers"] = k_time
    res["fista"]["time_to_target_s"] = t_fista
    # speed-ups to FISTA-1000's PSNR are defined only when the model reaches it
    reached = k_reach is not None
    res["speedup_vs_fista_to_target"] = t_fista / t_model if reached else None
    res["speedup_vs_fista_full"] = fista["time_s"] / t_model if reached else None
    res["accepted_10x"] = reached and t_fista / t_model >= 10
    res["load_average_end"] = list(os.getloadavg())
    res["timings_raw_s"] = times
    return res


def _configs(quick: bool) -> dict[str, Any]:
    if quick:
        return dict(
            size=32, train_size=16, sigma=1.0, kernel=5, snr=40.0, lams=[1e-3, 1e-2],
            fista_iters=30, n_val=1, n_test=2, K=3, channels=6, filter_size=3,
            precond_size=3, n_train=8, steps=3, train_seconds=60.0, batch=2, lr=1e-3,
            eval_every=3, repeats=1, seed=0, warm_start=True,
        )  # fmt: skip
    return dict(
        size=256, train_size=128, sigma=2.0, kernel=13, snr=40.0, lams=[1e-4, 3e-4, 1e-3],
        fista_iters=1000, n_val=1, n_test=4, K=4, channels=8, filter_size=3,
        precond_size=7, n_train=128, steps=500, train_seconds=1800.0, batch=4, lr=2e-3,
        eval_every=25, repeats=5, seed=0, warm_start=True,
    )  # fmt: skip


def _report(res: dict[str, Any]) -> str:
    f, m, cfg = res["fista"], res["model"], res["config"]
    rows = [
        {
            "method": f"FISTA-{cfg['fista_iters']} (haar_shrink, lam={f['lam']:g})",
            "iterations / layers": cfg["fista_iters"],
            "PSNR (dB)": f["psnr_db"],
            "wall time (s)": f["time_s"],
        },
        {
            "method": "FISTA to that PSNR",
            "iterations / layers": f["iterations_to_target"],
            "PSNR (dB)": f["psnr_db"],
            "wall time (s)": f["time_to_target_s"],
        },
        {
            "method": "UnrolledAnalysisFISTA (trained)",
            "iterations / layers": m["timed_layers"],
            "PSNR (dB)": m["psnr_db_by_layer"][m["timed_layers"] - 1],
            "wall time (s)": m["time_s"],
        },
    ]
    return (
        f"{cfg['n_test']} held-out {cfg['size']}^2 phantoms, Gaussian blur sigma "
        f"{cfg['sigma']} px, {cfg['snr']} dB; CPU, one thread, batch of all test images\n\n"
        + markdown_table(rows)
        + f"\n\nLayers to FISTA-{cfg['fista_iters']}'s PSNR: {m['layers_to_target']}; "
        f"model PSNR by layer: {[round(p, 2) for p in m['psnr_db_by_layer']]}\n"
        + (
            f"Speed-up to that PSNR: {res['speedup_vs_fista_to_target']:.1f}x vs FISTA to "
            f"the same PSNR, {res['speedup_vs_fista_full']:.1f}x vs FISTA-{cfg['fista_iters']}"
            if m["layers_to_target"] is not None
            else f"The model does not reach that PSNR in {cfg['K']} layers (the row shows "
            "all its layers); no speed-up to that PSNR"
        )
        + f" (accepted >= 10x vs FISTA to the same PSNR: {res['accepted_10x']}). FISTA peaks at "
        f"{f['peak_psnr_db']:.2f} dB (iteration {f['peak_iteration']}).\n"
        f"Training: {res['train']['steps_done']} Adam steps in {res['train']['train_s']:.0f} s "
        f"on {cfg['train_size']}^2 phantoms (best at step {res['train']['best_step']})"
        + (
            f", after a closed-form warm start ({res['train']['warm_start']['seconds']:.0f} s; "
            "validation PSNR by layer "
            f"{[round(v, 2) for v in res['train']['warm_start']['val_psnr_db_by_layer']]})"
            if res["train"].get("warm_start")
            else ""
        )
        + ".\n"
    )


def _plot(res: dict[str, Any], path: Any) -> None:
    f, m = res["fista"], res["model"]
    fig, ax = new_figure(figsize=(5, 3.5))
    it = sorted(int(k) for k in f["psnr_by_iteration"])
    ax.semilogx(it, [f["psnr_by_iteration"][str(i)] for i in it], "o-", label="FISTA")
    ks = list(range(1, len(m["psnr_db_by_layer"]) + 1))
    ax.semilogx(ks, m["psnr_db_by_layer"], "s-", label="UnrolledAnalysisFISTA")
    ax.axhline(f["psnr_db"], color="gray", ls="--", label="FISTA-1000")
    ax.set_xlabel("iterations / layers")
    ax.set_ylabel("test PSNR (dB)")
    ax.legend()
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="unrollsci bench deblur", description=__doc__)
    p.add_argument("--quick", action="store_true", help="tiny sizes; writes deblur_quick.*")
    p.add_argument("--out", type=output_dir_arg, default="benchmarks/results")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "--train-seconds", type=float_arg(positive=True), default=None, help="training time cap"
    )
    p.add_argument("--layers", type=positive_int_arg, default=None, help="K (default 4)")
    p.add_argument("--steps", type=positive_int_arg, default=None, help="Adam steps (default 500)")
    p.add_argument(
        "--no-warm-start", action="store_true", help="train from FISTA (no closed-form init)"
    )
    p.add_argument(
        "--precond-size", type=positive_int_arg, default=None, help="odd step filter size (7)"
    )
    p.add_argument(
        "--train-size",
        type=positive_int_arg,
        default=None,
        help="training phantoms' size, >= 3 (128)",
    )
    args = parse_bench_args(p, argv, "deblur")
    torch.set_num_threads(1)
    cfg = _configs(args.quick)
    for key, value in (
        ("train_seconds", args.train_seconds),
        ("K", args.layers),
        ("precond_size", args.precond_size),
        ("train_size", args.train_size),
        ("steps", args.steps),
    ):
        if value is not None:
            cfg[key] = value
    if args.no_warm_start:
        cfg["warm_start"] = False
    # the model refuses these, but only after the FISTA work: a usage error before any work
    if cfg["precond_size"] % 2 == 0:
        p.error(f"argument --precond-size: expected an odd size (got {cfg['precond_size']})")
    if cfg["train_size"] < cfg["filter_size"]:
        p.error(
            f"argument --train-size: expected at least the model's filter size "
            f"{cfg['filter_size']} (got {cfg['train_size']})"
        )
    log = (lambda msg: None) if args.no_progress else (lambda msg: print(msg, flush=True))
    res = run(cfg, log)
    text = _report(res)
    _plot(res, figure_path(args.out, "deblur.png", args.quick))
    write_results("deblur", res, args.out, quick=args.quick)
    write_text(figure_path(args.out, "deblur.md", args.quick), text)
    print(text)
    return 0
