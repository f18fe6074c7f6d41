"""Reconstruction benchmark (``unrollsci bench ct``): FBP vs TV vs the unrolled network.

64 x 64 random-ellipse phantoms, 30 angles, Poisson low-dose noise (``--size 256``: 256 x 256,
180 angles, the photon count and attenuation of LoDoPaB-CT; see ``_ct_setup.PRESETS``). The
TV weight is chosen on a validation set, the network is trained with
:func:`unrollsci.train.fit` on freshly drawn phantoms for a fixed wall-clock budget, and all
methods are scored (PSNR, SSIM from ``skimage.metrics``) on held-out phantoms drawn with a
different seed; TV and the networks are timed in ``--repeats`` interleaved rounds (medians).
Writes ``ct.json`` and ``ct.md`` (``ct_256.*`` at 256 x 256; ``*_quick.*`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from .._argtypes import float_arg, int_arg
from ..train._state import copy_state
from ._common import (
    Timer,
    check_output_file,
    keep_caller_rng,
    markdown_table,
    output_dir_arg,
    parse_bench_args,
    positive_int_arg,
    results_name,
    write_results,
    write_text,
)
from ._ct_setup import (  # noqa: F401  (dihedral, cosine_factor: imported from here too)
    PRESETS,
    SEEDS,
    PhantomPool,
    _tv,
    cosine_factor,
    dihedral,
    make_data,
    pixel_size,
    scores,
)


class _BudgetSpent(Exception):
    """Raised from the fit callback when the training time budget is used up."""


MEMORY = 5  # default --memory (700-step comparison: +0.25 dB over 0 at the same steps)
DUAL = False  # default --dual


def _median_seconds(ts: list[float]) -> float:
    """The median of the timing rounds (the mean of the two middle ones for an even count)."""
    if not ts:
        raise ValueError("Expected at least one timing round, got none.")
    return float(statistics.median(ts))


def _net_name(variant: str) -> str:
    """The name of the network of ``--variants`` entry ``variant`` (its rows, its file)."""
    return "unrolled" if variant == "free" else f"unrolled_{variant}"


def _model_path(args: argparse.Namespace, name: str) -> Path:
    """``--out/<ct|ct_SIZE>_<name>[_quick].pt``: where the trained network ``name`` goes."""
    stem = "ct" if args.size == 64 else f"ct_{args.size}"
    return Path(args.out) / f"{results_name(f'{stem}_{name}', args.quick)}.pt"


def _check_models(args: argparse.Namespace) -> None:
    """Before any work: no trained network's file is a directory (``--out`` itself is
    checked with the results)."""
    for variant in args.variants:
        check_output_file(_model_path(args, _net_name(variant)), what="a trained model")


@keep_caller_rng
def main(argv: list[str] | None = None) -> int:
    from ..imaging import UnrolledCT, empirical_lipschitz, lipschitz_bound
    from ..operators import Radon, fbp
    from ..train import fit, save_checkpoint

    p = argparse.ArgumentParser(prog="unrollsci bench ct", description=__doc__)
    p.add_argument(
        "--quick",
        action="store_true",
        help="tiny run (seconds); writes ct_quick.json and ct_<network>_quick.pt",
    )
    p.add_argument("--out", type=output_dir_arg, default="benchmarks/results")
    p.add_argument(
        "--size",
        type=positive_int_arg,
        default=64,
        help="image size; 64 and 256 have their own defaults for the options marked (preset)",
    )
    p.add_argument("--angles", type=positive_int_arg, help="(preset) 30; 180 at 256")
    p.add_argument(
        "--photons", type=float_arg(positive=True), help="(preset) incident photons I0 per bin"
    )
    p.add_argument(
        "--attenuation",
        type=float_arg(positive=True),
        help="(preset) attenuation of intensity 1 across the image width: the noise uses "
        "pixel_size = this / size (64: poisson_noise's default 1 / size; 256: LoDoPaB-CT's "
        "mu_max x 26 cm = 21.15)",
    )
    p.add_argument("--n-test", type=positive_int_arg, help="(preset) 100; 16 at 256")
    p.add_argument("--n-val", type=positive_int_arg, help="(preset) 32; 16 at 256")
    p.add_argument(
        "--train-seconds", type=float_arg(positive=True), default=1200.0, help="per network"
    )
    p.add_argument(
        "--train-steps",
        type=int_arg(0),
        default=0,
        help="if > 0, also stop after this many steps (whole epochs of 25) and run the cosine "
        "schedule over steps instead of time: load-independent comparisons",
    )
    p.add_argument("--layers", type=positive_int_arg, default=6)
    p.add_argument("--channels", type=positive_int_arg, default=16)
    p.add_argument("--batch", type=positive_int_arg, help="(preset) 8; 16 at 256")
    p.add_argument("--epoch-steps", type=positive_int_arg, help="(preset) steps per validation")
    p.add_argument(
        "--lr", type=float_arg(positive=True), default=2e-3, help="Adam (peak) learning rate"
    )
    p.add_argument(
        "--lr-schedule",
        choices=("constant", "cosine"),
        default="cosine",
        help="cosine: lr * max(floor, (1 + cos(pi t / T)) / 2), t the network's training "
        "time so far, T = --train-seconds",
    )
    p.add_argument(
        "--lr-floor",
        type=float_arg(minimum=0, maximum=1),
        default=0.02,
        help="cosine schedule's last factor",
    )
    p.add_argument(
        "--memory", type=int_arg(0), default=MEMORY, help="memory channels of UnrolledCT"
    )
    p.add_argument(
        "--dual",
        action=argparse.BooleanOptionalAction,
        default=DUAL,
        help="learned primal-dual: a dual CNN per layer on the sinogram (UnrolledCT(dual=True))",
    )
    p.add_argument(
        "--precision",
        choices=("float32", "bfloat16"),
        default="float32",
        help="arithmetic of the CNNs in training and evaluation (UnrolledCT(precision=...))",
    )
    p.add_argument(
        "--pool",
        type=int_arg(0),
        help="(preset: 512; 64 at 256) training phantoms come from a pool of this many, "
        "refreshed --pool-refresh per batch and drawn in random symmetries of the square "
        "(0: render every batch afresh)",
    )
    p.add_argument("--pool-refresh", type=positive_int_arg, help="(preset) 2; 4 at 256")
    p.add_argument("--tv-iters", type=positive_int_arg, default=300)
    p.add_argument(
        "--tv-lams",
        type=float_arg(positive=True),
        nargs="*",
        help="(preset) TV weights to validate",
    )
    p.add_argument(
        "--lipschitz-steps", type=positive_int_arg, help="(preset) empirical_lipschitz steps"
    )
    p.add_argument(
        "--repeats", type=positive_int_arg, help="(preset) interleaved timing rounds of TV and nets"
    )
    p.add_argument(
        "--variants",
        nargs="+",
        default=["free", "lip10"],
        help="networks: 'free', 'sn<c>' (CNN Lipschitz cap c), 'lip<T>' (certificate <= T)",
    )
    p.add_argument("--threads", type=positive_int_arg, default=1)
    args = parse_bench_args(
        p, argv, lambda a: "ct" if a.size == 64 else f"ct_{a.size}", check=_check_models
    )
    preset = PRESETS.get(args.size, PRESETS[64])
    for key, value in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, copy.deepcopy(value))
    if not args.tv_lams:
        p.error("--tv-lams needs at least one weight")
    if args.photons <= 0 or (args.attenuation is not None and args.attenuation <= 0):
        p.error(f"--photons and --attenuation must be > 0 (got {args.photons}, {args.attenuation})")
    if not 0.0 <= args.lr_floor <= 1.0:
        p.error(f"--lr-floor must lie in [0, 1] (got {args.lr_floor})")
    if args.train_steps < 0:
        p.error(f"--train-steps must be >= 0 (got {args.train_steps})")
    if args.pool < 0 or args.pool_refresh < 1:
        p.error(
            f"--pool must be >= 0 and --pool-refresh >= 1 (got {args.pool}, {args.pool_refresh})"
        )
    if args.memory < 0:
        p.error(f"--memory must be >= 0 (got {args.memory})")
    if args.quick:
        args.n_test, args.n_val, args.train_seconds = 8, 8, 10.0
        args.tv_iters, args.tv_lams, args.layers = 60, args.tv_lams[len(args.tv_lams) // 2 :][:1], 3
        args.pool, args.lipschitz_steps = min(args.pool, 32), min(args.lipschitz_steps, 30)
        if args.size > 64:  # a smoke run of the large setting: a few images, a few steps
            args.n_test = args.n_val = args.batch = args.pool = 4
            args.tv_iters, args.epoch_steps, args.lipschitz_steps = 30, 2, 3
    mu = pixel_size(args.attenuation, args.size)
    stem = "ct" if args.size == 64 else f"ct_{args.size}"
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    radon = Radon(args.size, args.angles)
    y_val, x_val, m_val = make_data(
        args.n_val, args.size, radon, args.photons, SEEDS["val"], pixel_size=mu
    )
    y_te, x_te, m_te = make_data(
        args.n_test, args.size, radon, args.photons, SEEDS["test"], pixel_size=mu
    )
    rows, results = [], {}

    # --- FBP
    with Timer() as t:
        x_fbp = fbp(y_te, radon, filter="ram-lak")
    best_filter, best_psnr = "ram-lak", -1.0
    for f in ("ram-lak", "shepp-logan", "cosine", "hamming", "hann"):  # chosen on validation
        pv, _ = scores(fbp(y_val, radon, filter=f), x_val)
        if sum(pv) / len(pv) > best_psnr:
            best_filter, best_psnr = f, sum(pv) / len(pv)
    with Timer() as t:
        x_fbp = fbp(y_te, radon, filter=best_filter)
    results["fbp"] = {"filter": best_filter, "seconds": t.seconds, "x": x_fbp}

    # --- TV: weight chosen on the validation set
    lam_scores = {}
    for lam in args.tv_lams:
        pv, _ = scores(_tv(y_val, radon, lam, m_val, args.tv_iters).x, x_val)
        lam_scores[lam] = sum(pv) / len(pv)
    lam = max(lam_scores, key=lam_scores.get)
    results["tv"] = {"lam": lam}  # solved and timed on the test set after training

    # --- unrolled networks, trained on fresh phantoms within a wall-clock budget each
    def fresh(gen: torch.Generator) -> tuple[torch.Tensor, ...]:
        return make_data(args.batch, args.size, radon, args.photons, generator=gen, pixel_size=mu)

    def loss_fn(mdl: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        y, x, m = batch
        return torch.mean((mdl(y, mask=m) - x) ** 2)

    steps_per_epoch = args.epoch_steps
    certs: dict[str, Any] = {}
    models: dict[str, Any] = {}
    for variant in args.variants:
        cap = float(variant[2:]) if variant.startswith("sn") else None
        target = float(variant[3:]) if variant.startswith("lip") else None
        name = _net_name(variant)
        model = UnrolledCT(
            radon,
            n_layers=args.layers,
            channels=args.channels,
            cnn_lipschitz=cap,
            lipschitz_target=target,
            memory=args.memory,
            dual=args.dual,
            precision=args.precision,
        )
        sampler = fresh
        if args.pool:  # a fresh pool per network: every variant sees the same data stream
            sampler = PhantomPool(
                radon, args.photons, args.batch, args.pool, args.pool_refresh, pixel_size=mu
            )
        best: dict[str, Any] = {
            "val": float("inf"),
            "state": None,
            "epochs": 0,
            "best_epoch": -1,
            "load": [],
            "last_lr_factor": 1.0,
            "history": [],
        }
        load_start = list(os.getloadavg())
        cpu_start = time.process_time()
        t_start = time.perf_counter()

        def budget(
            epoch: int,
            train_loss: float,
            val_loss: float | None,
            *,
            _m=model,
            _b=best,
            _t=t_start,
            _c=cpu_start,
        ) -> None:
            _b["epochs"] = epoch + 1
            _b["load"].append(os.getloadavg()[0])
            wall, cpu = time.perf_counter() - _t, time.process_time() - _c
            # (steps, wall s, CPU s, validation MSE): the learning curve
            _b["history"].append([(epoch + 1) * steps_per_epoch, wall, cpu, val_loss])
            if val_loss is not None and val_loss < _b["val"]:
                _b["val"], _b["state"] = val_loss, copy_state(_m.state_dict())
                _b["best_epoch"] = epoch
            if time.perf_counter() - _t > args.train_seconds:
                raise _BudgetSpent
            if 0 < args.train_steps <= (epoch + 1) * steps_per_epoch:
                raise _BudgetSpent

        lr_factor = None
        if args.lr_schedule == "cosine":

            def lr_factor(step: int, *, _b=best, _t=t_start) -> float:
                if args.train_steps > 0:
                    f = cosine_factor(step, args.train_steps, args.lr_floor)
                else:
                    f = cosine_factor(time.perf_counter() - _t, args.train_seconds, args.lr_floor)
                _b["last_lr_factor"] = f
                return f

        try:
            fit(
                model,
                loss_fn,
                sampler,
                val_data=(y_val, x_val, m_val),
                epochs=100_000,
                steps_per_epoch=steps_per_epoch,
                lr=args.lr,
                lr_factor=lr_factor,
                seed=SEEDS["train"],
                progress=False,
                callback=budget,
            )
        except _BudgetSpent:
            pass
        train_seconds = time.perf_counter() - t_start
        train_cpu = time.process_time() - cpu_start
        if best["state"] is not None:  # the epoch with the best validation loss
            model.load_state_dict(best["state"])
        model.eval()
        models[name] = model
        with torch.no_grad():
            model(y_te[:2], mask=m_te[:2])  # warm-up
            x_net = model(y_te, mask=m_te)
        outside = float(x_net[~m_te].abs().max()) if bool((~m_te).any()) else 0.0
        cert = lipschitz_bound(model, details=True)
        emp = empirical_lipschitz(model, y_te[:8], steps=args.lipschitz_steps, mask=m_te[:8])
        certs[name] = {
            "lipschitz_bound": cert.bound,
            "lipschitz_empirical": emp,
            "lipschitz_init": cert.init,
            "lipschitz_layers": cert.layers,
            "max_abs_outside_support": outside,
        }
        results[name] = {
            "cnn_lipschitz": model.cnn_lipschitz,
            "lipschitz_target": target,
            "x": x_net,
            "device": str(y_te.device),
            "train_seconds": train_seconds,
            "epochs": best["epochs"],
            "train_steps": best["epochs"] * steps_per_epoch,
            "best_epoch": best["best_epoch"],
            "best_val_mse": best["val"],
            "memory": model.memory,
            "dual": model.dual,
            "precision": model.precision,
            "lr_schedule": args.lr_schedule,
            "last_lr_factor": best["last_lr_factor"],
            "train_cpu_seconds": train_cpu,
            "train_cpu_share": train_cpu / train_seconds,
            "train_load_1min_start": load_start[0],
            "train_load_1min_mean": sum(best["load"]) / max(len(best["load"]), 1),
            "val_history": best["history"],
            **certs[name],
        }
        save_checkpoint(model, _model_path(args, name))

    # --- timing: TV and every network on the test set, in interleaved rounds (medians)
    times: dict[str, list[float]] = {k: [] for k in ("tv", *models)}
    load_timing = [os.getloadavg()[0]]
    for _ in range(args.repeats):
        with Timer() as t:
            sol = _tv(y_te, radon, lam, m_te, args.tv_iters)
        times["tv"].append(t.seconds)
        for name, model in models.items():
            with torch.no_grad(), Timer() as t:
                model(y_te, mask=m_te)
            times[name].append(t.seconds)
        load_timing.append(os.getloadavg()[0])
    results["tv"].update(
        x=sol.x, iterations=sol.iterations, final_rel_change=sol.residual, iters=args.tv_iters
    )
    for name, ts in times.items():
        results[name].update(seconds=_median_seconds(ts), seconds_all=ts)

    for name, r in results.items():
        ps, ss = scores(r.pop("x"), x_te)
        r.update(
            psnr_mean=sum(ps) / len(ps),
            ssim_mean=sum(ss) / len(ss),
            psnr=ps,
            ssim=ss,
            seconds_per_image=r["seconds"] / args.n_test,
        )
        rows.append(
            {
                "method": name,
                "PSNR (dB)": r["psnr_mean"],
                "SSIM": r["ssim_mean"],
                "time / image (s)": r["seconds_per_image"],
            }
        )
    main_name = "unrolled" if "unrolled" in results else next(k for k in certs)
    gain = results[main_name]["psnr_mean"] - results["tv"]["psnr_mean"]
    speed = results["tv"]["seconds"] / results[main_name]["seconds"]
    summary = {
        "main_network": main_name,
        "unrolled_minus_tv_db": gain,
        "speedup_vs_tv": speed,
        "goal_db": 4.0,  # issue 25: >= +4 dB over TV, >= 50x faster than TV
        "goal_speedup": 50.0,
        "goal_db_met": gain >= 4.0,
        "goal_speed_met": speed >= 50.0,
        "certificates": certs,
        "per_network_minus_tv_db": {
            k: results[k]["psnr_mean"] - results["tv"]["psnr_mean"] for k in certs
        },
    }
    config = {k: v for k, v in vars(args).items()}
    config.update(
        load_average_1_5_15min=list(os.getloadavg()),
        load_1min_timing_rounds=load_timing,
        noise="poisson",
        pixel_size=mu if mu is not None else 1.0 / args.size,
        tv_lam_validation_psnr=lam_scores,
        seeds=SEEDS,
        steps_per_epoch=steps_per_epoch,
        fbp_filter_validation="best of 5 by validation PSNR",
    )
    path = write_results(
        stem,
        {"config": config, "results": results, "summary": summary},
        args.out,
        quick=args.quick,
    )
    table = markdown_table(rows)
    note = (
        f"\n\n{args.size} x {args.size}, {args.angles} angles, Poisson noise I0 = "
        f"{args.photons:g} per bin, pixel_size {config['pixel_size']:.4g}; {args.n_test} test "
        f"images; times: median of {args.repeats} interleaved round(s), 1-min load "
        f"{max(load_timing):.1f}, {args.threads} thread(s), CPU; networks CPU-trained "
        + ", ".join(f"{k} {results[k]['train_cpu_seconds']:.0f} CPU s" for k in certs)
        + f".\n\n{main_name} - TV = {gain:+.2f} dB; TV / {main_name} time = {speed:.1f}x\n"
    )
    write_text(Path(args.out) / f"{results_name(stem, args.quick)}.md", table + note)
    print(table)
    print(f"\n{main_name} - TV = {gain:+.2f} dB; TV / {main_name} time = {speed:.1f}x")
    for k in certs:
        r = results[k]
        print(
            f"{k}: {r['train_steps']} training steps ({r['epochs']} epochs, best epoch "
            f"{r['best_epoch']}) in {r['train_seconds']:.0f} s, lr schedule "
            f"{args.lr_schedule}, memory {r['memory']}, dual {r['dual']}"
        )
    for k, c in certs.items():
        print(
            f"{k}: Lipschitz bound {c['lipschitz_bound']:.3g} >= adversarial ratio "
            f"{c['lipschitz_empirical']:.3g}; max |x| outside support = "
            f"{c['max_abs_outside_support']:g}"
        )
    print(f"results: {path}")
    return 0
