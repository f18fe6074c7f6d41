"""LISTA benchmark: NMSE per layer of classical and learned sparse recovery.

The standard setting of the LISTA literature (Chen et al. 2018, Liu et al. 2019):
``A`` is ``250 x 500`` i.i.d. Gaussian with unit-norm columns, ``x`` is
Bernoulli(0.1) x N(0, 1), ``K = 16`` layers, SNR = inf and 40 dB, 1000 test
vectors. Learned models train layer-wise on synthetic batches drawn on the fly.
Writes ``benchmarks/results/lista.json``, a markdown table and ``lista.png``.

Run: ``python benchmarks/lista.py`` (full) or ``--quick`` (a smoke run of seconds).
"""

from __future__ import annotations

import argparse
import math
import time
import warnings
from pathlib import Path
from typing import Any

import torch

__all__ = ["main", "make_problem", "sample", "oracle_nmse_db"]

# name -> (class name, options, supervised?)
MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "LISTA": ("LISTA", {}),
    "LISTA-CP": ("LISTACP", {}),
    "LISTA-CPSS": ("LISTACP", {"support_selection": True}),
    "ALISTA": ("ALISTA", {}),
    "UnrolledFISTA": ("UnrolledFISTA", {}),
    "ADMM-Net": ("ADMMNet", {}),
    # scale_init < 1: classical AMP's first threshold is max|A^T y| (layer 1 outputs 0).
    "LAMP": ("LAMP", {"scale_init": 0.95}),
}


def make_problem(m: int, n: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(m, n)`` i.i.d. Gaussian matrix with unit-norm columns."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(m, n, generator=g, dtype=torch.float64)
    return (a / a.norm(dim=0)).to(dtype)


def sample(
    a: torch.Tensor, batch: int, p: float, snr_db: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``(y, x)``: ``x`` Bernoulli(p) x N(0,1), ``y = A x + noise`` at ``snr_db`` per vector."""
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


def _classical(op: Any, y: torch.Tensor, x: torch.Tensor, lam: float, k_max: int) -> dict:
    from .. import solvers
    from .._validation import ConvergenceWarning

    out: dict[str, list[float]] = {"ISTA": [], "FISTA": [], "AMP": []}
    y64 = y.double()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for k in range(1, k_max + 1):
            out["ISTA"].append(_nmse(solvers.ista(op, y64, lam, max_iter=k, tol=0).x, x))
            out["FISTA"].append(
                _nmse(solvers.fista(op, y64, lam, max_iter=k, tol=0, restart=False).x, x))
            out["AMP"].append(_nmse(solvers.amp(op, y64, lam, max_iter=k, tol=0).x, x))
    return out


def _train(model: Any, name: str, a: torch.Tensor, cfg: dict, snr: float, seed: int,
           val: tuple[torch.Tensor, torch.Tensor], loss_kind: str, lam_kkt: float,
           progress: bool) -> dict:
    from ..losses import kkt_residual, mse
    from ..train import fit

    p = cfg["p"]

    def sampler(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return sample(a, cfg["batch"], p, snr, gen)

    op = model.operator
    if loss_kind == "kkt":
        step = 1.0 / op.norm() ** 2

        def loss_fn(mdl: Any, batch: Any) -> torch.Tensor:
            y, _ = batch
            return kkt_residual(op, mdl(y), y, lam_kkt, step=step).pow(2).mean()
    else:
        def loss_fn(mdl: Any, batch: Any) -> torch.Tensor:
            y, x = batch
            return mse(mdl(y), x)

    budget = cfg["budget"].get(name, cfg["budget"]["default"])
    hist = fit(model, loss_fn, sampler, val_data=val, schedule="layerwise",
               stage_epochs=budget["epochs"], steps_per_epoch=budget["steps"],
               lr=budget["lr"], lr_decay=budget["decay"], seed=seed, progress=progress)
    return {"train_seconds": hist.seconds, "final_val_loss": hist.val_loss[-1]
            if hist.val_loss else None, "budget": budget}


def _full_config() -> dict:
    return {
        "m": 250, "n": 500, "p": 0.1, "K": 16, "snr_db": [math.inf, 40.0], "n_test": 1000,
        "n_val": 256, "batch": 64, "lam": 0.1, "lam_kkt": 0.003, "seed": 0,
        "budget": {
            # layer-wise: per stage `epochs` x `steps` Adam steps, lr decayed per epoch.
            "default": {"epochs": 3, "steps": 60, "lr": 1e-3, "decay": 0.3},
            "ALISTA": {"epochs": 4, "steps": 100, "lr": 1e-2, "decay": 0.3},
            "LISTA-CPSS": {"epochs": 4, "steps": 100, "lr": 1e-3, "decay": 0.3},
            "UnrolledFISTA": {"epochs": 3, "steps": 60, "lr": 1e-2, "decay": 0.3},
            "ADMM-Net": {"epochs": 3, "steps": 60, "lr": 1e-2, "decay": 0.3},
        },
    }


def _quick_config() -> dict:
    cfg = _full_config()
    cfg.update({"m": 40, "n": 80, "K": 4, "n_test": 100, "n_val": 64, "batch": 32})
    cfg["budget"] = {"default": {"epochs": 2, "steps": 5, "lr": 1e-3, "decay": 0.5}}
    return cfg


def _plot(results: dict, cfg: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    snrs = list(results["by_snr"].keys())
    fig, axes = plt.subplots(1, len(snrs), figsize=(6 * len(snrs), 4.5), squeeze=False)
    layers = list(range(1, cfg["K"] + 1))
    for ax, snr in zip(axes[0], snrs, strict=False):
        res = results["by_snr"][snr]
        for name, curve in res["nmse_db"].items():
            style = "--" if name in ("ISTA", "FISTA", "AMP") else "-"
            ax.plot(layers, curve, style, marker=".", label=name)
        if res.get("oracle_db") is not None:
            ax.axhline(res["oracle_db"], color="k", lw=0.8, ls=":", label="oracle LS on support")
        ax.set_title(f"SNR = {snr} dB")
        ax.set_xlabel("layer / iteration")
        ax.set_ylabel("NMSE (dB)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Run the LISTA benchmark (``--quick`` for a short smoke run)."""
    from .. import unrolled
    from .._bench import markdown_table, write_results
    from ..operators import MatrixOperator

    parser = argparse.ArgumentParser(prog="unrollsci bench lista", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, seconds")
    parser.add_argument("--out", default="benchmarks/results", help="output folder")
    parser.add_argument("--models", nargs="*", default=None, help=f"subset of {list(MODELS)}")
    parser.add_argument("--snr", nargs="*", type=float, default=None,
                        help="SNRs in dB (inf for noiseless)")
    parser.add_argument("--no-kkt", action="store_true", help="skip the unsupervised KKT run")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    cfg = _quick_config() if args.quick else _full_config()
    if args.snr is not None:
        cfg["snr_db"] = args.snr
    names = args.models if args.models is not None else list(MODELS)
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {list(MODELS)}")
    cfg["models"] = names
    progress = not args.no_progress
    a = make_problem(cfg["m"], cfg["n"], cfg["seed"])
    op = MatrixOperator(a)
    results: dict[str, Any] = {"config": {**cfg, "snr_db": [str(s) for s in cfg["snr_db"]]},
                               "by_snr": {}}
    rows = []
    t_all = time.perf_counter()
    total_train = 0.0
    for snr in cfg["snr_db"]:
        key = "inf" if not math.isfinite(snr) else f"{snr:g}"
        g_test = torch.Generator().manual_seed(cfg["seed"] + 1)
        y_te, x_te = sample(a, cfg["n_test"], cfg["p"], snr, g_test)
        g_val = torch.Generator().manual_seed(cfg["seed"] + 2)
        val = sample(a, cfg["n_val"], cfg["p"], snr, g_val)
        res: dict[str, Any] = {"nmse_db": {}, "train_seconds": {}}
        res["oracle_db"] = oracle_nmse_db(a, y_te, x_te) if math.isfinite(snr) else None
        res["nmse_db"].update(_classical(MatrixOperator(a.double()), y_te, x_te, cfg["lam"],
                                         cfg["K"]))
        runs = [(n, "mse") for n in names]
        if not args.no_kkt and not math.isfinite(snr) and "LISTA" in names:
            runs.append(("LISTA", "kkt"))
        for name, loss_kind in runs:
            cls_name, opts = MODELS[name]
            torch.manual_seed(cfg["seed"])
            model = getattr(unrolled, cls_name)(op, cfg["K"], lam=cfg["lam"], **opts)
            label = name if loss_kind == "mse" else f"LISTA (KKT loss, lam={cfg['lam_kkt']})"
            info = _train(model, name, a, cfg, snr, cfg["seed"], val, loss_kind,
                          cfg["lam_kkt"], progress)
            total_train += info["train_seconds"]
            with torch.no_grad():
                _, xs = model(y_te, return_all=True)
            curve = [_nmse(xk, x_te) for xk in xs]
            res["nmse_db"][label] = curve
            res["train_seconds"][label] = info["train_seconds"]
            print(f"[snr {key}] {label}: {curve[-1]:.2f} dB at K={cfg['K']} "
                  f"({info['train_seconds']:.0f} s)", flush=True)
            # save partial results after every model (a long run can be inspected early)
            results["by_snr"][key] = res
            results["total_train_seconds"] = total_train
            write_results("lista", results, args.out)
        results["by_snr"][key] = res
        for label, curve in res["nmse_db"].items():
            k = cfg["K"]
            row = {"SNR (dB)": key, "method": label}
            for layer in sorted({max(1, k // 4), k // 2, 3 * k // 4, k}):
                row[f"NMSE@{layer}"] = curve[layer - 1]
            row["train s"] = res["train_seconds"].get(label, 0.0)
            rows.append(row)
        if res["oracle_db"] is not None:
            rows.append({"SNR (dB)": key, "method": "oracle LS on true support",
                         f"NMSE@{cfg['K']}": res["oracle_db"]})
    results["total_train_seconds"] = total_train
    results["wall_seconds"] = time.perf_counter() - t_all
    results["rows"] = rows
    path = write_results("lista", results, args.out)
    cols = list(dict.fromkeys(c for r in rows for c in r))
    print(markdown_table(rows, cols))
    print(f"total training {total_train:.0f} s; wall {results['wall_seconds']:.0f} s -> {path}")
    try:
        _plot(results, cfg, Path(args.out) / "lista.png")
    except ImportError:  # pragma: no cover - matplotlib is optional
        print("matplotlib missing: no plot")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
