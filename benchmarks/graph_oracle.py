"""How far can a fixed polynomial in D^{-1} H go on Minnesota, and does it transfer?

For the K = 10 window_jacobi iteration x <- x - s_k D^{-1} (H x - b), fits the K roots
(as fractions of the certified Jacobi interval [lo, hi]) by Adam on the log energy error
of one graph's problems, then applies those fractions to the Minnesota test problems of
``unrollsci bench graph`` (seed 1001). Fitting on Minnesota itself is the in-sample
oracle: the best any controller could do with one polynomial for those 16 signals.
Writes benchmarks/results/graph_oracle.json (``--out DIR``; ``--quick``: 20 Adam steps per
fit, ``graph_oracle_quick.json``) and prints a table.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from unrollsci._argtypes import output_dir_arg
from unrollsci._io import run_command
from unrollsci.bench._common import markdown_table, parse_bench_args, write_results
from unrollsci.graph import inpainting_problem, load_minnesota, road_graph, sensor_graph

K = 10


def setup(p):
    lo, hi = p.jacobi_interval()
    return p, 1.0 / p.hessian_diagonal(), p.rhs(), float(lo[0, 0]), float(hi[0, 0])


def run(prob, fractions):
    p, dinv, b, lo, hi = prob
    x, g = torch.zeros_like(b), -b * dinv
    for s in 1.0 / (lo + (hi - lo) * fractions):
        x = x - s * g
        g = dinv * (p.hessian(x) - b)
    return float(p.relative_error(x).detach().mean()), x


def fit(prob, iters=600):
    p, dinv, b, lo, hi = prob
    k = torch.arange(1, K + 1, dtype=torch.float64)
    t0 = 0.5 * (1 + torch.cos((2 * k - 1) * np.pi / (2 * K)))  # Chebyshev roots
    z = torch.nn.Parameter(torch.log(t0 / (1 - t0)))
    opt = torch.optim.Adam([z], lr=0.03)
    for _ in range(iters):
        opt.zero_grad()
        _, x = run(prob, torch.sigmoid(z))
        torch.log(p.relative_error(x) ** 2).mean().backward()
        opt.step()
    return torch.sigmoid(z).detach(), t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/graph_oracle.py", description=__doc__)
    parser.add_argument("--out", type=output_dir_arg, default="benchmarks/results")
    parser.add_argument("--quick", action="store_true", help="20 Adam steps per fit")
    args = parse_bench_args(parser, argv, "graph_oracle")
    iters = 20 if args.quick else 600
    torch.set_num_threads(1)
    madj, _ = load_minnesota()
    minn = setup(inpainting_problem(madj, 16, noise=0.1, seed=1001))
    rows = []
    t_min, cheb = fit(minn, iters)
    rows.append({"fitted on": "Chebyshev roots (no fit)", "on Minnesota": run(minn, cheb)[0]})
    rows.append({"fitted on": "Minnesota itself (in-sample)", "on Minnesota": run(minn, t_min)[0]})
    graphs = [
        ("road 2000 (extra 0.25)", road_graph(2000, seed=1)[0]),
        ("road 800 (extra 0.25)", road_graph(800, seed=2)[0]),
        ("sensor 1000, k=3", sensor_graph(1000, k=3, seed=3)[0]),
        ("sensor 1000, k=6", sensor_graph(1000, k=6, seed=3)[0]),
    ]
    for name, adj in graphs:
        prob = setup(inpainting_problem(adj, 8, noise=0.1, seed=5))
        t, _ = fit(prob, iters)
        deg = np.asarray(adj.sum(1)).ravel().mean()
        rows.append(
            {
                "fitted on": name,
                "mean degree": float(deg),
                "hi/lo": prob[4] / prob[3],
                "in-sample": run(prob, t)[0],
                "on Minnesota": run(minn, t)[0],
            }
        )
    from unrollsci.bench.graph import classical_iterates

    base = classical_iterates(minn[0], K)
    ref = {m: float(minn[0].relative_error(base[m]).mean()) for m in ("CG", "Jacobi-PCG")}
    print(markdown_table(rows, ["fitted on", "mean degree", "hi/lo", "in-sample", "on Minnesota"]))
    print("Minnesota at K=10:", ref, "; Minnesota hi/lo:", minn[4] / minn[3])
    path = write_results(
        "graph_oracle",
        {
            "K": K,
            "rows": rows,
            "minnesota_reference": ref,
            "minnesota_hi_over_lo": minn[4] / minn[3],
        },
        args.out,
        quick=args.quick,
    )
    print("wrote", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_command(main))
