"""Reconstruction benchmark (``unrollsci bench ct``): FBP vs TV vs the unrolled network.

64 x 64 random-ellipse phantoms, 30 angles, Poisson low-dose noise. The TV
weight is chosen on a validation set, the network is trained with
:func:`unrollsci.train.fit` on freshly drawn phantoms for a fixed wall-clock
budget, and all methods are scored (PSNR, SSIM from ``skimage.metrics``) on
held-out phantoms drawn with a different seed. Writes ``ct.json`` (``ct_quick.json`` with
``--quick``).
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from ._common import (
    Timer,
    markdown_table,
    output_dir_arg,
    positive_int_arg,
    results_name,
    write_results,
)


class _BudgetSpent(Exception):
    """Raised from the fit callback when the training time budget is used up."""


SEEDS = {"val": 1_000_001, "test": 2_000_003, "train": 7}
MEMORY = 5  # default --memory (700-step comparison: +0.25 dB over 0 at the same steps)
DUAL = False  # default --dual
POOL = 512  # default --pool


def cosine_factor(elapsed: float, total: float, floor: float) -> float:
    """Cosine decay over a time budget: ``max(floor, (1 + cos(pi min(1, elapsed/total))) / 2)``."""
    t = min(1.0, max(0.0, elapsed / total))
    return max(floor, 0.5 * (1.0 + math.cos(math.pi * t)))


def make_data(
    n: int,
    size: int,
    radon: Any,
    photons: float,
    seed: int | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, ...]:
    """``(sinograms, images, masks)`` of ``n`` noisy random-ellipse phantoms."""
    from ..imaging import poisson_noise, random_ellipses

    gen = generator if generator is not None else torch.Generator().manual_seed(seed or 0)
    x, m = random_ellipses(n, size, generator=gen, return_support=True)
    y = poisson_noise(radon(x), photons, generator=gen)
    return y, x, m


def dihedral(img: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Apply symmetry ``k[i]`` in 0..7 of the square to ``img[i]`` (``(n, N, N)``).

    ``k % 4`` quarter turns, then a transpose if ``k >= 4``: the 8 elements of the
    dihedral group D4 about the array centre ``(N - 1) / 2``, where the phantom grid is
    symmetric (:func:`~unrollsci.imaging.radon_symmetries` reflects about the rotation
    centre ``N // 2`` instead, to map sinograms exactly).
    """
    out = torch.empty_like(img)
    for j in range(8):
        sel = k == j
        if bool(sel.any()):
            t = torch.rot90(img[sel], j % 4, dims=(-2, -1))
            out[sel] = t.transpose(-2, -1) if j >= 4 else t
    return out


class PhantomPool:
    """Training batches for the CT benchmark from a slowly refreshed pool of phantoms.

    Rendering ellipses costs about a third of a training step at batch 8. The pool
    holds ``size`` phantoms; every batch replaces ``refresh`` of them (at random) by
    new ones, then draws ``batch`` pool entries, each in a random one of the 8
    symmetries of the square, and simulates fresh Poisson noise on their sinograms.

    The symmetries do not change the distribution: :func:`random_ellipses` draws the
    body centre from a square symmetric about the origin, every tilt uniformly, both
    semi-axes from the same range, and places the inner ellipses at uniform angles
    in the body's frame, so a flip or a transpose of a phantom is a phantom the
    generator draws with the same density (flip x: ``(x0, phi, t) -> (-x0, pi - phi,
    pi - t)``; transpose: swap the axes and centre coordinates, ``phi -> pi - phi``,
    ``t -> pi/2 - t``), and the pixel grid is symmetric too. Each phantom lives for
    about ``size / refresh`` batches.
    """

    def __init__(
        self,
        radon: Any,
        photons: float,
        batch: int,
        size: int = 512,
        refresh: int = 2,
    ) -> None:
        if size < batch or refresh < 1:
            raise ValueError(
                f"Expected pool size >= batch and refresh >= 1 (got {size}, {batch}, {refresh})."
            )
        self.radon, self.photons, self.batch = radon, photons, batch
        self.size, self.refresh = size, refresh
        self.x: torch.Tensor | None = None
        self.m: torch.Tensor | None = None

    def _phantoms(self, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        from ..imaging import random_ellipses

        chunks = [  # chunks of 32: rendering hundreds at once is slower (memory traffic)
            random_ellipses(
                min(32, n - i), self.radon.image_size, generator=gen, return_support=True
            )
            for i in range(0, n, 32)
        ]
        return torch.cat([c[0] for c in chunks]), torch.cat([c[1] for c in chunks])

    def __call__(self, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
        from ..imaging import poisson_noise

        if self.x is None or self.m is None:
            self.x, self.m = self._phantoms(self.size, gen)
        else:
            idx = torch.randperm(self.size, generator=gen)[: self.refresh]
            self.x[idx], self.m[idx] = self._phantoms(self.refresh, gen)
        pick = torch.randint(self.size, (self.batch,), generator=gen)
        sym = torch.randint(8, (self.batch,), generator=gen)
        x, m = dihedral(self.x[pick], sym), dihedral(self.m[pick], sym)
        y = poisson_noise(self.radon(x), self.photons, generator=gen)
        return y, x, m


def scores(x_hat: torch.Tensor, x: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-image PSNR and SSIM (data range 1) from scikit-image."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    ps, ss = [], []
    for a, b in zip(x_hat.detach().cpu().double().numpy(), x.cpu().double().numpy(), strict=True):
        ps.append(float(peak_signal_noise_ratio(b, a.clip(-1, 2), data_range=1.0)))
        ss.append(float(structural_similarity(b, a, data_range=1.0)))
    return ps, ss


def _tv(y: torch.Tensor, radon: Any, lam: float, m: torch.Tensor, iters: int) -> Any:
    from .._validation import ConvergenceWarning
    from ..imaging import tv_reconstruction

    with warnings.catch_warnings():  # a fixed iteration budget; convergence is reported
        warnings.simplefilter("ignore", ConvergenceWarning)
        return tv_reconstruction(y, radon, lam, mask=m, max_iter=iters, tol=1e-5)


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
    p.add_argument("--size", type=positive_int_arg, default=64)
    p.add_argument("--angles", type=positive_int_arg, default=30)
    p.add_argument("--photons", type=float, default=1e4, help="incident photons I0")
    p.add_argument("--n-test", type=positive_int_arg, default=100)
    p.add_argument("--n-val", type=positive_int_arg, default=32)
    p.add_argument("--train-seconds", type=float, default=1200.0, help="per network")
    p.add_argument(
        "--train-steps",
        type=int,
        default=0,
        help="if > 0, also stop after this many steps (whole epochs of 25) and run the cosine "
        "schedule over steps instead of time: load-independent comparisons",
    )
    p.add_argument("--layers", type=positive_int_arg, default=6)
    p.add_argument("--channels", type=positive_int_arg, default=16)
    p.add_argument("--batch", type=positive_int_arg, default=8)
    p.add_argument("--lr", type=float, default=2e-3, help="Adam (peak) learning rate")
    p.add_argument(
        "--lr-schedule",
        choices=("constant", "cosine"),
        default="cosine",
        help="cosine: lr * max(floor, (1 + cos(pi t / T)) / 2), t the network's training "
        "time so far, T = --train-seconds",
    )
    p.add_argument("--lr-floor", type=float, default=0.02, help="cosine schedule's last factor")
    p.add_argument("--memory", type=int, default=MEMORY, help="memory channels of UnrolledCT")
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
        type=int,
        default=POOL,
        help="training phantoms come from a pool of this many, refreshed --pool-refresh per "
        "batch and drawn in random symmetries of the square (0: render every batch afresh)",
    )
    p.add_argument("--pool-refresh", type=int, default=2)
    p.add_argument("--tv-iters", type=positive_int_arg, default=300)
    p.add_argument("--tv-lams", type=float, nargs="*", default=[1.0, 2.0, 3.0, 5.0, 8.0])
    p.add_argument(
        "--variants",
        nargs="+",
        default=["free", "lip10"],
        help="networks: 'free', 'sn<c>' (CNN Lipschitz cap c), 'lip<T>' (certificate <= T)",
    )
    p.add_argument("--threads", type=positive_int_arg, default=1)
    args = p.parse_args(argv)
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
        args.tv_iters, args.tv_lams, args.layers = 60, [3.0], 3
        args.pool = min(args.pool, 32)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    radon = Radon(args.size, args.angles)
    y_val, x_val, m_val = make_data(args.n_val, args.size, radon, args.photons, SEEDS["val"])
    y_te, x_te, m_te = make_data(args.n_test, args.size, radon, args.photons, SEEDS["test"])
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
    with Timer() as t:
        sol = _tv(y_te, radon, lam, m_te, args.tv_iters)
    results["tv"] = {
        "lam": lam,
        "seconds": t.seconds,
        "x": sol.x,
        "iterations": sol.iterations,
        "final_rel_change": sol.residual,
    }

    # --- unrolled networks, trained on fresh phantoms within a wall-clock budget each
    def fresh(gen: torch.Generator) -> tuple[torch.Tensor, ...]:
        return make_data(args.batch, args.size, radon, args.photons, generator=gen)

    def loss_fn(mdl: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        y, x, m = batch
        return torch.mean((mdl(y, mask=m) - x) ** 2)

    steps_per_epoch = 25
    certs: dict[str, Any] = {}
    for variant in args.variants:
        cap = float(variant[2:]) if variant.startswith("sn") else None
        target = float(variant[3:]) if variant.startswith("lip") else None
        name = "unrolled" if variant == "free" else f"unrolled_{variant}"
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
            sampler = PhantomPool(radon, args.photons, args.batch, args.pool, args.pool_refresh)
        best: dict[str, Any] = {
            "val": float("inf"),
            "state": None,
            "epochs": 0,
            "best_epoch": -1,
            "load": [],
            "last_lr_factor": 1.0,
        }
        load_start = list(os.getloadavg())
        cpu_start = time.process_time()
        t_start = time.perf_counter()

        def budget(
            epoch: int, train_loss: float, val_loss: float | None, *, _m=model, _b=best, _t=t_start
        ) -> None:
            _b["epochs"] = epoch + 1
            _b["load"].append(os.getloadavg()[0])
            if val_loss is not None and val_loss < _b["val"]:
                _b["val"], _b["state"] = val_loss, copy.deepcopy(_m.state_dict())
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
        with torch.no_grad():
            model(y_te[:2], mask=m_te[:2])  # warm-up
            with Timer() as t:
                x_net = model(y_te, mask=m_te)
        outside = float(x_net[~m_te].abs().max()) if bool((~m_te).any()) else 0.0
        cert = lipschitz_bound(model, details=True)
        emp = empirical_lipschitz(model, y_te[:8], steps=30 if args.quick else 100, mask=m_te[:8])
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
            "seconds": t.seconds,
            "x": x_net,
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
            **certs[name],
        }
        save_checkpoint(model, Path(args.out) / f"{results_name(f'ct_{name}', args.quick)}.pt")

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
        "goal_db_met": gain >= 3.0,
        "goal_speed_met": speed >= 10.0,
        "certificates": certs,
        "per_network_minus_tv_db": {
            k: results[k]["psnr_mean"] - results["tv"]["psnr_mean"] for k in certs
        },
    }
    config = {k: v for k, v in vars(args).items()}
    config.update(
        load_average_1_5_15min=list(os.getloadavg()),
        noise="poisson",
        tv_lam_validation_psnr=lam_scores,
        seeds=SEEDS,
        steps_per_epoch=steps_per_epoch,
        fbp_filter_validation="best of 5 by validation PSNR",
    )
    path = write_results(
        "ct",
        {"config": config, "results": results, "summary": summary},
        args.out,
        quick=args.quick,
    )
    print(markdown_table(rows))
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
