"""Smoke test of the CG-with-PyAMG thread benchmark (unrollsci/bench/cg_threads.py)."""

import json


def test_cg_threads_quick_writes_results(tmp_path):
    import torch

    from unrollsci.bench.cg_threads import main

    threads = torch.get_num_threads()
    assert main(["--quick", "--out", str(tmp_path)]) == 0
    assert torch.get_num_threads() == threads
    data = json.loads((tmp_path / "cg_threads_quick.json").read_text())
    rows = data["rows"]
    assert {r["preconditioner"] for r in rows} == {"pyamg-sa", "pyamg-rs"}
    assert {r["solver"] for r in rows} == {
        "unrollsci cg, serial loop (now)",
        "unrollsci cg, parallel loop (before)",
        "scipy cg",
    }
    # the same hierarchy and rtol: every way to run it takes about as many iterations
    for pre in ("pyamg-sa", "pyamg-rs"):
        its = [r["iters"] for r in rows if r["preconditioner"] == pre]
        assert max(its) - min(its) <= 1
    interop = data["interop"]
    assert {r["preconditioner"] for r in interop} == {"jacobi", "ic0"}
    for pre in ("jacobi", "ic0"):
        its = [r["iters"] for r in interop if r["preconditioner"] == pre]
        assert max(its) - min(its) <= 1
    assert (tmp_path / "cg_threads_quick.md").exists()
    from unrollsci.operators import _scipy

    assert _scipy._serial_on_cpu.__name__ == "_serial_on_cpu"  # the switch left no trace
    from unrollsci.precond import AMGPreconditioner

    assert AMGPreconditioner.serial_host is True  # the benchmark's switch left no trace
