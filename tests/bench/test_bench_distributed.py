"""Smoke test of benchmarks/distributed.py: the single-process rows (no process is spawned;
the two-process path is tested in tests/train/test_distributed.py)."""

from __future__ import annotations

import json

from unrollsci.bench.distributed import main


def test_distributed_bench_quick_single_process(tmp_path, capsys):
    argv = ["--quick", "--processes", "1", "--skip-mp", "--kinds", "sparse", "--out", str(tmp_path)]
    assert main(argv) == 0
    data = json.loads((tmp_path / "distributed_quick.json").read_text())
    rows = data["throughput"]
    assert {r["kind"] for r in rows} == {"sparse"}
    assert all(r["samples/s"] > 0 for r in rows)
    assert (tmp_path / "distributed_quick.md").exists()
    assert not (tmp_path / "distributed.json").exists()
    assert "samples/s" in capsys.readouterr().out
