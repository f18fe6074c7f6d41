"""Smoke test of the learned-AMG benchmark (unrollsci/bench/amg.py)."""

from __future__ import annotations

import json


def test_amg_bench_quick_writes_results(tmp_path):
    from unrollsci.bench.amg import main

    rc = main(["--quick", "--families", "graph", "--out", str(tmp_path)])
    assert rc == 0
    data = json.loads((tmp_path / "amg_quick.json").read_text())
    methods = {r["method"] for r in data["rows"]}
    assert {"mic0", "chebyshev", "pyamg-sa", "pyamg-rs", "learned-amg", "learned-amg-rs"} <= methods
    assert {"learned-amg-untrained", "learned-amg-rs-untrained", "learned-amg-sa2"} <= methods
    # the learned two-sweep variant stands against PyAMG with the same smoothing
    assert {"pyamg-sa-csr-sgs2", "pyamg-rs-sgs2"} <= methods
    assert all(r["converged"] for r in data["rows"])
    assert all(r["load1"] >= 0 for r in data["rows"])
    assert set(data["training"]) == {"sa", "rs", "sa2"}
    assert [r["variant"] for r in data["summary"]] == ["sa", "rs", "sa2"]
    for row in data["summary"]:
        assert row["family"] == "graph" and row["seen_in_training"] is False
        best = min(r["total_s"] for r in data["rows"] if r["method"] == row["best_classical"])
        name = "learned-amg" if row["variant"] == "sa" else f"learned-amg-{row['variant']}"
        learned = next(r for r in data["rows"] if r["method"] == name)
        assert abs(row["learned_time_vs_best"] - learned["total_s"] / best) < 1e-12
        amg = [r for r in data["rows"] if r["method"].startswith(("pyamg", "learned"))]
        floor = min(r["setup_s"] for r in amg) + min(r["solve_s"] for r in amg)
        assert abs(row["amg_floor_vs_best"] - floor / best) < 1e-12
        assert row["amg_floor_vs_best"] <= row["learned_time_vs_best"] + 1e-12
    assert not (tmp_path / "amg.json").exists()  # a quick run never writes the full results
    assert (tmp_path / "amg_quick.md").read_text().startswith("# learned AMG benchmark")


def test_amg_bench_saves_and_loads_models(tmp_path, capsys):
    """--save-models writes the trained variants; --load-models rebuilds them (no training)
    and refuses a checkpoint of another variant."""
    import pytest

    from unrollsci.bench.amg import main

    models = tmp_path / "models"
    common = ["--quick", "--families", "diffusion", "--variants", "rs"]
    assert main([*common, "--out", str(tmp_path / "a"), "--save-models", str(models)]) == 0
    assert (models / "amg_rs.pt").exists()
    assert main([*common, "--out", str(tmp_path / "b"), "--load-models", str(models)]) == 0
    a = json.loads((tmp_path / "a" / "amg_quick.json").read_text())
    b = json.loads((tmp_path / "b" / "amg_quick.json").read_text())
    assert b["training"]["rs"] == {"loaded_from": str(models / "amg_rs.pt"), **a["training"]["rs"]}
    # the same learned preconditioners (the tuned PyAMG rows depend on timings)
    iters = {r["method"]: r["iters"] for r in a["rows"] if r["method"].startswith("learned")}
    assert {
        r["method"]: r["iters"] for r in b["rows"] if r["method"].startswith("learned")
    } == iters
    (models / "amg_rs.pt").rename(models / "amg_sa.pt")
    with pytest.raises(SystemExit) as exc:  # refused before any work (exit 2, one line)
        main(
            [
                "--quick",
                "--families",
                "diffusion",
                "--variants",
                "sa",
                "--load-models",
                str(models),
                "--out",
                str(tmp_path / "c"),
            ]
        )
    assert exc.value.code == 2
    assert "variant 'sa'" in capsys.readouterr().err


def test_amg_bench_scipy_loop_same_iterations(tmp_path):
    """--loop scipy runs every method in scipy's cg (PyAMG's own preconditioner for the AMG
    rows) and needs the iterations of the library's loop, method by method."""
    from unrollsci.bench.amg import main

    common = ["--quick", "--families", "diffusion", "--variants", "sa"]
    load = str(tmp_path / "models")
    assert main([*common, "--out", str(tmp_path / "u"), "--save-models", load]) == 0
    assert (
        main([*common, "--out", str(tmp_path / "s"), "--load-models", load, "--loop", "scipy"]) == 0
    )
    u = json.loads((tmp_path / "u" / "amg_quick.json").read_text())
    s = json.loads((tmp_path / "s" / "amg_quick.json").read_text())
    assert s["config"]["loop"] == "scipy" and "scipy's cg" in s["note"]
    fixed = {r["method"]: r["iters"] for r in u["rows"] if "tuned" not in r["method"]}
    got = {r["method"]: r["iters"] for r in s["rows"] if "tuned" not in r["method"]}
    assert got == fixed
    assert all(r["converged"] for r in s["rows"])
