"""Smoke test of the graph cost benchmark (``benchmarks/graph.py --cost --quick``)."""

import json

from unrollsci.bench.graph import main


def test_graph_cost_quick_writes_ratios(tmp_path):
    rc = main(["--cost", "--quick", "--big", "300", "--repeats", "1", "--out", str(tmp_path)])
    assert rc == 0
    data = json.loads((tmp_path / "graph_cost_quick.json").read_text())
    assert (tmp_path / "graph_cost_quick.md").exists()
    assert len(data["rows"]) == 6  # three graphs, two observation rates
    for row in data["rows"]:
        assert row["all bounds / cg"] > 0 and row["window_jacobi K=10 / cg10"] > 0
        assert row["all bounds (new graph) / cg"] > 0 and row["window bounds / cg"] > 0
        assert 0 < row["lo"] <= row["Lip"] and 0 < row["jac lo"] < row["jac hi"]
    assert data["batch64_shared_mask"]["signals"] == 64
