"""What can any factor with IC(0)'s nonzeros reach on one held-out system per family?

The learned factor of ``unrollsci bench precond`` predicts *values* on ``tril(A)``'s
pattern. This script bounds what that design can give, on the held-out 64 x 64 test systems of
each family (the same matrices and right-hand sides as the benchmark):

* ``ic0``, ``mic0``: the classical factors on that pattern;
* ``ict-*``: threshold incomplete Cholesky with exactly IC(0)'s nonzeros per column (the
  ``p`` largest entries of each column kept, by magnitude or by ``|s_ik| / sqrt(s_ii)``;
  ``-comp``: the dropped entries are moved onto the diagonals, as in MIC), i.e. a
  *different* pattern of the same size;
* ``ic0-rcm``, ``mic0-rcm``: the classical factors of the matrix in reverse
  Cuthill-McKee order (same nonzeros; PCG on the reordered system);
* ``ic0-ord``, ``mic0-ord`` (grid families): the same in the grid ordering that
  ``ordering="grid"`` selects (:func:`unrollsci.precond.select_ordering`), and
  ``oracle-values-ord`` the oracle below on that reordered system, started from its
  MIC(0): what values can still add once the ordering is chosen;
* ``oracle-values``: the factor values on IC(0)'s pattern optimized for this one matrix by
  Adam through ``k`` unrolled PCG steps (energy-norm loss on 8 right-hand sides, started
  from MIC(0); ``k`` is ``--unroll-frac`` times the iterations MIC(0) needs, so the loss
  stays far from round-off), then tested on the benchmark's right-hand side;
  ``oracle-diagonal`` fits only the diagonal. For both, ``diag_change_local_r2`` says how
  much of the fitted change of ``log L_ii`` a linear model of local (2-hop) features of
  the matrix explains. No network: this
  is what the values alone can do on this system, a ceiling for a GNN that has to predict
  them for unseen systems.

PCG to relative residual 1e-8 with :func:`unrollsci.solvers.cg`, as in the benchmark.
Writes ``benchmarks/results/precond_limits.json`` and prints a table (the threshold
factorizations are dense reference loops: the slowest part).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.csgraph import reverse_cuthill_mckee

from unrollsci._argtypes import float_arg, positive_int_arg
from unrollsci._io import run_command
from unrollsci.bench._common import markdown_table, write_results
from unrollsci.bench.precond import AUTO_ORDERINGS, TEST_SEED0
from unrollsci.precond import (
    FAMILIES,
    FactorPreconditioner,
    ic0,
    lower_pattern,
    mic0,
    reorder,
    unrolled_pcg,
)
from unrollsci.solvers import cg


def threshold_ic(a: sp.csr_matrix, scaled: bool, omega: float) -> sp.csr_matrix:
    """Right-looking threshold IC on a dense copy, keeping per column as many
    sub-diagonal entries as ``tril(a)`` has (so the same nonzeros as IC(0))."""
    s = a.toarray()
    n = s.shape[0]
    budget = np.diff(sp.tril(a).tocsc().indptr) - 1
    rows, cols, vals = [], [], []
    for k in range(n):
        idx = np.flatnonzero(s[k + 1 :, k]) + k + 1
        if idx.size > budget[k]:
            score = np.abs(s[idx, k])
            if scaled:
                score = score / np.sqrt(np.abs(s[idx, idx]))
            order = np.argsort(-score, kind="stable")
            drop, idx = idx[order[budget[k] :]], np.sort(idx[order[: budget[k]]])
            if omega:  # move the dropped fill onto both diagonals (row sums kept)
                s[drop, drop] += omega * s[drop, k]
                s[k, k] += omega * s[drop, k].sum()
            s[drop, k] = 0.0
        if s[k, k] <= 0:
            raise FloatingPointError(f"non-positive pivot at column {k}")
        d = np.sqrt(s[k, k])
        lk = s[idx, k] / d
        rows += [k, *idx]
        cols += [k] * (1 + idx.size)
        vals += [d, *lk]
        s[np.ix_(idx, idx)] -= np.outer(lk, lk)
    return sp.csr_matrix((vals, (rows, cols)), shape=(n, n))


def factor_operator(lower: sp.csr_matrix) -> FactorPreconditioner:
    pat, vals = lower_pattern(lower)
    return FactorPreconditioner(pat, torch.from_numpy(vals))


def oracle_values(
    a: sp.csr_matrix, unroll: int, iters: int, seed: int, diag_only: bool = False
) -> tuple[FactorPreconditioner, list[float], np.ndarray]:
    """Adam on the factor values of IC(0)'s pattern (diagonal as exp(.)), from MIC(0).

    ``diag_only`` keeps MIC's off-diagonal values and fits only the diagonal. Returns the
    preconditioner, the loss history and the change of ``log L_ii``."""
    from unrollsci.operators import SparseOperator

    base = mic0(a).factor().tocsr()
    pat, v0 = lower_pattern(base)
    diag = pat.diag
    v0 = torch.from_numpy(v0)
    logd0 = torch.log(v0[diag])
    logd = torch.nn.Parameter(logd0.clone())
    off = torch.nn.Parameter(v0.clone())
    op = SparseOperator(a)
    rng = np.random.default_rng(seed)
    b = torch.from_numpy(rng.standard_normal((8, a.shape[0])))
    x = torch.from_numpy(
        np.stack([sp.linalg.spsolve(a.tocsc(), bi) for bi in b.numpy()])  # exact solutions
    )
    den = (x * b).sum(-1)
    opt = torch.optim.Adam([logd] if diag_only else [logd, off], lr=1e-3)
    hist = []
    for _ in range(iters):
        opt.zero_grad()
        vals = off.index_put((diag,), torch.exp(logd))
        e = unrolled_pcg(op, b, FactorPreconditioner(pat, vals), unroll) - x
        loss = torch.log(((e * op(e)).sum(-1) / den).mean())
        loss.backward()
        opt.step()
        hist.append(float(loss.detach()))
    with torch.no_grad():
        vals = off.index_put((diag,), torch.exp(logd))
    return FactorPreconditioner(pat, vals.detach()), hist, (logd - logd0).detach().numpy()


def local_r2(a: sp.csr_matrix, mic_diag: np.ndarray, y: np.ndarray) -> float:
    """R^2 of the least-squares fit of ``y`` (one value per row) by local features of the
    row and their 1- and 2-hop neighbour means: the scaled row sum, the degree, the
    scaled off-diagonal sum and MIC's ``L_ii^2 / a_ii``. How much of ``y`` a network that
    sees two hops of the matrix graph could predict linearly."""
    d = a.diagonal()
    off = sp.csr_matrix(a - sp.diags(d))
    off.eliminate_zeros()
    deg = np.diff(off.indptr).astype(float)
    mean_nb = sp.diags(1 / np.maximum(deg, 1)) @ (off != 0).astype(float)
    base = [
        np.asarray(a.sum(1)).ravel() / d,
        deg,
        np.asarray(off.sum(1)).ravel() / d,
        mic_diag**2 / d,
    ]
    cols = [np.ones_like(d)]
    for f in base:
        cols += [f, mean_nb @ f, mean_nb @ (mean_nb @ f)]
    feats = np.column_stack(cols)
    coef, *_ = np.linalg.lstsq(feats, y, rcond=None)
    return float(1 - ((feats @ coef - y) ** 2).sum() / ((y - y.mean()) ** 2).sum())


def result_row(
    fam: str, t: int, name: str, m: Any, sol: Any, nnz0: int, ic0_iters: int, t0: float
) -> dict[str, Any]:
    """One table row (and a progress line) for a preconditioner ``m`` solved as ``sol``."""
    print(f"{fam} {t} {name}: {sol.iterations} iterations", flush=True)
    return {
        "family": fam,
        "system": t,
        "method": name,
        "nnz": m.nnz,
        "nnz_ic0": nnz0,
        "iters": sol.iterations,
        "vs_ic0": sol.iterations / ic0_iters,
        "seconds": time.perf_counter() - t0,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--family", nargs="+", default=["poisson", "anisotropic", "graph"])
    p.add_argument("--n", type=positive_int_arg, default=64)
    p.add_argument("--unroll-frac", type=float_arg(positive=True, maximum=1), default=0.6)
    p.add_argument("--oracle-iters", type=positive_int_arg, default=300)
    p.add_argument(
        "--systems", type=positive_int_arg, default=3, help="held-out test systems per family"
    )
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    rows, losses = [], {}
    for fam, t in [(f, t) for f in args.family for t in range(args.systems)]:
        seed = TEST_SEED0 + 100 * args.n + t  # the benchmark's test systems
        a = FAMILIES[fam](args.n, seed)
        b = torch.from_numpy(np.random.default_rng(seed).standard_normal(a.shape[0]))
        nnz0 = sp.tril(a).nnz
        cands = {
            "ic0": lambda a=a: ic0(a),
            "mic0": lambda a=a: mic0(a),
            "ict-magnitude": lambda a=a: factor_operator(threshold_ic(a, False, 0.0)),
            "ict-scaled": lambda a=a: factor_operator(threshold_ic(a, True, 0.0)),
            "ict-scaled-comp": lambda a=a: factor_operator(threshold_ic(a, True, 0.95)),
        }
        perm = reverse_cuthill_mckee(a, symmetric_mode=True)
        a_rcm, b_rcm = a[perm][:, perm].tocsr(), b[torch.from_numpy(perm.astype(np.int64))]
        cands["ic0-rcm"] = lambda a_rcm=a_rcm: ic0(a_rcm)
        cands["mic0-rcm"] = lambda a_rcm=a_rcm: mic0(a_rcm)
        a_ord, b_ord = a, b
        if fam in AUTO_ORDERINGS:  # the orderings the benchmark's --orderings auto selects among
            a_ord, perm_ord, _ = reorder(a, AUTO_ORDERINGS[fam])
            if perm_ord is not None:
                b_ord = b[torch.from_numpy(perm_ord)]
            cands["ic0-ord"] = lambda a_ord=a_ord: ic0(a_ord)
            cands["mic0-ord"] = lambda a_ord=a_ord: mic0(a_ord)
        its: dict[str, int] = {}

        for name, make in cands.items():
            t0 = time.perf_counter()
            try:
                m = make()
            except FloatingPointError as err:
                rows.append({"family": fam, "system": t, "method": name, "note": str(err)})
                continue
            aa, bb = {"rcm": (a_rcm, b_rcm), "ord": (a_ord, b_ord)}.get(
                name.rsplit("-", 1)[-1], (a, b)
            )
            sol = cg(aa, bb, M=m, tol=1e-8, max_iter=20 * a.shape[0], throw=False, check=False)
            its[name] = sol.iterations
            rows.append(result_row(fam, t, name, m, sol, nnz0, its["ic0"], t0))
        mic_diag = mic0(a).factor().diagonal()
        oracles = [("oracle-values", False, a, b, "mic0"), ("oracle-diagonal", True, a, b, "mic0")]
        if fam in AUTO_ORDERINGS:
            oracles.append(("oracle-values-ord", False, a_ord, b_ord, "mic0-ord"))
        for name, diag_only, aa, bb, start in oracles:
            unroll = max(2, round(args.unroll_frac * its[start]))
            t0 = time.perf_counter()
            m, hist, dlog = oracle_values(aa, unroll, args.oracle_iters, 1, diag_only)
            sol = cg(aa, bb, M=m, tol=1e-8, max_iter=20 * a.shape[0], throw=False, check=False)
            losses[f"{fam}/{t}/{name}"] = hist
            row = result_row(fam, t, name, m, sol, nnz0, its["ic0"], t0)
            rows.append(
                row
                | dict(
                    diag_change_std=float(dlog.std()),
                    diag_change_local_r2=(
                        None if name.endswith("-ord") else local_r2(a, mic_diag, dlog)
                    ),
                    note=f"{unroll} unrolled steps, loss {hist[0]:.2f} -> {hist[-1]:.2f}",
                )
            )
    summary = []
    for fam in args.family:
        for meth in dict.fromkeys(r["method"] for r in rows if r["family"] == fam):
            got = [r for r in rows if r["family"] == fam and r["method"] == meth and "iters" in r]
            if got:
                summary.append(
                    {
                        "family": fam,
                        "method": meth,
                        "mean_iters": float(np.mean([r["iters"] for r in got])),
                        "mean_vs_ic0": float(np.mean([r["vs_ic0"] for r in got])),
                        "mean_diag_change_local_r2": (
                            float(np.mean([r["diag_change_local_r2"] for r in got]))
                            if got[0].get("diag_change_local_r2") is not None
                            else None
                        ),
                        "systems": len(got),
                    }
                )
    print("\n" + markdown_table(rows) + "\n\n" + markdown_table(summary))
    path = write_results(
        "precond_limits",
        {"config": vars(args), "rows": rows, "summary": summary, "oracle_loss_history": losses},
        args.out,
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_command(main))
