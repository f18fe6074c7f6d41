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
    assert {"learned-amg-untrained", "learned-amg-rs-untrained"} <= methods
    assert all(r["converged"] for r in data["rows"])
    assert all(r["load1"] >= 0 for r in data["rows"])
    assert set(data["training"]) == {"sa", "rs"}
    assert [r["variant"] for r in data["summary"]] == ["sa", "rs"]
    for row in data["summary"]:
        assert row["family"] == "graph" and row["seen_in_training"] is False
        best = min(r["total_s"] for r in data["rows"] if r["method"] == row["best_classical"])
        name = "learned-amg" if row["variant"] == "sa" else "learned-amg-rs"
        learned = next(r for r in data["rows"] if r["method"] == name)
        assert abs(row["learned_time_vs_best"] - learned["total_s"] / best) < 1e-12
    assert not (tmp_path / "amg.json").exists()  # a quick run never writes the full results
    assert (tmp_path / "amg_quick.md").read_text().startswith("# learned AMG benchmark")
