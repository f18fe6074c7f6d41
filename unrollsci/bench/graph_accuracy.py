"""How accurate the timed graph solves are: ``python benchmarks/graph_batch_accuracy.py``.

The batch benchmark (``graph.py --cost --batch-only``) times the 10-layer learned solvers
against scipy ``cg`` to rtol 1e-6 and against ten ``cg`` iterations. This measures, on the
same problem (the sensor graph of ``--big`` nodes, 30% observed, 64 signals sharing one
mask), the energy-norm relative error ``||x - x*||_H / ||x*||_H`` each of them reaches
(``x*`` by a sparse factorization, :meth:`GraphInverseProblem.solve_exact`): the learned
modes as timed (untrained sampled controllers, :func:`.graph_forward.forward_models`), the
committed trained models, ten CG iterations and CG to 1e-6. A time ratio means "faster at
the same accuracy" only against the CG row of comparable error. Writes
``benchmarks/results/graph_batch_accuracy.{json,md}`` (``--quick``: 3000 nodes, 8 signals,
``*_quick``).
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import torch

from ._common import (
    markdown_table,
    output_dir_arg,
    parse_bench_args,
    positive_int_arg,
    write_report,
)
from .graph_cost import _sensor, batch_problem
from .graph_forward import TRAINED, forward_models

__all__ = ["main"]

#: the modes the batch benchmark times (and the committed trained models)
MODES = ("window", "window_jacobi")


def _cg_errors(p: Any, rtol: float, maxiter: int) -> torch.Tensor:
    from scipy.sparse.linalg import cg

    h = p.hessian_scipy(0)
    rhs = p.rhs().cpu().numpy()
    xs = np.stack([cg(h, rhs[i], rtol=rtol, atol=0.0, maxiter=maxiter)[0] for i in range(len(rhs))])
    return p.relative_error(torch.as_tensor(xs, dtype=p.dtype))[:, 0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/graph_batch_accuracy.py", description=__doc__)
    parser.add_argument("--big", type=positive_int_arg, default=100_000)
    parser.add_argument("--signals", type=positive_int_arg, default=64)
    parser.add_argument("--out", type=output_dir_arg, default="benchmarks/results")
    parser.add_argument("--quick", action="store_true")
    args = parse_bench_args(parser, argv, "graph_batch_accuracy")
    n, signals = (3000, 8) if args.quick else (args.big, args.signals)
    p = batch_problem(_sensor(n), signals)
    p.solve_exact()  # cached: every error below is against it
    rows: list[dict[str, Any]] = []

    def add(name: str, err: torch.Tensor) -> None:
        e = err.double()
        rows.append({"solver": name, "mean error": float(e.mean()), "max error": float(e.max())})

    add("cg, 10 iterations", _cg_errors(p, 0.0, 10))
    add("cg to rtol 1e-6", _cg_errors(p, 1e-6, 20 * p.num_nodes))
    models = forward_models(trained=True)
    with torch.no_grad():
        for name, model in models.items():
            if name in MODES or name in TRAINED:
                label = f"{name} (as timed, untrained)" if name in MODES else name
                add(label, p.relative_error(model(p).x)[:, 0])
    table = markdown_table(rows)
    md = (
        f"# graph: energy-norm error of the timed solvers (sensor {p.num_nodes} nodes, 30% "
        f"observed, {signals} signals, one mask)\n\n{table}\n"
    )
    write_report("graph_batch_accuracy", {"n": p.num_nodes, "signals": signals, "rows": rows},
                 args.out, quick=args.quick, markdown=md)  # fmt: skip
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
