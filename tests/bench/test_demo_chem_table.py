"""The demo's charge-equilibration table shows what it is meant to (a docs audit, December
9): the calculator's default solver became direct for small systems, so every row ran 0 CG
iterations and the three force modes could not differ."""

from __future__ import annotations


def test_demo_chem_rows_run_cg_iterations(tmp_path):
    from unrollsci.bench.demo.chem import run_demo

    rows = {r["forces"]: r for r in run_demo(tmp_path)}
    assert all(r["CG iterations"] > 0 for r in rows.values())
    err = {k: r["max dF vs converged (eV/A)"] for k, r in rows.items()}
    assert err["implicit"] < err["envelope"]  # the adjoint correction matters at tol 1e-3
    assert rows["unrolled"]["max dF vs FD of returned E (eV/A)"] < 1e-6
