"""Smoke test of the forward-cost benchmark (``benchmarks/graph.py --forward --quick``)."""

import json

from unrollsci.bench.graph import main
from unrollsci.bench.graph_forward import forward_models


def test_graph_forward_quick_writes_ratios(tmp_path):
    rc = main(["--forward", "--quick", "--big", "300", "--repeats", "1", "--out", str(tmp_path)])
    assert rc == 0
    data = json.loads((tmp_path / "graph_forward_quick.json").read_text())
    assert (tmp_path / "graph_forward_quick.md").exists()
    assert len(data["rows"]) == 6  # three graphs, two observation rates
    assert data["config"]["controller_sample"] == 256
    for row in data["rows"]:
        for nt in (1, 2):
            assert row[f"cg10 [ms] ({nt} thr)"] > 0
            for mode in forward_models(8, trained=True):
                assert row[f"{mode} / cg10 ({nt} thr)"] > 0
        assert row["load before"] >= 0
        # the cascade's cost depends on where its backup ran: recorded per row
        share = row["window_jacobi graph_cascade (trained): backup windows"]
        assert 0 <= share <= row["window_jacobi graph_cascade (trained): learned windows"] <= 1


def test_forward_models_use_the_cheap_controller():
    models = forward_models(16)
    assert models["window"].controller_sample == 16
    assert models["diagonal"].controller.node_head == "local"
    assert models["window (full controller)"].controller_sample is None


def test_graph_batch_accuracy_quick(tmp_path):
    """The accuracy of the timed batch solvers (benchmarks/graph_batch_accuracy.py): every
    row against the exact solution; CG to 1e-6 far below ten CG iterations."""
    import json

    from unrollsci.bench.graph_accuracy import main

    assert main(["--quick", "--out", str(tmp_path)]) == 0
    rows = {
        r["solver"]: r
        for r in json.loads((tmp_path / "graph_batch_accuracy_quick.json").read_text())["rows"]
    }
    assert rows["cg to rtol 1e-6"]["max error"] < 1e-5 < rows["cg, 10 iterations"]["mean error"]
    for r in rows.values():
        assert 0 <= r["mean error"] <= r["max error"] < 1
