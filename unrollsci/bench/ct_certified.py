"""Certified CT benchmark (``python benchmarks/ct_certified.py``): FBP vs TV vs ConvexRidgeCT.

The setting of ``unrollsci bench ct`` (64 x 64 random-ellipse phantoms, 30 angles, Poisson
low-dose noise, the same validation and test seeds and data generation): the FBP filter and
the TV weight are chosen on the validation set, :class:`~unrollsci.imaging.ConvexRidgeCT`
(unrolled gradient steps on learned convex ridge regularizers, Lipschitz by construction) is
trained on phantoms from the same pool as the CT benchmark's networks and keeps the
state with the best validation loss. Reported: PSNR / SSIM, the certified Lipschitz bound
(sinogram to image, Euclidean norms), the adversarial ratio of
:func:`~unrollsci.imaging.empirical_lipschitz` and the largest local Jacobian norm found by
power iteration (both lower bounds on the true constant), and the time per reconstruction
against TV (interleaved repeats, medians). Writes ``ct_certified.json`` and
``ct_certified.md`` (``*_quick.*`` with ``--quick``) and the checkpoint
``ct_certified.pt``.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from .._argtypes import existing_file_arg, float_arg, int_arg
from .._io import check_writable
from ..train._state import copy_state
from ._common import (
    check_results_paths,
    keep_caller_rng,
    markdown_table,
    output_dir_arg,
    positive_int_arg,
    read_input,
    results_name,
    write_results,
    write_text,
)
from ._ct_setup import jacobian_norm
from .ct import SEEDS, PhantomPool, _tv, cosine_factor, make_data, scores


def _fit_best(
    module: Any,
    batch_loss: Any,
    val_mse: Any,
    *,
    lr: float,
    steps: int,
    seconds: float,
    val_every: int,
    lr_floor: float,
) -> dict[str, Any]:
    """Adam on ``batch_loss()`` over ``module``'s parameters with a cosine learning rate over
    ``steps``; stops early after ``seconds``; keeps the state with the best ``val_mse()``
    (every ``val_every`` steps, evaluated with ``module`` in eval mode)."""
    opt = torch.optim.Adam(module.parameters(), lr=lr)
    best = {"val_mse": math.inf, "step": -1, "state": None}
    history, load = [], []
    t0, cpu0 = time.perf_counter(), time.process_time()
    step = 0
    while True:
        if step % val_every == 0 or step == steps:
            module.eval()
            with torch.no_grad():
                v = float(val_mse())
            module.train()
            history.append({"step": step, "val_mse": v, "seconds": time.perf_counter() - t0})
            load.append(os.getloadavg()[0])
            if v < best["val_mse"]:
                best.update(val_mse=v, step=step, state=copy_state(module.state_dict()))
        if step >= steps or time.perf_counter() - t0 > seconds:
            break
        factor = cosine_factor(step, steps, lr_floor)
        for g in opt.param_groups:
            g["lr"] = lr * factor
        loss = batch_loss()
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
    elapsed = time.perf_counter() - t0
    module.load_state_dict(best["state"])
    module.eval()
    return {
        "steps": step,
        "seconds": elapsed,
        "cpu_seconds": time.process_time() - cpu0,
        "best_step": best["step"],
        "best_val_mse": best["val_mse"],
        "history": history,
        "load_1min_mean": sum(load) / len(load),
    }


def train(
    model: Any, args: argparse.Namespace, radon: Any, val: tuple[torch.Tensor, ...]
) -> dict[str, Any]:
    """Adam on the MSE with a cosine learning rate over ``--train-steps``; stops early at
    ``--train-seconds``; keeps the state with the best validation MSE (every ``--val-every``
    steps)."""
    y_val, x_val, m_val = val
    pool = PhantomPool(radon, args.photons, args.batch, args.pool, 2)
    gen = torch.Generator().manual_seed(SEEDS["train"])

    def batch_loss() -> torch.Tensor:
        y, x, m = pool(gen)
        return torch.mean((model(y, mask=m) - x) ** 2)

    return _fit_best(
        model,
        batch_loss,
        lambda: torch.mean((model(y_val, mask=m_val) - x_val) ** 2),
        lr=args.lr,
        steps=args.train_steps,
        seconds=args.train_seconds,
        val_every=args.val_every,
        lr_floor=args.lr_floor,
    )


REFINE_SEED = 8  # training phantoms of the refiner (bench ct trains on seed 7)


def refiner_data(
    model: Any, radon: Any, n: int, photons: float, seed: int, chunk: int = 50
) -> tuple[torch.Tensor, ...]:
    """``(ridge reconstructions, images, masks)`` of ``n`` fresh noisy training phantoms:
    the inputs and targets of the refinement (the ridge part of ``model`` is frozen)."""
    gen = torch.Generator().manual_seed(seed)
    xs, ts, ms = [], [], []
    with torch.no_grad():
        for i in range(0, n, chunk):
            y, x, m = make_data(min(chunk, n - i), radon.image_size, radon, photons, generator=gen)
            xs.append(ridge_only(model, y, m))
            ts.append(x)
            ms.append(m)
    return torch.cat(xs), torch.cat(ts), torch.cat(ms)


def ridge_only(model: Any, y: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """``model``'s reconstruction before its refinement (the ridge iteration alone)."""
    refiner = model.refiner
    model.refiner = None
    try:
        return model(y, mask=m)
    finally:
        model.refiner = refiner


def train_refiner(
    model: Any, args: argparse.Namespace, data: tuple[torch.Tensor, ...], val: tuple[Any, ...]
) -> dict[str, Any]:
    """Adam on the MSE of ``P(x + R(x))`` over precomputed ridge reconstructions ``x``,
    cosine learning rate over ``--refine-steps``, stops at ``--refine-seconds``; keeps the
    refiner state with the best validation MSE."""
    x_in, x_true, masks = data
    xv_in, xv_true, mv = val
    gen = torch.Generator().manual_seed(SEEDS["train"])

    def batch_loss() -> torch.Tensor:
        pick = torch.randint(x_in.shape[0], (args.refine_batch,), generator=gen)
        return torch.mean((model.refined(x_in[pick], masks[pick]) - x_true[pick]) ** 2)

    out = _fit_best(
        model.refiner,
        batch_loss,
        lambda: torch.mean((model.refined(xv_in, mv) - xv_true) ** 2),
        lr=args.refine_lr,
        steps=args.refine_steps,
        seconds=args.refine_seconds,
        val_every=args.val_every,
        lr_floor=args.lr_floor,
    )
    return {**out, "images": int(x_in.shape[0])}


class _Wrap(torch.nn.Module):
    """A reconstruction function ``fn(y, mask)`` as a module (for the attacks)."""

    def __init__(self, fn: Any) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, y: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.fn(y, mask)


def with_refiner(model: Any, args: argparse.Namespace) -> Any:
    """A copy of the ConvexRidgeCT ``model`` with a fresh LipschitzRefiner after its steps."""
    from ..imaging import ConvexRidgeCT

    refine = {
        "channels": args.refine_channels,
        "depth": args.refine_depth,
        "kernel_size": args.refine_kernel,
        "lipschitz": args.refine_lipschitz,
    }
    new = ConvexRidgeCT(**(model.get_config() | {"refine": refine})).to(model.dtype)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("refiner.")}
    new.load_state_dict(state, strict=False)
    return new


def certificate(model: Any, refined: bool) -> Any:
    """``model``'s certificate, of the ridge iteration alone unless ``refined``."""
    if refined:
        return model.lipschitz_bound(details=True, recompute=True)
    refiner = model.refiner
    model.refiner = None
    try:
        return model.lipschitz_bound(details=True, recompute=True)
    finally:
        model.refiner = refiner


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="unrollsci bench ct_certified", description=__doc__)
    p.add_argument("--quick", action="store_true", help="tiny run (seconds); *_quick.* files")
    p.add_argument("--out", type=output_dir_arg, default="benchmarks/results")
    p.add_argument("--force", action="store_true", help="replace existing result files")
    p.add_argument("--size", type=positive_int_arg, default=64)
    p.add_argument("--angles", type=positive_int_arg, default=30)
    p.add_argument(
        "--photons", type=float_arg(positive=True), default=1e4, help="incident photons I0"
    )
    p.add_argument("--n-test", type=positive_int_arg, default=100)
    p.add_argument("--n-val", type=positive_int_arg, default=32)
    p.add_argument("--layers", type=positive_int_arg, default=30)
    p.add_argument("--filters", type=positive_int_arg, default=12)
    p.add_argument("--kernel-size", type=positive_int_arg, default=5)
    p.add_argument("--clips", type=positive_int_arg, default=2)
    p.add_argument("--slack", type=float_arg(minimum=0), default=0.05)
    p.add_argument("--batch", type=positive_int_arg, default=4)
    p.add_argument("--pool", type=positive_int_arg, default=256)
    p.add_argument(
        "--lr", type=float_arg(positive=True), default=1e-2, help="Adam (peak) learning rate"
    )
    p.add_argument("--lr-floor", type=float_arg(minimum=0, maximum=1), default=0.02)
    p.add_argument("--train-steps", type=positive_int_arg, default=1500)
    p.add_argument(
        "--train-seconds", type=float_arg(positive=True), default=1300.0, help="stop earlier"
    )
    p.add_argument("--val-every", type=positive_int_arg, default=50)
    p.add_argument(
        "--checkpoint", type=existing_file_arg, help="evaluate this trained ConvexRidgeCT"
    )
    p.add_argument(
        "--base-checkpoint", type=existing_file_arg, help="a ConvexRidgeCT: train its refiner"
    )
    p.add_argument("--refine-channels", type=int_arg(0), default=24, help="0: no refinement")
    p.add_argument("--refine-depth", type=positive_int_arg, default=5)
    p.add_argument("--refine-kernel", type=positive_int_arg, default=3)
    p.add_argument(
        "--refine-lipschitz", type=float_arg(positive=True), default=5.0, help="largest Lip(R)"
    )
    p.add_argument("--refine-images", type=positive_int_arg, default=3000)
    p.add_argument("--refine-batch", type=positive_int_arg, default=16)
    p.add_argument("--refine-lr", type=float_arg(positive=True), default=2e-3)
    p.add_argument("--refine-steps", type=positive_int_arg, default=2000)
    p.add_argument(
        "--refine-seconds", type=float_arg(positive=True), default=1500.0, help="stop earlier"
    )
    p.add_argument("--tv-iters", type=positive_int_arg, default=300)
    p.add_argument(
        "--tv-lams", type=float_arg(positive=True), nargs="*", default=[1.0, 2.0, 3.0, 5.0, 8.0]
    )
    p.add_argument("--emp-steps", type=positive_int_arg, default=100)
    p.add_argument("--jac-images", type=positive_int_arg, default=4)
    p.add_argument("--repeats", type=positive_int_arg, default=3, help="timing repeats")
    p.add_argument("--threads", type=positive_int_arg, default=1)
    return p


def _load_ridge(path: str | Path) -> Any:
    from ..imaging import ConvexRidgeCT
    from ..train import load_checkpoint

    model = load_checkpoint(path, expected=(ConvexRidgeCT,))
    if not isinstance(model, ConvexRidgeCT):
        raise TypeError(f"Expected a ConvexRidgeCT checkpoint (got {type(model).__name__}).")
    return model


@keep_caller_rng
def main(argv: list[str] | None = None) -> int:
    from ..imaging import ConvexRidgeCT, empirical_lipschitz, fbp
    from ..operators import Radon
    from ..train import save_checkpoint

    p = _parser()
    args = p.parse_args(argv)
    if args.quick:
        args.n_test, args.n_val, args.train_steps, args.val_every = 4, 4, 6, 3
        args.tv_iters, args.tv_lams, args.layers, args.filters = 30, [3.0, 5.0], 3, 4
        args.pool, args.batch, args.emp_steps, args.jac_images = 8, 2, 5, 1
        args.repeats, args.size, args.angles = 1, 32, 20
        args.refine_images, args.refine_steps, args.refine_batch = 8, 6, 2
        args.refine_channels = min(args.refine_channels, 4)
    stem = results_name("ct_certified", args.quick)
    out = Path(args.out)
    paths = [out / f"{stem}.json", out / f"{stem}.md", out / f"{stem}.pt"]
    inputs = [c for c in (args.checkpoint, args.base_checkpoint) if c]
    try:  # before any work: one error line and exit 2, as demo and relax do
        check_writable(paths, inputs=inputs, force=args.force)
        check_results_paths("ct_certified", args.out, quick=args.quick, suffixes=(".json", ".md"))
        for path in inputs:  # a missing, corrupt or other model's checkpoint: now, not later
            read_input(path, _load_ridge, "checkpoint", fork_rng=True)
    except (OSError, ValueError) as exc:
        print(f"{p.prog}: error: {exc}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    radon = Radon(args.size, args.angles)
    val = make_data(args.n_val, args.size, radon, args.photons, SEEDS["val"])
    y_te, x_te, m_te = make_data(args.n_test, args.size, radon, args.photons, SEEDS["test"])
    y_val, x_val, m_val = val

    # --- FBP filter and TV weight chosen on the validation set
    filters = ("ram-lak", "shepp-logan", "cosine", "hamming", "hann")
    fbp_val = {f: statistics.mean(scores(fbp(y_val, radon, filter=f), x_val)[0]) for f in filters}
    best_filter = max(fbp_val, key=fbp_val.get)
    tv_val = {
        lam: statistics.mean(scores(_tv(y_val, radon, lam, m_val, args.tv_iters).x, x_val)[0])
        for lam in args.tv_lams
    }
    lam = max(tv_val, key=tv_val.get)

    # --- the certified network (the ridge iteration), then its refinement if asked for
    training: dict[str, Any] = {}
    if args.checkpoint:
        model = _load_ridge(args.checkpoint)
        training["checkpoint"] = str(args.checkpoint)
    else:
        if args.base_checkpoint:
            model = _load_ridge(args.base_checkpoint)
            training["base_checkpoint"] = str(args.base_checkpoint)
        else:
            model = ConvexRidgeCT(
                radon,
                n_layers=args.layers,
                filters=args.filters,
                kernel_size=args.kernel_size,
                n_clips=args.clips,
                slack=args.slack,
            )
            training.update(train(model, args, radon, val))
        if args.refine_channels:
            model = with_refiner(model, args)
            model.requires_grad_(False).eval()
            data = refiner_data(model, radon, args.refine_images, args.photons, REFINE_SEED)
            with torch.no_grad():
                val_in = (ridge_only(model, y_val, m_val), x_val, m_val)
            model.refiner.requires_grad_(True)
            training["refiner"] = train_refiner(model, args, data, val_in)
        save_checkpoint(model, paths[2])
    model.eval().requires_grad_(False)
    nets = {"network": lambda y, m: ridge_only(model, y, m)}
    if model.refiner is not None:
        nets["refined"] = lambda y, m: model(y, mask=m)

    # --- reconstructions; TV and the networks timed in interleaved repeats (medians)
    times: dict[str, list[float]] = {"fbp": [], "tv": [], **{key: [] for key in nets}}
    x_hat: dict[str, Any] = {}
    tv_info: dict[str, Any] = {}
    for _ in range(args.repeats):
        t = time.perf_counter()
        x_hat["fbp"] = fbp(y_te, radon, filter=best_filter)
        times["fbp"].append(time.perf_counter() - t)
        t = time.perf_counter()
        sol = _tv(y_te, radon, lam, m_te, args.tv_iters)
        times["tv"].append(time.perf_counter() - t)
        x_hat["tv"] = sol.x
        tv_info = {"iterations": sol.iterations, "final_rel_change": sol.residual}
        for key, net in nets.items():
            t = time.perf_counter()
            with torch.no_grad():
                x_hat[key] = net(y_te, m_te)
            times[key].append(time.perf_counter() - t)

    # --- certificates against two attacks (both lower bounds on the Lipschitz constant)
    k = min(8, args.n_test)
    certs: dict[str, dict[str, Any]] = {}
    for key, net in nets.items():
        cert = certificate(model, refined=key == "refined")
        t = time.perf_counter()
        emp = empirical_lipschitz(_Wrap(net), y_te[:k], steps=args.emp_steps, mask=m_te[:k])
        emp_seconds = time.perf_counter() - t
        jac = jacobian_norm(_Wrap(net), y_te[: args.jac_images], m_te[: args.jac_images])
        certs[key] = {
            "lipschitz_bound": cert.bound,
            "lipschitz_init": cert.init,
            "radon_norm": cert.radon_norm,
            "lipschitz_layers": cert.layers,
            "lipschitz_empirical": emp,
            "lipschitz_empirical_seconds": emp_seconds,
            "jacobian_norm_max": jac,
            "max_beta_plus_gamma": max(
                lay["beta"] + lay["gamma"] for lay in cert.layers if "beta" in lay
            ),
        }

    results: dict[str, Any] = {}
    rows = []
    names = {
        "fbp": f"FBP ({best_filter})",
        "tv": f"TV (lam {lam:g})",
        "network": "ConvexRidgeCT",
        "refined": "ConvexRidgeCT + LipschitzRefiner",
    }
    for key, xh in x_hat.items():
        ps, ss = scores(xh, x_te)
        med = statistics.median(times[key])
        results[key] = {
            "psnr_mean": statistics.mean(ps),
            "ssim_mean": statistics.mean(ss),
            "psnr": ps,
            "ssim": ss,
            "seconds_median": med,
            "seconds_repeats": times[key],
            "seconds_per_image": med / args.n_test,
        }
        c = certs.get(key, {})
        rows.append(
            {
                "method": names[key],
                "PSNR (dB)": results[key]["psnr_mean"],
                "SSIM": results[key]["ssim_mean"],
                "time / image (s)": med / args.n_test,
                "Lipschitz bound": c.get("lipschitz_bound", ""),
                "adversarial ratio": c.get("lipschitz_empirical", ""),
            }
        )
    results["fbp"].update(filter=best_filter, validation_psnr=fbp_val)
    results["tv"].update(lam=lam, validation_psnr=tv_val, **tv_info)
    config_net = model.get_config() | {"radon": repr(radon), "mask": "per-image supports"}
    for key in nets:
        results[key].update(certs[key], config=config_net, training=training)
    final = "refined" if "refined" in nets else "network"
    summary: dict[str, Any] = {"final_model": names[final]}
    notes = ""
    for key in nets:
        r, c = results[key], certs[key]
        gain = r["psnr_mean"] - results["tv"]["psnr_mean"]
        speed = results["tv"]["seconds_median"] / r["seconds_median"]
        bound, emp, jac = c["lipschitz_bound"], c["lipschitz_empirical"], c["jacobian_norm_max"]
        prefix = "" if key == final else "ridge_"
        summary.update(
            {
                f"{prefix}network_minus_tv_db": gain,
                f"{prefix}speedup_vs_tv": speed,
                f"{prefix}lipschitz_bound": bound,
                f"{prefix}lipschitz_empirical": emp,
                f"{prefix}bound_over_empirical": bound / emp,
                f"{prefix}bound_over_jacobian_norm": bound / jac,
                f"{prefix}goal_bound_le_10": bound <= 10.0,
                f"{prefix}goal_within_20x": bound / emp <= 20.0,
                f"{prefix}goal_tv_plus_2db": gain >= 2.0,
            }
        )
        notes += (
            f"\n{names[key]} - TV = {gain:+.2f} dB; TV / it time = {speed:.1f}x. "
            f"Certified bound {bound:.4g}; adversarial ratio {emp:.4g} "
            f"(bound / ratio = {bound / emp:.2f}); largest local Jacobian norm {jac:.4g} "
            f"(bound / it = {bound / jac:.2f}).\n"
        )
    notes += (
        f"\nTimes: median of {args.repeats} interleaved runs over the {args.n_test} test "
        f"images, load {os.getloadavg()[0]:.1f}.\n"
    )
    config = dict(vars(args))
    config.update(
        load_average_1_5_15min=list(os.getloadavg()),
        noise="poisson",
        seeds=SEEDS | {"refiner_data": REFINE_SEED},
        data="unrollsci.bench.ct.make_data (validation / test seeds of bench ct)",
        timing="TV and the network interleaved, median of --repeats, whole test batch",
    )
    path = write_results(
        "ct_certified",
        {"config": config, "results": results, "summary": summary},
        args.out,
        quick=args.quick,
    )
    table = markdown_table(rows)
    write_text(paths[1], table + "\n" + notes)
    print(table + "\n" + notes)
    print(f"results: {path}")
    return 0
