"""Smoke test of the graph cost benchmark (``benchmarks/graph.py --cost --quick``)."""

import json

import pytest

from unrollsci.bench.graph import main


def _quick(tmp_path, stem: str, *args: str) -> dict:
    """Run ``benchmarks/graph.py --quick ARGS --repeats 1`` into ``tmp_path``; its
    ``STEM_quick.json`` (the run must succeed)."""
    assert main(["--quick", *args, "--repeats", "1", "--out", str(tmp_path)]) == 0
    return json.loads((tmp_path / f"{stem}_quick.json").read_text())


def test_graph_cost_quick_writes_ratios(tmp_path):
    data = _quick(tmp_path, "graph_cost", "--cost", "--big", "300")
    assert (tmp_path / "graph_cost_quick.md").exists()
    assert len(data["rows"]) == 6  # three graphs, two observation rates
    for row in data["rows"]:
        assert row["all bounds / cg"] > 0 and row["window_jacobi K=10 / cg10"] > 0
        assert row["all bounds (new graph) / cg"] > 0 and row["window bounds / cg"] > 0
        assert 0 < row["lo"] <= row["Lip"] and 0 < row["jac lo"] < row["jac hi"]
    batch = data["batch64_shared_mask"]
    assert batch["signals"] == 64
    for name in ("window", "window_jacobi (new graph)", "window (full controller)"):
        assert batch[f"{name} per signal / cg"] > 0
        assert batch[f"{name} per signal / cg 10 iterations"] > 0


def test_graph_cost_batch_only_writes_the_batch_alone(tmp_path):
    data = _quick(tmp_path, "graph_cost_batch", "--cost", "--batch-only", "--big", "300")
    batch = data["batch64_shared_mask"]
    assert data["rows"] == [] and batch["n"] == 300
    # the committed trained models too, with the share of windows their backup ran
    cascade = "window_jacobi graph_cascade (trained)"
    assert batch[f"{cascade} per signal / cg"] > 0
    assert 0 <= batch[f"{cascade}: backup windows"] <= batch[f"{cascade}: learned windows"] <= 1
    assert not (tmp_path / "graph_cost_quick.json").exists()


def test_graph_train_nodes_option_trains_on_the_sizes_asked(tmp_path):
    """``--train-nodes LO HI --train-observed LO HI --modes``: the training graphs' sizes and
    rates are recorded, only the modes asked are trained and evaluated, and every held-out
    large graph at 30% and 80% observed gets a windows_certified share."""
    rc = main(
        ["--quick", "--big", "300", "--epochs", "1", "--train-graphs", "2"]
        + ["--train-nodes", "100", "150", "--train-observed", "0.3", "0.8"]
        + ["--modes", "window_jacobi", "--sample", "16", "--out", str(tmp_path)]
    )
    assert rc == 0
    data = json.loads((tmp_path / "graph_quick.json").read_text())
    assert data["config"]["train_nodes"] == [100, 150]
    assert data["config"]["train_observed"] == [0.3, 0.8]
    assert list(data["train"]) == ["window_jacobi"]
    learned = {r["method"] for r in data["results"] if r["method"].startswith("learned")}
    assert learned == {"learned window_jacobi"}
    shares = {
        r["graph"]: r["windows_certified"]
        for r in data["results"]
        if r["method"] == "learned window_jacobi" and "observed" in r["graph"]
    }
    assert len(shares) == 6 and all(0 <= v <= 1 for v in shares.values())


def test_graph_train_nodes_log_and_small_graphs(tmp_path):
    """``--train-nodes-log`` draws the sizes log-uniformly inside the range and
    ``--train-small N`` adds N graphs of 300-900 nodes: the recorded sizes say so."""
    rc = main(
        ["--quick", "--big", "300", "--epochs", "1", "--train-graphs", "3"]
        + ["--train-nodes", "100", "400", "--train-nodes-log", "--train-small", "1"]
        + ["--modes", "window_jacobi", "--sample", "16", "--out", str(tmp_path)]
    )
    assert rc == 0
    config = json.loads((tmp_path / "graph_quick.json").read_text())["config"]
    assert config["train_nodes_draw"] == "log-uniform" and config["train_small_graphs"] == 1
    sizes = config["train_graph_nodes"]
    assert len(sizes) == 4
    assert all(100 <= n < 400 for n in sizes[:3]) and 300 <= sizes[3] < 900


def test_graph_train_nodes_rejects_an_empty_range(capsys):
    import pytest

    with pytest.raises(SystemExit):
        main(["--quick", "--train-nodes", "500", "300"])
    assert "expected LO < HI" in capsys.readouterr().err


def test_graph_cost_bounds_only_pairs_each_bound_with_a_cg_solve(tmp_path):
    data = _quick(tmp_path, "graph_cost_bounds", "--cost", "--bounds-only", "--big", "900")
    assert (tmp_path / "graph_cost_bounds_quick.md").exists()
    assert data["batch64_shared_mask"] == {} and len(data["rows"]) == 6
    for row in data["rows"]:
        assert row["window bounds / cg"] > 0 and row["all bounds (new graph) / cg"] > 0
        # the build's share is reported beside the bounds (the graph is hashed there)
        assert row["build + all bounds / cg"] == pytest.approx(
            row["build / cg"] + row["all bounds [s]"] / row["cg 1e-6 [s]"]
        )
        assert not any("K=10" in key for key in row)
        # the certified lower bounds are proofs: at most the true smallest eigenvalues
        assert 0 < row["quality: lo / lambda_min"] <= 1 + 1e-9
        assert 0 < row["quality: jac lo / lambda_min(S)"] <= 1 + 1e-9


def test_graph_end_to_end_writes_every_mode_and_graph(tmp_path):
    data = _quick(tmp_path, "graph_e2e", "--end-to-end", "--big", "400")
    assert (tmp_path / "graph_e2e_quick.md").exists() and len(data["rows"]) == 6
    for row in data["rows"]:
        for mode in ("window", "window_jacobi"):
            ratio = row[f"{mode} / (H + cg 10 it)"]
            assert ratio == pytest.approx(
                row[f"{mode} [s]"] / (row["scipy H [s]"] + row["cg 10 it [s]"])
            )
            assert row[f"{mode} / (H + cg 1e-6)"] > 0
            assert row[f"{mode} (new graph) [s]"] > 0
