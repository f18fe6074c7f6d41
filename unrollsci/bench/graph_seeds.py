"""Seed study and model selection for the transferable window_jacobi controller (issue 23).

``python benchmarks/graph_seeds.py train CONFIG --seeds 1 2 3 --models DIR`` trains
``window_jacobi`` with the recipe of ``benchmarks/graph.py`` (same training / validation
graphs for a seed, same loss, same early stopping) for each training seed and saves
``DIR/CONFIG_s<seed>/graph_window_jacobi.pt``. CONFIG is ``table`` (the committed
``graph.json`` model: 16 graphs of 300-900 nodes at 50% observed, full pooling) or
``transfer`` (``--train-nodes 1000 10000 --train-small 6 --train-observed 0.3 0.8
--sample 256``); ``--lr``, ``--lr-decay``, ``--small-weight``, ``--train-big N`` (N more
training graphs of ``--big-nodes`` nodes at ``--big-observed`` rates) and ``--init DIR`` (a
fine-tune from DIR's model) vary it; ``--mode window`` trains the plain window mode instead.

``python benchmarks/graph_seeds.py cascade PRIMARY BACKUP --out DIR`` saves PRIMARY's model
with BACKUP's controller behind it (``UnrolledGraphGD(backup=...)``: the backup's learned
roots run where the primary's fail the certificate), sampled (``--sample``, default 256
nodes) on graphs above ``--full-up-to`` (default 5000) nodes.

``python benchmarks/graph_seeds.py eval DIR...`` evaluates every saved model on the same
problems, built once: the nine test rows of ``graph.json`` (Minnesota, sensor 1000 and 10^5
at 50%, sensor / road / geometric 10^5 at 30% and 80%; the same graphs, masks and noise as
``benchmarks/graph.py``, whatever the training seed) and a VALIDATION set on other graphs
(other seeds and sizes of the sensor / road-like / geometric families at 30%, 50% and 80%),
which is the only thing a model is chosen on (:func:`select`). Writes
``graph_seeds.json`` and ``graph_seeds.md`` (``--quick``: small graphs, ``*_quick``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._argtypes import float_arg, int_arg
from .._io import check_output_folder, check_writable
from ..graph import (
    GraphInverseProblem,
    UnrolledGraphGD,
    inpainting_problem,
    random_graph,
    road_graph,
    sensor_graph,
)
from ..graph._baselines import classical_iterates
from ._common import (
    markdown_table,
    output_dir_arg,
    parse_bench_args,
    positive_int_arg,
    write_results,
    write_text,
)
from ._graph_train import (
    _nx_adj,
    load_models,
    save_models,
    small_test_problems,
    test_problems,
    train_models,
    training_problems,
)

__all__ = [
    "CONFIGS",
    "small_test_problems",
    "test_problems",
    "validation_problems",
    "select",
    "main",
]

MODE = "window_jacobi"

#: The two training recipes of ``benchmarks/graph.py`` compared here.
CONFIGS: dict[str, dict[str, Any]] = {
    "table": {
        "train_graphs": 16,
        "train_nodes": (300, 900),
        "train_observed": 0.5,
        "train_small": 0,
        "sample": None,
    },
    "transfer": {
        "train_graphs": 16,
        "train_nodes": (1000, 10000),
        "train_observed": (0.3, 0.8),
        "train_small": 6,
        "sample": 256,
    },
}


def train_config(
    name: str,
    seed: int,
    folder: Path,
    *,
    epochs: int = 40,
    lr: float = 1e-3,
    lr_decay: float = 1.0,
    small_weight: float = 1.0,
    init: Path | None = None,
    train_small: int | None = None,
    train_big: int = 0,
    big_nodes: tuple[int, int] = (20_000, 50_000),
    big_observed: tuple[float, float] | None = None,
    mode: str = MODE,
    quick: bool = False,
    val_big: int = 0,
    patience: int | None = None,
) -> dict[str, Any]:
    """Train ``mode`` (window_jacobi) with recipe ``name`` and training seed ``seed`` as
    ``benchmarks/graph.py --seed SEED`` does (training graphs from ``seed``, validation
    graphs from ``seed + 1``, small graphs from ``seed + 2``) and save it in ``folder``.
    ``train_big``: that many more training graphs of ``big_nodes`` nodes (sensor, road-like
    and geometric in turn, from ``seed + 3``), at the recipe's observation rates or at
    ``big_observed``; ``val_big``: as many more early-stopping validation graphs drawn the
    same way from ``seed + 4`` (never the test or selection problems). ``patience``: early
    stopping's (default: :func:`train_models`')."""
    cfg = dict(CONFIGS[name])
    if train_small is not None:
        cfg["train_small"] = train_small
    signals = 4 if quick else 8
    n_train = 3 if quick else cfg["train_graphs"]
    obs = cfg["train_observed"]
    train = training_problems(n_train, signals, seed=seed, n_range=cfg["train_nodes"], observed=obs)
    if cfg["train_small"] > 0:
        train += training_problems(cfg["train_small"], signals, seed=seed + 2, observed=obs)

    def big(count: int, offset: int) -> list:  # large sensor / road / geometric graphs
        return training_problems(
            count,
            signals,
            seed=seed + offset,
            n_range=big_nodes,
            observed=big_observed or obs,
            kinds=("sensor", "road", "geometric"),
        )

    if train_big > 0:
        train += big(train_big, 3)
    val = training_problems(2, signals, seed=seed + 1, observed=obs)
    if val_big > 0:
        val += big(val_big, 4)
    start = load_models(init, (mode,))[0] if init is not None else None
    models, info = train_models(
        train,
        val,
        num_layers=10,
        window=10,
        epochs=epochs,
        lr=lr,
        seed=seed,
        sample=cfg["sample"],
        modes=(mode,),
        lr_decay=lr_decay,
        init=start,
        small_weight=small_weight,
        patience=patience,
    )
    config = {
        "recipe": name,
        "mode": mode,
        **{k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()},
        "seed": seed,
        "epochs": epochs,
        "lr": lr,
        "lr_decay": lr_decay,
        "small_weight": small_weight,
        "init": str(init) if init is not None else None,
        "train_big": train_big,
        "big_nodes": list(big_nodes),
        "big_observed": list(big_observed or ()) or None,
        "train_graph_nodes": [p.num_nodes for p in train],
        "val_graph_nodes": [p.num_nodes for p in val],
        "patience": patience,
        "num_layers": 10,
        "window": 10,
        "dtype": "float64",
    }
    save_models(folder, models, info, config)
    return {"config": config, "train": info[mode]}


def validation_problems(big: int = 100_000) -> list[tuple[str, GraphInverseProblem]]:
    """Held-out problems for model selection, on graphs that are neither training nor test
    graphs: other seeds and sizes of the sensor, road-like and geometric families at 50%
    (small and medium graphs, like the first test rows) and at 30% / 80% (``big`` nodes)."""

    def size(n: int, i: int) -> int:  # a smaller ``big`` (quick runs) caps them, distinct
        return n if n <= big else big + i

    small = [
        ("sensor", 700, sensor_graph(size(700, 0), seed=5001)[0]),
        ("sensor", 1500, sensor_graph(size(1500, 1), k=4, seed=5002)[0]),
        ("road", 2642, road_graph(size(2642, 2), seed=5003)[0]),
        ("sensor", 5000, sensor_graph(size(5000, 3), seed=5004)[0]),
    ]
    out = [
        (f"val {kind} {adj.shape[0]}, 50%", inpainting_problem(adj, 16, noise=0.1, seed=6001 + i))
        for i, (kind, _n, adj) in enumerate(small)
    ]
    large = [
        (f"sensor {big}", sensor_graph(big, seed=5888)[0]),
        (f"road {big}", road_graph(big, seed=5889)[0]),
        (f"geometric {big}", _nx_adj(random_graph("geometric", big, seed=5031))),
    ]
    for name, adj in large:
        for rate in (0.3, 0.8):
            p = inpainting_problem(adj, 2, observed=rate, noise=0.1, seed=6101)
            out.append((f"val {name}, {rate:.0%}", p))
    return out


def _baselines(problems: list[tuple[str, GraphInverseProblem]]) -> dict[str, dict[str, float]]:
    out = {}
    for name, p in problems:
        base = classical_iterates(p, 10)
        out[name] = {m: float(p.relative_error(base[m]).mean()) for m in ("CG", "Jacobi-PCG")}
    return out


def _evaluate(model: UnrolledGraphGD, problems: list[tuple[str, GraphInverseProblem]]):
    out = {}
    with torch.no_grad():
        for name, p in problems:
            r = model(p)
            out[name] = {
                "err": float(p.relative_error(r.x).mean()),
                "learned": float(torch.stack(r.certified).double().mean()),
                "backup": float(torch.stack(r.backup).double().mean()) if r.backup else 0.0,
            }
    return out


def make_cascade(
    primary: Path, backup: Path, out: Path, *, sample: int, full_up_to: int, force: bool
) -> Path:
    """``primary``'s window_jacobi model with ``backup``'s controller behind it
    (``UnrolledGraphGD(backup=...)``), its controller sampled (``sample`` nodes) on graphs
    above ``full_up_to`` nodes; saved as ``out/graph_window_jacobi.pt``."""
    from ..graph import StepController
    from ..train import save_checkpoint

    path = out / f"graph_{MODE}.pt"
    if path.exists() and not force:
        raise FileExistsError(f"{path} exists; pass --force to replace it.")
    first = load_models(primary, (MODE,))[0][MODE]
    second = load_models(backup, (MODE,))[0][MODE]
    config = first.get_config()
    config.update(
        controller_sample=sample,
        controller_full_up_to=full_up_to,
        backup=StepController(**second.controller.get_config()),
    )
    model = UnrolledGraphGD(**config).double()
    model.controller.load_state_dict(first.controller.state_dict())
    assert model.backup is not None
    model.backup.load_state_dict(second.controller.state_dict())
    extra = {
        "cascade": {
            "primary": str(primary),
            "backup": str(backup),
            "sha256": {
                "primary": _sha256(primary / f"graph_{MODE}.pt"),
                "backup": _sha256(backup / f"graph_{MODE}.pt"),
            },
        }
    }
    return save_checkpoint(model, path, extra=extra)


def select(
    evals: dict[str, dict[str, dict[str, float]]],
    base: dict[str, dict[str, float]],
    min_learned: float = 0.9,
) -> dict[str, Any]:
    """Choose among models on the validation problems only: the models that run the learned
    roots in at least ``min_learned`` of the windows and are at or below CG on every
    validation problem, ranked by the geometric mean over the 50% problems of the error over
    Jacobi-PCG's (the statistic of the test table's 50% rows). ``chosen`` is None when no
    model qualifies."""
    scores = {}
    for name, ev in evals.items():
        ratios = {k: v["err"] / base[k]["Jacobi-PCG"] for k, v in ev.items()}
        mid = [r for k, r in ratios.items() if k.endswith("50%")]
        scores[name] = {
            "gmean_50": float(np.exp(np.mean(np.log(mid)))),
            "gmean_all": float(np.exp(np.mean(np.log(list(ratios.values()))))),
            "min_learned": min(v["learned"] for v in ev.values()),
            "worst_vs_cg": max(v["err"] / base[k]["CG"] for k, v in ev.items()),
        }
        s = scores[name]
        s["eligible"] = s["min_learned"] >= min_learned and s["worst_vs_cg"] <= 1.0
    ranked = sorted(scores, key=lambda m: (not scores[m]["eligible"], scores[m]["gmean_50"]))
    chosen = ranked[0] if ranked and scores[ranked[0]]["eligible"] else None
    return {"scores": scores, "ranking": ranked, "chosen": chosen}


def _summary(evals: dict[str, dict[str, dict[str, float]]], names: list[str]) -> list[dict]:
    """Mean and spread per recipe (model names ``RECIPE_s<seed>``) and problem."""
    groups: dict[str, list[str]] = {}
    for m in evals:
        groups.setdefault(m.rsplit("_s", 1)[0], []).append(m)
    rows = []
    for g, ms in groups.items():
        for pname in names:
            e = np.array([evals[m][pname]["err"] for m in ms])
            ln = np.array([evals[m][pname]["learned"] for m in ms])
            rows.append(
                {
                    "recipe": g,
                    "problem": pname,
                    "seeds": len(ms),
                    "mean": float(e.mean()),
                    "std": float(e.std(ddof=1)) if len(ms) > 1 else 0.0,
                    "min": float(e.min()),
                    "max": float(e.max()),
                    "min_learned": float(ln.min()),
                }
            )
    return rows


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_eval(
    folders: list[Path],
    out: Path,
    *,
    quick: bool,
    big: int,
    mode: str = MODE,
    name: str = "graph_seeds",
) -> int:
    t0 = time.perf_counter()
    models = {}
    for f in folders:
        if f.name in models:
            raise ValueError(f"Expected model folders with distinct names (got {f.name} twice).")
        models[f.name] = load_models(f, (mode,))[0][mode]
    tests = test_problems(big)
    vals = validation_problems(big)
    base_t, base_v = _baselines(tests), _baselines(vals)
    ev_t = {m: _evaluate(mod, tests) for m, mod in models.items()}
    ev_v = {m: _evaluate(mod, vals) for m, mod in models.items()}
    sel = select(ev_v, base_v)
    rows = []
    for pname, _ in tests:
        row: dict[str, Any] = {"problem": pname, **base_t[pname]}
        for m in models:
            e = ev_t[m][pname]
            row[m] = f"{e['err']:.4g} ({e['learned']:.0%})"
            if e["backup"]:
                row[m] = row[m][:-1] + f", backup {e['backup']:.0%})"
        rows.append(row)
    vrows = [{"model": m, **{k: v for k, v in s.items()}} for m, s in sel["scores"].items()]
    table = markdown_table(rows)
    vtable = markdown_table(vrows)
    summary = _summary(ev_t, [p for p, _ in tests])
    stable = markdown_table(summary)
    path = write_results(
        name,
        {
            "models": {f.name: str(f) for f in folders},
            "mode": mode,
            "sha256": {f.name: _sha256(f / f"graph_{mode}.pt") for f in folders},
            "test_baselines": base_t,
            "validation_baselines": base_v,
            "test": ev_t,
            "validation": ev_v,
            "selection": sel,
            "summary": summary,
            "big": big,
            "threads": torch.get_num_threads(),
            "seconds": time.perf_counter() - t0,
        },
        out,
        quick=quick,
    )
    md = (
        f"# graph seeds ({mode}): test rows (K = 10 energy error, learned windows)\n\n"
        + table
        + "\n\n## Mean and spread over training seeds per recipe\n\n"
        + stable
        + "\n\n## Validation (selection)\n\n"
        + vtable
        + f"\n\nchosen on validation: {sel['chosen']}\n"
    )
    write_text(path.with_suffix(".md"), md)
    print(md)
    print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/graph_seeds.py", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    tr = sub.add_parser("train", help="train window_jacobi for each seed")
    tr.add_argument("config", choices=sorted(CONFIGS))
    tr.add_argument("--seeds", type=int_arg(0), nargs="+", required=True)
    tr.add_argument("--models", required=True, help="folder of the saved models")
    tr.add_argument("--tag", default=None, help="model folder name prefix (default: CONFIG)")
    tr.add_argument("--epochs", type=positive_int_arg, default=40)
    tr.add_argument("--lr", type=float_arg(positive=True), default=1e-3)
    tr.add_argument("--lr-decay", type=float_arg(positive=True, maximum=1), default=1.0)
    tr.add_argument("--small-weight", type=float_arg(positive=True), default=1.0)
    tr.add_argument("--train-small", type=int_arg(0), default=None)
    tr.add_argument("--train-big", type=int_arg(0), default=0, help="N more graphs of --big-nodes")
    tr.add_argument("--big-nodes", type=positive_int_arg, nargs=2, default=(20_000, 50_000))
    tr.add_argument(
        "--big-observed", type=float_arg(positive=True, maximum=1), nargs=2, default=None
    )
    tr.add_argument("--init", default=None, help="fine-tune: start from DIR's model")
    tr.add_argument("--mode", choices=("window_jacobi", "window"), default=MODE)
    tr.add_argument(
        "--val-big", type=int_arg(0), default=0, help="N validation graphs of --big-nodes"
    )
    tr.add_argument("--patience", type=positive_int_arg, default=None)
    tr.add_argument("--quick", action="store_true")
    tr.add_argument("--force", action="store_true", help="replace models saved before")
    ev = sub.add_parser("eval", help="evaluate saved models on the test and validation sets")
    ev.add_argument("folders", nargs="+")
    ev.add_argument("--out", type=output_dir_arg, default="benchmarks/results")
    ev.add_argument("--big", type=positive_int_arg, default=None)
    ev.add_argument("--quick", action="store_true")
    ev.add_argument("--mode", choices=("window_jacobi", "window"), default=MODE)
    ev.add_argument("--name", default="graph_seeds", help="results file name (NAME.json)")
    ca = sub.add_parser("cascade", help="a saved model with another one's controller as backup")
    ca.add_argument("primary", help="folder of the model whose learned roots run first")
    ca.add_argument("backup", help="folder of the model whose controller is the backup")
    ca.add_argument("--out", required=True, help="folder of the cascade's checkpoint")
    ca.add_argument("--sample", type=positive_int_arg, default=256)
    ca.add_argument(
        "--full-up-to", type=int_arg(0), default=5000, help="pool graphs this small in full"
    )
    ca.add_argument("--force", action="store_true", help="replace an existing checkpoint")
    for p in (tr, ev):
        p.add_argument("--threads", type=positive_int_arg, default=1)
    args = parse_bench_args(parser, argv, lambda a: a.name if a.cmd == "eval" else None)
    if args.cmd == "cascade":
        if args.full_up_to < 0:
            parser.error(f"--full-up-to: expected >= 0, got {args.full_up_to}")
        try:
            path = make_cascade(
                Path(args.primary),
                Path(args.backup),
                Path(args.out),
                sample=args.sample,
                full_up_to=args.full_up_to,
                force=args.force,
            )
        except FileExistsError as exc:
            parser.error(str(exc))
        print(f"wrote {path}")
        return 0
    torch.set_num_threads(args.threads)
    if args.cmd == "train":
        folders = [Path(args.models) / f"{args.tag or args.config}_s{s}" for s in args.seeds]
        try:  # before any training: every model file can be written
            check_output_folder(args.models, what="--models")
            check_writable([f / f"graph_{args.mode}.pt" for f in folders], force=args.force)
        except (OSError, ValueError) as exc:
            parser.error(str(exc))
        for seed, folder in zip(args.seeds, folders, strict=True):
            r = train_config(
                args.config,
                seed,
                folder,
                epochs=2 if args.quick else args.epochs,
                lr=args.lr,
                lr_decay=args.lr_decay,
                small_weight=args.small_weight,
                init=Path(args.init) if args.init else None,
                train_small=args.train_small,
                train_big=args.train_big,
                big_nodes=tuple(args.big_nodes),
                big_observed=tuple(args.big_observed) if args.big_observed else None,
                mode=args.mode,
                quick=args.quick,
                val_big=args.val_big,
                patience=args.patience,
            )
            print(f"saved {folder}: {r['train']}", flush=True)
        return 0
    big = args.big or (3000 if args.quick else 100_000)
    folders = [Path(f) for f in args.folders]
    return run_eval(folders, args.out, quick=args.quick, big=big, mode=args.mode, name=args.name)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
