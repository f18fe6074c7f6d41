"""Training helpers of the graph benchmark (:mod:`.graph`): the family of random training
graphs and the training / saving / loading of one :class:`UnrolledGraphGD` per mode."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..graph import (
    MODES,
    GraphInverseProblem,
    StepController,
    UnrolledGraphGD,
    graph_loss,
    inpainting_problem,
    load_minnesota,
    random_graph,
    road_graph,
    sensor_graph,
)
from ._common import keep_caller_rng, read_input

__all__ = [
    "TRAIN_KINDS",
    "small_test_problems",
    "table_problems",
    "test_problems",
    "training_problems",
    "train_models",
    "save_models",
    "load_models",
]

#: Graph kinds of the training family, cycled through (see :func:`training_problems`).
TRAIN_KINDS = ("sensor", "road", "geometric", "grid", "sensor", "road", "sbm", "ba")


def small_test_problems(
    signals: int = 16,
    names: tuple[str, str] = ("Minnesota", "sensor 2642 (Minnesota substitute)"),
) -> list[tuple[str, GraphInverseProblem]]:
    """The two small test rows of ``benchmarks/graph.py`` (50% observed, noise 0.1):
    Minnesota (without pygsp: a 2642-node sensor graph, named ``names[1]``; else
    ``names[0]``) and sensor 1000, each with ``signals`` signals."""
    try:
        madj, _ = load_minnesota()
        mname = names[0]
    except ImportError:
        madj, _ = sensor_graph(2642, k=4, seed=12345)
        mname = names[1]
    s1k, _ = sensor_graph(1000, seed=777)
    return [
        (mname, inpainting_problem(madj, signals, noise=0.1, seed=1001)),
        ("sensor 1000", inpainting_problem(s1k, signals, noise=0.1, seed=1002)),
    ]


def table_problems(
    big: int = 100_000,
    signals: int = 16,
    names: tuple[str, str] = ("Minnesota", "sensor 2642 (Minnesota substitute)"),
    sensor: Any = None,
) -> list[tuple[str, GraphInverseProblem]]:
    """The committed table's three rows: :func:`small_test_problems` and the ``big``-node
    sensor graph at 50% observed (``sensor``: its adjacency if already built; default
    ``graph_cost``'s sensor graph)."""
    from .graph_cost import _sensor

    adj = _sensor(big) if sensor is None else sensor
    nsig = 2 if big > 20_000 else 4
    row = (f"sensor {big}", inpainting_problem(adj, nsig, noise=0.1, seed=1003))
    return [*small_test_problems(signals, names), row]


def test_problems(
    big: int = 100_000,
    signals: int = 16,
    names: tuple[str, str] = ("Minnesota", "sensor 2642 (Minnesota substitute)"),
) -> list[tuple[str, GraphInverseProblem]]:
    """The test rows of ``benchmarks/graph.py``: :func:`small_test_problems` (``signals``,
    ``names``), the sensor graph of ``big`` nodes at 50% and the three ``big``-node graphs
    of :func:`graph_cost._graphs` (sensor, road-like, random geometric) at 30% and 80%."""
    from .graph_cost import _graphs

    graphs = _graphs(big)
    out = table_problems(big, signals, names, sensor=graphs[0][1])
    for gname, adj in graphs:
        for rate in (0.3, 0.8):
            p = inpainting_problem(adj, 2, observed=rate, noise=0.1, seed=1005)
            out.append((f"{gname}, {rate:.0%} observed", p))
    return out


def _nx_adj(G: Any):  # type: ignore[no-untyped-def]
    import networkx as nx
    import scipy.sparse as sp

    return sp.csr_matrix(nx.to_scipy_sparse_array(G, format="csr"), dtype=np.float64)


def training_problems(
    num_graphs: int,
    signals: int,
    *,
    seed: int = 0,
    n_range: tuple[int, int] = (300, 900),
    observed: float | tuple[float, float] = 0.5,
    noise: tuple[float, float] = (0.05, 0.2),
    lam: float = 1.0,
    kinds: tuple[str, ...] = TRAIN_KINDS,
    log_sizes: bool = False,
) -> list[GraphInverseProblem]:
    """Inpainting problems on a mix of random graphs, one graph per problem batch, cycling
    through ``kinds``: ``"sensor"`` (kNN, k in 3..6), ``"road"`` (planar road-like,
    :func:`road_graph`) or a :func:`random_graph` kind (geometric, grid, sbm, ba).
    ``observed``: a rate, or a range ``(lo, hi)`` drawn uniformly per graph. Sizes are drawn
    uniformly from ``n_range`` (``log_sizes``: log-uniformly, as many graphs per decade)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(num_graphs):
        kind = kinds[i % len(kinds)]
        if log_sizes:
            lo_n, hi_n = np.log(n_range[0]), np.log(n_range[1] - 1)
            n = int(np.clip(round(float(np.exp(rng.uniform(lo_n, hi_n)))), *n_range))
        else:
            n = int(rng.integers(*n_range))
        gseed = int(rng.integers(2**31))
        if kind == "sensor":
            adj, _ = sensor_graph(n, k=int(rng.integers(3, 7)), seed=gseed)
        elif kind == "road":
            adj, _ = road_graph(n, extra=float(rng.uniform(0.1, 0.4)), seed=gseed)
        else:
            adj = _nx_adj(random_graph(kind, n, seed=gseed))
        rate = observed if isinstance(observed, float) else float(rng.uniform(*observed))
        p = inpainting_problem(
            adj, signals, observed=rate, noise=noise, lam=lam, seed=int(rng.integers(2**31))
        )
        p.solve_exact()
        out.append(p)
    return out


@keep_caller_rng
def train_models(
    train: list[GraphInverseProblem],
    val: list[GraphInverseProblem],
    *,
    num_layers: int,
    window: int,
    epochs: int,
    hidden: int = 32,
    lr: float = 1e-3,
    seed: int = 0,
    modes: tuple[str, ...] = MODES,
    progress: bool = False,
    sample: int | None = None,
    lr_decay: float = 1.0,
    init: dict[str, UnrolledGraphGD] | None = None,
    small_weight: float = 1.0,
    patience: int | None = None,
) -> tuple[dict[str, UnrolledGraphGD], dict[str, Any]]:
    """Train one :class:`UnrolledGraphGD` per mode with the supervised energy loss.

    ``sample``: the models' ``controller_sample`` (the diagonal mode then uses the local
    node head). ``lr_decay``: the learning rate's factor per epoch. ``init``: start a mode
    from these weights (a fine-tune) instead of a fresh initialization. ``small_weight``:
    the loss of a training graph below 1,000 nodes is multiplied by this. ``patience``:
    early stopping (default ``max(5, epochs // 3)``)."""
    from ..train import fit

    def loss(m: UnrolledGraphGD, p: GraphInverseProblem) -> torch.Tensor:
        w = small_weight if p.num_nodes < 1000 else 1.0
        return graph_loss(m, p) * w if w != 1.0 else graph_loss(m, p)

    models, info = {}, {}
    for mode in modes:
        torch.manual_seed(seed)
        head = "local" if sample is not None and mode == "diagonal" else "mp"
        model = UnrolledGraphGD(
            num_layers,
            StepController(hidden=hidden, window=window, node_head=head),
            mode=mode,
            controller_sample=sample,
        ).double()
        if init is not None and mode in init:
            model.load_state_dict(init[mode].state_dict())
        t0 = time.perf_counter()
        hist = fit(
            model,
            loss,
            train,
            val_data=val,
            epochs=epochs,
            lr=lr,
            seed=seed,
            patience=patience if patience is not None else max(5, epochs // 3),
            progress=progress,
            clip_grad=10.0,
            lr_decay=lr_decay,
        )
        info[mode] = {
            "seconds": time.perf_counter() - t0,
            "best_val": hist.best_val,
            "best_epoch": hist.best_epoch,
            "epochs_run": len(hist.train_loss),
            "final_train": hist.train_loss[-1],
        }
        print(f"trained {mode}: {info[mode]}", flush=True)
        models[mode] = model.eval()
    return models, info


def save_models(
    folder: Path, models: dict[str, UnrolledGraphGD], info: dict[str, Any], config: dict
) -> None:
    from ..train import save_checkpoint

    for mode, model in models.items():
        save_checkpoint(
            model, folder / f"graph_{mode}.pt", extra={"train": info[mode], "config": config}
        )


def load_models(
    folder: Path, modes: tuple[str, ...] = MODES
) -> tuple[dict[str, UnrolledGraphGD], dict[str, Any]]:
    """The models ``folder/graph_<mode>.pt``, in float64; a missing or wrong file raises
    :class:`~unrollsci.bench._common.BenchInputError` naming it."""
    models, info = {}, {}
    for mode in modes:
        path = folder / f"graph_{mode}.pt"
        models[mode] = read_input(path, _load_graph_model, "model").eval()
        info[mode] = {"loaded_from": str(path)}
    return models, info


def _load_graph_model(path: Path) -> UnrolledGraphGD:
    from ..train import load_checkpoint

    model = load_checkpoint(path, expected=UnrolledGraphGD)
    if not isinstance(model, UnrolledGraphGD):
        raise TypeError(f"Expected an UnrolledGraphGD checkpoint (got {type(model).__name__}).")
    # load_checkpoint rebuilds in the default dtype (float32): reload the float64
    # weights into the float64 model so that nothing is rounded
    model = model.double()
    model.load_state_dict(torch.load(path, weights_only=True)["state_dict"])
    return model
