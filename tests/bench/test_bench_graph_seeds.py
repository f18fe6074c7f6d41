"""Smoke test of the seed study (``benchmarks/graph_seeds.py``, issue 23)."""

import json

import pytest
import torch

from unrollsci.bench.graph_seeds import main, select


@pytest.mark.slow
def test_graph_seeds_quick_train_finetune_and_eval(tmp_path):
    models = tmp_path / "m"
    assert main(["train", "table", "--quick", "--seeds", "0", "1", "--models", str(models)]) == 0
    rc = main(
        ["train", "table", "--quick", "--seeds", "0", "--models", str(models)]
        + ["--tag", "ft", "--init", str(models / "table_s0"), "--small-weight", "2"]
        + ["--lr-decay", "0.9", "--val-big", "1", "--big-nodes", "200", "300"]
        + ["--patience", "3"]
    )
    assert rc == 0
    ft = torch.load(models / "ft_s0" / "graph_window_jacobi.pt", weights_only=True)
    assert ft["extra"]["config"]["init"] == str(models / "table_s0")
    # --val-big: one more early-stopping graph of --big-nodes nodes; --patience recorded
    val_nodes = ft["extra"]["config"]["val_graph_nodes"]
    assert len(val_nodes) == 3 and 200 <= val_nodes[-1] < 300
    assert ft["extra"]["config"]["patience"] == 3
    folders = [str(models / n) for n in ("table_s0", "table_s1", "ft_s0")]
    assert main(["eval", *folders, "--quick", "--big", "400", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "graph_seeds_quick.json").read_text())
    assert (tmp_path / "graph_seeds_quick.md").exists()
    assert set(data["test"]) == {"table_s0", "table_s1", "ft_s0"}
    assert len(data["test"]["table_s0"]) == 9 and len(data["validation"]["ft_s0"]) == 10
    # every model is evaluated on the same problems (one set of baselines), and ranked
    assert set(data["test_baselines"]) == set(data["test"]["table_s0"])
    assert sorted(data["selection"]["ranking"]) == sorted(data["test"])
    chosen = data["selection"]["chosen"]
    assert chosen is None or data["selection"]["scores"][chosen]["eligible"]
    table = [r for r in data["summary"] if r["recipe"] == "table"]
    assert len(table) == 9 and all(r["seeds"] == 2 and r["min"] <= r["max"] for r in table)


def test_select_ranks_on_validation_and_requires_learned_windows():
    base = {"a 50%": {"CG": 2.0, "Jacobi-PCG": 1.0}, "b 30%": {"CG": 2.0, "Jacobi-PCG": 1.0}}
    evals = {
        "good": {"a 50%": {"err": 1.2, "learned": 1.0}, "b 30%": {"err": 1.5, "learned": 1.0}},
        "best_but_falls_back": {
            "a 50%": {"err": 1.1, "learned": 1.0},
            "b 30%": {"err": 1.2, "learned": 0.5},
        },
        "worse": {"a 50%": {"err": 1.3, "learned": 1.0}, "b 30%": {"err": 1.1, "learned": 1.0}},
        "above_cg": {"a 50%": {"err": 1.0, "learned": 1.0}, "b 30%": {"err": 2.5, "learned": 1}},
    }
    sel = select(evals, base)
    assert sel["chosen"] == "good"
    assert sel["ranking"][:2] == ["good", "worse"]
    assert not sel["scores"]["above_cg"]["eligible"]
    assert sel["scores"]["good"]["gmean_50"] == pytest.approx(1.2)
    # nothing qualifies: nothing is chosen
    assert select({"x": evals["above_cg"]}, base)["chosen"] is None
