"""Structured sparse recovery (``unrollsci bench structured``): issue 20.

Section ``group`` (writes ``structured_group.*``): group-sparse recovery with ``A: m x n``
Gaussian (entries ``N(0, 1/m)``), groups of ``g`` consecutive entries, ``s`` active groups
with ``N(0, 1)`` entries; noiseless and 30 dB. NMSE after ``K`` layers / iterations for
group-ISTA and group-FISTA (classical, ``lam`` picked on a grid for the best ``K``-iteration
validation NMSE), LISTA, diagonal-preconditioned LISTA and block-LISTA, each trained with
Adam for the same number of steps and batch size (the same budget), keeping the weights of
the best validation NMSE (checked every ``eval_every`` steps). All learned models use the
group soft threshold, so they differ only in the structure of the learned matrices:
LISTA dense ``n x n``, preconditioned LISTA diagonal, block-LISTA block-diagonal.
The training-data curve retrains LISTA and block-LISTA on ``N`` samples for each ``N``.

Section ``admm`` (writes ``structured_admm.*``): ADMM-Net on deconvolution of sparse
spike images (density ``density``, amplitudes ``|N(0,1)| + 0.5``) under ``Convolution``
(Gaussian blur, zero boundary) at ``snr`` dB, up to ``n = side^2 = 10^4``: a setting where
the lasso recovers the spikes (its converged NMSE is in the table). The penalty ``rho`` of
classical ``K``-iteration ADMM is picked on a grid by validation NMSE (smallest size) and
every model starts there. The exact x-update (eigendecomposition of the densified
``A^T A``, its setup timed) against the matrix-free learned solve (``x_update="learned"``:
learned diagonal PCG, ``cg_steps`` steps) and plain unrolled CG; NMSE (untrained and after
the same training budget) and wall time of a forward pass (models timed round robin,
median of repeats), CPU, one thread.

Timings are wall-clock medians on a shared machine (the machine info is in the JSON).
"""

from __future__ import annotations

import argparse
import math
import time
import warnings
from typing import Any

import torch

from .. import losses
from .._argtypes import int_arg, positive_int_arg
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

__all__ = ["main", "group_problem", "train_model", "nmse_db"]


# ----------------------------------------------------------------------------- data
def group_problem(m: int, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, n, generator=g, dtype=torch.float64) / math.sqrt(m)


def group_sample(
    a: torch.Tensor, count: int, group: int, active: int, snr_db: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` group-sparse signals and their measurements (float64)."""
    g = torch.Generator().manual_seed(seed)
    n = a.shape[1]
    ng = n // group
    pick = torch.rand(count, ng, generator=g).argsort(dim=1)[:, :active]
    mask = torch.zeros(count, ng, dtype=torch.float64).scatter_(1, pick, 1.0)
    x = torch.randn(count, n, generator=g, dtype=torch.float64) * mask.repeat_interleave(group, 1)
    y = x @ a.T
    if math.isfinite(snr_db):
        sig = y.norm(dim=1, keepdim=True) / math.sqrt(a.shape[0])
        y = y + sig * 10 ** (-snr_db / 20) * torch.randn(y.shape, generator=g, dtype=y.dtype)
    return x, y


def nmse_db(x: torch.Tensor, x_true: torch.Tensor) -> float:
    """:func:`unrollsci.losses.nmse_db` over the batch, in float64, as a number."""
    return float(losses.nmse_db(x.double(), x_true.double()))


# ------------------------------------------------------------------------- training
def train_model(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    xv: torch.Tensor,
    yv: torch.Tensor,
    *,
    steps: int,
    batch: int,
    lr: float,
    eval_every: int,
    seed: int,
) -> dict[str, Any]:
    """Adam on the mean squared error; keeps the weights of the best validation NMSE."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    with torch.no_grad():
        best = nmse_db(model(yv), xv)
    best_state, best_step = copy_state(model.state_dict()), 0
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        idx = torch.randint(0, x.shape[0], (min(batch, x.shape[0]),), generator=gen)
        loss = (model(y[idx]) - x[idx]).pow(2).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % eval_every == 0 or step == steps:
            with torch.no_grad():
                v = nmse_db(model(yv), xv)
            if v < best:
                best, best_state, best_step = v, copy_state(model.state_dict()), step
    model.load_state_dict(best_state)
    return {"val_nmse_db": best, "best_step": best_step, "train_s": time.perf_counter() - t0}


def _classical_db(
    op: Any, y: torch.Tensor, x: torch.Tensor, lam: float, k: int, how: str, prox: Any
):
    from .. import ConvergenceWarning, solvers

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        if how == "ista":
            sol = solvers.ista(op, y, lam, max_iter=k, tol=0, prox=prox)
        else:
            sol = solvers.fista(op, y, lam, max_iter=k, tol=0, restart=False, prox=prox)
    return nmse_db(sol.x, x)


# ---------------------------------------------------------------------- group section
def run_group(cfg: dict[str, Any], log: Any) -> dict[str, Any]:
    from ..operators import MatrixOperator

    m, n, g, s, k = cfg["m"], cfg["n"], cfg["group"], cfg["active"], cfg["K"]
    a64 = group_problem(m, n, cfg["seed"])
    op64 = MatrixOperator(a64)
    op = MatrixOperator(a64.float())
    prox = {"kind": "group", "group_size": g}
    out: dict[str, Any] = {"config": cfg, "by_snr": {}}
    for snr in cfg["snrs"]:
        key = "inf" if not math.isfinite(snr) else str(int(snr))
        xt, yt = group_sample(a64, max(cfg["sizes"]), g, s, snr, cfg["seed"] + 1)
        xv, yv = group_sample(a64, cfg["n_val"], g, s, snr, cfg["seed"] + 2)
        xe, ye = group_sample(a64, cfg["n_test"], g, s, snr, cfg["seed"] + 3)
        # classical: lam on a grid, best K-iteration validation NMSE
        res: dict[str, Any] = {"classical": {}, "learned": {}, "curve": {}}
        lam_best = {}
        for how in ("ista", "fista"):
            scores = {lam: _classical_db(op64, yv, xv, lam, k, how, prox) for lam in cfg["lams"]}
            lam = min(scores, key=scores.get)
            lam_best[how] = lam
            res["classical"][f"group-{how.upper()}"] = {
                "lam": lam,
                "test_nmse_db": _classical_db(op64, ye, xe, lam, k, how, prox),
            }
        # the group lasso itself (FISTA with restart to tol 1e-6) on the first n_converged
        # test samples: what the classical K-iteration rows approach
        from .. import ConvergenceWarning, solvers

        nc = cfg["n_converged"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            sol = solvers.fista(
                op64,
                ye[:nc],
                lam_best["fista"],
                tol=1e-6,
                max_iter=cfg["converged_iters"],
                prox=prox,
            )
        res["classical"]["group lasso (FISTA to tol 1e-6)"] = {
            "lam": lam_best["fista"],
            "iterations": sol.iterations,
            "test_samples": nc,
            "test_nmse_db": nmse_db(sol.x, xe[:nc]),
        }
        lam0 = lam_best["ista"]  # the learned models start at group-ISTA with this lam
        data = (xt.float(), yt.float(), xv.float(), yv.float(), xe.float(), ye.float())
        setup = (op, k, g, lam0, prox, key)
        big = max(cfg["sizes"])
        for name in _MODELS:
            res["learned"][name] = _fit(name, big, setup, data, cfg, log)
        if key == cfg["curve_snr"]:
            for name in ("LISTA", "BlockLISTA"):
                res["curve"][name] = {
                    str(size): (
                        res["learned"][name]
                        if size == big
                        else _fit(name, size, setup, data, cfg, log)
                    )
                    for size in cfg["sizes"]
                }
            res["claim"] = _claim(res["curve"])
        out["by_snr"][key] = res
    return out


_MODELS = ("LISTA", "PreconditionedLISTA (diagonal)", "BlockLISTA")


@keep_caller_rng
def _fit(name: str, size: int, setup: tuple, data: tuple, cfg: dict, log: Any) -> dict[str, Any]:
    """Train model ``name`` on the first ``size`` training samples; test NMSE and cost."""
    from ..unrolled import LISTA, BlockLISTA, PreconditionedLISTA

    op, k, g, lam0, prox, key = setup
    xt, yt, xv, yv, xe, ye = data
    torch.manual_seed(cfg["seed"])
    if name == "LISTA":
        model: Any = LISTA(op, k, lam=lam0, prox=prox)
    elif name == "BlockLISTA":
        model = BlockLISTA(op, k, group_size=g, lam=lam0)
    else:
        model = PreconditionedLISTA(op, k, lam=lam0, prox=prox)
    info = train_model(
        model,
        xt[:size],
        yt[:size],
        xv,
        yv,
        steps=cfg["steps"],
        batch=cfg["batch"],
        lr=cfg["lr"][name],
        eval_every=cfg["eval_every"],
        seed=cfg["seed"],
    )
    with torch.no_grad():
        info["test_nmse_db"] = nmse_db(model(ye), xe)
    info["params"] = sum(p.numel() for p in model.parameters())
    info["train_size"] = size
    log(
        f"  snr={key} {name} N={size}: {info['test_nmse_db']:.2f} dB "
        f"({info['train_s']:.0f} s, best step {info['best_step']})"
    )
    return info


def _claim(curve: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Does block-LISTA reach LISTA's best NMSE with at most a quarter of the samples?"""
    lista = {int(k): v["test_nmse_db"] for k, v in curve["LISTA"].items()}
    block = {int(k): v["test_nmse_db"] for k, v in curve["BlockLISTA"].items()}
    n_best = min(lista, key=lista.get)
    target = lista[n_best]
    reach = [size for size in sorted(block) if block[size] <= target]
    first = reach[0] if reach else None
    return {
        "lista_best_nmse_db": target,
        "lista_best_at": n_best,
        "block_first_size_reaching_it": first,
        "holds": first is not None and first * 4 <= n_best,
    }


# --------------------------------------------------------------------------- configs
def _configs(quick: bool) -> dict[str, dict[str, Any]]:
    lr = {"LISTA": 1e-4, "PreconditionedLISTA (diagonal)": 1e-2, "BlockLISTA": 1e-2}
    if quick:
        return {
            "group": dict(
                m=25,
                n=50,
                group=5,
                active=2,
                K=4,
                snrs=[math.inf],
                seed=0,
                sizes=[50, 200],
                n_val=64,
                n_test=64,
                lams=[0.01, 0.05],
                converged_iters=200,
                n_converged=16,
                steps=6,
                batch=16,
                eval_every=3,
                lr=lr,
                curve_snr="inf",
            ),
            "admm": dict(
                sides=[8, 12],
                max_exact_side=12,
                K=3,
                kernel=5,
                blur_sigma=1.0,
                density=0.05,
                snr=40.0,
                lam=0.003,
                rho_grid=[0.01, 0.1],
                lasso_iters=50,
                cg_steps=2,
                n_train=32,
                n_val=8,
                n_test=8,
                steps=3,
                batch=4,
                lr=1e-3,
                eval_every=3,
                repeats=1,
                seed=0,
            ),
        }
    return {
        "group": dict(
            m=250,
            n=500,
            group=5,
            active=10,
            K=16,
            snrs=[math.inf, 30.0],
            seed=0,
            sizes=[500, 2000, 8000, 32000],
            n_val=1000,
            n_test=1000,
            lams=[0.003, 0.01, 0.03, 0.1, 0.3],
            converged_iters=3000,
            n_converged=100,
            steps=300,
            batch=64,
            eval_every=50,
            lr=lr,
            curve_snr="inf",
        ),
        "admm": dict(
            sides=[32, 64, 100],
            max_exact_side=100,
            K=10,
            kernel=7,
            blur_sigma=1.0,
            density=0.02,
            snr=40.0,
            lam=0.003,
            rho_grid=[0.003, 0.01, 0.03, 0.1, 1.0],
            lasso_iters=3000,
            cg_steps=5,
            n_train=512,
            n_val=16,
            n_test=32,
            steps=30,
            batch=8,
            lr=1e-2,
            eval_every=10,
            repeats=5,
            seed=0,
        ),
    }


# ------------------------------------------------------------------------------ report
def _group_report(data: dict[str, Any]) -> str:
    rows = []
    for key, res in data["by_snr"].items():
        for name, v in {**res["classical"], **res["learned"]}.items():
            rows.append(
                {
                    "SNR (dB)": key,
                    "method": name,
                    "NMSE (dB)": v["test_nmse_db"],
                    "learned params": v.get("params", 0),
                }
            )
    text = f"K = {data['config']['K']} layers / iterations\n\n" + markdown_table(rows)
    for key, res in data["by_snr"].items():
        if res["curve"]:
            crow = [
                {
                    "train samples": size,
                    **{
                        name: res["curve"][name][str(size)]["test_nmse_db"] for name in res["curve"]
                    },
                }
                for size in data["config"]["sizes"]
            ]
            text += f"\n\nTraining-data curve (SNR {key}), test NMSE (dB):\n\n" + markdown_table(
                crow
            )
            text += (
                "\n\nClaim (block-LISTA reaches LISTA's best with <= 1/4 the samples): "
                f"{res['claim']}"
            )
    return text + "\n"


def _group_plot(data: dict[str, Any], path: Any) -> None:
    fig, ax = new_figure(figsize=(5, 3.5))
    for key, res in data["by_snr"].items():
        for name, curve in res["curve"].items():
            sizes = sorted(int(s) for s in curve)
            ax.semilogx(
                sizes,
                [curve[str(s)]["test_nmse_db"] for s in sizes],
                "o-",
                label=f"{name} (SNR {key})",
            )
    ax.set_xlabel("training samples")
    ax.set_ylabel("test NMSE (dB)")
    ax.legend()
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="unrollsci bench structured", description=__doc__)
    p.add_argument("--quick", action="store_true", help="tiny sizes; writes structured_*_quick")
    p.add_argument("--out", type=output_dir_arg, default="benchmarks/results")
    p.add_argument("--only", choices=("group", "admm"), action="append")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "--admm-sides",
        type=positive_int_arg,
        nargs="+",
        help="rerun these image sides only; their rows replace those of the same n in the "
        "existing structured_admm results (the other rows are kept)",
    )
    p.add_argument("--admm-steps", type=int_arg(0), help="training steps of the admm section")
    p.add_argument(
        "--admm-lasso-iters", type=int_arg(0), help="FISTA iterations of the lasso row (0: skip it)"
    )
    args = parse_bench_args(
        p, argv, lambda a: [f"structured_{s}" for s in a.only or ["group", "admm"]]
    )
    torch.set_num_threads(1)
    cfgs = _configs(args.quick)
    if args.admm_steps is not None:
        cfgs["admm"]["steps"] = args.admm_steps
    if args.admm_lasso_iters is not None:
        cfgs["admm"]["lasso_iters"] = args.admm_lasso_iters
    kept: list[dict[str, Any]] = []
    kept_speed: dict[str, float] = {}
    if args.admm_sides:
        cfgs["admm"]["sides"] = args.admm_sides
        from pathlib import Path

        from ._structured_admm import previous_results

        stem = "structured_admm_quick" if args.quick else "structured_admm"
        old = Path(args.out) / f"{stem}.json"
        if old.exists():
            redo = {side * side for side in args.admm_sides}
            try:
                prev = previous_results(old)
            except ValueError as exc:
                p.error(str(exc))
            kept = [r for r in prev["rows"] if r["n"] not in redo]
            cfgs["admm"]["previous_rows_from"] = prev.get("config")
            cfgs["admm"]["rho_fixed"] = prev["rho"]  # picked on the smallest size before
            kept_speed = prev.get("forward_speedup_learned_vs_exact", {})
    log = (lambda msg: None) if args.no_progress else (lambda msg: print(msg, flush=True))
    for section in args.only or ["group", "admm"]:
        name = f"structured_{section}"
        if section == "group":
            data = run_group(cfgs["group"], log)
            text = _group_report(data)
            _group_plot(data, figure_path(args.out, f"{name}.png", args.quick))
        else:
            from ._structured_admm import admm_report, run_admm

            def save(data: dict[str, Any], name: str = name) -> str:
                if kept:
                    rows = sorted(kept + data["rows"], key=lambda r: r["n"])
                    speed = {**kept_speed, **data["forward_speedup_learned_vs_exact"]}
                    data = {**data, "rows": rows, "forward_speedup_learned_vs_exact": speed}
                text = admm_report(data, cfgs)
                write_results(name, data, args.out, quick=args.quick)
                write_text(figure_path(args.out, f"{name}.md", args.quick), text)
                return text

            data = run_admm(cfgs["admm"], log, save)
            text = save(data)
            print(text)
            continue
        write_results(name, data, args.out, quick=args.quick)
        write_text(figure_path(args.out, f"{name}.md", args.quick), text)
        print(text)
    return 0
