"""Smoke test of the batched sparse-product benchmark (unrollsci/bench/spmm.py)."""

import json


def test_spmm_quick_writes_results(tmp_path):
    from unrollsci.bench.spmm import main

    assert main(["--quick", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "spmm_quick.json").read_text())["rows"]
    assert {r["batch"] for r in rows} == {1, 16, 64}
    assert all(r["identical"] for r in rows)
    assert all(r["one call [ms]"] > 0 and r["blocked [ms]"] > 0 for r in rows)
