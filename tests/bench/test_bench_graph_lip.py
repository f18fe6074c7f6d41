"""``benchmarks/graph_lip.py``: the table's scalar and window columns under today's and the
November 26 bounds (issue 23)."""

import json

import pytest

from unrollsci.bench.graph_lip import main


def test_graph_lip_quick_small_graphs_keep_the_table_rule(tmp_path):
    """Up to 5,000 nodes today's certified bounds are the November 26 rule itself (1.01
    lambda_max, 0.95 lambda_min, proved by one factorization): every variant gives the same
    errors there, and the recorded ratios say so."""
    assert main(["--quick", "--big", "1200", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "graph_lip_quick.json").read_text())
    assert (tmp_path / "graph_lip_quick.md").exists()
    by = {(r["problem"], r["bounds"]): r for r in data["rows"]}
    assert len(by) == 12  # three rows, four variants
    for (_problem, variant), row in by.items():  # the cost of the two certified rules
        assert (row.get("lipschitz() / cg (all signals)", 1.0) > 0) and (
            ("lipschitz() / cg (all signals)" in row) == (variant in ("certified", "inertia"))
        )
    for (problem, _variant), row in by.items():
        assert row["Lip / lambda_max (per signal)"] == pytest.approx([1.01] * 4, abs=2e-4)
        assert row["lo / lambda_min (mean)"] == pytest.approx(0.95, abs=1e-3)
        for mode in ("scalar", "window"):
            assert row[mode] == pytest.approx(by[(problem, "nov26")][mode], rel=1e-6)
