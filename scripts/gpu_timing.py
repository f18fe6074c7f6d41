"""Short CPU-vs-GPU timing of the main kernels, measured in the same run (used by gpu_check.sh).

Writes ``$OUT/gpu_timing.json`` (or ``benchmarks/results/gpu/gpu_timing.json``) and prints a
markdown table. Each section is independent: a failure is reported and the rest goes on.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from unrollsci.bench._common import Timer, markdown_table, write_results


def best_of(fn, device: torch.device, repeats: int = 3) -> float:
    fn()  # warm-up (CUDA context, kernels, caches)
    times = []
    for _ in range(repeats):
        with Timer(device) as t:
            fn()
        times.append(t.seconds)
    return min(times)


def radon_case(device):
    from unrollsci.operators import Radon

    op = Radon(128, 180).to(device)
    x = torch.rand(16, 128, 128, device=device)
    return "Radon fwd+adj, 16 x 128^2 x 180", lambda: op.adjoint(op(x))


def cg_case(device):
    from unrollsci.bench.solvers import poisson2d
    from unrollsci.operators import SparseOperator
    from unrollsci.solvers import cg

    a = SparseOperator(poisson2d(316)).to(device)
    b = torch.tensor(np.random.default_rng(0).standard_normal((1, 316 * 316)), device=device)
    return "CG Poisson 99,856 unknowns, rtol 1e-8 (929 it)", lambda: cg(
        a, b, tol=1e-8, max_iter=5000
    )


def lista_case(device):
    from unrollsci.operators import MatrixOperator
    from unrollsci.unrolled import ALISTA

    g = torch.Generator().manual_seed(0)
    a = torch.randn(250, 500, generator=g)
    a = a / a.norm(dim=0, keepdim=True)
    model = ALISTA(MatrixOperator(a), 16, lam=0.1).to(device)
    y = torch.randn(1000, 250, generator=g).to(device)
    return "ALISTA 16 layers, 250x500, batch 1000", lambda: model(y)


def graph_case(device):
    from unrollsci.graph import StepController, UnrolledGraphGD, inpainting_problem, sensor_graph

    adj, _ = sensor_graph(100_000, seed=0)
    prob = inpainting_problem(adj, 1, seed=0, device=device)
    model = UnrolledGraphGD(10, controller=StepController(), mode="scalar").to(device).double()
    prob.lipschitz()
    return "UnrolledGraphGD scalar K=10, 10^5 nodes", lambda: model(prob)


def qeq_case(device):
    from ase.build import bulk

    from unrollsci.chem import solve_charges

    atoms = bulk("NaCl", "rocksalt", a=5.64, cubic=True).repeat((8, 8, 8))  # 4096 atoms
    pos = torch.tensor(atoms.positions, device=device, dtype=torch.float64, requires_grad=True)
    cell = torch.tensor(np.array(atoms.cell), device=device, dtype=torch.float64)
    nums = list(atoms.numbers)

    def run():
        sol = solve_charges(pos, nums, cell=cell, pbc=True, cutoff=10.0, tol=1e-10)
        torch.autograd.grad(sol.energy, pos)

    return "QEq shielded 4096 atoms: charges+energy+implicit forces", run


def main() -> int:
    out = Path(os.environ.get("OUT", "benchmarks/results/gpu"))
    if not torch.cuda.is_available():
        print("gpu_timing: no CUDA device", file=sys.stderr)
        return 1
    rows = []
    for case in (radon_case, cg_case, lista_case, graph_case, qeq_case):
        row = {"case": case.__name__}
        for dev in ("cpu", "cuda"):
            device = torch.device(dev)
            try:
                name, fn = case(device)
                row["case"] = name
                row[f"{dev}_s"] = best_of(fn, device)
            except Exception as exc:  # report and continue
                row[f"{dev}_s"] = float("nan")
                row[f"{dev}_error"] = f"{type(exc).__name__}: {exc}"[:200]
                traceback.print_exc()
        if row.get("cpu_s") and row.get("cuda_s"):
            row["speedup"] = row["cpu_s"] / row["cuda_s"]
        rows.append(row)
    path = write_results(
        "gpu_timing",
        {
            "rows": rows,
            "cpu_threads": torch.get_num_threads(),
            "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        },
        out,
    )
    print(markdown_table(rows, ["case", "cpu_s", "cuda_s", "speedup"]))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
