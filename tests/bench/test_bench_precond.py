"""The precond benchmark and demo section (moved from tests/precond/test_precond.py)."""

from __future__ import annotations

import pytest
import scipy.sparse as sp

from unrollsci.precond import graph_laplacian


def test_bench_tiny_run_writes_json_and_png(tmp_path):
    import json

    from unrollsci.bench.precond import main

    rc = main(
        [
            "--family",
            "poisson",
            "--n",
            "10",
            "--train-n",
            "8",
            "--train-systems",
            "2",
            "--val-systems",
            "0",
            "--epochs",
            "1",
            "--kinds",
            "factor",
            "poly",
            "--no-frobenius",
            "--test-systems",
            "1",
            "--repeats",
            "1",
            "--out",
            str(tmp_path),
        ]
    )
    assert rc == 0
    data = json.loads((tmp_path / "precond.json").read_text())
    methods = {r["method"] for r in data["rows"]}
    assert {"none", "jacobi", "ic0", "mic0", "learned-factor", "learned-factor-mic"} <= methods
    assert {"chebyshev", "learned-poly"} <= methods
    assert "learned-factor-ic0" not in methods  # --ic0-base is off by default
    assert all(r["converged"] for r in data["rows"])
    assert (tmp_path / "precond.png").stat().st_size > 0


@pytest.mark.slow
def test_demo_runs(tmp_path):
    from unrollsci.bench.demo.precond import run_demo

    rows = run_demo(tmp_path)
    it = {r["method"]: r["iterations"] for r in rows}
    assert it["ic0"] < it["jacobi"] < it["none"]
    assert (tmp_path / "precond_demo.png").exists()


def test_summarize_breakeven():
    from unrollsci.bench.precond import summarize

    def row(m, it, setup, solve):
        return {
            "family": "f",
            "n": "8^2",
            "method": m,
            "iters": it,
            "setup_s": setup,
            "solve_s": solve,
            "total_s": setup + solve,
            "vs_ic0_iters": it / 40,
            "vs_ic0_time": (setup + solve) / 1.1,
        }

    rows = [row("ic0", 40, 0.1, 1.0), row("learned-factor", 26, 0.4, 0.6), row("amg", 9, 0.3, 0.3)]
    (s,) = summarize(rows)
    assert s["breakeven_rhs"] == 1.0  # 0.3 s more setup, 0.4 s less per solve
    assert s["goal_met"] and s["amg_faster_total"]
    rows[1] = row("learned-factor", 26, 1.0, 0.8)
    assert summarize(rows)[0]["breakeven_rhs"] == 5.0  # ceil(0.9 / 0.2)


def test_bench_on_user_matrices(tmp_path):
    import json

    from unrollsci.bench.precond import main

    data_dir = tmp_path / "family"
    data_dir.mkdir()
    for s in range(6):
        sp.save_npz(data_dir / f"t{s}.npz", graph_laplacian(5 + s % 2, seed=s))
    common = ["--epochs", "1", "--kinds", "factor", "--no-frobenius", "--repeats", "1"]
    rc = main(
        ["--matrices", str(data_dir), "--test-systems", "2", "--val-systems", "1"]
        + common
        + ["--out", str(tmp_path / "out")]
    )
    assert rc == 0
    data = json.loads((tmp_path / "out" / "precond.json").read_text())
    assert {r["family"] for r in data["rows"]} == {"user"}  # no generated family
    assert {r["n"] for r in data["rows"]} == {"held-out"}
    assert [f.rsplit("/", 1)[-1] for f in data["user_matrices"]] == [f"t{s}.npz" for s in range(6)]
    assert all(r["converged"] for r in data["rows"])
    assert data["reference_100x100_diffusion"] is None
    with pytest.raises(ValueError, match="at least"):
        main(["--matrices", str(data_dir), "--test-systems", "5", "--val-systems", "1"] + common)
