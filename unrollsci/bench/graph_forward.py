"""The 10-layer forward of every mode against ten scipy CG iterations on 10^5-node graphs.

``python benchmarks/graph.py --forward [--quick]`` (issue 23): on the sensor, road-like and
random geometric graphs of ``--big`` nodes at 30% and 80% observed, one signal, bounds cached
on the problem: the cheap (sampled) controller in every mode, scalar and diagonal also every
5th layer, the full controller for reference, and the committed trained window_jacobi models
(:data:`TRAINED`), all interleaved in one process, per torch thread count. Writes
``graph_forward.json`` and ``graph_forward.md``.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import torch

from ..graph import MODES, StepController, UnrolledGraphGD, inpainting_problem
from ._common import keep_caller_rng, markdown_table, results_name, write_results, write_text
from .graph_cost import _graphs, _median

__all__ = ["FORWARD_SAMPLE", "TRAINED", "forward_models", "forward_markdown", "run_forward"]

#: Nodes per graph the cheap controller pools over (``controller_sample``).
FORWARD_SAMPLE = 256


#: The committed trained window_jacobi models :func:`run_forward` also times: their cost
#: depends on the weights where a backup controller runs (``graph_cascade``).
TRAINED = {
    "window_jacobi graph_newcert (trained)": "benchmarks/checkpoints/graph_newcert",
    "window_jacobi graph_cascade (trained)": "benchmarks/checkpoints/graph_cascade",
}


@keep_caller_rng
def forward_models(
    sample: int | None = FORWARD_SAMPLE, *, trained: bool = False
) -> dict[str, UnrolledGraphGD]:
    """The modes timed by :func:`run_forward` (untrained: without a backup controller the
    cost does not depend on the weights): the cheap controller (``controller_sample``; the
    diagonal mode with the local node head) in every mode, scalar and diagonal also every
    5th layer, and the window mode with the full controller for reference; ``trained``:
    also the committed models of :data:`TRAINED` (a backup controller runs only where the
    first one's roots fail, so their cost depends on the problem)."""

    def make(mode: str, every: int = 1, s: int | None = sample) -> UnrolledGraphGD:
        head = "local" if mode == "diagonal" else "mp"
        ctrl = StepController(hidden=32, window=10, node_head=head)
        model = UnrolledGraphGD(10, ctrl, mode=mode, controller_every=every, controller_sample=s)
        return model.double().eval()

    torch.manual_seed(0)
    models = {m: make(m) for m in MODES}
    models["scalar every5"] = make("scalar", 5)
    models["diagonal every5"] = make("diagonal", 5)
    models["window (full controller)"] = make("window", s=None)
    if trained:
        from ._graph_train import load_models

        for name, folder in TRAINED.items():
            if not (Path(folder) / "graph_window_jacobi.pt").is_file():
                # the committed checkpoints live in the repository, not in the package
                print(f"note: {folder} not found (run from the repository root): {name} skipped")
                continue
            models[name] = load_models(Path(folder), ("window_jacobi",))[0]["window_jacobi"]
    return models


def _forward_row(
    name: str, adj: Any, observed: float, models: dict, repeats: int, threads: tuple[int, ...]
) -> dict[str, Any]:
    """Ten CG iterations and every model's 10-layer forward, interleaved, per torch thread
    count; the CG baseline is the faster of BLAS on 1 thread and on the default threads."""
    import os

    from scipy.sparse.linalg import cg
    from threadpoolctl import threadpool_limits

    p = inpainting_problem(adj, 1, observed=observed, noise=0.1, seed=1003)
    h = p.hessian_scipy(0)
    b = p.rhs().cpu().numpy()[0]
    row: dict[str, Any] = {"graph": name, "observed": observed, "n": p.num_nodes}
    row["load before"] = os.getloadavg()[0]
    row["torch threads, first call"] = threads[0]
    p.lipschitz(), p.lambda_min_bound(), p.jacobi_interval()  # bounds: cached on p
    torch.set_num_threads(threads[0])
    with torch.no_grad():
        t0 = time.perf_counter()
        models["window"](p)  # first call: builds the node sample and the fused H
        row["window first call [s]"] = time.perf_counter() - t0
        for m, model in models.items():
            out = model(p)
            if model.backup is not None:  # where the cost depends on the weights
                row[f"{m}: learned windows"] = float(torch.stack(out.certified).double().mean())
                row[f"{m}: backup windows"] = float(torch.stack(out.backup).double().mean())

        def cg10() -> None:
            cg(h, b, rtol=0.0, atol=0.0, maxiter=10)

        for nt in threads:
            torch.set_num_threads(nt)
            times: dict[str, list[float]] = {"cg10 1": [], "cg10 default": []}
            times.update({m: [] for m in models})
            for _ in range(repeats):
                with threadpool_limits(1, user_api="blas"):
                    times["cg10 1"].append(_median(cg10, 1))
                times["cg10 default"].append(_median(cg10, 1))
                for m, model in models.items():
                    times[m].append(_median(lambda model=model: model(p), 1))
            med = {k: float(statistics.median(v)) for k, v in times.items()}
            base = min(med["cg10 1"], med["cg10 default"])
            row[f"cg10 [ms] ({nt} thr)"] = 1e3 * base
            for m in models:
                row[f"{m} / cg10 ({nt} thr)"] = med[m] / base
    row["load after"] = os.getloadavg()[0]
    return row


def run_forward(
    outdir: str | Path, *, quick: bool, big: int | None, repeats: int, sample: int
) -> int:
    """The 10-layer forward of every mode with the cheap controller against ten scipy CG
    iterations on the sensor, road-like and geometric graphs at 30% and 80% observed;
    writes ``graph_forward.json`` and ``graph_forward.md``."""
    n = big or (5000 if quick else 100_000)
    threads = (1, 2)
    models = forward_models(sample, trained=True)
    config = {"nodes": n, "repeats": repeats, "controller_sample": sample, "threads": threads}
    t0 = time.perf_counter()
    rows = []
    before = torch.get_num_threads()
    try:
        for name, adj in _graphs(n):
            for observed in (0.3, 0.8):
                rows.append(_forward_row(name, adj, observed, models, repeats, threads))
                print(rows[-1], flush=True)
    finally:
        torch.set_num_threads(before)
    tables = []
    for nt in threads:
        cols = ["graph", "observed", f"cg10 [ms] ({nt} thr)"]
        cols += [f"{m} / cg10 ({nt} thr)" for m in models]
        cols += ["load before", "load after"]
        tables.append(f"torch on {nt} thread(s):\n\n" + markdown_table(rows, cols))
    table = "\n\n".join(tables)
    data = {
        "config": config,
        "rows": rows,
        "table": table,
        "seconds": time.perf_counter() - t0,
    }
    path = write_results("graph_forward", data, outdir, quick=quick)
    md = Path(outdir) / f"{results_name('graph_forward', quick)}.md"
    write_text(md, forward_markdown(data))
    print(table)
    print(f"wrote {path} and {md}")
    return 0


def forward_markdown(data: dict[str, Any]) -> str:
    """The markdown report of :func:`run_forward` (its command, what was run, the tables)."""
    cfg = data["config"]
    trained = ", ".join(f"`{k}`" for k in TRAINED)
    return (
        f"# graph: 10-layer forward vs ten scipy CG iterations (`python3 benchmarks/graph.py "
        f"--forward --repeats {cfg['repeats']}`)\n\n"
        f"{cfg['nodes']}-node graphs, one signal, lam 1, float64, bounds cached on the "
        f"problem, all methods interleaved in one process, medians of {cfg['repeats']}. "
        f"Untrained controllers sampled on {cfg['controller_sample']} nodes per graph (the "
        "diagonal mode with the local node head; their cost does not depend on the weights), "
        "`window (full controller)` for reference, and the committed trained models "
        f"{trained} (a backup controller runs only where the first one's roots fail the "
        "certificate: the JSON rows record the share of windows where it ran). CG baseline: "
        "the faster of numpy's BLAS on 1 thread and on its default threads. Load averages "
        "before and after each row are in the tables.\n\n" + data["table"] + "\n"
    )
