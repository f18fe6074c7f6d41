"""Data-parallel training through torch.distributed, and mixed precision
(``python benchmarks/distributed.py``).

Throughput (samples per second of steady-state training, median over repeats) of the four
kinds of model that :func:`unrollsci.train.fit` trains: a sparse-recovery network (LISTA),
a learned preconditioner (``fit_preconditioner``), the graph controller
(``UnrolledGraphGD`` with ``graph_loss``) and the CT network (``UnrolledCT``), on

* 1 process without torch.distributed, 1 and all CPU threads;
* 1 process through DistributedDataParallel (the same code path as several processes);
* 2 processes (gloo), one thread each, the global batch split between them.

The plain single-process configurations (without torch.distributed: the "1 process, 1
thread" baseline, the optional threads row, and on a GPU "1 GPU, plain") train in the
benchmark's own process; the DistributedDataParallel configurations run in freshly spawned
processes with the environment ``torchrun`` sets, so ``fit`` initializes the process group
itself. On a GPU machine the same code runs with NCCL when the models are moved to the GPU
(``--device cuda``).

A second section trains the CT network in float32 and in bfloat16 autocast
(``fit(mixed_precision="bf16")``) from the same initial weights for the same steps on the
same data and compares the test PSNR (evaluated in float32).

The small cases of ``build(kind, "test")`` are the ones the distributed tests train
(``tests/train/test_distributed.py``).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._common import (
    keep_caller_rng,
    markdown_table,
    output_dir_arg,
    parse_bench_args,
    positive_int_arg,
    write_results,
    write_text,
)

KINDS = ("sparse", "precond", "graph", "ct")
# (test, bench) sizes of each case
_SIZES = {
    "sparse": {"test": dict(m=20, n=40, samples=33, batch=8, layers=3),
               "bench": dict(m=250, n=500, samples=2048, batch=256, layers=8)},
    "precond": {"test": dict(grids=(6, 7, 8, 9), batch=2, hidden=8),
                "bench": dict(grids=(16, 18, 20, 22, 16, 18, 20, 22), batch=4, hidden=16)},
    "graph": {"test": dict(nodes=(20, 26, 30, 34), batch=2, layers=4, hidden=8),
              "bench": dict(nodes=(150, 200, 250, 300, 150, 200, 250, 300), batch=4,
                            layers=10, hidden=32)},
    "ct": {"test": dict(size=16, angles=8, samples=6, batch=3, layers=2, channels=4),
           "bench": dict(size=64, angles=30, samples=64, batch=16, layers=4, channels=16)},
}  # fmt: skip


@dataclass
class Case:
    """A model, what it trains on and the arguments of its training call."""

    kind: str
    model: torch.nn.Module
    data: Any
    kwargs: dict[str, Any]
    samples_per_epoch: int
    loss_fn: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


def _mse_loss(model: torch.nn.Module, batch: Any) -> torch.Tensor:
    y, x = batch
    return (model(y) - x).pow(2).sum(-1).mean()


def _ct_loss(model: torch.nn.Module, batch: Any) -> torch.Tensor:
    y, x, m = batch
    return (model(y, mask=m) - x).pow(2).mean()


_CALLS = {"graph": 0}


def _graph_loss(model: torch.nn.Module, problem: Any) -> torch.Tensor:
    from ..graph import graph_loss

    _CALLS["graph"] += 1  # (the tests check that each rank sees its share of the graphs)
    return graph_loss(model, problem)


def _lr_factor(step: int) -> float:
    return 1.0 / (1.0 + 0.1 * step)


def _halt_after_third(epoch: int, train_loss: float, val_loss: float | None) -> bool:
    return epoch == 2  # stop the run in its second layer-wise stage


@keep_caller_rng
def build(kind: str, scale: str = "test", dtype: torch.dtype = torch.float64) -> Case:
    """The ``kind`` case at ``scale`` ("test": seconds on a CPU; "bench": larger)."""
    s = _SIZES.get(kind, {}).get(scale, {})
    torch.manual_seed(0)
    if kind == "sparse":
        from ..operators import MatrixOperator
        from ..unrolled import LISTA
        from ._lista_setup import make_problem, sample

        a = make_problem(s["m"], s["n"], 0, dtype)
        y, x = sample(a, s["samples"], 0.1, math.inf, torch.Generator().manual_seed(1))
        model = LISTA(MatrixOperator(a), s["layers"], lam=0.05)
        kw = dict(batch_size=s["batch"], lr=1e-3)
        return Case(kind, model, (y, x), kw, s["samples"], _mse_loss)
    if kind == "schedule":  # (tests only) layer-wise, validation, patience, lr schedule, halt
        from ..operators import MatrixOperator
        from ..unrolled import LISTA
        from ._lista_setup import make_problem, sample

        a = make_problem(12, 24, 0, dtype)
        y, x = sample(a, 21, 0.2, math.inf, torch.Generator().manual_seed(1))
        yv, xv = sample(a, 7, 0.2, math.inf, torch.Generator().manual_seed(2))
        model = LISTA(MatrixOperator(a), 3, lam=0.05)
        kw = dict(batch_size=6, lr=1e-3, schedule="layerwise", stage_epochs=2, patience=1,
                  val_data=(yv, xv), lr_decay=0.9, lr_factor=_lr_factor)  # fmt: skip
        return Case(kind, model, (y, x), kw, 21, _mse_loss, {"callback": _halt_after_third})
    if kind == "precond":
        from ..precond import LearnedPreconditioner, diffusion2d

        mats = [diffusion2d(n, seed=i) for i, n in enumerate(s["grids"])]
        model = LearnedPreconditioner("factor", hidden=s["hidden"], layers=2).to(dtype)
        kw = dict(steps=4, n_rhs=2, batch_size=s["batch"], lr=1e-2)
        return Case(kind, model, mats, kw, len(mats))
    if kind == "graph":
        import networkx as nx

        from ..graph import GraphInverseProblem, StepController, UnrolledGraphGD

        rng = np.random.default_rng(0)
        problems = []
        for i, n in enumerate(s["nodes"]):
            g = nx.random_geometric_graph(n, 2.2 / math.sqrt(n), seed=i)
            g = nx.convert_node_labels_to_integers(
                g.subgraph(max(nx.connected_components(g), key=len)).copy()
            )
            k = g.number_of_nodes()
            mask = rng.random((2, k)) < 0.5
            mask[:, 0] = True
            y = torch.as_tensor(rng.standard_normal((2, k)) * mask, dtype=dtype)
            problems.append(GraphInverseProblem.from_networkx(g, y, mask=mask))
        ctrl = StepController(hidden=s["hidden"], window=4)
        model = UnrolledGraphGD(s["layers"], ctrl, mode="window").to(dtype)
        kw = dict(batch_size=s["batch"], lr=5e-3, clip_grad=10.0)
        return Case(kind, model, problems, kw, len(problems), _graph_loss)
    if kind == "ct":
        from ..imaging import UnrolledCT
        from ..operators import Radon
        from .ct import make_data

        radon = Radon(s["size"], s["angles"])
        y, x, m = make_data(s["samples"], s["size"], radon, 1e4, seed=3)
        model = UnrolledCT(radon, n_layers=s["layers"], channels=s["channels"]).to(dtype)
        data = (y.to(dtype), x.to(dtype), m)
        kw = dict(batch_size=s["batch"], lr=3e-3)
        return Case(kind, model, data, kw, s["samples"], _ct_loss)
    raise ValueError(f"Expected kind in {(*KINDS, 'schedule')} (got {kind!r}).")


def train(case: Case, **kwargs: Any) -> Any:
    """Train ``case`` through ``fit`` (``fit_preconditioner`` for a preconditioner)."""
    from ..train import fit

    kw = {"progress": False, "seed": 0, **case.kwargs, **kwargs}
    if case.kind == "precond":
        from ..precond import fit_preconditioner

        return fit_preconditioner(case.model, case.data, **kw)
    return fit(case.model, case.loss_fn, case.data, **kw)


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of the model's state dict."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def equivalence_worker(rank: int, kinds: tuple, out: str, ckpt: str, epochs: int) -> None:
    """Train each kind's test case for ``epochs`` with a checkpoint per kind (in
    ``ckpt/<kind>/``), and save this rank's weights and history to ``out``."""
    torch.set_num_threads(1)
    for kind in kinds:
        case = build(kind, "test")
        folder = Path(ckpt) / kind
        folder.mkdir(parents=True, exist_ok=True)
        hist = train(case, epochs=epochs, checkpoint=folder / "fit.pt", **case.extra)
        torch.save(
            {
                "weights": weights(case.model),
                "train_loss": list(hist.train_loss),
                "world_size": hist.world_size,
                "graph_loss_calls": _CALLS["graph"],
            },
            Path(out) / f"{kind}_rank{rank}.pt",
        )


# ---------------------------------------------------------------- throughput
def _throughput(kind: str, epochs: int, device: str, distributed: bool | None, scale: str) -> float:
    case = build(kind, scale, torch.float32)
    if device != "cpu":
        case.model.to(device)
        if isinstance(case.data, tuple):
            case.data = tuple(t.to(device) for t in case.data)
    stamps: list[float] = []

    def clock(*_: Any) -> None:
        if device != "cpu":
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    train(case, epochs=epochs, callback=clock, distributed=distributed)
    # the first epoch holds the set-up (DDP, caches); steady state from the second on
    return case.samples_per_epoch * (len(stamps) - 1) / (stamps[-1] - stamps[0])


def throughput_worker(
    rank: int, kinds: tuple, epochs: int, repeats: int, threads: int, device: str,
    distributed: bool | None, out: str, scale: str = "bench",
) -> None:  # fmt: skip
    """Median samples/s of each kind over ``repeats`` runs (written by rank 0)."""
    torch.set_num_threads(threads)
    if device == "cuda":
        torch.cuda.set_device(rank)
        device = f"cuda:{rank}"
    res = {
        k: statistics.median(
            _throughput(k, epochs, device, distributed, scale) for _ in range(repeats)
        )
        for k in kinds
    }
    if rank == 0:
        torch.save(res, out)


def _measure(nprocs: int, threads: int, distributed: bool | None, args: Any, tmp: Path) -> dict:
    """Samples/s per kind: in this process for plain training, else in spawned ranks."""
    from ..train._distributed import spawn

    out = str(tmp / f"tp_{nprocs}_{threads}_{distributed}.pt")
    scale = "test" if args.quick else "bench"
    run = (
        tuple(args.kinds),
        args.epochs,
        args.repeats,
        threads,
        args.device,
        distributed,
        out,
        scale,
    )
    if nprocs == 1 and distributed is False:
        old = torch.get_num_threads()
        try:
            throughput_worker(0, *run)
        finally:
            torch.set_num_threads(old)
    else:
        spawn(throughput_worker, nprocs, *run)
    return torch.load(out, weights_only=True)


# ---------------------------------------------------------------- mixed precision
@keep_caller_rng
def mixed_precision_ct(args: Any) -> list[dict[str, Any]]:
    """CT network trained in float32 and in bf16 autocast, equal steps, test PSNR."""
    from ..imaging import UnrolledCT
    from ..operators import Radon
    from ..train import fit
    from .ct import make_data, scores

    torch.set_num_threads(args.threads_mp)
    size, angles = args.ct_size, 30
    radon = Radon(size, angles)
    train_set = make_data(args.ct_train, size, radon, 1e4, seed=7)
    y_te, x_te, m_te = make_data(16, size, radon, 1e4, seed=12345)
    rows = []
    init = None
    for precision in (None, "bf16"):
        torch.manual_seed(0)
        model = UnrolledCT(radon, n_layers=4, channels=16)
        if init is None:
            init = weights(model)
        model.load_state_dict(init)
        t0 = time.perf_counter()
        fit(model, _ct_loss, train_set, epochs=args.ct_epochs, batch_size=8, lr=3e-3,
            progress=False, mixed_precision=precision)  # fmt: skip
        seconds = time.perf_counter() - t0
        model.eval()
        with torch.no_grad():
            psnr = float(np.mean(scores(model(y_te, mask=m_te), x_te)[0]))
        steps = args.ct_epochs * math.ceil(args.ct_train / 8)
        rows.append({"training": precision or "float32", "steps": steps,
                     "test PSNR (dB)": psnr, "train s": seconds})  # fmt: skip
    rows[1]["PSNR - float32 (dB)"] = rows[1]["test PSNR (dB)"] - rows[0]["test PSNR (dB)"]
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="unrollsci bench distributed", description=__doc__)
    p.add_argument("--quick", action="store_true", help="seconds; writes distributed_quick.*")
    p.add_argument("--out", type=output_dir_arg, default="benchmarks/results")
    p.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    p.add_argument("--epochs", type=positive_int_arg, default=6)
    p.add_argument("--repeats", type=positive_int_arg, default=3)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--ct-size", type=positive_int_arg, default=64)
    p.add_argument("--ct-train", type=positive_int_arg, default=256)
    p.add_argument("--ct-epochs", type=positive_int_arg, default=8)
    p.add_argument("--threads-mp", type=positive_int_arg, default=1)
    p.add_argument(
        "--with-threads", action="store_true",
        help="add a 1-process row with 2 torch threads (meaningless on a loaded machine)",
    )  # fmt: skip
    p.add_argument("--skip-mp", action="store_true", help="leave out the mixed-precision part")
    p.add_argument(
        "--processes", type=int, nargs="+", choices=(1, 2), default=[1, 2],
        help="1: single-process rows only (no process is spawned); 2: also the DDP rows",
    )  # fmt: skip
    args = parse_bench_args(p, argv, "distributed")
    if args.quick:
        args.kinds = [k for k in args.kinds if k in ("sparse", "ct")] or args.kinds
        args.epochs, args.repeats = 3, 1
        args.ct_size, args.ct_train, args.ct_epochs = 32, 32, 2
    import os
    import tempfile

    cores = os.cpu_count() or 1
    configs = [("1 process, 1 thread", 1, 1, False)]
    if cores > 1 and args.with_threads:
        configs.append((f"1 process, {min(cores, 2)} threads", 1, min(cores, 2), False))
    if 2 in args.processes:
        configs += [("1 process, DDP", 1, 1, True), ("2 processes, DDP, 1 thread each", 2, 1, None)]
    if args.device == "cuda":
        configs = [("1 GPU, plain", 1, 1, False), ("1 GPU, DDP (NCCL)", 1, 1, True)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, nprocs, threads, dist in configs:
            res = _measure(nprocs, threads, dist, args, Path(tmp))
            for kind, sps in res.items():
                rows.append({"kind": kind, "configuration": name, "samples/s": sps})
    base = {r["kind"]: r["samples/s"] for r in rows if r["configuration"] == configs[0][0]}
    for r in rows:
        r["vs 1 process, 1 thread"] = r["samples/s"] / base[r["kind"]]
    mp_rows = [] if args.skip_mp else mixed_precision_ct(args)
    data = {
        "settings": {k: v for k, v in vars(args).items() if k not in ("out",)},
        "note": (
            "CPU machine with 2 cores shared with other jobs while measured; each number is "
            "the median over repeats of steady-state samples/s (epochs after the first)."
        ),
        "throughput": rows,
        "mixed_precision_ct": mp_rows,
    }
    path = write_results("distributed", data, args.out, quick=args.quick)
    text = "## Throughput\n\n" + markdown_table(rows)
    if mp_rows:
        text += "\n\n## CT network, float32 vs bf16 training\n\n" + markdown_table(mp_rows)
    write_text(path.with_suffix(".md"), text + "\n")
    print(text)
    return 0
