"""LISTA benchmark: NMSE per layer of classical and learned sparse recovery.

The standard setting of the LISTA literature (Chen et al. 2018, Liu et al. 2019):
``A`` is ``250 x 500`` i.i.d. Gaussian with unit-norm columns, ``x`` is
Bernoulli(0.1) x N(0, 1), ``K = 16`` layers, SNR = inf and 40 dB, 1000 test
vectors. Learned models train layer-wise on synthetic batches drawn on the fly.
Writes ``benchmarks/results/lista.json``, a markdown table and ``lista.png``.

Run: ``python benchmarks/lista.py`` (full) or ``--quick`` (a smoke run of seconds, which
writes ``lista_quick.json``, ``.md`` and ``.png`` instead).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

import torch

from .._argtypes import existing_dir_arg, float_arg, int_arg
from .._io import check_output_folder, check_writable
from ._common import keep_caller_rng
from ._lista_merge import merge_parts, read_parts
from ._lista_setup import (  # noqa: F401  (re-exported: tests and the demo use them)
    CLASSICAL,
    MODELS,
    NOT_DEFAULT,
    SCHEDULE_KEYS,
    STAGED,
    _classical,
    _full_config,
    _nmse,
    _quick_config,
    _train,
    kkt_stage_lam,
    make_problem,
    oracle_nmse_db,
    sample,
    train_staged,
)
from ._lista_tails import tail_stats, tails_report  # noqa: F401

__all__ = ["main", "make_problem", "sample", "oracle_nmse_db"]


def _plot(results: dict, cfg: dict, path: Path) -> None:
    from ._common import new_figure, save_figure, tab20

    snrs = list(results["by_snr"].keys())
    fig, axes = new_figure(1, len(snrs), figsize=(6 * len(snrs), 4.5), squeeze=False)
    layers = list(range(1, cfg["K"] + 1))
    for ax, snr in zip(axes[0], snrs, strict=False):
        res = results["by_snr"][snr]
        for i, (name, curve) in enumerate(res["nmse_db"].items()):
            style = "--" if name in CLASSICAL else "-"
            color = tab20(i)
            ax.plot(layers, curve, style, marker=".", label=name, color=color)
        if res.get("oracle_db") is not None:
            ax.axhline(res["oracle_db"], color="k", lw=0.8, ls=":", label="oracle LS on support")
        ax.set_title(f"SNR = {snr} dB")
        ax.set_xlabel("layer / iteration")
        ax.set_ylabel("NMSE (dB)")
        ax.grid(alpha=0.3)
    for ax in axes[0]:
        ax.legend(fontsize=6)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def _report(results: dict, cfg: dict, out: str, name: str) -> Path:
    """Table rows, JSON and PNG from ``results["by_snr"]``."""
    from ._common import markdown_table, write_results, write_text

    rows = []
    k = cfg["K"]
    total_train = total_cpu = 0.0
    for key, res in results["by_snr"].items():
        for label, curve in res["nmse_db"].items():
            row = {"SNR (dB)": key, "method": label}
            for layer in sorted({max(1, k // 4), k // 2, 3 * k // 4, k}):
                row[f"NMSE@{layer}"] = curve[layer - 1]
            row["train s"] = res["train_seconds"].get(label, 0.0)
            row["train cpu s"] = res.get("cpu_seconds", {}).get(label, 0.0)
            if label in res.get("monotone", {}):  # staged runs: the validation curve
                row["val curve non-increasing"] = res["monotone"][label]
            rows.append(row)
        total_train += sum(res["train_seconds"].values())
        total_cpu += sum(res.get("cpu_seconds", {}).values())
        if res.get("oracle_db") is not None:
            rows.append(
                {
                    "SNR (dB)": key,
                    "method": "oracle LS on true support",
                    f"NMSE@{k}": res["oracle_db"],
                }
            )
    results["total_train_seconds"] = total_train
    results["total_train_cpu_seconds"] = total_cpu
    results["rows"] = rows
    results["summary"] = summary = _summary(results)
    path = write_results(name, results, out)
    cols = list(dict.fromkeys(c for r in rows for c in r))
    table = markdown_table(rows, cols)
    print(table)
    write_text(
        Path(out) / f"{name}.md",
        f"# {name}: NMSE (dB) per layer, training time\n\n{table}\n\n"
        f"Total training: wall {total_train:.0f} s, single-thread CPU {total_cpu:.0f} s.\n\n"
        + "".join(f"- {k}: {v}\n" for k, v in summary.items()),
    )
    for k, v in summary.items():
        print(f"{k}: {v}")
    print(f"total training: wall {total_train:.0f} s, cpu {total_cpu:.0f} s -> {path}")
    try:
        _plot(results, cfg, Path(out) / f"{name}.png")
    except ImportError:  # pragma: no cover - matplotlib is optional
        print("matplotlib missing: no plot")
    return path


def _summary(results: dict) -> dict[str, Any]:
    """The acceptance numbers: best learned NMSE, gap to the oracle, KKT vs supervised."""
    classical = set(CLASSICAL)
    out: dict[str, Any] = {}
    for key, res in results["by_snr"].items():
        learned = {k: v[-1] for k, v in res["nmse_db"].items() if k not in classical}
        if not learned:
            continue
        best = min(learned, key=learned.get)
        out[f"best learned at SNR {key}"] = f"{best} {learned[best]:.2f} dB"
        if res.get("oracle_db") is not None:
            out[f"gap to oracle at SNR {key} (dB)"] = round(learned[best] - res["oracle_db"], 2)
        for kkt in (k for k in learned if k.startswith("LISTA (KKT")):
            suffix = kkt[kkt.index(" [") :] if " [" in kkt else ""
            if "LISTA" + suffix in learned:
                out[f"{kkt} minus supervised LISTA{suffix} at SNR {key} (dB)"] = round(
                    learned[kkt] - learned["LISTA" + suffix], 2
                )
    return out


def _merge(paths: list[str], parts: list[dict[str, Any]], out: str, name: str) -> int:
    """Merge result files of partial runs (e.g. one model per process) into one."""
    merged, cfg = merge_parts(paths, parts, CLASSICAL)
    _report(merged, cfg, out, name)
    return 0


def _result_name(args: argparse.Namespace) -> str:
    """``--name``, else the report's default (a report never replaces the results)."""
    default = "lista_tails" if args.tails else "lista_floors" if args.floors else "lista"
    return args.name or default


@keep_caller_rng
def main(argv: list[str] | None = None) -> int:
    """Run the LISTA benchmark (``--quick`` for a short smoke run)."""
    from .. import unrolled
    from .._io import check_writable
    from ..operators import MatrixOperator
    from ._common import (
        output_dir_arg,
        parse_bench_args,
        positive_int_arg,
        results_name,
        write_results,
    )

    parser = argparse.ArgumentParser(prog="unrollsci bench lista", description=__doc__)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny sizes, seconds; writes <name>_quick.json, .md and .png",
    )
    parser.add_argument(
        "--out", type=output_dir_arg, default="benchmarks/results", help="output folder"
    )
    parser.add_argument(
        "--name",
        default=None,
        help="results file name (without .json; default lista, lista_tails for --tails, "
        "lista_floors for --floors: a report never replaces the benchmark's results)",
    )
    parser.add_argument("--models", nargs="*", default=None, help=f"subset of {list(MODELS)}")
    parser.add_argument(
        "--snr",
        nargs="*",
        type=float_arg(inf=True),
        default=None,
        help="SNRs in dB (inf for noiseless)",
    )
    parser.add_argument("--no-kkt", action="store_true", help="skip the unsupervised KKT run")
    parser.add_argument(
        "--kkt-only", action="store_true", help="only the unsupervised KKT-loss LISTA (noiseless)"
    )
    parser.add_argument(
        "--stage-epochs",
        type=positive_int_arg,
        default=None,
        help="override the epochs per layer-wise stage of every model (a longer run)",
    )
    parser.add_argument(
        "--lam-kkt",
        type=float_arg(positive=True),
        default=None,
        help="lasso weight of the KKT-loss run (default: config lam_kkt)",
    )
    parser.add_argument(
        "--lam-kkt-start",
        type=float_arg(minimum=0),
        default=None,
        help="KKT run: lasso weight of the first layer-wise stage, falling geometrically "
        "to the final --lam-kkt (default: config lam_kkt_start; 0 = constant lam)",
    )
    parser.add_argument(
        "--kkt-step",
        type=float_arg(positive=True),
        default=None,
        help="KKT run: step t of the residual in units of 1/||A||^2 (default: config kkt_step)",
    )
    parser.add_argument(
        "--kkt-power",
        type=int,
        choices=(1, 2),
        default=None,
        help="KKT run: average the residual (1) or its square (2) (default: config kkt_power)",
    )
    parser.add_argument(
        "--merge",
        nargs="+",
        default=None,
        metavar="JSON",
        help="merge partial result files into --out/--name and exit",
    )
    parser.add_argument(
        "--staged",
        type=float_arg(positive=True),
        default=None,
        metavar="SECONDS",
        help=f"train with the staged layer-wise schedule of Chen et al. 2018 "
        f"(unrollsci.train.fit_layerwise), SECONDS of wall time per model; models "
        f"{sorted(STAGED)}",
    )
    parser.add_argument(
        "--checkpoints",
        default=None,
        help="--staged: save every trained model in this folder as <model>_snr<snr>.pt "
        "(<model>_snr<snr>_quick.pt with --quick; an existing one only with --force)",
    )
    parser.add_argument("--force", action="store_true", help="replace models in --checkpoints")
    parser.add_argument(
        "--resume",
        type=existing_dir_arg,
        default=None,
        metavar="DIR",
        help="--staged: continue the training of <model>_snr<snr>.pt in DIR (the budget is "
        "added to the one it had; totals in the row include both)",
    )
    parser.add_argument(
        "--start-layer",
        type=positive_int_arg,
        default=None,
        help="--resume: the first layer trained again (default: the last)",
    )
    parser.add_argument(
        "--freeze-below",
        type=int_arg(0),
        default=0,
        help="--resume: the first N layers keep their constants",
    )
    parser.add_argument(
        "--decay-rate",
        type=float_arg(positive=True),
        default=None,
        help="--staged: multiply the rate of every trained layer by R after each new layer "
        "(Chen et al. 2018 use 0.3; default: none)",
    )
    wall_help = "--staged: SECONDS are wall-clock seconds (default: CPU seconds of the process)"
    parser.add_argument("--wall-budget", action="store_true", help=wall_help)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"--staged: replace a key of the model's schedule (after the --resume "
        f"options), one of {sorted(SCHEDULE_KEYS)}; lr_decays as a comma list",
    )
    parser.add_argument(
        "--tails",
        nargs="+",
        default=None,
        metavar="CHECKPOINT",
        help="for saved models (<model>_snr<snr>.pt): the share of the test error from the "
        "worst vectors and the NMSE on other test sets; writes --out/--name and exits",
    )
    parser.add_argument(
        "--floors",
        nargs="+",
        default=None,
        metavar="CHECKPOINT",
        help="for saved models: the parts of the test error (kept, missed and false "
        "nonzeros), least squares on their support, the fixed point on the true support, "
        "and the lasso at each SNR; writes --out/--name and exits",
    )
    parser.add_argument("--no-progress", action="store_true")
    args = parse_bench_args(parser, argv, _result_name)
    if args.tails and args.floors:
        parser.error("--tails and --floors: one report per run")
    result_name = _result_name(args)
    stem = results_name(result_name, args.quick)  # the files' name: <name>[_quick]
    if args.merge:
        missing = [m for m in args.merge if not Path(m).is_file()]
        if missing:
            parser.error(f"--merge: no such file: {', '.join(missing)}")
        try:  # never write the merged file over one of the parts it is made from
            check_writable([Path(args.out) / f"{stem}.json"], inputs=args.merge, force=True)
            parts = read_parts(args.merge)  # every part checked before anything is written
        except (OSError, ValueError) as exc:
            parser.error(str(exc))
        return _merge(args.merge, parts, args.out, stem)

    cfg = _quick_config() if args.quick else _full_config()
    if args.tails:
        return tails_report(args.tails, cfg, args.out, stem)
    if args.floors:
        from ._lista_floors import floors_report

        return floors_report(args.floors, cfg, args.out, stem)
    if args.snr is not None:
        cfg["snr_db"] = args.snr
    if args.lam_kkt is not None:
        cfg["lam_kkt"] = args.lam_kkt
    if args.lam_kkt_start is not None:
        cfg["lam_kkt_start"] = args.lam_kkt_start or None
    if args.kkt_step is not None:
        if not args.kkt_step > 0:
            parser.error(f"--kkt-step must be > 0 (got {args.kkt_step})")
        cfg["kkt_step"] = args.kkt_step
    if args.kkt_power is not None:
        cfg["kkt_power"] = args.kkt_power
    cfg["stage_epochs"] = args.stage_epochs
    names = args.models if args.models is not None else [n for n in MODELS if n not in NOT_DEFAULT]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {list(MODELS)}")
    given = [
        option
        for option, value in (
            ("--checkpoints", args.checkpoints),
            ("--resume", args.resume),
            ("--start-layer", args.start_layer),
            ("--freeze-below", args.freeze_below or None),
            ("--decay-rate", args.decay_rate),
            ("--set", args.set or None),
        )
        if value is not None
    ]
    if args.staged is None and given:  # they were ignored without a word
        parser.error(f"{', '.join(given)}: only with --staged")
    if args.resume is None and (args.start_layer is not None or args.freeze_below):
        parser.error("--start-layer and --freeze-below: only with --resume")
    if args.staged is not None:
        if args.kkt_only:
            parser.error("--staged trains with the MSE loss: --kkt-only does not apply")
        if not args.staged > 0:
            parser.error(f"--staged must be > 0 seconds (got {args.staged})")
        if args.decay_rate is not None and not 0 < args.decay_rate <= 1:
            parser.error(f"--decay-rate must be in (0, 1] (got {args.decay_rate})")
        overrides: dict[str, Any] = {}
        for item in args.set:
            key, sep, text = item.partition("=")
            if not sep or key not in SCHEDULE_KEYS:
                parser.error(
                    f"--set: expected KEY=VALUE with KEY in {sorted(SCHEDULE_KEYS)} (got {item!r})"
                )
            try:
                overrides[key] = SCHEDULE_KEYS[key](text)
            except (ValueError, KeyError):
                parser.error(f"--set: bad value for {key}: {text!r}")
        cfg["schedule_overrides"] = {
            k: list(v) if isinstance(v, tuple) else v for k, v in overrides.items()
        }
        bad = [n for n in names if n not in STAGED]
        if bad:
            parser.error(f"--staged: no staged schedule for {bad}; choose from {sorted(STAGED)}")
        cfg["n_val"] = 1000  # the validation set of Chen et al. 2018
        cfg["staged_seconds"] = args.staged
        args.no_kkt = True
        for snr in cfg["snr_db"]:  # every model file checked before hours of training
            for name in names:
                _model_paths(parser, args, name, snr)
    cfg["models"] = names
    progress = not args.no_progress
    a = make_problem(cfg["m"], cfg["n"], cfg["seed"])
    op = MatrixOperator(a)
    results: dict[str, Any] = {
        "config": {**cfg, "snr_db": [str(s) for s in cfg["snr_db"]]},
        "by_snr": {},
    }
    t_all = time.perf_counter()
    for snr in cfg["snr_db"]:
        key = "inf" if not math.isfinite(snr) else f"{snr:g}"
        g_test = torch.Generator().manual_seed(cfg["seed"] + 1)
        y_te, x_te = sample(a, cfg["n_test"], cfg["p"], snr, g_test)
        g_val = torch.Generator().manual_seed(cfg["seed"] + 2)
        val = sample(a, cfg["n_val"], cfg["p"], snr, g_val)
        res: dict[str, Any] = {"nmse_db": {}, "train_seconds": {}, "cpu_seconds": {}}
        res["oracle_db"] = oracle_nmse_db(a, y_te, x_te) if math.isfinite(snr) else None
        if args.staged is None:  # the staged runs add learned rows to a full run's table
            res["nmse_db"].update(
                _classical(MatrixOperator(a.double()), y_te, x_te, cfg["lam"], cfg["K"], cfg["p"])
            )
        runs = [] if args.kkt_only else [(n, "mse") for n in names]
        if (args.kkt_only or not args.no_kkt) and not math.isfinite(snr) and "LISTA" in names:
            runs.append(("LISTA", "kkt"))
        results["by_snr"][key] = res
        for name, loss_kind in runs:
            cls_name, opts = MODELS[name]
            torch.manual_seed(cfg["seed"])
            model = getattr(unrolled, cls_name)(op, cfg["K"], lam=cfg["lam"], **opts)
            lam_text = f"lam={cfg['lam_kkt']}"
            if cfg.get("lam_kkt_start"):
                lam_text = f"lam={cfg['lam_kkt_start']}->{cfg['lam_kkt']}"
            kkt_text = f"{lam_text}, t={cfg['kkt_step']:g}/L, |r|^{cfg['kkt_power']}"
            label = name if loss_kind == "mse" else f"LISTA (KKT loss, {kkt_text})"
            if args.stage_epochs is not None:
                label += f" [{args.stage_epochs} ep/stage]"
            if args.staged is not None:
                prev, ckpt = _model_paths(parser, args, name, snr)
                label += " [staged]"
                model, info = train_staged(
                    name,
                    a,
                    cfg,
                    snr,
                    val,
                    args.staged,
                    ckpt,
                    resume=prev,
                    start_layer=args.start_layer,
                    freeze_below=args.freeze_below,
                    decay_rate=args.decay_rate,
                    overrides=overrides,
                    wall_clock=args.wall_budget,
                )
                res.setdefault("val_curve_db", {})[label] = info["val_curve_db"]
                res.setdefault("monotone", {})[label] = info["monotone"]
                res.setdefault("load_average", {})[label] = info["load_average"]
            else:
                info = _train(
                    model, name, a, cfg, snr, cfg["seed"], val, loss_kind, cfg["lam_kkt"], progress
                )
            with torch.no_grad():
                _, xs = model(y_te, return_all=True)
            curve = [_nmse(xk, x_te) for xk in xs]
            res["nmse_db"][label] = curve
            res["train_seconds"][label] = info["train_seconds"]
            res["cpu_seconds"][label] = info["cpu_seconds"]
            print(
                f"[snr {key}] {label}: {curve[-1]:.2f} dB at K={cfg['K']} "
                f"({info['train_seconds']:.0f} s wall, {info['cpu_seconds']:.0f} s cpu)",
                flush=True,
            )
            # partial results after every model (a long run can be inspected early)
            write_results(stem, results, args.out)
    results["wall_seconds"] = time.perf_counter() - t_all
    _report(results, cfg, args.out, stem)
    return 0


def _model_paths(
    parser: argparse.ArgumentParser, args: argparse.Namespace, name: str, snr: float
) -> tuple[Path | None, Path | None]:
    """``(--resume's, --checkpoints')`` ``<model>_snr<snr>[_quick].pt`` or None (a --quick model
    never replaces a full one): the first must exist, the second be new (or --force), writable
    and not the first (else ``parser.error``: one line, exit status 2)."""
    key = "inf" if not math.isfinite(snr) else f"{snr:g}"
    file = f"{name}_snr{key}{'_quick' if args.quick else ''}.pt"
    prev = Path(args.resume) / file if args.resume else None
    ckpt = Path(args.checkpoints) / file if args.checkpoints else None
    if prev is not None and ckpt is not None and prev.resolve() == ckpt.resolve():
        parser.error("--resume: write --checkpoints to another folder")
    if prev is not None and not prev.is_file():
        parser.error(f"--resume: no such checkpoint: {str(prev)!r}")
    try:
        if ckpt is not None:
            check_output_folder(args.checkpoints, what="--checkpoints")
            check_writable([ckpt], force=args.force)  # also refuses a directory there
    except OSError as exc:
        parser.error(str(exc))
    return prev, ckpt


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
